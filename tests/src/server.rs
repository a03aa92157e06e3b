//! The real `daypass` binary, started on a free port for end-to-end tests.

use crate::{Api, TestDb};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const OPERATOR_KEY: &str = "test-operator-key-0123456789abcdef0123456789";

/// Builds the binary once per test process (a no-op when it is up to date) and
/// returns its path.
pub fn daypass_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_binary("daypass", "daypass"))
        .clone()
}

/// `daypass-worker`, built like [`daypass_binary`].
pub fn worker_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_binary("daypass-worker", "daypass-worker"))
        .clone()
}

/// Gives a `cargo build` the environment of a plain one, not the variables cargo set
/// for this process: some build scripts (ring's) rerun when, say, CARGO_MANIFEST_DIR
/// changes, which rebuilt half the tree on every alternation between a test run and
/// any other build.
pub(crate) fn plain_cargo_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key == "OUT_DIR"
            || key.starts_with("CARGO_MANIFEST_")
            || key == "CARGO_CRATE_NAME"
            || key == "CARGO_PRIMARY_PACKAGE"
            || key == "CARGO_TARGET_TMPDIR"
            || key == "CARGO_BIN_NAME"
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
        {
            cmd.env_remove(key.as_ref());
        }
    }
}

fn build_binary(package: &str, bin: &str) -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let profile_release = std::env::var("DAYPASS_TEST_RELEASE").is_ok_and(|v| v == "1");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&workspace)
        .args(["build", "-q", "-p", package, "--bin", bin]);
    plain_cargo_env(&mut cmd);
    if profile_release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building {bin} failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or(workspace.join("target"));
    target
        .join(if profile_release { "release" } else { "debug" })
        .join(bin)
}

/// A job-queue name no other test (nor test process) uses: tests run in parallel and
/// share the Redis and PostgreSQL queue servers.
pub fn unique_queue_name(label: &str) -> String {
    format!(
        "daypass-test-{label}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// Sends SIGTERM to `pid`.
pub fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `child`'s stdout until a line starts with `prefix`, returns the rest of that
/// line, and keeps draining the pipe so the process never blocks on it.
async fn wait_for_line(child: &mut Child, prefix: &'static str, what: &'static str) -> String {
    let stdout = child.stdout.take().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let rest = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.strip_prefix(prefix) {
                        break a.trim().to_owned();
                    }
                }
                _ => panic!("{what} exited before printing {prefix:?}"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        rest
    })
    .await
    .unwrap()
}

pub struct TestServer {
    pub base_url: String,
    pub database_url: String,
    child: Child,
    /// The server's stderr lines, when started with [`TestServer::start_capturing_stderr`].
    stderr: Option<Arc<Mutex<Vec<String>>>>,
    _dir: Option<tempfile::TempDir>,
    client: reqwest::Client,
}

impl TestServer {
    /// Starts `daypass serve` on a fresh database with the test clock on.
    pub async fn start() -> TestServer {
        Self::start_with(&[("DAYPASS_TEST_CLOCK", "1")]).await
    }

    pub async fn start_with(env: &[(&str, &str)]) -> TestServer {
        let (database_url, dir) = TestDb::fresh_url().await;
        let mut server = Self::start_on(&database_url, env).await;
        server._dir = dir;
        server
    }

    /// Starts `daypass serve` on an existing database (for example one the CLI has
    /// already written to). Like [`start_with`](Self::start_with), only `env` is
    /// added to the operator key, the free port and the log level.
    pub async fn start_on(database_url: &str, env: &[(&str, &str)]) -> TestServer {
        Self::spawn(database_url, env, false).await
    }

    /// Like [`start_with`](Self::start_with), and keeps every line the server writes
    /// to stderr (its logs) for [`stderr_lines`](Self::stderr_lines).
    pub async fn start_capturing_stderr(env: &[(&str, &str)]) -> TestServer {
        let (database_url, dir) = TestDb::fresh_url().await;
        let mut server = Self::spawn(&database_url, env, true).await;
        server._dir = dir;
        server
    }

    /// The stderr lines written so far (empty unless capturing).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .as_ref()
            .map(|lines| lines.lock().unwrap().clone())
            .unwrap_or_default()
    }

    async fn spawn(database_url: &str, env: &[(&str, &str)], capture_stderr: bool) -> TestServer {
        let database_url = database_url.to_owned();
        let bin = daypass_binary();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env("DAYPASS_DATABASE_URL", &database_url)
            .env("DAYPASS_LISTEN", "127.0.0.1:0")
            .env("DAYPASS_OPERATOR_KEY", OPERATOR_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(if capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start daypass");
        let stderr = child.stderr.take().map(|pipe| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        });
        let addr = wait_for_line(&mut child, "listening on ", "daypass").await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        TestServer {
            base_url: format!("http://{addr}"),
            database_url,
            child,
            stderr,
            _dir: None,
            client,
        }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status (`None`: still
    /// running).
    pub async fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        sigterm(self.child.id());
        wait_exit(&mut self.child, timeout).await
    }

    /// Waits up to `timeout` for the process to exit (`None`: still running).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout).await
    }
}

/// The real `daypass-worker` binary: the background workers alone, as on a machine
/// of their own. It can be SIGKILLed mid-job and restarted with the same settings.
pub struct TestWorker {
    database_url: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// `http://…` of its metrics listener, when DAYPASS_METRICS_LISTEN is given.
    pub metrics_url: Option<String>,
}

impl TestWorker {
    /// Starts `daypass-worker` on `database_url` with `env` added (the queue, the mail
    /// settings) and returns once it is running.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> TestWorker {
        let mut worker = TestWorker {
            database_url: database_url.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            metrics_url: None,
        };
        worker.spawn().await;
        worker
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(worker_binary());
        cmd.env("DAYPASS_DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start daypass-worker");
        let rest = wait_for_line(&mut child, "daypass-worker running", "daypass-worker").await;
        // "daypass-worker running; metrics on ADDR" when it has a metrics listener.
        self.metrics_url = rest
            .split_once("metrics on ")
            .map(|(_, addr)| format!("http://{}", addr.trim()));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the process dies at once, whatever it was doing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (killing it first if it runs), with the same settings.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status (`None`: still
    /// running).
    pub async fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("the worker runs");
        sigterm(child.id());
        let status = wait_exit(child, timeout).await;
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A POST to `/graphql`, as a client sends it.
impl Api for TestServer {
    async fn gql(&self, key: Option<&str>, query: &str, variables: Value) -> Value {
        let mut req = self
            .client
            .post(format!("{}/graphql", self.base_url))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.expect("POST /graphql");
        resp.json().await.expect("JSON response")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
