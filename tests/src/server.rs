//! The real `daypass` binary, started on a free port for end-to-end tests.

use crate::TestDb;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub const OPERATOR_KEY: &str = "test-operator-key-0123456789abcdef0123456789";

/// Builds the binary once per test process (a no-op when it is up to date) and
/// returns its path.
pub fn daypass_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let profile_release = std::env::var("DAYPASS_TEST_RELEASE").is_ok_and(|v| v == "1");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(&workspace)
            .args(["build", "-q", "-p", "daypass-api", "--bin", "daypass"]);
        if profile_release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building daypass failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or(workspace.join("target"));
        target
            .join(if profile_release { "release" } else { "debug" })
            .join("daypass")
    })
    .clone()
}

pub struct TestServer {
    pub base_url: String,
    pub database_url: String,
    child: Child,
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
        let database_url = database_url.to_owned();
        let bin = daypass_binary();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env("DAYPASS_DATABASE_URL", &database_url)
            .env("DAYPASS_LISTEN", "127.0.0.1:0")
            .env("DAYPASS_OPERATOR_KEY", OPERATOR_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start daypass");
        let stdout = child.stdout.take().unwrap();
        let addr = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let addr = loop {
                match lines.next() {
                    Some(Ok(line)) => {
                        if let Some(a) = line.strip_prefix("listening on ") {
                            break a.trim().to_owned();
                        }
                    }
                    _ => panic!("daypass exited before listening"),
                }
            };
            // Keep draining stdout so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            addr
        })
        .await
        .unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        TestServer {
            base_url: format!("http://{addr}"),
            database_url,
            child,
            _dir: None,
            client,
        }
    }

    /// POSTs a GraphQL document; returns the whole JSON response.
    pub async fn gql(&self, key: Option<&str>, query: &str, variables: Value) -> Value {
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

    /// Like [`gql`](Self::gql) but panics on errors and returns `data`.
    pub async fn ok(&self, key: Option<&str>, query: &str, variables: Value) -> Value {
        let resp = self.gql(key, query, variables).await;
        assert!(resp.get("errors").is_none(), "unexpected errors: {resp:#}");
        resp["data"].clone()
    }

    /// The `extensions.code` of the first error.
    pub async fn error_code(&self, key: Option<&str>, query: &str, variables: Value) -> String {
        let resp = self.gql(key, query, variables).await;
        resp["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error: {resp:#}"))
            .to_owned()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
