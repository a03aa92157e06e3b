//! Relay-style pages over an increasing (or decreasing) integer id.

use crate::error::{DomainError, Result};
use base64::Engine;

pub const MAX_PAGE: i64 = 500;

/// What a caller asks for: at most `first` items after the cursor `after`.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub first: Option<i64>,
    pub after: Option<String>,
}

impl PageRequest {
    pub fn new(first: Option<i64>, after: Option<String>) -> Self {
        Self { first, after }
    }

    /// The number of items to return, 0..=500 (default 50).
    pub fn limit(&self) -> Result<u64> {
        match self.first.unwrap_or(50) {
            n if (0..=MAX_PAGE).contains(&n) => Ok(n as u64),
            n => Err(DomainError::bad_input(format!(
                "`first` must be between 0 and {MAX_PAGE}, not {n}"
            ))),
        }
    }

    /// The id the page starts after, if any.
    pub fn after_id(&self) -> Result<Option<i32>> {
        self.after.as_deref().map(decode_cursor).transpose()
    }
}

pub fn encode_cursor(id: i32) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("c:{id}"))
}

pub fn decode_cursor(cursor: &str) -> Result<i32> {
    let bad = || DomainError::bad_input(format!("invalid cursor {cursor:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.strip_prefix("c:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)
}

/// One page of items, each with its cursor.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<(String, T)>,
    pub has_next_page: bool,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` fetched rows (the extra row tells whether
    /// there is a next page).
    pub fn from_rows(mut rows: Vec<T>, limit: u64, id_of: impl Fn(&T) -> i32) -> Self {
        let has_next_page = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        Page {
            items: rows
                .into_iter()
                .map(|r| (encode_cursor(id_of(&r)), r))
                .collect(),
            has_next_page,
        }
    }

    pub fn end_cursor(&self) -> Option<String> {
        self.items.last().map(|(c, _)| c.clone())
    }

    pub fn map<U>(self, f: impl Fn(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(|(c, t)| (c, f(t))).collect(),
            has_next_page: self.has_next_page,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        assert!(decode_cursor("not-a-cursor").is_err());
        assert!(PageRequest::new(Some(501), None).limit().is_err());
        assert!(PageRequest::new(Some(-1), None).limit().is_err());
    }
}
