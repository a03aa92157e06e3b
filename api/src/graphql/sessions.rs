//! Sessions in GraphQL: the open's answer with its session and lease, heartbeats,
//! closes and the free access check. Each resolver translates and asks `domain`.

use super::context::{Req, parse_opt_id};
use super::error::GqlResult;
use super::loaders::{ProductKey, UserKey};
use super::types::{
    AccessSource, Charge, DenyReason, PageInfo, PlanLevel, Product, User, connection,
};
use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use daypass_domain::page::Page;
use daypass_domain::page::PageRequest;
use daypass_domain::{self as domain, charging, sessions};

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum SessionState {
    Open,
    Closed,
    Lapsed,
    Denied,
}

impl From<domain::SessionState> for SessionState {
    fn from(s: domain::SessionState) -> Self {
        match s {
            domain::SessionState::Open => SessionState::Open,
            domain::SessionState::Closed => SessionState::Closed,
            domain::SessionState::Lapsed => SessionState::Lapsed,
            domain::SessionState::Denied => SessionState::Denied,
        }
    }
}

impl From<SessionState> for domain::SessionState {
    fn from(s: SessionState) -> Self {
        match s {
            SessionState::Open => domain::SessionState::Open,
            SessionState::Closed => domain::SessionState::Closed,
            SessionState::Lapsed => domain::SessionState::Lapsed,
            SessionState::Denied => domain::SessionState::Denied,
        }
    }
}

/// A launch from open to close (rule 20).
pub struct Session(pub sessions::SessionView);

#[Object]
impl Session {
    async fn id(&self) -> ID {
        ID(self.0.session.id.clone())
    }
    async fn user(&self, ctx: &Context<'_>) -> Result<User> {
        UserKey::load(ctx, self.0.session.user_id).await
    }
    async fn product(&self, ctx: &Context<'_>) -> Result<Product> {
        ProductKey::load(ctx, self.0.session.product_id).await
    }
    async fn device_id(&self) -> &str {
        &self.0.session.device_id
    }
    async fn version(&self) -> Option<&str> {
        self.0.session.version.as_deref()
    }
    async fn source(&self) -> Result<AccessSource> {
        Ok(self.0.source().gql()?.into())
    }
    async fn state(&self) -> SessionState {
        self.0.state.into()
    }
    /// True when the last heartbeat said the product was in use.
    async fn active(&self) -> bool {
        self.0.session.active
    }
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.session.started_at
    }
    async fn last_heartbeat_at(&self) -> DateTime<Utc> {
        self.0.last_heartbeat_at()
    }
    async fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.0.ended_at
    }
    /// Why a DENIED session ended (a renewal denied, the seat gone, the user
    /// deactivated).
    async fn deny_reason(&self) -> Result<Option<DenyReason>> {
        self.0
            .session
            .deny_reason
            .as_deref()
            .map(|r| Ok(r.parse::<domain::DenyReason>().gql()?.into()))
            .transpose()
    }
    /// The charges this session paid: its open's, and any renewal past 24 hours.
    async fn charges(&self, ctx: &Context<'_>) -> Result<Vec<Charge>> {
        let r = Req::of(ctx)?;
        let charges = sessions::session_charges(r.db(), &self.0.session.id)
            .await
            .gql()?;
        Ok(charges.into_iter().map(Charge).collect())
    }
}

connection!(SessionConnection, SessionEdge, Session);

/// The account's sessions (members see their own only).
pub async fn account_sessions(
    ctx: &Context<'_>,
    account_id: i32,
    state: Option<SessionState>,
    user_id: Option<ID>,
    first: Option<i64>,
    after: Option<String>,
) -> Result<SessionConnection> {
    let r = Req::of(ctx)?;
    let filter = sessions::SessionFilter {
        state: state.map(Into::into),
        user_id: parse_opt_id(user_id.as_ref(), "userId")?,
    };
    let page = sessions::list_sessions(
        r.db(),
        r.actor(),
        account_id,
        filter,
        PageRequest::new(first, after),
        r.now,
    )
    .await
    .gql()?;
    Ok(SessionConnection::from_page(page, Session))
}

