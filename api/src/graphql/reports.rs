//! GraphQL types of the reports (rules 16–18). Rows are computed in `domain::reports`;
//! users and products come through the DataLoaders, one query per kind.

use super::loaders::{ProductKey, UserKey};
use super::types::{Product, User};
use async_graphql::{
    Context, Enum, InputValueError, InputValueResult, Object, Result, Scalar, ScalarType,
    SimpleObject, Value,
};
use chrono::NaiveDate;
use daypass_domain::reports;

/// YYYY-MM-DD, UTC days
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Date(pub NaiveDate);

#[Scalar(name = "Date")]
impl ScalarType for Date {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => parse_date(s)
                .map(Date)
                .ok_or_else(|| InputValueError::custom(format!("{s:?} is not a YYYY-MM-DD date"))),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.format("%Y-%m-%d").to_string())
    }
}

/// Strictly `YYYY-MM-DD`, as the contract and the CSV endpoint take it.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    // Four, two and two digits: chrono alone also takes a sign and one-digit fields
    // ("+10000-1-1" is ten characters too).
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    shape
        .then(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .flatten()
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ReportDimension {
    Day,
    Week,
    Month,
    User,
    Product,
}

impl From<ReportDimension> for reports::Dimension {
    fn from(d: ReportDimension) -> Self {
        match d {
            ReportDimension::Day => reports::Dimension::Day,
            ReportDimension::Week => reports::Dimension::Week,
            ReportDimension::Month => reports::Dimension::Month,
            ReportDimension::User => reports::Dimension::User,
            ReportDimension::Product => reports::Dimension::Product,
        }
    }
}

pub struct UsageReportRow(pub reports::UsageRow);

#[Object]
impl UsageReportRow {
    /// Start of the period when grouped by DAY, WEEK (ISO, Monday) or MONTH.
    async fn period(&self) -> Option<Date> {
        self.0.period.map(Date)
    }
    async fn user(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        match self.0.user_id {
            Some(id) => UserKey::load(ctx, id).await.map(Some),
            None => Ok(None),
        }
    }
    /// Grouped by PRODUCT, null for opens of codes that name no catalog product.
    async fn product(&self, ctx: &Context<'_>) -> Result<Option<Product>> {
        match self.0.product_id {
            Some(id) => ProductKey::load(ctx, id).await.map(Some),
            None => Ok(None),
        }
    }
    /// Tokens charged.
    async fn tokens(&self) -> i64 {
        self.0.tokens
    }
    /// Granted opens: charged, inside a 24-hour window, or through a subscription.
    async fn opens(&self) -> i64 {
        self.0.opens
    }
    /// Pay-as-you-go charges made.
    async fn charges(&self) -> i64 {
        self.0.charges
    }
    /// Denied opens.
    async fn denials(&self) -> i64 {
        self.0.denials
    }
    /// Users with at least one granted open in this row, each counted once over the
    /// whole period (not a sum of daily counts).
    async fn distinct_users(&self) -> i64 {
        self.0.distinct_users
    }
    /// Money value of the tokens charged, at the unit prices of the lots they came from.
    async fn cost_minor(&self) -> i64 {
        self.0.cost_minor
    }
}

/// Where tokens and money went over a range of UTC days (both included).
#[derive(SimpleObject)]
pub struct Spending {
    /// Tokens charged.
    pub tokens: i64,
    /// Their value at the unit prices of the lots they came from.
    pub cost_minor: i64,
    pub currency: String,
    /// Tokens of the lots purchased in the range.
    pub purchased_tokens: i64,
    /// What those lots cost.
    pub purchased_minor: i64,
    /// Tokens that expired unused in the range.
    pub expired_tokens: i64,
}

impl From<reports::Spending> for Spending {
    fn from(s: reports::Spending) -> Self {
        Spending {
            tokens: s.tokens,
            cost_minor: s.cost_minor,
            currency: s.currency,
            purchased_tokens: s.purchased_tokens,
            purchased_minor: s.purchased_minor,
            expired_tokens: s.expired_tokens,
        }
    }
}

pub struct SubscriptionAdvice(pub reports::Advice);

#[Object]
impl SubscriptionAdvice {
    async fn user(&self, ctx: &Context<'_>) -> Result<User> {
        UserKey::load(ctx, self.0.user_id).await
    }
    async fn product(&self, ctx: &Context<'_>) -> Result<Product> {
        ProductKey::load(ctx, self.0.product_id).await
    }
    /// A year of pay-as-you-go at the trailing 28 days' cost (× 365 / 28, rounded up).
    async fn flex_cost_minor(&self) -> i64 {
        self.0.flex_cost_minor
    }
    /// The product's `annualSubscriptionMinor`.
    async fn subscription_cost_minor(&self) -> i64 {
        self.0.subscription_cost_minor
    }
    /// True when a subscription seat would cost less than pay-as-you-go.
    async fn recommend_subscription(&self) -> bool {
        self.0.recommend_subscription
    }
}

/// The tokens needed over the coming `horizonDays`. Method: the tokens charged over the
/// trailing 28 whole UTC days (four weeks, so weekday peaks weigh as they occur, ending
/// yesterday) scaled linearly to the horizon and rounded up. `shortfall` is what the
/// lots cannot cover: they burn earliest expiry first, and tokens of a lot count only
/// for the need that arises before it expires.
pub struct TokenForecast(pub reports::Forecast);

#[Object]
impl TokenForecast {
    async fn horizon_days(&self) -> i64 {
        self.0.horizon_days
    }
    /// Trailing 28 days' tokens × horizonDays / 28, rounded up.
    async fn expected_tokens(&self) -> i64 {
        self.0.expected_tokens
    }
    /// Tokens usable now.
    async fn balance(&self) -> i64 {
        self.0.balance
    }
    /// Expected tokens the current lots will not cover within the horizon (0 if none).
    async fn shortfall(&self) -> i64 {
        self.0.shortfall
    }
    /// Per user and product with pay-as-you-go charges in the trailing 28 days and an
    /// `annualSubscriptionMinor`: the yearly costs side by side, largest saving first.
    async fn advice(&self) -> Vec<SubscriptionAdvice> {
        self.0
            .advice
            .iter()
            .cloned()
            .map(SubscriptionAdvice)
            .collect()
    }
}
