//! A real HTTP receiver of webhooks on loopback: it records every POST (to any
//! path), answers with the status the test sets (after an optional delay), and
//! checks signatures with the Standard Webhooks reference implementation (the
//! `standardwebhooks` crate), not with the sender's own code. `GET /received` lists
//! what it kept as JSON, for a browser test to check with the secret a page showed.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: String,
    pub headers: HeaderMap,
    /// The status the receiver answered (or was about to, if the sender hung up).
    pub answered: u16,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body {:?}: {e}", self.body))
    }

    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    /// Verifies the signature under `secret` as a receiver would, timestamp
    /// tolerance included (the reference implementation's `verify`).
    pub fn verify(&self, secret: &str) -> Result<(), String> {
        let wh = standardwebhooks::Webhook::new(secret).map_err(|e| e.to_string())?;
        wh.verify(self.body.as_bytes(), &self.headers)
            .map_err(|e| e.to_string())
    }

    /// Verifies the signature under `secret` whatever the timestamp (for a service
    /// whose test clock was moved ahead of the receiver's): the reference
    /// implementation signs `id.timestamp.body` and one of the header's signatures
    /// must equal it.
    pub fn verify_ignoring_time(&self, secret: &str) -> Result<(), String> {
        let wh = standardwebhooks::Webhook::new(secret).map_err(|e| e.to_string())?;
        let expected = wh
            .sign(&self.id, self.timestamp, self.body.as_bytes())
            .map_err(|e| e.to_string())?;
        if self.signature.split(' ').any(|s| s == expected) {
            Ok(())
        } else {
            Err(format!(
                "no signature in {:?} matches {expected}",
                self.signature
            ))
        }
    }
}

struct Shared {
    received: Mutex<Vec<Received>>,
    status: AtomicU16,
    delay_ms: AtomicU64,
    /// A body containing this is answered 400, whatever the status set.
    refuse_containing: Mutex<Option<String>>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
    arrived: tokio::sync::Notify,
}

pub struct WebhookReceiver {
    /// Where to point an endpoint: `http://127.0.0.1:<port>/hooks`.
    pub url: String,
    base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// `GET /received`: every request kept, as `[{method, path, headers, body}]`.
async fn list(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    let kept = shared.received.lock().unwrap().clone();
    axum::Json(Value::Array(
        kept.iter()
            .map(|r| {
                let headers: serde_json::Map<String, Value> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or_default())))
                    .collect();
                json!({"method": "POST", "path": r.path, "headers": headers, "body": r.body})
            })
            .collect(),
    ))
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let refused = shared
        .refuse_containing
        .lock()
        .unwrap()
        .as_deref()
        .is_some_and(|needle| body_text.contains(needle));
    let answered = if refused {
        400
    } else {
        shared.status.load(Ordering::SeqCst)
    };
    shared.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp").parse().unwrap_or_default(),
        signature: header("webhook-signature"),
        body: body_text,
        headers: headers.clone(),
        answered,
        at: Instant::now(),
    });
    shared.arrived.notify_waiters();
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.most_in_flight.fetch_max(now, Ordering::SeqCst);
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    StatusCode::from_u16(answered).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl WebhookReceiver {
    /// A receiver answering 204 at once.
    pub async fn start() -> WebhookReceiver {
        let shared = Arc::new(Shared {
            received: Mutex::default(),
            status: AtomicU16::new(204),
            delay_ms: AtomicU64::new(0),
            refuse_containing: Mutex::default(),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
            arrived: tokio::sync::Notify::new(),
        });
        let app = Router::new()
            .route("/received", get(list))
            .fallback(axum::routing::post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        WebhookReceiver {
            base_url: format!("http://127.0.0.1:{port}"),
            url: format!("http://127.0.0.1:{port}/hooks"),
            shared,
            server,
        }
    }

    /// The address of `path` on this receiver (any path takes POSTs).
    pub fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The status every later request is answered with (e.g. 503: down).
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Answers 400 to every body containing `needle` (a receiver that keeps
    /// rejecting one event).
    pub fn refuse_containing(&self, needle: &str) {
        *self.shared.refuse_containing.lock().unwrap() = Some(needle.to_owned());
    }

    /// How long the receiver waits before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The most requests the receiver was answering at once.
    pub fn most_in_flight(&self) -> u64 {
        self.shared.most_in_flight.load(Ordering::SeqCst)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The requests answered with a 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    /// Waits until `n` requests have arrived (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "expected {n} webhook requests within {timeout:?}, got {}: {got:#?}",
                got.len()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), arrived).await;
        }
    }
}
