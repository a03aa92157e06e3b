//! A scaled-out Daypass on one machine, as RUNNING.md's "Scale-out" describes it:
//! several `daypass serve` processes (`DAYPASS_WORKERS=external`) and several
//! `daypass-worker` processes on one PostgreSQL database, the job queue on Redis and a
//! real SMTP listener. Processes can be SIGKILLed and started again with the same
//! settings (an API on the same port), and a [`Balancer`] spreads requests over the
//! APIs round-robin as a load balancer would.

use crate::create_postgres_database;
use crate::server::{TestServer, TestWorker, unique_queue_name};
use crate::smtp::SmtpServer;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The PostgreSQL server of the scale-out tests: `DAYPASS_TEST_DATABASE` when it is a
/// PostgreSQL URL, else the local default.
pub fn postgres_server() -> String {
    std::env::var("DAYPASS_TEST_DATABASE")
        .ok()
        .filter(|v| v.starts_with("postgres://") || v.starts_with("postgresql://"))
        .unwrap_or_else(|| "postgres://root@127.0.0.1:5432/postgres".to_owned())
}

pub const REDIS_ADDR: &str = "127.0.0.1:6379";

/// Sends one command to Redis and returns the first bytes of the reply.
pub async fn redis_talk(addr: &str, command: &[&str]) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let talk = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        let mut req = format!("*{}\r\n", command.len());
        for arg in command {
            req.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        conn.write_all(req.as_bytes()).await?;
        let mut buf = vec![0u8; 256];
        let n = conn.read(&mut buf).await?;
        buf.truncate(n);
        anyhow::Ok(buf)
    };
    tokio::time::timeout(Duration::from_secs(3), talk)
        .await
        .map_err(|_| anyhow::anyhow!("{addr} did not answer"))?
}

pub async fn redis_ping(addr: &str) -> anyhow::Result<()> {
    let reply = redis_talk(addr, &["PING"]).await?;
    anyhow::ensure!(reply.starts_with(b"+PONG"), "no PONG from {addr}");
    Ok(())
}

/// Best effort: deletes every key starting with `prefix`.
pub async fn redis_delete_prefix(addr: &str, prefix: &str) {
    let script = "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                  redis.call('DEL', k) n = n + 1 end return n";
    let pattern = format!("{prefix}*");
    if let Err(e) = redis_talk(addr, &["EVAL", script, "0", &pattern]).await {
        println!("could not clean up Redis keys {pattern}: {e}");
    }
}

/// What became of one request sent through the [`Balancer`].
#[derive(Debug, Clone)]
pub enum Sent {
    /// An API answered (the index of the API that did).
    Answered(Value, usize),
    /// The request reached an API that died (or the connection broke) before it
    /// answered: it may or may not have taken effect.
    Lost(String),
}

/// Round-robin over the APIs' addresses. A request that cannot connect (its process
/// is down) never reached any process and goes to the next API.
#[derive(Clone)]
pub struct Balancer {
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    client: reqwest::Client,
    /// Requests moved to another API because theirs refused the connection.
    pub failovers: Arc<AtomicU64>,
    /// Requests lost in flight (see [`Sent::Lost`]).
    pub lost: Arc<AtomicU64>,
    pub answered: Arc<AtomicU64>,
}

