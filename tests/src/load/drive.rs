//! The load generator: `concurrency` workers, each with its own HTTP/1.1 keep-alive
//! connection (one `reqwest::Client` each, at most one idle connection), taking the
//! next request of the phase until none is left. Every request is an `openProduct`
//! or a `heartbeat` mutation with the user's bearer key; every answer is checked,
//! and a phase with any error or unexpected answer fails the run: a benchmark that
//! measures errors measures the wrong thing.

use anyhow::{Context, Result, bail};
use futures::future::join_all;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a launcher asks for when it opens a product (the session's id, for its
/// heartbeats).
pub const OPEN: &str = "mutation($c:String!){openProduct(input:{productCode:$c}){granted source tokensCharged windowEndsAt denyReason balance planLevel session{id}}}";

/// What a launcher sends every few minutes while the product is in use.
pub const HEARTBEAT: &str = "mutation($s:ID!){heartbeat(input:{sessionId:$s,active:true}){granted denyReason tokensCharged windowEndsAt balance session{id state}}}";

/// A phase stops early after this many failures (the run fails anyway).
const MAX_FAILURES: usize = 100;

/// What every answer of a phase must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Granted and charged the product's daily rate.
    Charge,
    /// Granted inside the window: nothing charged.
    Reopen,
}

/// One phase's requests: for each, the user's `Authorization` value, the body and
/// what its answer must be.
pub struct Phase {
    pub name: String,
    /// What a request is, in the printed rate: "opens" or "heartbeats".
    pub unit: &'static str,
    pub requests: Vec<Request>,
}

pub struct Request {
    pub auth: HeaderValue,
    pub body: String,
    pub answer: Answer,
}

/// The answer a request must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An open granted from FLEX, charging exactly these tokens, with its session.
    Open { tokens: i64 },
    /// A heartbeat of this open session granted, charging nothing.
    Heartbeat { session: String },
}

