//! Limits on the size of a document, checked on its text before async-graphql parses
//! it for execution, validates it or runs it:
//! - at most [`MAX_ALIASES`] aliases: an alias makes a field answer once more, and
//!   some fields cost nothing in the complexity count (`__typename`), so 5,000
//!   `__typename` aliases were answered in full;
//! - at most [`MAX_SELECTIONS`] field selections once fragment spreads are
//!   expanded: a document of a few hundred bytes whose fragments each spread the
//!   next twice asks for millions, and async-graphql's own recursion check,
//!   validation and execution walk every one of them (seconds of CPU per request).
//!
//! Both are counted with each fragment counted once and remembered, so counting
//! costs what the text costs. The check runs inside the parsed-document cache, on a
//! miss: a kept document passed it when it was kept, and a refused one is never
//! kept. The same schema serves POST and WebSocket, so both are limited.

use super::rate::refusal;
use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::parse_query;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Name, ServerResult, Variables};
use std::collections::HashMap;
use std::sync::Arc;

/// The most aliases one document may hold. Honest documents hold a handful (the
/// console at most three); a request may make 16 changes, which takes 16 aliases
/// when they are the same mutation; 100 leaves room for scripts that ask for a few
/// dozen quotes or accounts at once.
pub const MAX_ALIASES: usize = 100;

/// The most field selections one document may ask for, fragments expanded: the
/// complexity limit's number, which no honest document reaches (the console's
/// largest asks for about a hundred).
pub const MAX_SELECTIONS: usize = 5_000;

/// Fragments spread inside fragments deeper than this count nothing more. The
/// schema's recursion limit (32) refuses such documents anyway; this only bounds
/// the walk.
const MAX_SPREAD_DEPTH: usize = 64;

#[derive(Clone, Copy, Default)]
pub struct DocumentLimits;

impl ExtensionFactory for DocumentLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DocumentLimits)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for DocumentLimits {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // A document that does not parse gets async-graphql's own error below.
        if let Ok(doc) = parse_query(query) {
            let asked = asked(&doc);
            if asked.aliases > MAX_ALIASES {
                return Err(too_big(format!(
                    "a document may hold at most {MAX_ALIASES} aliases; this one asks for {}",
                    asked.aliases
                )));
            }
            if asked.selections > MAX_SELECTIONS {
                return Err(too_big(format!(
                    "a document may ask for at most {MAX_SELECTIONS} fields, fragments expanded; \
                     this one asks for {}",
                    asked.selections
                )));
            }
        }
        next.run(ctx, query, variables).await
    }
}

fn too_big(message: String) -> async_graphql::ServerError {
    refusal(message, "BAD_USER_INPUT", &[])
}

/// What a document asks for, over every operation (which one runs is not known yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    pub aliases: usize,
    /// Field selections, a fragment's counted at each place it is spread.
    pub selections: usize,
}

impl Asked {
    fn plus(self, o: Asked) -> Asked {
        Asked {
            aliases: self.aliases.saturating_add(o.aliases),
            selections: self.selections.saturating_add(o.selections),
        }
    }
}

/// A fragment of 50 aliases spread 100 times counts 5,000. Each fragment is counted
/// once and remembered, so a fragment that spreads another many times over costs no
/// more than its text.
pub fn asked(doc: &ExecutableDocument) -> Asked {
    let mut fragments = HashMap::new();
    doc.operations
        .iter()
        .map(|(_, op)| asked_in(doc, &op.node.selection_set.node, &mut fragments, 0))
        .fold(Asked::default(), Asked::plus)
}

fn asked_in<'d>(
    doc: &'d ExecutableDocument,
    set: &'d SelectionSet,
    fragments: &mut HashMap<&'d Name, Asked>,
    spread_depth: usize,
) -> Asked {
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(field) => Asked {
                aliases: usize::from(field.node.alias.is_some()),
                selections: 1,
            }
            .plus(asked_in(
                doc,
                &field.node.selection_set.node,
                fragments,
                spread_depth,
            )),
            Selection::InlineFragment(inline) => asked_in(
                doc,
                &inline.node.selection_set.node,
                fragments,
                spread_depth,
            ),
            Selection::FragmentSpread(spread) => fragment_asks(
                doc,
                &spread.node.fragment_name.node,
                fragments,
                spread_depth,
            ),
        })
        .fold(Asked::default(), Asked::plus)
}

