//! GraphQL output types. Each resolver reads the caller and the request's instant
//! from the context and asks `domain`; nothing here decides a rule.

use super::context::{Req, ReqRef, parse_opt_id};
use super::error::GqlResult;
use super::loaders::{ChargeKey, LotKey, ProductKey, UserKey};
use super::reports::{Date, ReportDimension, Spending, TokenForecast, UsageReportRow};
use async_graphql::{Context, Enum, ID, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use daypass_domain::{
    self as domain, accounts, catalog, entity, ledger, lots, page::Page, page::PageRequest,
    subscriptions, users,
};

macro_rules! mirror_enum {
    ($name:ident = $domain:ident { $($v:ident),+ }) => {
        #[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
        #[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($v),+ }
        impl From<domain::$domain> for $name {
            fn from(d: domain::$domain) -> Self { match d { $(domain::$domain::$v => $name::$v),+ } }
        }
        impl From<$name> for domain::$domain {
            fn from(g: $name) -> Self { match g { $($name::$v => domain::$domain::$v),+ } }
        }
    };
}

mirror_enum!(
    Role = Role {
        Admin,
        Member,
        Analyst,
        Operator
    }
);
mirror_enum!(
    PlanLevel = PlanLevel {
        Standard,
        Premium,
        Enterprise,
        Education
    }
);
mirror_enum!(
    LotStatus = LotStatus {
        Active,
        Depleted,
        Expired
    }
);
mirror_enum!(AccessSource = AccessSource { Subscription, Flex });
mirror_enum!(
    DenyReason = DenyReason {
        NotAssigned,
        ProductRestricted,
        InsufficientTokens,
        UnknownProduct,
        UserDeactivated,
        SessionEnded
    }
);
mirror_enum!(
    LedgerKind = LedgerKind {
        Purchase,
        Charge,
        Expiry,
        Adjustment,
        Refund
    }
);

/// The products of an allowed-product list (`None`: no restriction).
async fn products_of(r: &ReqRef<'_>, ids: Option<Vec<i32>>) -> Result<Option<Vec<Product>>> {
    let Some(ids) = ids else { return Ok(None) };
    let products = catalog::products_by_ids(r.db(), &ids).await.gql()?;
    Ok(Some(products.into_iter().map(Product).collect()))
}

fn parse_stored<T: std::str::FromStr<Err = domain::DomainError>>(s: &str) -> Result<T> {
    s.parse::<T>().gql()
}

#[derive(SimpleObject, Clone, Debug)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

macro_rules! connection {
    ($conn:ident, $edge:ident, $node:ty) => {
        #[derive(SimpleObject)]
        pub struct $edge {
            pub node: $node,
            pub cursor: String,
        }
        #[derive(SimpleObject)]
        pub struct $conn {
            pub edges: Vec<$edge>,
            pub page_info: PageInfo,
        }
        impl $conn {
            pub fn from_page<T>(page: Page<T>, f: impl Fn(T) -> $node) -> Self {
                let page_info = PageInfo {
                    has_next_page: page.has_next_page,
                    end_cursor: page.end_cursor(),
                };
                let edges = page
                    .items
                    .into_iter()
                    .map(|(cursor, t)| $edge { node: f(t), cursor })
                    .collect();
                $conn { edges, page_info }
            }
        }
    };
}

pub(crate) use connection;

connection!(AccountConnection, AccountEdge, Account);
connection!(TokenLotConnection, TokenLotEdge, TokenLot);
connection!(UserConnection, UserEdge, User);
connection!(LedgerEntryConnection, LedgerEntryEdge, LedgerEntry);
connection!(ChargeConnection, ChargeEdge, Charge);
connection!(NotificationConnection, NotificationEdge, Notification);

pub struct Viewer;

#[Object]
impl Viewer {
    async fn user(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let r = Req::of(ctx)?;
        Ok(users::viewer_user(r.db(), r.actor()).await.gql()?.map(User))
    }
    /// The caller's account; the operator has none.
    async fn account(&self, ctx: &Context<'_>) -> Result<Option<Account>> {
        let r = Req::of(ctx)?;
        Ok(accounts::viewer_account(r.db(), r.actor())
            .await
            .gql()?
            .map(Account))
    }
    async fn role(&self, ctx: &Context<'_>) -> Result<Role> {
        Ok(Req::of(ctx)?.actor().role().into())
    }
}

pub struct Account(pub entity::account::Model);

#[Object]
impl Account {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn plan_level(&self, ctx: &Context<'_>) -> Result<PlanLevel> {
        let r = Req::of(ctx)?;
        Ok(accounts::plan_level(r.db(), r.actor(), self.0.id, r.now)
            .await
            .gql()?
            .into())
    }
    /// Tokens usable now: the remaining tokens of unexpired lots.
    async fn balance(&self, ctx: &Context<'_>) -> Result<i64> {
        let r = Req::of(ctx)?;
        accounts::balance(r.db(), r.actor(), self.0.id, r.now)
            .await
            .map(|tokens| tokens.get())
            .gql()
    }
    async fn low_balance_threshold(&self, ctx: &Context<'_>) -> Result<i64> {
        let r = Req::of(ctx)?;
        accounts::low_balance_threshold(r.db(), r.actor(), &self.0, r.now)
            .await
            .map(|tokens| tokens.get())
            .gql()
    }
    /// Null: every catalog product is open to assigned users. Otherwise the account-wide list.
    async fn allowed_products(&self, ctx: &Context<'_>) -> Result<Option<Vec<Product>>> {
        let r = Req::of(ctx)?;
        let list = users::account_allowed_products(r.db(), r.actor(), &self.0)
            .await
            .gql()?;
        products_of(&r, list).await
    }
    async fn lots(
        &self,
        ctx: &Context<'_>,
        status: Option<LotStatus>,
        #[graphql(default_with = "Some(50)")] first: Option<i64>,
        after: Option<String>,
    ) -> Result<TokenLotConnection> {
        let r = Req::of(ctx)?;
        let page = lots::list_lots(
            r.db(),
            r.actor(),
            self.0.id,
            r.now,
            status.map(Into::into),
            PageRequest::new(first, after),
        )
        .await
        .gql()?;
        Ok(TokenLotConnection::from_page(page, TokenLot))
    }
    async fn users(
        &self,
        ctx: &Context<'_>,
        flex_assigned: Option<bool>,
        #[graphql(default_with = "Some(50)")] first: Option<i64>,
        after: Option<String>,
    ) -> Result<UserConnection> {
        let r = Req::of(ctx)?;
        let page = users::list_users(
            r.db(),
            r.actor(),
            self.0.id,
            flex_assigned,
            PageRequest::new(first, after),
        )
        .await
        .gql()?;
        Ok(UserConnection::from_page(page, User))
    }
    async fn subscriptions(&self, ctx: &Context<'_>) -> Result<Vec<ProductSubscription>> {
        let r = Req::of(ctx)?;
        let subs = subscriptions::list_subscriptions(r.db(), r.actor(), self.0.id)
            .await
            .gql()?;
        Ok(subs.into_iter().map(ProductSubscription).collect())
    }
    async fn ledger(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(50)")] first: Option<i64>,
        after: Option<String>,
    ) -> Result<LedgerEntryConnection> {
        let r = Req::of(ctx)?;
        let page =
            ledger::list_ledger(r.db(), r.actor(), self.0.id, PageRequest::new(first, after))
                .await
                .gql()?;
        Ok(LedgerEntryConnection::from_page(page, LedgerEntry))
    }
    #[allow(clippy::too_many_arguments)]
    async fn charges(
        &self,
        ctx: &Context<'_>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        user_id: Option<ID>,
        product_id: Option<ID>,
        #[graphql(default_with = "Some(50)")] first: Option<i64>,
        after: Option<String>,
    ) -> Result<ChargeConnection> {
        let r = Req::of(ctx)?;
        let filter = ledger::ChargeFilter {
            from,
            to,
            user_id: parse_opt_id(user_id.as_ref(), "userId")?,
            product_id: parse_opt_id(product_id.as_ref(), "productId")?,
        };
        let page = ledger::list_charges(
            r.db(),
            r.actor(),
            self.0.id,
            filter,
            PageRequest::new(first, after),
        )
        .await
        .gql()?;
        Ok(ChargeConnection::from_page(page, Charge))
    }
    /// Members see their own sessions only.
    async fn sessions(
        &self,
        ctx: &Context<'_>,
        state: Option<super::sessions::SessionState>,
        user_id: Option<ID>,
        #[graphql(default_with = "Some(50)")] first: Option<i64>,
        after: Option<String>,
    ) -> Result<super::sessions::SessionConnection> {
        super::sessions::account_sessions(ctx, self.0.id, state, user_id, first, after).await
    }
    /// Usage for the UTC days `from`..`to` (both included), grouped by any of the
    /// dimensions; members get their own usage only.
    async fn usage_report(
        &self,
        ctx: &Context<'_>,
        from: Date,
        to: Date,
        group_by: Vec<ReportDimension>,
        user_id: Option<ID>,
        product_id: Option<ID>,
    ) -> Result<Vec<UsageReportRow>> {
        let r = Req::of(ctx)?;
        let query = domain::reports::UsageQuery {
            from: from.0,
            to: to.0,
            group_by: group_by.into_iter().map(Into::into).collect(),
            user_id: parse_opt_id(user_id.as_ref(), "userId")?,
            product_id: parse_opt_id(product_id.as_ref(), "productId")?,
        };
        let rows = domain::reports::usage_report(r.db(), r.actor(), self.0.id, query)
            .await
            .gql()?;
        Ok(rows.into_iter().map(UsageReportRow).collect())
    }
    async fn spending(&self, ctx: &Context<'_>, from: Date, to: Date) -> Result<Spending> {
        let r = Req::of(ctx)?;
        Ok(
            domain::reports::spending(r.db(), r.actor(), self.0.id, from.0, to.0)
                .await
                .gql()?
                .into(),
        )
    }
    async fn forecast(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 90)] horizon_days: i64,
    ) -> Result<TokenForecast> {
        let r = Req::of(ctx)?;
        let f = domain::reports::forecast(r.db(), r.actor(), self.0.id, horizon_days, r.now)
            .await
            .gql()?;
        Ok(TokenForecast(f))
    }
    async fn notifications(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(50)")] first: Option<i64>,
        after: Option<String>,
    ) -> Result<NotificationConnection> {
        let r = Req::of(ctx)?;
        let page = domain::notifications::list_notifications(
            r.db(),
            r.actor(),
            self.0.id,
            PageRequest::new(first, after),
        )
        .await
        .gql()?;
        Ok(NotificationConnection::from_page(page, Notification))
    }
    async fn alert_rules(&self, ctx: &Context<'_>) -> Result<Vec<super::alerts::AlertRule>> {
        super::alerts::account_alert_rules(ctx, self.0.id).await
    }
    async fn webhook_endpoints(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<super::alerts::WebhookEndpoint>> {
        super::alerts::account_webhook_endpoints(ctx, self.0.id).await
    }
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        endpoint_id: Option<ID>,
        #[graphql(default_with = "Some(50)")] first: Option<i64>,
        after: Option<String>,
    ) -> Result<super::alerts::WebhookDeliveryConnection> {
        super::alerts::account_webhook_deliveries(ctx, self.0.id, endpoint_id, first, after).await
    }
    async fn report_subscriptions(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<super::report_subscriptions::ReportSubscription>> {
        super::report_subscriptions::account_report_subscriptions(ctx, self.0.id).await
    }
}