#[derive(SimpleObject)]
pub struct OpenProductResult {
    pub granted: bool,
    pub source: Option<AccessSource>,
    pub tokens_charged: i64,
    pub window_ends_at: Option<DateTime<Utc>>,
    pub deny_reason: Option<DenyReason>,
    pub balance: i64,
    pub plan_level: PlanLevel,
    /// Null when denied.
    pub session: Option<Session>,
    /// A signed JWT when asked for with offline: true and granted.
    pub offline_lease: Option<String>,
}

impl OpenProductResult {
    pub fn of(o: charging::OpenOutcome, now: DateTime<Utc>) -> Result<Self> {
        Ok(OpenProductResult {
            granted: o.granted,
            source: o.source.map(Into::into),
            tokens_charged: o.tokens_charged.get(),
            window_ends_at: o.window_ends_at,
            deny_reason: o.deny_reason.map(Into::into),
            balance: o.balance.get(),
            plan_level: o.plan_level.into(),
            session: o
                .session
                .map(|s| sessions::SessionView::at(s, now).map(Session))
                .transpose()
                .gql()?,
            offline_lease: o.offline_lease,
        })
    }
}

#[derive(SimpleObject)]
pub struct HeartbeatResult {
    pub session: Session,
    /// False: the session has ended (renewal denied, seat gone, or already ended);
    /// stop the product.
    pub granted: bool,
    pub deny_reason: Option<DenyReason>,
    /// Tokens charged by this heartbeat (a renewal past the window), else 0.
    pub tokens_charged: i64,
    pub window_ends_at: Option<DateTime<Utc>>,
    pub balance: i64,
    pub offline_lease: Option<String>,
}

#[derive(SimpleObject)]
pub struct AccessCheck {
    pub granted: bool,
    pub source: Option<AccessSource>,
    pub tokens_to_charge: i64,
    pub window_ends_at: Option<DateTime<Utc>>,
    pub deny_reason: Option<DenyReason>,
    pub balance: i64,
}

#[derive(InputObject)]
pub struct HeartbeatInput {
    pub session_id: ID,
    #[graphql(default = true)]
    pub active: bool,
    #[graphql(default_with = "Some(false)")]
    pub offline: Option<bool>,
}

/// What an open would answer now, with no effect at all.
pub async fn access_check(ctx: &Context<'_>, product_code: String) -> Result<AccessCheck> {
    let r = Req::of(ctx)?;
    let c = charging::check_access(r.db(), r.actor(), r.now, &product_code)
        .await
        .gql()?;
    Ok(AccessCheck {
        granted: c.granted,
        source: c.source.map(Into::into),
        tokens_to_charge: c.tokens_to_charge.get(),
        window_ends_at: c.window_ends_at,
        deny_reason: c.deny_reason.map(Into::into),
        balance: c.balance.get(),
    })
}

/// The session mutations of the caller's launcher.
#[derive(Default)]
pub struct SessionMutation;

#[Object(name = "SessionMutation")]
impl SessionMutation {
    /// The launcher says the product still runs (every 5 minutes), in use or idle.
    async fn heartbeat(&self, ctx: &Context<'_>, input: HeartbeatInput) -> Result<HeartbeatResult> {
        let r = Req::of(ctx)?;
        let req = sessions::HeartbeatRequest {
            session_id: input.session_id.0,
            active: input.active,
            offline: input.offline.unwrap_or(false),
        };
        let o = sessions::heartbeat(r.db(), r.actor(), r.now, req)
            .await
            .gql()?;
        crate::telemetry::record_heartbeat(&o);
        Ok(HeartbeatResult {
            session: Session(o.session),
            granted: o.granted,
            deny_reason: o.deny_reason.map(Into::into),
            tokens_charged: o.tokens_charged.get(),
            window_ends_at: o.window_ends_at,
            balance: o.balance.get(),
            offline_lease: o.offline_lease,
        })
    }

    /// The product exited: the session ends (a short launch is refunded).
    async fn close_product(&self, ctx: &Context<'_>, session_id: ID) -> Result<Session> {
        let r = Req::of(ctx)?;
        let o = sessions::close_session(r.db(), r.actor(), r.now, &session_id.0)
            .await
            .gql()?;
        crate::telemetry::record_close(&o);
        Ok(Session(o.session))
    }
}
