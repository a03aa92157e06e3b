//! Parsed documents, kept by their text: clients send the same few operations over
//! and over (an editor's `openProduct` at every start), and parsing one costs more
//! than executing it. Validation and limits still run on every request; only the
//! text-to-tree step is skipped.

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{ServerResult, Variables};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Documents longer than this are parsed every time (and never kept).
const MAX_KEPT_LEN: usize = 16 * 1024;
/// How many documents are kept; when full, the cache starts over.
const MAX_KEPT: usize = 512;

#[derive(Default, Clone)]
pub struct ParsedDocuments {
    kept: Arc<Mutex<HashMap<Arc<str>, ExecutableDocument>>>,
}

impl ExtensionFactory for ParsedDocuments {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for ParsedDocuments {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        if query.len() > MAX_KEPT_LEN {
            return next.run(ctx, query, variables).await;
        }
        if let Some(doc) = self.kept.lock().expect("parsed documents").get(query) {
            return Ok(doc.clone());
        }
        let doc = next.run(ctx, query, variables).await?;
        let mut kept = self.kept.lock().expect("parsed documents");
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(Arc::from(query), doc.clone());
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{EmptyMutation, EmptySubscription, Object, Request, Schema};

    struct Query;

    #[Object]
    impl Query {
        async fn answer(&self, plus: i32) -> i32 {
            42 + plus
        }
    }

    #[tokio::test]
    async fn a_kept_document_answers_as_a_fresh_one_and_bad_ones_are_not_kept() {
        let cache = ParsedDocuments::default();
        let schema = Schema::build(Query, EmptyMutation, EmptySubscription)
            .extension(cache.clone())
            .finish();
        let query = "query Q($p: Int!) { answer(plus: $p) }";
        for p in [1, 2] {
            let req =
                Request::new(query).variables(Variables::from_json(serde_json::json!({ "p": p })));
            let resp = schema.execute(req).await;
            assert!(resp.errors.is_empty(), "{:?}", resp.errors);
            assert_eq!(
                resp.data.into_json().unwrap(),
                serde_json::json!({ "answer": 42 + p })
            );
        }
        assert_eq!(cache.kept.lock().unwrap().len(), 1);
        // A document that does not parse is refused every time and never kept.
        for _ in 0..2 {
            let resp = schema.execute("{ answer(plus: ").await;
            assert!(!resp.errors.is_empty());
        }
        // One that parses but does not validate is kept, and still refused.
        for _ in 0..2 {
            let resp = schema.execute("{ nope }").await;
            assert!(!resp.errors.is_empty());
        }
        assert_eq!(cache.kept.lock().unwrap().len(), 2);
    }
}