/// An e-mail to the account's admins, from the outbox: PENDING until sent (SENT) or
/// given up after repeated failures (DEAD).
pub struct Notification(pub entity::notification::Model);

#[Object]
impl Notification {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// LOW_BALANCE, TOKENS_EXHAUSTED or EXPIRY_REMINDER.
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn sent_at(&self) -> Option<DateTime<Utc>> {
        self.0.sent_at
    }
    async fn recipients(&self) -> Result<Vec<String>> {
        serde_json::from_str(&self.0.recipients).map_err(|e| {
            super::error::gql(domain::DomainError::Internal(format!("recipients: {e}")))
        })
    }
    /// PENDING, SENT or DEAD.
    async fn state(&self) -> &str {
        &self.0.state
    }
    /// Delivery attempts made so far.
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    /// Why the last attempt failed, if it did.
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }
}

pub struct User(pub entity::user::Model);

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn email(&self) -> &str {
        &self.0.email
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn role(&self) -> Result<Role> {
        Ok(parse_stored::<domain::Role>(&self.0.role)?.into())
    }
    async fn flex_assigned(&self) -> bool {
        self.0.flex_assigned
    }
    async fn active(&self) -> bool {
        self.0.active
    }
    /// Every user receives the account's plan.
    async fn plan_level(&self, ctx: &Context<'_>) -> Result<PlanLevel> {
        let r = Req::of(ctx)?;
        Ok(
            accounts::plan_level(r.db(), r.actor(), self.0.account_id, r.now)
                .await
                .gql()?
                .into(),
        )
    }
    /// Null: the account-wide setting applies.
    async fn allowed_products(&self, ctx: &Context<'_>) -> Result<Option<Vec<Product>>> {
        let r = Req::of(ctx)?;
        let list = users::user_allowed_products(r.db(), r.actor(), &self.0)
            .await
            .gql()?;
        products_of(&r, list).await
    }
}

