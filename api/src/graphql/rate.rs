//! Limits on changes, checked before any resolver runs:
//! - a document changes at most [`MAX_CHANGES_PER_REQUEST`] things (root mutation
//!   fields, aliases and fragments counted): otherwise 2,000 aliases of one mutation
//!   would run 2,000 changes in one request (BAD_USER_INPUT);
//! - per key, at most `DAYPASS_MUTATION_RATE` changes a minute (bursts included), so
//!   a leaked or scripted key cannot hammer purchases, user creation or opens:
//!   FORBIDDEN with `extensions.reason = "RATE_LIMITED"` and `retryAfterSeconds`.
//!
//! Queries are never limited here (depth and complexity are the schema's limits,
//! aliases [`super::document_limits`]'s).

use super::context::{Req, limit_key};
use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::{ErrorExtensionValues, ServerError, ServerResult, Variables};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::num::NonZeroU32;
use std::sync::Arc;

/// Callers remembered before the limiter forgets the ones that are back to full.
const FORGET_ABOVE: usize = 10_000;

/// The most root mutation fields one document may hold.
pub const MAX_CHANGES_PER_REQUEST: usize = 16;

#[derive(Clone)]
pub struct MutationRate {
    per_minute: u32,
    /// `None`: no per-key limit (`DAYPASS_MUTATION_RATE=0`).
    limiter: Option<Arc<DefaultKeyedRateLimiter<i64>>>,
}

impl MutationRate {
    /// `per_minute` 0: no per-key limit (the per-request one stays).
    pub fn new(per_minute: u32) -> MutationRate {
        MutationRate {
            per_minute,
            limiter: NonZeroU32::new(per_minute)
                .map(|n| Arc::new(DefaultKeyedRateLimiter::keyed(Quota::per_minute(n)))),
        }
    }
}

impl ExtensionFactory for MutationRate {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

/// Root fields of a selection set, through inline fragments and fragment spreads
/// (a spread is expanded at most `depth` times deep: the schema's limits refuse deeper
/// documents anyway).
fn root_fields(doc: &ExecutableDocument, set: &SelectionSet, depth: usize) -> usize {
    if depth == 0 {
        return MAX_CHANGES_PER_REQUEST + 1;
    }
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(f) => root_fields(doc, &f.node.selection_set.node, depth - 1),
            Selection::FragmentSpread(spread) => doc
                .fragments
                .get(&spread.node.fragment_name.node)
                .map_or(0, |f| {
                    root_fields(doc, &f.node.selection_set.node, depth - 1)
                }),
        })
        .fold(0, usize::saturating_add)
}

/// How many changes the document asks for: the root fields of its mutations (which
/// one runs is not known yet, so every mutation of the document counts).
fn changes_asked(doc: &ExecutableDocument) -> usize {
    let mutations: Vec<&SelectionSet> = match &doc.operations {
        DocumentOperations::Single(op) => vec![&op.node],
        DocumentOperations::Multiple(ops) => ops.values().map(|op| &op.node).collect(),
    }
    .into_iter()
    .filter(|op| op.ty == OperationType::Mutation)
    .map(|op| &op.selection_set.node)
    .collect();
    mutations
        .into_iter()
        .map(|set| root_fields(doc, set, 32))
        .fold(0, usize::saturating_add)
}

/// A refusal before anything runs: `message` with `extensions.code` and `extra`.
pub(super) fn refusal(
    message: String,
    code: &str,
    extra: &[(&str, async_graphql::Value)],
) -> ServerError {
    let mut err = ServerError::new(message, None);
    let mut ext = ErrorExtensionValues::default();
    ext.set("code", code);
    for (k, v) in extra {
        ext.set(*k, v.clone());
    }
    err.extensions = Some(ext);
    err
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
        let changes = changes_asked(&doc);
        if changes == 0 {
            return Ok(doc);
        }
        if changes > MAX_CHANGES_PER_REQUEST {
            return Err(refusal(
                format!(
                    "a request may make at most {MAX_CHANGES_PER_REQUEST} changes (root mutation fields); this one asks for {changes}"
                ),
                "BAD_USER_INPUT",
                &[],
            ));
        }
        let Some(limiter) = &self.limiter else {
            return Ok(doc);
        };
        // Without a valid key the resolvers refuse anyway (UNAUTHENTICATED).
        let Some(key) = ctx
            .data_opt::<Req>()
            .and_then(|r| r.caller.as_ref())
            .map(limit_key)
        else {
            return Ok(doc);
        };
        if limiter.len() > FORGET_ABOVE {
            limiter.retain_recent();
        }
        let n = NonZeroU32::new(changes as u32).unwrap_or(NonZeroU32::MIN);
        let wait = match limiter.check_key_n(&key, n) {
            Ok(Ok(())) => return Ok(doc),
            Ok(Err(not_until)) => not_until.wait_time_from(DefaultClock::default().now()),
            // More changes than the whole burst: never possible for this key.
            Err(_) => std::time::Duration::from_secs(60),
        };
        let retry_after = wait.as_secs() + 1;
        Err(refusal(
            format!(
                "too many changes: at most {} mutations a minute per API key; retry in {retry_after} s",
                self.per_minute
            ),
            "FORBIDDEN",
            &[
                ("reason", "RATE_LIMITED".into()),
                ("retryAfterSeconds", retry_after.into()),
            ],
        ))
    }
}