/// A fragment's asks, its own spreads expanded; an unknown fragment, or one that
/// spreads itself, counts nothing here (validation refuses both).
fn fragment_asks<'d>(
    doc: &'d ExecutableDocument,
    name: &'d Name,
    fragments: &mut HashMap<&'d Name, Asked>,
    spread_depth: usize,
) -> Asked {
    if let Some(known) = fragments.get(name) {
        return *known;
    }
    let Some(fragment) = doc.fragments.get(name) else {
        return Asked::default();
    };
    if spread_depth >= MAX_SPREAD_DEPTH {
        return Asked::default();
    }
    // Counted as nothing while it is being counted: a cycle ends here.
    fragments.insert(name, Asked::default());
    let n = asked_in(
        doc,
        &fragment.node.selection_set.node,
        fragments,
        spread_depth + 1,
    );
    fragments.insert(name, n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graphql::AppSchema;
    use async_graphql::parser::parse_query;

    fn count(doc: &str) -> usize {
        asked(&parse_query(doc).expect("parses")).aliases
    }

    fn selections(doc: &str) -> usize {
        asked(&parse_query(doc).expect("parses")).selections
    }

    fn typenames(n: usize) -> String {
        (0..n).map(|i| format!("a{i}: __typename ")).collect()
    }

    #[test]
    fn aliases_are_counted_in_every_operation_and_at_every_spread() {
        assert_eq!(count("{ viewer { role } products { id name } }"), 0);
        assert_eq!(count("{ a: viewer { r: role } b: __typename }"), 3);
        assert_eq!(
            count("query A { x: __typename } query B { y: __typename z: __typename }"),
            3
        );
        assert_eq!(
            count("{ ... on Query { x: __typename ... on Query { y: __typename } } }"),
            2
        );
        // A fragment of two aliases spread three times, one spread inside another.
        assert_eq!(
            count(
                "{ ...F viewer { ...G } account { ...G } }
                 fragment F on Query { p: __typename q: __typename }
                 fragment G on Viewer { ...F2 }
                 fragment F2 on Viewer { p: __typename q: __typename }"
            ),
            6
        );
    }

    #[test]
    fn a_fragment_bomb_is_counted_without_expanding_it() {
        // Each fragment spreads the next twice: 2^30 spreads of two aliases.
        let mut doc = String::from("{ ...F0 }\n");
        for i in 0..30 {
            doc += &format!("fragment F{i} on Query {{ ...F{n} ...F{n} }}\n", n = i + 1);
        }
        doc += "fragment F30 on Query { a: __typename b: __typename }\n";
        assert_eq!(count(&doc), 2 << 30);
        assert_eq!(selections(&doc), 2 << 30);
        assert_eq!(selections("{ viewer { role } a: products { id name } }"), 5);
        // A cycle (refused by validation) ends the count instead of looping.
        assert_eq!(
            count(
                "{ ...A } fragment A on Query { x: __typename ...B } fragment B on Query { ...A }"
            ),
            1
        );
    }

    async fn answer(schema: &AppSchema, query: &str) -> async_graphql::Response {
        schema.execute(async_graphql::Request::new(query)).await
    }

    #[tokio::test]
    async fn the_served_schema_refuses_a_document_over_the_limit_even_from_the_cache() {
        let schema = AppSchema::build(false, true, 0);
        let at_limit = format!("{{ {} }}", typenames(MAX_ALIASES));
        let over = format!("{{ {} }}", typenames(MAX_ALIASES + 1));
        // Twice each: the second time the parsed document comes from the cache.
        for _ in 0..2 {
            let resp = answer(&schema, &at_limit).await;
            assert!(resp.errors.is_empty(), "{:?}", resp.errors);
            let data = resp.data.into_json().unwrap();
            assert_eq!(data.as_object().unwrap().len(), MAX_ALIASES);

            let resp = answer(&schema, &over).await;
            assert_eq!(resp.errors.len(), 1, "{:?}", resp.errors);
            let err = &resp.errors[0];
            assert!(
                err.message.contains("at most 100 aliases"),
                "{}",
                err.message
            );
            assert!(err.message.contains("101"), "{}", err.message);
            let code = err.extensions.as_ref().and_then(|e| e.get("code")).cloned();
            assert_eq!(code, Some(async_graphql::Value::from("BAD_USER_INPUT")));
            assert_eq!(resp.data, async_graphql::Value::Null);
        }
    }
}
