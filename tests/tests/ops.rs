//! Operations, over HTTP against the real binaries: Prometheus metrics, readiness,
//! request ids in headers, errors and logs, the worker's own listener, and draining
//! in-flight requests on SIGTERM.

use daypass_tests::server::{OPERATOR_KEY, TestWorker, sigterm, unique_queue_name};
use daypass_tests::{Api, TestDb, TestServer};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OP: Option<&str> = Some(OPERATOR_KEY);

/// One sample of a Prometheus text body: name and labels, and its value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_metrics(body: &str) -> Vec<Sample> {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("closing brace");
                    let labels = inner
                        .split("\",")
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once("=\"").expect("label=\"value\"");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().unwrap_or(f64::NAN),
            }
        })
        .collect()
}

/// The value of the series `name` with exactly `labels`, if present.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// Every sample of `name`.
fn all<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name).collect()
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let resp = client.get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

async fn scrape(client: &reqwest::Client, base: &str) -> Vec<Sample> {
    let resp = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    parse_metrics(&resp.text().await.unwrap())
}

/// Polls `/metrics` until `ready` holds (up to `timeout`); returns the last scrape.
async fn scrape_until(
    client: &reqwest::Client,
    base: &str,
    timeout: Duration,
    ready: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = Instant::now() + timeout;
    loop {
        let samples = scrape(client, base).await;
        if ready(&samples) || Instant::now() >= deadline {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn assert_pool_gauges(samples: &[Sample]) {
    let size = value(
        samples,
        "daypass_db_pool_connections",
        &[("pool", "ledger")],
    )
    .expect("ledger pool size gauge");
    assert!(size >= 1.0, "the ledger pool keeps a connection: {size}");
    let idle = value(
        samples,
        "daypass_db_pool_idle_connections",
        &[("pool", "ledger")],
    )
    .expect("ledger pool idle gauge");
    assert!(idle <= size, "idle {idle} <= size {size}");
    for state in ["pending", "running"] {
        let depth = value(samples, "daypass_queue_jobs", &[("state", state)])
            .unwrap_or_else(|| panic!("queue depth gauge {state}"));
        assert!(depth >= 0.0);
    }
}

const UPSERT: &str = "mutation Upsert($c: String!, $r: Int!) {
  upsertProduct(input: {code: $c, name: $c, dailyRate: $r, annualSubscriptionMinor: 150000}) { id }
}";
const CREATE_ACCOUNT: &str = "mutation CreateAccount($n: String!, $e: String!) {
  createAccount(input: {name: $n, adminEmail: $e, adminName: \"Ada\"}) { adminApiKey }
}";
const BUY: &str = "mutation Buy($q: Int!, $k: String!) {
  purchaseTokens(input: {quantity: $q, idempotencyKey: $k}) { id }
}";
const CREATE_USER: &str = "mutation CreateUser($e: String!) {
  createUser(input: {email: $e, name: $e, role: MEMBER}) { user { id } apiKey }
}";
const ASSIGN: &str = "mutation Assign($ids: [ID!]!) {
  assignFlex(userIds: $ids, assigned: true) { id }
}";
const OPEN: &str = "mutation Open($code: String!) {
  openProduct(input: {productCode: $code}) { granted tokensCharged denyReason }
}";

fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("a string: {v}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_mix_of_traffic() {
    let s = TestServer::start_with(&[("DAYPASS_TEST_CLOCK", "1")]).await;
    const RATE: i64 = 7;

    s.ok(OP, UPSERT, json!({"c": "cad", "r": RATE})).await;
    let d = s
        .ok(
            OP,
            CREATE_ACCOUNT,
            json!({"n": "Metrics", "e": "admin@metrics.test"}),
        )
        .await;
    let admin = str_of(&d["createAccount"]["adminApiKey"]);
    let admin = Some(admin.as_str());
    s.ok(admin, BUY, json!({"q": 100, "k": "m-1"})).await;
    let member = s
        .ok(admin, CREATE_USER, json!({"e": "m@metrics.test"}))
        .await;
    let outsider = s
        .ok(admin, CREATE_USER, json!({"e": "o@metrics.test"}))
        .await;
    let member_id = str_of(&member["createUser"]["user"]["id"]);
    let member = str_of(&member["createUser"]["apiKey"]);
    let outsider = str_of(&outsider["createUser"]["apiKey"]);
    s.ok(admin, ASSIGN, json!({"ids": [member_id]})).await;

    // One charge, one reopen inside the window, one denial.
    let first = s.ok(Some(&member), OPEN, json!({"code": "cad"})).await;
    assert_eq!(first["openProduct"]["tokensCharged"], RATE);
    let again = s.ok(Some(&member), OPEN, json!({"code": "cad"})).await;
    assert_eq!(again["openProduct"]["granted"], true);
    assert_eq!(again["openProduct"]["tokensCharged"], 0);
    let denied = s.ok(Some(&outsider), OPEN, json!({"code": "cad"})).await;
    assert_eq!(denied["openProduct"]["denyReason"], "NOT_ASSIGNED");
    // Two errors: no key, and a document that does not parse.
    let resp = s
        .gql(None, "query Who { viewer { role } }", json!({}))
        .await;
    assert_eq!(resp["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let resp = s.gql(OP, "query Broken {", json!({})).await;
    assert_eq!(resp["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");

    let m = scrape(s.client(), &s.base_url).await;
    assert_eq!(value(&m, "daypass_charges_total", &[]), Some(1.0));
    assert_eq!(
        value(&m, "daypass_tokens_charged_total", &[]),
        Some(RATE as f64)
    );
    assert_eq!(
        value(
            &m,
            "daypass_open_denials_total",
            &[("reason", "NOT_ASSIGNED")]
        ),
        Some(1.0)
    );
    assert_eq!(
        all(&m, "daypass_open_denials_total").len(),
        1,
        "one reason only"
    );

    let requests = |op: &str, outcome: &str| {
        value(
            &m,
            "daypass_graphql_requests_total",
            &[("operation", op), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("Open", "ok"), Some(3.0));
    assert_eq!(requests("CreateUser", "ok"), Some(2.0));
    for op in ["Upsert", "CreateAccount", "Buy", "Assign"] {
        assert_eq!(requests(op, "ok"), Some(1.0), "{op}");
    }
    assert_eq!(requests("Who", "UNAUTHENTICATED"), Some(1.0));
    assert_eq!(requests("unknown", "BAD_USER_INPUT"), Some(1.0));
    let total: f64 = all(&m, "daypass_graphql_requests_total")
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 11.0, "every request counted once");

    // Latency histograms by operation: buckets, a sum and a count per operation.
    assert_eq!(
        value(
            &m,
            "daypass_graphql_request_duration_seconds_count",
            &[("operation", "Open")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &m,
            "daypass_graphql_request_duration_seconds_bucket",
            &[("operation", "Open"), ("le", "+Inf")]
        ),
        Some(3.0)
    );
    let buckets = all(&m, "daypass_graphql_request_duration_seconds_bucket")
        .into_iter()
        .filter(|s| s.labels.get("operation").is_some_and(|o| o == "Open"))
        .count();
    assert!(
        buckets > 5,
        "a real histogram, not a summary: {buckets} buckets"
    );
    assert!(
        value(
            &m,
            "daypass_graphql_request_duration_seconds_sum",
            &[("operation", "Open")]
        )
        .is_some_and(|sum| sum > 0.0)
    );
    assert_pool_gauges(&m);

    // The embedded workers record into the same /metrics: the outbox dispatcher runs
    // every 10 seconds.
    let dispatched = |m: &[Sample]| {
        value(
            m,
            "daypass_jobs_total",
            &[("job", "outbox_dispatch"), ("outcome", "succeeded")],
        )
        .is_some_and(|n| n >= 1.0)
    };
    let m = scrape_until(s.client(), &s.base_url, Duration::from_secs(25), dispatched).await;
    assert!(dispatched(&m), "embedded worker series in serve's /metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_carried_by_errors() {
    let s = TestServer::start_with(&[("DAYPASS_WORKERS", "external")]).await;
    let post = |id: Option<&'static str>| {
        let mut req = s
            .client()
            .post(format!("{}/graphql", s.base_url))
            .json(&json!({"query": "{ viewer { role } }"}));
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        req.send()
    };

    // A sane incoming id is kept, echoed, and in every error.
    let resp = post(Some("ops-test-42")).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "ops-test-42");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert_eq!(body["errors"][0]["extensions"]["requestId"], "ops-test-42");

    // Without one, or with one unfit for logs, a fresh id is made and used alike.
    let mut seen = Vec::new();
    for incoming in [None, Some("not a sane id; <script>")] {
        let resp = post(incoming).await.unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert_ne!(Some(id.as_str()), incoming);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["errors"][0]["extensions"]["requestId"], id.as_str());
        seen.push(id);
    }
    assert_ne!(seen[0], seen[1], "every request gets its own id");

    // The CSV export's errors carry it too.
    let resp = s
        .client()
        .get(format!(
            "{}/reports/usage.csv?from=2026-01-01&to=2026-01-31",
            s.base_url
        ))
        .header("x-request-id", "csv-9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["x-request-id"], "csv-9");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert_eq!(body["errors"][0]["extensions"]["requestId"], "csv-9");

    // Every HTTP answer has one, not only GraphQL's.
    let resp = s
        .client()
        .get(format!("{}/healthz", s.base_url))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id() {
    let s =
        TestServer::start_capturing_stderr(&[("DAYPASS_LOG_FORMAT", "json"), ("RUST_LOG", "info")])
            .await;
    let resp = s
        .client()
        .post(format!("{}/graphql", s.base_url))
        .header("x-request-id", "log-trace-7")
        .json(&json!({"query": "{ viewer { role } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "log-trace-7");

    let deadline = Instant::now() + Duration::from_secs(10);
    let request_lines = loop {
        let lines = s.stderr_lines();
        let mine: Vec<Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["span"]["request_id"] == "log-trace-7")
            .collect();
        if !mine.is_empty() || Instant::now() >= deadline {
            break mine;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines = s.stderr_lines();
    assert!(!lines.is_empty(), "the server logged at info");
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a JSON log line, not {line:?}: {e}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    let finished = request_lines
        .iter()
        .find(|v| v["fields"]["message"] == "request finished")
        .unwrap_or_else(|| panic!("the request's log lines: {lines:#?}"));
    assert_eq!(finished["fields"]["status"], 200);
    assert_eq!(finished["span"]["path"], "/graphql");
    // Requests without that id do not carry it.
    let others = lines.iter().filter(|l| l.contains("log-trace-7")).count();
    assert_eq!(others, request_lines.len());
}

/// A TCP proxy to the local Redis that can be cut: the queue becomes unreachable
/// while the API keeps running, as when a queue server goes down.
struct CuttableProxy {
    addr: std::net::SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl CuttableProxy {
    async fn start(target: &'static str) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        CuttableProxy { addr, tasks }
    }

    /// Stops accepting and drops every open connection.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_the_queue_is_unreachable() {
    // `serve` refuses to start on a queue it cannot reach, so the queue goes away
    // after the start: it lives on Redis behind a proxy that the test cuts.
    let proxy = CuttableProxy::start("127.0.0.1:6379").await;
    let queue_url = format!("redis://{}", proxy.addr);
    let queue_name = unique_queue_name("readyz");
    let s = TestServer::start_with(&[
        ("DAYPASS_WORKERS", "external"),
        ("DAYPASS_QUEUE_URL", &queue_url),
        ("DAYPASS_QUEUE_NAME", &queue_name),
    ])
    .await;
    let readyz = format!("{}/readyz", s.base_url);
    assert_eq!(get(s.client(), &readyz).await, (200, "ready".to_owned()));

    proxy.cut();
    let (status, body) = get(s.client(), &readyz).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("queue"), "{body}");
    assert!(!body.contains("database"), "the database is fine: {body}");
    // Alive all the same, and still serving.
    let (status, _) = get(s.client(), &format!("{}/healthz", s.base_url)).await;
    assert_eq!(status, 200);
    let d = s.ok(OP, "{ products { code } }", json!({})).await;
    assert!(d["products"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_metrics_health_and_readiness() {
    let (database_url, _dir) = TestDb::fresh_url().await;
    let mail = tempfile::tempdir().unwrap();
    let mail_dir = mail.path().display().to_string();
    let queue_name = unique_queue_name("worker-metrics");
    let worker = TestWorker::start(
        &database_url,
        &[
            ("DAYPASS_METRICS_LISTEN", "127.0.0.1:0"),
            ("DAYPASS_MAIL_DIR", &mail_dir),
            ("DAYPASS_QUEUE_NAME", &queue_name),
        ],
    )
    .await;
    let base = worker
        .metrics_url
        .clone()
        .expect("the worker prints its metrics address");
    let client = reqwest::Client::new();
    assert_eq!(
        get(&client, &format!("{base}/healthz")).await,
        (200, "ok".to_owned())
    );
    assert_eq!(
        get(&client, &format!("{base}/readyz")).await,
        (200, "ready".to_owned())
    );
    let dispatched = |m: &[Sample]| {
        value(
            m,
            "daypass_jobs_total",
            &[("job", "outbox_dispatch"), ("outcome", "succeeded")],
        )
        .is_some_and(|n| n >= 1.0)
    };
    let m = scrape_until(&client, &base, Duration::from_secs(25), dispatched).await;
    assert!(dispatched(&m), "job outcomes in the worker's /metrics");
    assert_pool_gauges(&m);
    assert!(
        all(&m, "daypass_graphql_requests_total").is_empty(),
        "no API series in a worker"
    );

    // Without the variable there is no listener.
    let quiet = TestWorker::start(&database_url, &[("DAYPASS_MAIL_DIR", &mail_dir)]).await;
    assert!(quiet.metrics_url.is_none());
}

/// Reads an HTTP/1.1 response until the server closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish() {
    let mut s = TestServer::start().await;
    let addr = s.base_url.trim_start_matches("http://").to_owned();
    let body = json!({
        "query": CREATE_ACCOUNT,
        "variables": {"n": "Drained", "e": "admin@drained.test"},
    })
    .to_string();
    let (head, tail) = body.split_at(body.len() / 2);

    // A request whose body is half sent: the server is inside it.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let request_head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {OPERATOR_KEY}\r\nx-request-id: drain-1\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request_head.as_bytes()).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    sigterm(s.pid());
    // It waits for the request rather than exiting.
    assert!(
        s.wait_exit(Duration::from_millis(1500)).await.is_none(),
        "serve exited with a request in flight"
    );

    stream.write_all(tail.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let response = read_to_close(&mut stream).await;
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "the in-flight request was answered: {response:?}"
    );
    assert!(response.contains("x-request-id: drain-1"), "{response}");
    let json_body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(
        json_body.contains("adminApiKey") && !json_body.contains("\"errors\""),
        "{json_body}"
    );

    let status = s
        .wait_exit(Duration::from_secs(40))
        .await
        .expect("serve exits once the request is done");
    assert!(status.success(), "{status:?}");
}

/// An account whose balance crosses its low-balance threshold with one open: one
/// notification for the workers to e-mail.
async fn cross_low_balance_threshold(s: &TestServer) {
    s.ok(OP, UPSERT, json!({"c": "cad", "r": 7})).await;
    let d = s
        .ok(
            OP,
            CREATE_ACCOUNT,
            json!({"n": "Mail", "e": "admin@mail.test"}),
        )
        .await;
    let admin = str_of(&d["createAccount"]["adminApiKey"]);
    let admin = Some(admin.as_str());
    s.ok(admin, BUY, json!({"q": 100, "k": "mail-1"})).await;
    s.ok(
        admin,
        "mutation { setLowBalanceThreshold(tokens: 95) { lowBalanceThreshold } }",
        json!({}),
    )
    .await;
    let member = s.ok(admin, CREATE_USER, json!({"e": "m@mail.test"})).await;
    let member_id = str_of(&member["createUser"]["user"]["id"]);
    let member = str_of(&member["createUser"]["apiKey"]);
    s.ok(admin, ASSIGN, json!({"ids": [member_id]})).await;
    let open = s.ok(Some(&member), OPEN, json!({"code": "cad"})).await;
    assert_eq!(
        open["openProduct"]["tokensCharged"], 7,
        "100 → 93, below 95"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_sent_and_failed_are_counted() {
    let mail = tempfile::tempdir().unwrap();
    let mail_dir = mail.path().display().to_string();
    let queue_name = unique_queue_name("ops-mail");
    let sent = TestServer::start_with(&[
        ("DAYPASS_MAIL_DIR", mail_dir.as_str()),
        ("DAYPASS_QUEUE_NAME", queue_name.as_str()),
    ])
    .await;
    let failing_queue = unique_queue_name("ops-mail-fail");
    let failing = TestServer::start_with(&[
        ("DAYPASS_SMTP_URL", "smtp://127.0.0.1:1"),
        ("DAYPASS_QUEUE_NAME", failing_queue.as_str()),
    ])
    .await;
    cross_low_balance_threshold(&sent).await;
    cross_low_balance_threshold(&failing).await;

    let emails = |outcome: &'static str| {
        move |m: &[Sample]| {
            value(m, "daypass_emails_total", &[("outcome", outcome)]).is_some_and(|n| n >= 1.0)
        }
    };
    let m = scrape_until(
        sent.client(),
        &sent.base_url,
        Duration::from_secs(20),
        emails("sent"),
    )
    .await;
    // Delivery is at least once: a slow first delivery may be sent again by the
    // outbox's next tick, with the same Message-ID (one file). Each counts.
    assert!(
        value(&m, "daypass_emails_total", &[("outcome", "sent")]).is_some_and(|n| n >= 1.0),
        "the e-mail is counted as sent"
    );
    assert_eq!(
        value(&m, "daypass_emails_total", &[("outcome", "failed")]),
        None
    );
    assert!(
        value(
            &m,
            "daypass_jobs_total",
            &[("job", "send_notification"), ("outcome", "succeeded")]
        )
        .is_some_and(|n| n >= 1.0),
        "the job is counted as succeeded"
    );
    assert_eq!(std::fs::read_dir(mail.path()).unwrap().count(), 1);

    let m = scrape_until(
        failing.client(),
        &failing.base_url,
        Duration::from_secs(20),
        emails("failed"),
    )
    .await;
    assert!(
        value(&m, "daypass_emails_total", &[("outcome", "failed")]).is_some_and(|n| n >= 1.0),
        "an unreachable SMTP server fails the e-mail"
    );
    assert_eq!(
        value(&m, "daypass_emails_total", &[("outcome", "sent")]),
        None
    );
}