impl Phase {
    /// The phase's requests for `pairs` of (user key, product code, daily rate).
    pub fn new<'a>(
        name: String,
        expect: Expect,
        pairs: impl Iterator<Item = (&'a str, &'a str, i64)>,
    ) -> Result<Phase> {
        let requests = pairs
            .map(|(key, code, rate)| {
                Ok(Request {
                    auth: HeaderValue::from_str(&format!("Bearer {key}"))?,
                    body: serde_json::to_string(&json!({"query": OPEN, "variables": {"c": code}}))?,
                    answer: Answer::Open {
                        tokens: match expect {
                            Expect::Charge => rate,
                            Expect::Reopen => 0,
                        },
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Phase {
            name,
            unit: "opens",
            requests,
        })
    }

    /// One heartbeat (in use) of each session, each with its user's
    /// `Authorization` value.
    pub fn heartbeats(
        name: String,
        sessions: impl Iterator<Item = (HeaderValue, String)>,
    ) -> Result<Phase> {
        let requests = sessions
            .map(|(auth, session)| {
                Ok(Request {
                    auth,
                    body: serde_json::to_string(
                        &json!({"query": HEARTBEAT, "variables": {"s": session}}),
                    )?,
                    answer: Answer::Heartbeat { session },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Phase {
            name,
            unit: "heartbeats",
            requests,
        })
    }
}

/// What a phase measured.
#[derive(Debug, Clone)]
pub struct PhaseStats {
    pub name: String,
    /// "opens" or "heartbeats".
    pub unit: &'static str,
    pub requests: usize,
    pub elapsed: Duration,
    /// Sorted, one per request sent.
    pub latencies: Vec<Duration>,
    pub failures: usize,
    /// The first few failures, described.
    pub samples: Vec<String>,
    /// The sessions the phase's opens started: (request index, session id).
    pub sessions: Vec<(usize, String)>,
}

impl PhaseStats {
    pub fn per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let v = &self.latencies;
        if v.is_empty() {
            return 0.0;
        }
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e3
    }
}

/// One client per worker: each keeps its own connection alive between requests.
pub fn clients(concurrency: usize) -> Result<Vec<reqwest::Client>> {
    (0..concurrency)
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(60))
                .build()
                .context("HTTP client")
        })
        .collect()
}

/// Opens every worker's connection and the server's database connections with a
/// few `viewer` queries, all workers at once, before anything is timed.
pub async fn warm_up(clients: &[reqwest::Client], base_url: &str, key: &str) -> Result<()> {
    let url = format!("{base_url}/graphql");
    let body = json!({"query": "{ viewer { role } }"}).to_string();
    let results = join_all(clients.iter().map(|c| {
        let (url, body) = (&url, &body);
        async move {
            for _ in 0..5 {
                let resp: Value = c
                    .post(url)
                    .bearer_auth(key)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await?
                    .json()
                    .await?;
                if resp.get("errors").is_some() {
                    bail!("warm-up query failed: {resp}");
                }
            }
            Ok(())
        }
    }))
    .await;
    results.into_iter().collect()
}

/// Sends the phase's requests through the workers and measures them.
pub async fn run(clients: &[reqwest::Client], base_url: &str, phase: &Phase) -> PhaseStats {
    run_until(clients, base_url, phase, None).await
}

/// [`run`], sending no request after `deadline` (the phase ends with fewer).
pub async fn run_until(
    clients: &[reqwest::Client],
    base_url: &str,
    phase: &Phase,
    deadline: Option<Instant>,
) -> PhaseStats {
    let url = format!("{base_url}/graphql");
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let workers = join_all(clients.iter().map(|client| {
        let (url, next, stop) = (&url, &next, &stop);
        async move {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            let mut sessions = Vec::new();
            while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(req) = phase.requests.get(i) else {
                    break;
                };
                let t = Instant::now();
                let answer = send(client, url, req).await;
                latencies.push(t.elapsed());
                match answer.and_then(|v| check(&v, &req.answer)) {
                    Ok(Some(session)) => sessions.push((i, session)),
                    Ok(None) => {}
                    Err(e) => {
                        failures.push(format!("request {i}: {e:#}"));
                        if failures.len() >= MAX_FAILURES {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            (latencies, failures, sessions)
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let mut latencies = Vec::with_capacity(phase.requests.len());
    let mut failures = Vec::new();
    let mut sessions = Vec::new();
    for (l, f, s) in workers {
        latencies.extend(l);
        failures.extend(f);
        sessions.extend(s);
    }
    latencies.sort_unstable();
    sessions.sort_unstable();
    PhaseStats {
        name: phase.name.clone(),
        unit: phase.unit,
        // Those sent: all of them, unless failures or the deadline stopped the phase.
        requests: latencies.len(),
        elapsed,
        latencies,
        failures: failures.len(),
        samples: failures.into_iter().take(5).collect(),
        sessions,
    }
}

async fn send(client: &reqwest::Client, url: &str, req: &Request) -> Result<Value> {
    let resp = client
        .post(url)
        .header(AUTHORIZATION, req.auth.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(req.body.clone())
        .send()
        .await
        .context("POST /graphql")?;
    let status = resp.status();
    let bytes = resp.bytes().await.context("read the answer")?;
    if !status.is_success() {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    serde_json::from_slice(&bytes).context("the answer is not JSON")
}

/// The answer is what `expected` says; an open's session id.
fn check(resp: &Value, expected: &Answer) -> Result<Option<String>> {
    if let Some(errors) = resp.get("errors") {
        bail!("GraphQL errors: {errors}");
    }
    match expected {
        Answer::Open { tokens } => check_open(&resp["data"]["openProduct"], *tokens).map(Some),
        Answer::Heartbeat { session } => {
            check_heartbeat(&resp["data"]["heartbeat"], session).map(|()| None)
        }
    }
}

/// Granted, from pay-as-you-go, charging exactly `tokens`, with a session.
fn check_open(open: &Value, tokens: i64) -> Result<String> {
    if open["granted"] != true || open["source"] != "FLEX" {
        bail!("not granted from FLEX: {open}");
    }
    if open["tokensCharged"] != tokens {
        bail!(
            "charged {} tokens, expected {tokens}",
            open["tokensCharged"]
        );
    }
    match open["session"]["id"].as_str() {
        Some(id) => Ok(id.to_owned()),
        None => bail!("a granted open without a session: {open}"),
    }
}

/// Granted, charging nothing, the session still open.
fn check_heartbeat(beat: &Value, session: &str) -> Result<()> {
    if beat["granted"] != true || beat["tokensCharged"] != 0 {
        bail!("not granted free of charge: {beat}");
    }
    if beat["session"]["id"] != session || beat["session"]["state"] != "OPEN" {
        bail!("not the open session {session}: {beat}");
    }
    Ok(())
}
