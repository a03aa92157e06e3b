//! Arbitrary bytes as a GraphQL document (and as its variables), executed against the
//! served schema with production limits (introspection and suggestions off, the depth,
//! complexity, alias, directive and change limits). No caller: resolvers that need
//! one refuse, so nothing is written; what is fuzzed is everything before them —
//! parsing, validation, limits, variable coercion — which must answer, never panic
//! or hang.
#![no_main]

use async_graphql::{Request, Variables};
use daypass_api::graphql::AppSchema;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn schema() -> &'static AppSchema {
    static SCHEMA: OnceLock<AppSchema> = OnceLock::new();
    SCHEMA.get_or_init(|| AppSchema::build(false, true, 1200))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    // The first line may carry variables as JSON; the rest is the document.
    let text = String::from_utf8_lossy(data);
    let (first, rest) = text.split_once('\n').unwrap_or(("", &text));
    let mut request = Request::new(rest);
    if let Ok(vars) = serde_json_from(first) {
        request = request.variables(vars);
    }
    let response = runtime().block_on(schema().execute(request));
    // Every error names a code of the contract.
    for error in &response.errors {
        let code = error
            .extensions
            .as_ref()
            .and_then(|e| e.get("code"))
            .map(|c| c.to_string());
        assert!(code.is_some(), "an error without a code: {error:?}");
    }
});

fn serde_json_from(line: &str) -> Result<Variables, serde_json::Error> {
    Ok(Variables::from_json(serde_json::from_str(line)?))
}
