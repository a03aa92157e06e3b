//! The GraphQL API as a test calls it, whichever way it is served: the real binary
//! over HTTP ([`TestServer`](crate::TestServer)) or the schema in this process
//! ([`TestApp`](crate::TestApp)). Helpers written against [`Api`] run on both, so a
//! test moves from one to the other by the line that starts it.

use crate::server::OPERATOR_KEY;
use serde_json::{Value, json};
use std::future::Future;

pub trait Api: Sync {
    /// Sends a GraphQL document as the holder of `key`; returns the whole JSON
    /// answer (`data`, `errors`), as a client reads it.
    fn gql(
        &self,
        key: Option<&str>,
        query: &str,
        variables: Value,
    ) -> impl Future<Output = Value> + Send;

    /// Like [`gql`](Self::gql) but panics on errors and returns `data`.
    fn ok(
        &self,
        key: Option<&str>,
        query: &str,
        variables: Value,
    ) -> impl Future<Output = Value> + Send {
        async move {
            let resp = self.gql(key, query, variables).await;
            assert!(resp.get("errors").is_none(), "unexpected errors: {resp:#}");
            resp["data"].clone()
        }
    }

    /// The `extensions.code` of the first error.
    fn error_code(
        &self,
        key: Option<&str>,
        query: &str,
        variables: Value,
    ) -> impl Future<Output = String> + Send {
        async move {
            let resp = self.gql(key, query, variables).await;
            resp["errors"][0]["extensions"]["code"]
                .as_str()
                .unwrap_or_else(|| panic!("expected an error: {resp:#}"))
                .to_owned()
        }
    }

    /// The operator adds (or changes) a catalog product; returns its id.
    fn upsert_product(&self, code: &str, daily_rate: i64) -> impl Future<Output = String> + Send {
        async move {
            let d = self
                .ok(
                    Some(OPERATOR_KEY),
                    "mutation($c: String!, $r: Int!) {
                       upsertProduct(input: {code: $c, name: $c, dailyRate: $r}) { id }
                     }",
                    json!({"c": code, "r": daily_rate}),
                )
                .await;
            crate::json::id(&d["upsertProduct"]["id"])
        }
    }

    /// An admin adds a user; returns (user id, api key).
    fn create_user(
        &self,
        admin: &str,
        email: &str,
        name: &str,
        role: &str,
    ) -> impl Future<Output = (String, String)> + Send {
        async move {
            let d = self
                .ok(
                    Some(admin),
                    "mutation($e: String!, $n: String!, $r: Role!) {
                       createUser(input: {email: $e, name: $n, role: $r}) { user { id } apiKey }
                     }",
                    json!({"e": email, "n": name, "r": role}),
                )
                .await;
            (
                crate::json::id(&d["createUser"]["user"]["id"]),
                crate::json::id(&d["createUser"]["apiKey"]),
            )
        }
    }
}
