//! Alert rules, webhook endpoints and their delivery log in GraphQL (rules 25 and
//! 26). Each resolver translates and asks `domain`.

use super::context::{Req, parse_id, parse_opt_id};
use super::error::GqlResult;
use super::types::{PageInfo, connection};
use async_graphql::{Context, Enum, ID, InputObject, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use daypass_domain::alerts::{self, AlertRuleView};
use daypass_domain::page::{Page, PageRequest};
use daypass_domain::webhooks::{self, DeliveryView, EndpointChange, EndpointView};

macro_rules! mirror_enum {
    ($name:ident = $domain:path { $($variant:ident),+ $(,)? }) => {
        #[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
        #[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($variant),+ }
        impl From<$domain> for $name {
            fn from(v: $domain) -> Self {
                match v { $(<$domain>::$variant => $name::$variant),+ }
            }
        }
        impl From<$name> for $domain {
            fn from(v: $name) -> Self {
                match v { $($name::$variant => <$domain>::$variant),+ }
            }
        }
    };
}

mirror_enum!(AlertUnit = alerts::AlertUnit { Tokens, Percent });
mirror_enum!(
    WebhookEvent = webhooks::WebhookEvent {
        BalanceLow,
        TokensExhausted,
        LotExpiring,
        LotExpired,
        PurchaseCompleted,
        ChargeRefunded,
        BudgetReached,
        Test,
    }
);
mirror_enum!(
    DeliveryState = webhooks::DeliveryState {
        Pending,
        Delivered,
        Failed,
        Dead
    }
);

/// A threshold beside the account's low-balance threshold, with its recipients
/// (rule 25). `armed`: the balance is at or above it, so the next charge that takes
/// it below sends.
pub struct AlertRule(pub AlertRuleView);

#[Object]
impl AlertRule {
    async fn id(&self) -> ID {
        ID(self.0.rule.id.to_string())
    }
    async fn threshold(&self) -> i64 {
        self.0.rule.setting
    }
    async fn unit(&self) -> AlertUnit {
        self.0.rule.unit.into()
    }
    async fn include_admins(&self) -> bool {
        self.0.rule.include_admins
    }
    async fn extra_recipients(&self) -> &[String] {
        &self.0.rule.extra_recipients
    }
    async fn armed(&self) -> bool {
        self.0.armed
    }
}

/// An HTTP(S) address that receives the account's events (rule 26).
pub struct WebhookEndpoint(pub EndpointView);

#[Object]
impl WebhookEndpoint {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn url(&self) -> &str {
        &self.0.url
    }
    async fn events(&self) -> Vec<WebhookEvent> {
        self.0.events.iter().map(|e| (*e).into()).collect()
    }
    async fn enabled(&self) -> bool {
        self.0.enabled
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn disabled_reason(&self) -> Option<&str> {
        self.0.disabled_reason.as_deref()
    }
}

#[derive(SimpleObject)]
pub struct CreateWebhookPayload {
    pub endpoint: WebhookEndpoint,
    /// Shown once.
    pub secret: String,
}

#[derive(SimpleObject)]
pub struct WebhookAttempt {
    pub at: DateTime<Utc>,
    pub status: Option<i32>,
    pub error: Option<String>,
}

/// One event on its way to one endpoint, with every attempt.
pub struct WebhookDelivery(pub DeliveryView);

#[Object]
impl WebhookDelivery {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn endpoint(&self) -> WebhookEndpoint {
        WebhookEndpoint(self.0.endpoint.clone())
    }
    async fn event(&self) -> WebhookEvent {
        self.0.event.into()
    }
    /// The exact body that was (or will be) POSTed.
    async fn payload(&self) -> Json<&serde_json::Value> {
        Json(&self.0.payload)
    }
    async fn state(&self) -> DeliveryState {
        self.0.state.into()
    }
    async fn attempts(&self) -> Vec<WebhookAttempt> {
        self.0
            .attempts
            .iter()
            .map(|a| WebhookAttempt {
                at: a.at,
                status: a.status,
                error: a.error.clone(),
            })
            .collect()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn delivered_at(&self) -> Option<DateTime<Utc>> {
        self.0.delivered_at
    }
}

connection!(
    WebhookDeliveryConnection,
    WebhookDeliveryEdge,
    WebhookDelivery
);

/// `Account.alertRules`.
pub async fn account_alert_rules(ctx: &Context<'_>, account_id: i32) -> Result<Vec<AlertRule>> {
    let r = Req::of(ctx)?;
    Ok(
        alerts::list_alert_rules(r.db(), r.actor(), account_id, r.now)
            .await
            .gql()?
            .into_iter()
            .map(AlertRule)
            .collect(),
    )
}

/// `Account.webhookEndpoints`.
pub async fn account_webhook_endpoints(
    ctx: &Context<'_>,
    account_id: i32,
) -> Result<Vec<WebhookEndpoint>> {
    let r = Req::of(ctx)?;
    Ok(webhooks::list_endpoints(r.db(), r.actor(), account_id)
        .await
        .gql()?
        .into_iter()
        .map(WebhookEndpoint)
        .collect())
}

/// `Account.webhookDeliveries`.
pub async fn account_webhook_deliveries(
    ctx: &Context<'_>,
    account_id: i32,
    endpoint_id: Option<ID>,
    first: Option<i64>,
    after: Option<String>,
) -> Result<WebhookDeliveryConnection> {
    let r = Req::of(ctx)?;
    let endpoint_id = parse_opt_id(endpoint_id.as_ref(), "webhook endpoint")?;
    let page: Page<DeliveryView> = webhooks::list_deliveries(
        r.db(),
        r.actor(),
        account_id,
        endpoint_id,
        PageRequest::new(first, after),
    )
    .await
    .gql()?;
    Ok(WebhookDeliveryConnection::from_page(page, WebhookDelivery))
}

#[derive(InputObject)]
pub struct AlertRuleInput {
    pub threshold: i64,
    pub unit: AlertUnit,
    #[graphql(default_with = "Some(true)")]
    pub include_admins: Option<bool>,
    #[graphql(default_with = "Some(Vec::new())")]
    pub extra_recipients: Option<Vec<String>>,
}

#[derive(InputObject)]
pub struct WebhookEndpointInput {
    pub url: String,
    pub events: Vec<WebhookEvent>,
}

fn events_of(events: &[WebhookEvent]) -> Vec<webhooks::WebhookEvent> {
    events.iter().map(|e| (*e).into()).collect()
}

#[derive(Default)]
pub struct AlertMutation;

#[Object]
impl AlertMutation {
    /// Admins (operators name the account): a threshold beside the low-balance one.
    async fn create_alert_rule(
        &self,
        ctx: &Context<'_>,
        input: AlertRuleInput,
        account_id: Option<ID>,
    ) -> Result<AlertRule> {
        let r = Req::of(ctx)?;
        let account_id = parse_opt_id(account_id.as_ref(), "account")?;
        let view = alerts::create_alert_rule(
            r.db(),
            r.actor(),
            account_id,
            alerts::NewAlertRule {
                threshold: input.threshold,
                unit: input.unit.into(),
                include_admins: input.include_admins.unwrap_or(true),
                extra_recipients: input.extra_recipients.unwrap_or_default(),
            },
            r.now,
        )
        .await
        .gql()?;
        Ok(AlertRule(view))
    }

    async fn delete_alert_rule(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let r = Req::of(ctx)?;
        let id = parse_id(&id, "alert rule")?;
        alerts::delete_alert_rule(r.db(), r.actor(), id).await.gql()
    }

    /// Admins (operators name the account). The secret is shown here only.
    async fn create_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: WebhookEndpointInput,
        account_id: Option<ID>,
    ) -> Result<CreateWebhookPayload> {
        let r = Req::of(ctx)?;
        let account_id = parse_opt_id(account_id.as_ref(), "account")?;
        let (endpoint, secret) = webhooks::create_endpoint(
            r.db(),
            r.actor(),
            account_id,
            &input.url,
            &events_of(&input.events),
            r.now,
        )
        .await
        .gql()?;
        Ok(CreateWebhookPayload {
            endpoint: WebhookEndpoint(endpoint),
            secret,
        })
    }

    async fn update_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        id: ID,
        url: Option<String>,
        events: Option<Vec<WebhookEvent>>,
        enabled: Option<bool>,
    ) -> Result<WebhookEndpoint> {
        let r = Req::of(ctx)?;
        let id = parse_id(&id, "webhook endpoint")?;
        let change = EndpointChange {
            url,
            events: events.as_deref().map(events_of),
            enabled,
        };
        Ok(WebhookEndpoint(
            webhooks::update_endpoint(r.db(), r.actor(), id, change)
                .await
                .gql()?,
        ))
    }

    async fn delete_webhook_endpoint(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let r = Req::of(ctx)?;
        let id = parse_id(&id, "webhook endpoint")?;
        webhooks::delete_endpoint(r.db(), r.actor(), id).await.gql()
    }

    /// A new secret, shown once; the old one keeps signing for 24 hours.
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<CreateWebhookPayload> {
        let r = Req::of(ctx)?;
        let id = parse_id(&id, "webhook endpoint")?;
        let (endpoint, secret) = webhooks::rotate_secret(r.db(), r.actor(), id, r.now)
            .await
            .gql()?;
        Ok(CreateWebhookPayload {
            endpoint: WebhookEndpoint(endpoint),
            secret,
        })
    }

    /// A TEST event to the endpoint, whatever event types it takes.
    async fn send_test_webhook(
        &self,
        ctx: &Context<'_>,
        endpoint_id: ID,
    ) -> Result<WebhookDelivery> {
        let r = Req::of(ctx)?;
        let id = parse_id(&endpoint_id, "webhook endpoint")?;
        Ok(WebhookDelivery(
            webhooks::send_test_event(r.db(), r.actor(), id, r.now)
                .await
                .gql()?,
        ))
    }

    /// Sends the delivery's event again, with the same `webhook-id`.
    async fn replay_webhook_delivery(&self, ctx: &Context<'_>, id: ID) -> Result<WebhookDelivery> {
        let r = Req::of(ctx)?;
        let id = parse_id(&id, "webhook delivery")?;
        Ok(WebhookDelivery(
            webhooks::replay_delivery(r.db(), r.actor(), id, r.now)
                .await
                .gql()?,
        ))
    }
}
