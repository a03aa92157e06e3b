//! Per-key rate limits on mutations (`DAYPASS_MUTATION_RATE`): a caller may change
//! at most that many things a minute (bursts included), so a leaked or scripted key
//! cannot hammer purchases, user creation or opens. Queries are never limited. A
//! refused mutation runs no resolver: FORBIDDEN with `extensions.reason =
//! "RATE_LIMITED"` and `retryAfterSeconds`.

use super::context::Req;
use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use async_graphql::{ErrorExtensionValues, ServerError, ServerResult, Variables};
use daypass_domain::Actor;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::num::NonZeroU32;
use std::sync::Arc;

/// Callers remembered before the limiter forgets the ones that are back to full.
const FORGET_ABOVE: usize = 10_000;

#[derive(Clone)]
pub struct MutationRate {
    per_minute: u32,
    limiter: Arc<DefaultKeyedRateLimiter<i64>>,
}

impl MutationRate {
    /// `None` when `per_minute` is 0 (no limit).
    pub fn new(per_minute: u32) -> Option<MutationRate> {
        let n = NonZeroU32::new(per_minute)?;
        Some(MutationRate {
            per_minute,
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(Quota::per_minute(n))),
        })
    }
}

impl ExtensionFactory for MutationRate {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

fn changes_something(doc: &ExecutableDocument) -> bool {
    match &doc.operations {
        DocumentOperations::Single(op) => op.node.ty == OperationType::Mutation,
        // Which one runs is not known yet: a document holding any mutation counts.
        DocumentOperations::Multiple(ops) => {
            ops.values().any(|op| op.node.ty == OperationType::Mutation)
        }
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for MutationRate {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        if !changes_something(&doc) {
            return Ok(doc);
        }
        // Without a valid key the resolvers refuse anyway (UNAUTHENTICATED).
        let key = match ctx.data_opt::<Req>().and_then(|r| r.caller.as_ref()) {
            Some(Actor::User(u)) => i64::from(u.user_id),
            Some(Actor::Operator) => -1,
            None => return Ok(doc),
        };
        if self.limiter.len() > FORGET_ABOVE {
            self.limiter.retain_recent();
        }
        match self.limiter.check_key(&key) {
            Ok(()) => Ok(doc),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry_after = wait.as_secs() + 1;
                let mut err = ServerError::new(
                    format!(
                        "too many changes: at most {} mutations a minute per API key; retry in {retry_after} s",
                        self.per_minute
                    ),
                    None,
                );
                let mut ext = ErrorExtensionValues::default();
                ext.set("code", "FORBIDDEN");
                ext.set("reason", "RATE_LIMITED");
                ext.set("retryAfterSeconds", retry_after);
                err.extensions = Some(ext);
                Err(err)
            }
        }
    }
}