pub struct Product(pub entity::product::Model);

#[Object]
impl Product {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn code(&self) -> &str {
        &self.0.code
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn daily_rate(&self) -> i64 {
        self.0.daily_rate
    }
    /// Yearly price of one subscription seat, for the pay-as-you-go against subscription advice.
    async fn annual_subscription_minor(&self) -> Option<i64> {
        self.0.annual_subscription_minor
    }
    async fn active(&self) -> bool {
        self.0.active
    }
}

pub struct TokenLot(pub lots::LotView);

#[Object]
impl TokenLot {
    async fn id(&self) -> ID {
        ID(self.0.lot.id.to_string())
    }
    async fn quantity(&self) -> i64 {
        self.0.counts.quantity
    }
    async fn remaining(&self) -> i64 {
        self.0.counts.remaining
    }
    async fn used(&self) -> i64 {
        self.0.counts.used
    }
    async fn expired(&self) -> i64 {
        self.0.counts.expired
    }
    async fn unit_price_minor(&self) -> i64 {
        self.0.lot.unit_price_minor
    }
    async fn currency(&self) -> &str {
        &self.0.lot.currency
    }
    async fn purchased_at(&self) -> DateTime<Utc> {
        self.0.lot.purchased_at
    }
    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.lot.expires_at
    }
    async fn status(&self) -> LotStatus {
        self.0.status.into()
    }
}