impl Balancer {
    pub fn new(urls: Vec<String>) -> Balancer {
        Balancer {
            urls: Arc::new(urls),
            next: Arc::default(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            failovers: Arc::default(),
            lost: Arc::default(),
            answered: Arc::default(),
        }
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// POSTs a GraphQL document to the next API (and on to the following ones while
    /// they refuse connections, for up to 30 s).
    pub async fn send(&self, key: Option<&str>, query: &str, variables: Value) -> Sent {
        let started = Instant::now();
        let mut refused = 0;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len();
            match self.send_to(i, key, query, &variables).await {
                Ok(Some(v)) => {
                    self.answered.fetch_add(1, Ordering::Relaxed);
                    return Sent::Answered(v, i);
                }
                Ok(None) => {
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "no API accepted a connection for 30 s"
                    );
                    refused += 1;
                    if refused >= self.urls.len() {
                        // Every API refused in a row: give them a moment.
                        refused = 0;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Err(e) => {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    return Sent::Lost(format!("{}: {e}", self.urls[i]));
                }
            }
        }
    }

    /// `Ok(None)`: the connection was refused (nothing was sent).
    async fn send_to(
        &self,
        i: usize,
        key: Option<&str>,
        query: &str,
        variables: &Value,
    ) -> Result<Option<Value>, String> {
        let mut req = self
            .client
            .post(format!("{}/graphql", self.urls[i]))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        // A whole answer that is not GraphQL's JSON is a failure, not a lost request.
        let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{} answered {status} without JSON ({e}): {}",
                self.urls[i],
                String::from_utf8_lossy(&body)
            )
        });
        Ok(Some(value))
    }

    /// Like [`send`](Self::send), sent again (to the next API) until answered: for
    /// requests that are safe to repeat. Returns the answer and how many were lost.
    pub async fn send_until_answered(
        &self,
        key: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (Value, u32) {
        let mut lost = 0;
        loop {
            match self.send(key, query, variables.clone()).await {
                Sent::Answered(v, _) => return (v, lost),
                Sent::Lost(e) => {
                    lost += 1;
                    assert!(lost < 10, "10 requests lost in a row, the last: {e}");
                }
            }
        }
    }

    /// Panics on a lost request or a GraphQL error; returns `data`.
    pub async fn ok(&self, key: Option<&str>, query: &str, variables: Value) -> Value {
        match self.send(key, query, variables).await {
            Sent::Answered(resp, i) => {
                assert!(
                    resp.get("errors").is_none(),
                    "unexpected errors from {}: {resp:#}",
                    self.urls[i]
                );
                resp["data"].clone()
            }
            Sent::Lost(e) => panic!("request lost: {e}"),
        }
    }

    /// Sends to API `i` only (to compare what each process answers).
    pub async fn ok_at(&self, i: usize, key: Option<&str>, query: &str, variables: Value) -> Value {
        let resp = self
            .send_to(i, key, query, &variables)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.urls[i]))
            .unwrap_or_else(|| panic!("{} refused the connection", self.urls[i]));
        assert!(resp.get("errors").is_none(), "{}: {resp:#}", self.urls[i]);
        resp["data"].clone()
    }
}

/// The processes of one scaled-out deployment.
pub struct Cluster {
    pub database_url: String,
    pub queue_name: String,
    pub smtp: SmtpServer,
    pub balancer: Balancer,
    apis: Vec<Option<TestServer>>,
    ports: Vec<u16>,
    api_env: Vec<(String, String)>,
    workers: Vec<TestWorker>,
    pub killed: u32,
    pub restarted: u32,
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn sigkill(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid} failed");
}

/// Whether PostgreSQL and Redis answer (a scale-out needs both).
pub async fn services_reachable() -> anyhow::Result<()> {
    let server = postgres_server();
    let admin = sea_orm::Database::connect(&server)
        .await
        .map_err(|e| anyhow::anyhow!("PostgreSQL at {server}: {e}"))?;
    admin.close().await.ok();
    redis_ping(REDIS_ADDR).await
}

