//! What each request carries: the caller, the instant it runs at, the app's parts.

use super::error::{bad_input, gql};
use crate::state::AppState;
use async_graphql::{Context, ID, Result};
use chrono::{DateTime, Utc};
use daypass_domain::{Actor, Db, DomainError};

/// The request's caller and instant. One instant per request: every rule in one
/// request sees the same `now`.
pub struct Req {
    pub state: AppState,
    pub caller: Option<Actor>,
    pub now: DateTime<Utc>,
}

/// Borrowed view used by resolvers.
pub struct ReqRef<'a> {
    pub state: &'a AppState,
    actor: &'a Actor,
    pub now: DateTime<Utc>,
}

impl Req {
    /// The request's context; UNAUTHENTICATED without a valid key.
    pub fn of<'a>(ctx: &'a Context<'_>) -> Result<ReqRef<'a>> {
        let req = ctx
            .data::<Req>()
            .map_err(|_| gql(DomainError::Internal("request context missing".into())))?;
        let actor = req
            .caller
            .as_ref()
            .ok_or_else(|| gql(DomainError::Unauthenticated))?;
        Ok(ReqRef {
            state: &req.state,
            actor,
            now: req.now,
        })
    }
}

impl ReqRef<'_> {
    pub fn db(&self) -> &Db {
        &self.state.db
    }
    pub fn actor(&self) -> &Actor {
        self.actor
    }
}

/// Whom the per-caller limits (the mutation rate, open WebSocket connections) count
/// against: a user by id, all of their keys together, so more keys buy no more;
/// the operator as -1.
pub fn limit_key(actor: &Actor) -> i64 {
    match actor {
        Actor::User(u) => i64::from(u.user_id),
        Actor::Operator => -1,
    }
}

pub fn parse_id(id: &ID, what: &str) -> Result<i32> {
    id.parse::<i32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad_input(format!("{what}: {:?} is not a valid id", id.0)))
}

pub fn parse_opt_id(id: Option<&ID>, what: &str) -> Result<Option<i32>> {
    id.map(|id| parse_id(id, what)).transpose()
}
