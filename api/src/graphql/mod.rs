//! The GraphQL schema: the contract's roots, composed by area.

pub mod alerts;
pub mod context;
pub mod document_limits;
pub mod error;
pub mod loaders;
pub mod mutation;
pub mod parsed;
pub mod query;
pub mod rate;
pub mod report_subscriptions;
pub mod reports;
pub mod sessions;
pub mod subscription;
pub mod types;

use async_graphql::futures_util::stream::{BoxStream, StreamExt};
use async_graphql::{Data, Executor, MergedObject, Schema, SchemaBuilder};
use std::sync::Arc;
use subscription::{FreshRequestPerExecution, Subscription};

// The root mutation type, named `Mutation` as in the contract. (Plain comments:
// a doc comment here would become the type's description in the SDL.)
#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct PlainMutation(
    mutation::Mutation,
    sessions::SessionMutation,
    alerts::AlertMutation,
    report_subscriptions::ReportSubscriptionMutation,
);

pub type PlainSchema = Schema<query::Query, PlainMutation, Subscription>;

// The root with the test clock: still named `Mutation`, so clients and
// introspection see the contract's name in both modes.
#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationWithClock(
    mutation::Mutation,
    sessions::SessionMutation,
    alerts::AlertMutation,
    report_subscriptions::ReportSubscriptionMutation,
    mutation::TestClockMutation,
);

pub type ClockSchema = Schema<query::Query, MutationWithClock, Subscription>;

/// The served schema: the test-clock mutations exist only when enabled, so without
/// DAYPASS_TEST_CLOCK=1 they are absent, not merely refused.
#[derive(Clone)]
pub enum AppSchema {
    Plain(PlainSchema),
    WithClock(ClockSchema),
}

/// Limits against hostile queries, and a fresh caller and instant for every
/// execution on a WebSocket connection.
fn limited<Q, M, S>(
    b: SchemaBuilder<Q, M, S>,
    production: bool,
    mutation_rate: u32,
) -> SchemaBuilder<Q, M, S> {
    let b = b
        .extension(FreshRequestPerExecution)
        // The rate before the parsed-document cache, so a cached mutation is counted
        // too; the document limits inside the cache, on the text of a document not
        // kept yet (a kept one passed them), before async-graphql walks it; a refused
        // document spends none of the rate.
        .extension(rate::MutationRate::new(mutation_rate))
        .extension(parsed::ParsedDocuments::default())
        .extension(document_limits::DocumentLimits)
        .extension(crate::telemetry::OperationNames)
        .limit_depth(16)
        .limit_complexity(5_000)
        .limit_recursive_depth(32)
        .limit_directives(8);
    if production {
        b.disable_introspection().disable_suggestions()
    } else {
        b
    }
}

impl AppSchema {
    /// `mutation_rate`: mutations a minute per API key (0: no limit).
    pub fn build(test_clock: bool, production: bool, mutation_rate: u32) -> AppSchema {
        if test_clock {
            let b = Schema::build(query::Query, MutationWithClock::default(), Subscription);
            AppSchema::WithClock(limited(b, production, mutation_rate).finish())
        } else {
            let b = Schema::build(query::Query, PlainMutation::default(), Subscription);
            AppSchema::Plain(limited(b, production, mutation_rate).finish())
        }
    }

    pub async fn execute(&self, req: async_graphql::Request) -> async_graphql::Response {
        let resp = match self {
            AppSchema::Plain(s) => s.execute(req).await,
            AppSchema::WithClock(s) => s.execute(req).await,
        };
        error::add_missing_codes(resp)
    }

    pub fn sdl(&self) -> String {
        match self {
            AppSchema::Plain(s) => s.sdl(),
            AppSchema::WithClock(s) => s.sdl(),
        }
    }
}

/// The WebSocket transport runs operations through this: either schema, and the same
/// error codes as over POST.
impl Executor for AppSchema {
    fn execute(
        &self,
        request: async_graphql::Request,
    ) -> impl Future<Output = async_graphql::Response> + Send {
        AppSchema::execute(self, request)
    }

    fn execute_stream(
        &self,
        request: async_graphql::Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, async_graphql::Response> {
        let session_data = session_data.unwrap_or_default();
        let responses = match self {
            AppSchema::Plain(s) => s.execute_stream_with_session_data(request, session_data),
            AppSchema::WithClock(s) => s.execute_stream_with_session_data(request, session_data),
        };
        responses.map(error::add_missing_codes).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::AppSchema;

    /// The committed SDL is what clients read; regenerate it with
    /// `cargo run -q -- schema > api/schema.graphql` when the schema changes on purpose.
    #[test]
    fn committed_sdl_matches_the_served_schema() {
        let served = AppSchema::build(false, false, 0).sdl();
        let committed = include_str!("../../schema.graphql");
        assert!(
            served == committed,
            "api/schema.graphql is stale: regenerate it with `cargo run -q -- schema > api/schema.graphql`"
        );
    }

    #[test]
    fn test_clock_mutations_exist_only_when_enabled() {
        let plain = AppSchema::build(false, false, 0).sdl();
        let clock = AppSchema::build(true, false, 0).sdl();
        assert!(!plain.contains("advanceClock") && !plain.contains("runMaintenance"));
        assert!(
            clock.contains("advanceClock(hours: Int!, minutes: Int = 0): DateTime!")
                && clock.contains("runMaintenance: Boolean!")
        );
    }
}