pub struct ProductSubscription(pub entity::subscription::Model);

#[Object]
impl ProductSubscription {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn product(&self, ctx: &Context<'_>) -> Result<Product> {
        ProductKey::load(ctx, self.0.product_id).await
    }
    async fn plan_level(&self) -> Result<PlanLevel> {
        Ok(parse_stored::<domain::PlanLevel>(&self.0.plan_level)?.into())
    }
    async fn seats(&self) -> i32 {
        self.0.seats
    }
    async fn starts_at(&self) -> DateTime<Utc> {
        self.0.starts_at
    }
    async fn ends_at(&self) -> DateTime<Utc> {
        self.0.ends_at
    }
    async fn assigned_users(&self, ctx: &Context<'_>) -> Result<Vec<User>> {
        let r = Req::of(ctx)?;
        Ok(subscriptions::assigned_users(r.db(), r.actor(), &self.0)
            .await
            .gql()?
            .into_iter()
            .map(User)
            .collect())
    }
}

/// A pay-as-you-go charge: it opened a 24-hour window. Subscription opens are not
/// charges (they count as opens in reports).
pub struct Charge(pub entity::charge::Model);

#[Object]
impl Charge {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn user(&self, ctx: &Context<'_>) -> Result<User> {
        UserKey::load(ctx, self.0.user_id).await
    }
    async fn product(&self, ctx: &Context<'_>) -> Result<Product> {
        ProductKey::load(ctx, self.0.product_id).await
    }
    async fn version(&self) -> Option<&str> {
        self.0.version.as_deref()
    }
    async fn tokens(&self) -> i64 {
        self.0.tokens
    }
    async fn cost_minor(&self) -> i64 {
        self.0.cost_minor
    }
    async fn window_starts_at(&self) -> DateTime<Utc> {
        self.0.window_starts_at
    }
    async fn window_ends_at(&self) -> DateTime<Utc> {
        self.0.window_ends_at
    }
    /// A short launch's charge given back (rule 21).
    async fn refunded(&self) -> bool {
        self.0.refunded_at.is_some()
    }
}

pub struct LedgerEntry(pub entity::ledger_entry::Model);

#[Object]
impl LedgerEntry {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn kind(&self) -> Result<LedgerKind> {
        Ok(parse_stored::<domain::LedgerKind>(&self.0.kind)?.into())
    }
    /// Signed: purchases positive, charges and expiries negative.
    async fn tokens(&self) -> i64 {
        self.0.tokens
    }
    async fn lot(&self, ctx: &Context<'_>) -> Result<TokenLot> {
        LotKey::load(ctx, self.0.lot_id).await
    }
    async fn charge(&self, ctx: &Context<'_>) -> Result<Option<Charge>> {
        match self.0.charge_id {
            Some(id) => Ok(Some(ChargeKey::load(ctx, id).await?)),
            None => Ok(None),
        }
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
}

#[derive(SimpleObject)]
pub struct PriceBand {
    pub min_quantity: i64,
    /// Null would mean no upper bound; the list always ends at its top band.
    pub max_quantity: Option<i64>,
    pub unit_price_minor: i64,
    pub self_service: bool,
}

impl From<&domain::rules::Band> for PriceBand {
    fn from(b: &domain::rules::Band) -> Self {
        PriceBand {
            min_quantity: b.min_quantity,
            max_quantity: Some(b.max_quantity),
            unit_price_minor: b.unit_price_minor,
            self_service: b.self_service(),
        }
    }
}

#[derive(SimpleObject)]
pub struct PriceQuote {
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub total_minor: i64,
    pub currency: String,
    pub self_service: bool,
}

impl From<catalog::Quote> for PriceQuote {
    fn from(q: catalog::Quote) -> Self {
        PriceQuote {
            quantity: q.quantity,
            unit_price_minor: q.unit_price_minor,
            total_minor: q.total_minor,
            currency: q.currency,
            self_service: q.self_service,
        }
    }
}

#[derive(SimpleObject)]
pub struct CreateAccountPayload {
    pub account: Account,
    pub admin: User,
    pub admin_api_key: String,
}

#[derive(SimpleObject)]
pub struct CreateUserPayload {
    pub user: User,
    pub api_key: String,
}
