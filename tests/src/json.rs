//! Reading values out of GraphQL JSON answers, with a clear panic when they are not
//! what the contract says.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A `DateTime` (RFC 3339).
pub fn at(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a DateTime, got {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("{v} is not RFC 3339: {e}"))
}

/// An `Int`.
pub fn int(v: &Value) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("expected an Int, got {v}"))
}

/// An `ID`.
pub fn id(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected an ID, got {v}"))
        .to_owned()
}
