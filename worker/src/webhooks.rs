//! The webhook sender: POSTs due deliveries with their Standard Webhooks headers
//! and records each answer. It runs beside the job queue, not in it, so a slow or
//! dead endpoint holds none of the e-mail consumers: each endpoint gets at most
//! [`PER_ENDPOINT`] attempts at once, all endpoints together [`AT_ONCE`].

use daypass_domain::webhooks::{self, Answer, DeliveryState, LeasedDelivery, guard::AddressGuard};
use daypass_domain::{Clock, Db};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Attempts one endpoint may have under way in this process.
pub const PER_ENDPOINT: usize = 4;
/// Attempts under way in this process, all endpoints together.
pub const AT_ONCE: usize = 64;
/// How often the sender looks for due deliveries when nothing wakes it.
pub const POLL: Duration = Duration::from_secs(1);

/// Resolves names for the HTTP client through the process's guard, so the address
/// a delivery connects to is the address that was checked.
struct GuardedResolver(AddressGuard);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = guard.resolve(&host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempted {
    Done(DeliveryState),
    /// Delivered, dead, not due, or held by another sender: nothing done.
    Skipped,
}

pub struct WebhookSender {
    db: Db,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    guard: AddressGuard,
    endpoints: Mutex<HashMap<i32, Arc<Semaphore>>>,
    at_once: Arc<Semaphore>,
}

impl WebhookSender {
    /// A sender whose every attempt answers within 10 seconds, follows no
    /// redirect, ignores proxy settings and connects only where `guard` allows.
    pub fn new(
        db: Db,
        clock: Arc<dyn Clock>,
        guard: AddressGuard,
    ) -> anyhow::Result<WebhookSender> {
        let client = reqwest::Client::builder()
            .timeout(webhooks::ANSWER_WITHIN)
            .connect_timeout(webhooks::ANSWER_WITHIN)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("Daypass-Webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver(guard.clone())))
            .build()?;
        Ok(WebhookSender {
            db,
            clock,
            client,
            guard,
            endpoints: Mutex::default(),
            at_once: Arc::new(Semaphore::new(AT_ONCE)),
        })
    }

    /// One attempt at delivery `id`.
    pub async fn attempt(&self, id: i32) -> daypass_domain::Result<Attempted> {
        let Some(leased) = webhooks::lease_delivery(&self.db, id, self.clock.now()).await? else {
            return Ok(Attempted::Skipped);
        };
        let answer = self.post(&leased).await;
        let state = webhooks::record_answer(&self.db, &leased, &answer, self.clock.now()).await?;
        daypass_ops::record_webhook(match state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
            _ => "failed",
        });
        match &answer {
            Answer::Status(status) => {
                tracing::info!(delivery = id, attempt = leased.attempt, status, %state, "webhook attempt")
            }
            Answer::NoAnswer(error) => {
                tracing::warn!(delivery = id, attempt = leased.attempt, %error, %state, "webhook attempt")
            }
        }
        Ok(Attempted::Done(state))
    }

    async fn post(&self, leased: &LeasedDelivery) -> Answer {
        let url = match url::Url::parse(&leased.url) {
            Ok(url) => url,
            Err(e) => return Answer::NoAnswer(format!("not a URL: {e}")),
        };
        // The resolver checks names; an address written in the URL is checked here.
        let literal = url
            .host()
            .is_some_and(|h| !matches!(h, url::Host::Domain(_)));
        if literal && let Err(e) = self.guard.check_url(&url).await {
            return Answer::NoAnswer(e.to_string());
        }
        let timestamp = self.clock.now().timestamp();
        let secrets: Vec<&str> = leased.secrets.iter().map(String::as_str).collect();
        let signature = match webhooks::signature::signature_header(
            &secrets,
            &leased.msg_id,
            timestamp,
            &leased.body,
        ) {
            Ok(s) => s,
            Err(e) => return Answer::NoAnswer(e.to_string()),
        };
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &leased.msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(leased.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => Answer::Status(response.status().as_u16()),
            // Without the URL: its path may hold a token the receiver gave.
            Err(e) => Answer::NoAnswer(error_chain(&e.without_url())),
        }
    }

    fn endpoint_slots(&self, endpoint_id: i32) -> Arc<Semaphore> {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(endpoint_id)
            .or_insert_with(|| Arc::new(Semaphore::new(PER_ENDPOINT)))
            .clone()
    }

    /// Starts an attempt for every due delivery there is room for, except those in
    /// `tried` (to which it adds them); returns the attempts started.
    async fn start_due(
        self: &Arc<Self>,
        tried: &mut HashSet<i32>,
    ) -> daypass_domain::Result<Vec<tokio::task::JoinHandle<()>>> {
        let busy: Vec<i32> = self
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, slots)| slots.available_permits() == 0)
            .map(|(id, _)| *id)
            .collect();
        let due = webhooks::due_deliveries(&self.db, self.clock.now(), (AT_ONCE * 4) as u64, &busy)
            .await?;
        let mut started = Vec::new();
        for d in due {
            if tried.contains(&d.id) {
                continue;
            }
            let Ok(endpoint) = self.endpoint_slots(d.endpoint_id).try_acquire_owned() else {
                continue;
            };
            let Ok(slot) = self.at_once.clone().try_acquire_owned() else {
                break;
            };
            tried.insert(d.id);
            let me = self.clone();
            started.push(tokio::spawn(async move {
                let _held = (endpoint, slot);
                if let Err(e) = me.attempt(d.id).await {
                    tracing::warn!(delivery = d.id, error = %e, "webhook attempt not recorded; it will be retried");
                }
            }));
        }
        Ok(started)
    }

    /// Sends until the process stops: at once when a transaction commits
    /// deliveries, and every [`POLL`] for retries that came due.
    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.start_due(&mut HashSet::new()).await {
                tracing::warn!(error = %e, "webhook sender: cannot read due deliveries");
            }
            tokio::select! {
                _ = self.db.webhook_deliveries_committed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Tries every due delivery once and returns when each attempt has ended (the
    /// test clock's `runMaintenance`), with attempts other senders had under way.
    pub async fn deliver_due_now(self: &Arc<Self>) -> daypass_domain::Result<usize> {
        let mut tried = HashSet::new();
        loop {
            // Deliveries that waited for a free slot come in the next round.
            let started = self.start_due(&mut tried).await?;
            if started.is_empty() {
                break;
            }
            for handle in started {
                let _ = handle.await;
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while webhooks::deliveries_in_flight(&self.db, self.clock.now()).await? > 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(tried.len())
    }
}

/// An error with its causes, as one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
