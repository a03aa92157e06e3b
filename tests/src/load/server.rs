//! The real `daypass` binary: built in release (unless given), started on a free
//! port like the test harness's `TestServer`, measured through `/proc`, stopped with
//! SIGTERM.

use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `cargo build --release -p daypass --bin daypass` in this workspace, with the
/// environment of a plain build (as `crate::server` does, so a build from
/// `cargo run` does not rebuild half the tree), and the binary's path.
pub fn build_release_binary() -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace directory")?
        .to_path_buf();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&workspace).args([
        "build",
        "-q",
        "--release",
        "-p",
        "daypass",
        "--bin",
        "daypass",
    ]);
    crate::server::plain_cargo_env(&mut cmd);
    // The apalis crates check their SQL against DATABASE_URL when it is set.
    cmd.env("SQLX_OFFLINE", "true");
    let status = cmd.status().context("run cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p daypass failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or(workspace.join("target"));
    Ok(target.join("release").join("daypass"))
}

pub struct Server {
    pub base_url: String,
    child: Child,
    _outbox: tempfile::TempDir,
}

/// The server's memory from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    /// `VmHWM`: the peak resident set.
    pub peak_kb: u64,
    /// `VmRSS`: the resident set now.
    pub current_kb: u64,
}

impl Server {
    /// `daypass serve` on `database_url` (already migrated), on a free port, with the
    /// embedded workers as in a one-machine deployment, and mail written to a temp dir.
    pub async fn start(bin: &Path, database_url: &str, operator_key: &str) -> Result<Server> {
        Self::start_with(bin, database_url, operator_key, &[]).await
    }

    /// [`Server::start`] with `env` added (say, the test clock for `runMaintenance`).
    pub async fn start_with(
        bin: &Path,
        database_url: &str,
        operator_key: &str,
        env: &[(&str, &str)],
    ) -> Result<Server> {
        let outbox = tempfile::tempdir().context("temp dir for the outbox")?;
        let mut child = Command::new(bin)
            .arg("serve")
            .env("DAYPASS_DATABASE_URL", database_url)
            .env("DAYPASS_LISTEN", "127.0.0.1:0")
            .env("DAYPASS_OPERATOR_KEY", operator_key)
            .env("DAYPASS_MAIL_DIR", outbox.path())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let listening = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let addr = loop {
                match lines.next() {
                    Some(Ok(line)) => {
                        if let Some(a) = line.strip_prefix("listening on ") {
                            break Some(a.trim().to_owned());
                        }
                    }
                    _ => break None,
                }
            };
            // Keep draining the pipe so the server never blocks on it.
            std::thread::spawn(move || for _ in lines {});
            addr
        });
        let addr = match tokio::time::timeout(Duration::from_secs(120), listening).await {
            Ok(joined) => joined?,
            Err(_) => None,
        };
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("daypass exited or hung before printing \"listening on\"");
        };
        Ok(Server {
            base_url: format!("http://{addr}"),
            child,
            _outbox: outbox,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss(&self) -> Result<Rss> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| anyhow!("no {name} in {path}"))
        };
        Ok(Rss {
            peak_kb: field("VmHWM:")?,
            current_kb: field("VmRSS:")?,
        })
    }

    /// SIGTERM, then up to 30 s for the exit (it drains requests and jobs).
    pub async fn stop(mut self) -> Result<()> {
        crate::server::sigterm(self.pid());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("daypass exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("daypass did not exit within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
