//! Scheduled reports in GraphQL (rule 27): the subscriptions of an account and the
//! mutations that make and end them. Each resolver translates and asks `domain`.

use super::context::{Req, parse_id};
use super::error::GqlResult;
use super::loaders::UserKey;
use super::types::User;
use async_graphql::{Context, Enum, ID, Object, Result};
use chrono::{DateTime, Utc};
use daypass_domain::scheduled_reports::{self, ReportSubscription as Subscription};

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum ReportSchedule {
    Weekly,
    Monthly,
}

impl From<ReportSchedule> for scheduled_reports::ReportSchedule {
    fn from(s: ReportSchedule) -> Self {
        match s {
            ReportSchedule::Weekly => scheduled_reports::ReportSchedule::Weekly,
            ReportSchedule::Monthly => scheduled_reports::ReportSchedule::Monthly,
        }
    }
}

impl From<scheduled_reports::ReportSchedule> for ReportSchedule {
    fn from(s: scheduled_reports::ReportSchedule) -> Self {
        match s {
            scheduled_reports::ReportSchedule::Weekly => ReportSchedule::Weekly,
            scheduled_reports::ReportSchedule::Monthly => ReportSchedule::Monthly,
        }
    }
}

/// A usage e-mail sent every week or month to addresses of the account.
pub struct ReportSubscription(pub Subscription);

#[Object]
impl ReportSubscription {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn schedule(&self) -> ReportSchedule {
        self.0.schedule.into()
    }
    async fn recipients(&self) -> &[String] {
        &self.0.recipients
    }
    async fn created_by(&self, ctx: &Context<'_>) -> Result<User> {
        UserKey::load(ctx, self.0.created_by).await
    }
    async fn next_run_at(&self) -> DateTime<Utc> {
        self.0.next_run_at
    }
}

/// `Account.reportSubscriptions`.
pub async fn account_report_subscriptions(
    ctx: &Context<'_>,
    account_id: i32,
) -> Result<Vec<ReportSubscription>> {
    let r = Req::of(ctx)?;
    Ok(scheduled_reports::list(r.db(), r.actor(), account_id)
        .await
        .gql()?
        .into_iter()
        .map(ReportSubscription)
        .collect())
}

#[derive(Default)]
pub struct ReportSubscriptionMutation;

#[Object]
impl ReportSubscriptionMutation {
    /// Admins and analysts; recipients default to the caller's address.
    async fn subscribe_to_report(
        &self,
        ctx: &Context<'_>,
        schedule: ReportSchedule,
        recipients: Option<Vec<String>>,
    ) -> Result<ReportSubscription> {
        let r = Req::of(ctx)?;
        Ok(ReportSubscription(
            scheduled_reports::subscribe(r.db(), r.actor(), schedule.into(), recipients, r.now)
                .await
                .gql()?,
        ))
    }

    async fn unsubscribe_from_report(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let r = Req::of(ctx)?;
        let id = parse_id(&id, "report subscription")?;
        scheduled_reports::unsubscribe(r.db(), r.actor(), id)
            .await
            .gql()
    }
}
