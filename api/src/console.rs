//! The admin console: the static files of `console/`, compiled into the
//! binary and served at `/` (the page) and `/console/…` (its scripts, styles and the
//! chart library). The page calls the public GraphQL API like any other client; no
//! rule lives here.

use axum::{
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// One embedded file.
struct Asset {
    /// Its path under `/console/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../../console/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the page loads; anything else under `/console/` is a 404.
static ASSETS: [Asset; 13] = [
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", JS),
    asset!("alerts.js", JS),
    asset!("api.js", JS),
    asset!("charts.js", JS),
    asset!("sessions.js", JS),
    asset!("ui.js", JS),
    asset!("webhooks.js", JS),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("vendor/chart.umd.min.js", JS),
    asset!("vendor/LICENSE-chart.js.md", "text/markdown; charset=utf-8"),
    asset!("vendor/VERSIONS", "text/plain; charset=utf-8"),
];

/// Scripts and styles only from this server; network only to it (the WebSocket of
/// `balanceChanged` included); no frames, plugins, inline scripts or inline styles.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Files are not fingerprinted, so browsers revalidate each time; the ETag makes that
/// a 304 when nothing changed (a new binary changes the tags).
const CACHE_CONTROL: &str = "no-cache";

/// `"…"`: the first 16 bytes of the body's SHA-256, computed once per file.
fn etag(index: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    &TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..16])))
            .collect()
    })[index]
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.path == path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let asset = &ASSETS[index];
    let tag = etag(index);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(header::ETAG, HeaderValue::from_static(tag));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// `GET /`: the console's page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /console/{path}`: the page's files.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}