impl Cluster {
    /// A fresh PostgreSQL database, a Redis queue of its own, an SMTP listener, then
    /// `apis` API processes and `workers` worker processes. Panics (never skips) when
    /// PostgreSQL or Redis cannot be reached.
    pub async fn start(apis: usize, workers: usize, public_url: &str) -> Cluster {
        let server = postgres_server();
        let database_url = create_postgres_database(&server, "daypass_scale_out")
            .await
            .unwrap_or_else(|e| panic!("the scale-out test needs PostgreSQL: {e}"));
        redis_ping(REDIS_ADDR)
            .await
            .unwrap_or_else(|e| panic!("the scale-out test needs Redis at {REDIS_ADDR}: {e}"));
        let smtp = SmtpServer::start().await;
        let queue_name = unique_queue_name("scale-out");
        let shared: Vec<(String, String)> = [
            ("DAYPASS_SMTP_URL", smtp.url()),
            ("DAYPASS_PUBLIC_URL", public_url.to_owned()),
            ("DAYPASS_QUEUE_URL", format!("redis://{REDIS_ADDR}")),
            ("DAYPASS_QUEUE_NAME", queue_name.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut api_env = shared.clone();
        api_env.push(("DAYPASS_WORKERS".into(), "external".into()));

        // The first API migrates the new database; the others find it done.
        let env = env_refs(&api_env);
        let first = TestServer::start_on(&database_url, &env).await;
        let rest =
            futures::future::join_all((1..apis).map(|_| TestServer::start_on(&database_url, &env)))
                .await;
        let servers: Vec<TestServer> = std::iter::once(first).chain(rest).collect();
        let ports: Vec<u16> = servers
            .iter()
            .map(|s| {
                s.base_url
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .unwrap_or_else(|| panic!("no port in {}", s.base_url))
            })
            .collect();
        let balancer = Balancer::new(servers.iter().map(|s| s.base_url.clone()).collect());
        let worker_env = env_refs(&shared);
        let workers = futures::future::join_all(
            (0..workers).map(|_| TestWorker::start(&database_url, &worker_env)),
        )
        .await;
        Cluster {
            database_url,
            queue_name,
            smtp,
            balancer,
            apis: servers.into_iter().map(Some).collect(),
            ports,
            api_env,
            workers,
            killed: 0,
            restarted: 0,
        }
    }

    pub fn api_count(&self) -> usize {
        self.apis.len()
    }

    /// `kill -9` API `i`: it dies at once, whatever it was doing.
    pub fn kill_api(&mut self, i: usize) -> u32 {
        let server = self.apis[i].take().expect("the API runs");
        let pid = server.pid();
        sigkill(pid);
        drop(server);
        self.killed += 1;
        pid
    }

    /// Starts API `i` again with the same settings, on the same port.
    pub async fn restart_api(&mut self, i: usize) {
        assert!(self.apis[i].is_none(), "API {i} still runs");
        let mut env = self.api_env.clone();
        env.push((
            "DAYPASS_LISTEN".into(),
            format!("127.0.0.1:{}", self.ports[i]),
        ));
        let server = TestServer::start_on(&self.database_url, &env_refs(&env)).await;
        assert_eq!(server.base_url, self.balancer.urls()[i]);
        self.apis[i] = Some(server);
        self.restarted += 1;
    }

    /// `kill -9` worker `i`.
    pub fn kill_worker(&mut self, i: usize) -> u32 {
        let pid = self.workers[i].pid().expect("the worker runs");
        sigkill(pid);
        self.workers[i].kill();
        self.killed += 1;
        pid
    }

    /// Starts worker `i` again with the same settings.
    pub async fn restart_worker(&mut self, i: usize) {
        self.workers[i].restart().await;
        self.restarted += 1;
    }

    /// Stops every process, removes the queue's Redis keys and drops the database
    /// (a failed test never gets here: its database stays for a look).
    pub async fn shut_down(mut self) {
        for w in &mut self.workers {
            w.kill();
        }
        for a in &mut self.apis {
            a.take();
        }
        redis_delete_prefix(REDIS_ADDR, &format!("{}:", self.queue_name)).await;
        let name = self.database_url.rsplit('/').next().unwrap_or_default();
        let dropped = async {
            let admin = sea_orm::Database::connect(&postgres_server()).await?;
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await?;
            admin.close().await
        };
        if let Err(e) = dropped.await {
            println!("could not drop the test database {name}: {e}");
        }
    }
}
