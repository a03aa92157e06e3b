//! The job queue on every backend: SQLite (a temp file), PostgreSQL (a fresh database on
//! the server of `DAYPASS_TEST_DATABASE`, default `postgres://root@127.0.0.1:5432/postgres`)
//! and Redis (`DAYPASS_TEST_REDIS`, default `redis://127.0.0.1:6379`, a fresh queue name
//! per test). A server named by its variable must be reachable; an unreachable default
//! server skips the test, except under `CI`, where it fails.

use apalis::prelude::{Monitor, MonitorError};
use daypass_queue::{JobQueue, QueueConfig, QueueStorage, SendFn, SendNotification};
use futures::FutureExt;
use std::{
    collections::HashMap,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::{sync::oneshot, task::JoinHandle};

const DEFAULT_POSTGRES: &str = "postgres://root@127.0.0.1:5432/postgres";
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
    Redis,
}

/// Where one test's queue lives, and what to remove afterwards.
struct Place {
    backend: Backend,
    url: String,
    queue: String,
    _dir: Option<tempfile::TempDir>,
    drop_pg: Option<(String, String)>,
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// `Some(url)` when set; `None` = use the default (which may be skipped when down).
fn configured(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty() && v != "sqlite")
}

fn unreachable_server(what: &str, url: &str, explicit: bool, err: impl std::fmt::Display) {
    if explicit || std::env::var_os("CI").is_some() {
        panic!("{what} test server {url} unreachable: {err}");
    }
    eprintln!("SKIP: {what} test server {url} unreachable ({err}); set CI to fail instead");
}

/// A URL for a fresh queue on `backend`, or `None` when the test is skipped.
async fn place(backend: Backend) -> Option<Place> {
    let queue = unique("daypass_test_q");
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("queue.db").display()
            );
            Some(Place {
                backend,
                url,
                queue,
                _dir: Some(dir),
                drop_pg: None,
            })
        }
        Backend::Postgres => {
            let explicit = configured("DAYPASS_TEST_DATABASE");
            let server = explicit
                .clone()
                .filter(|u| u.starts_with("postgres"))
                .unwrap_or_else(|| DEFAULT_POSTGRES.to_owned());
            use sqlx::Connection;
            let mut admin = match tokio::time::timeout(
                Duration::from_secs(10),
                sqlx::PgConnection::connect(&server),
            )
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    unreachable_server("PostgreSQL", &server, explicit.is_some(), e);
                    return None;
                }
                Err(e) => {
                    unreachable_server("PostgreSQL", &server, explicit.is_some(), e);
                    return None;
                }
            };
            let name = queue.clone();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .expect("create test database");
            admin.close().await.ok();
            let url = with_database(&server, &name);
            Some(Place {
                backend,
                url,
                queue,
                _dir: None,
                drop_pg: Some((server, name)),
            })
        }
        Backend::Redis => {
            let explicit = configured("DAYPASS_TEST_REDIS");
            let url = explicit.clone().unwrap_or_else(|| DEFAULT_REDIS.to_owned());
            let probe = async {
                let client = redis::Client::open(url.as_str())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            match tokio::time::timeout(Duration::from_secs(5), probe).await {
                Ok(Ok(_)) => Some(Place {
                    backend,
                    url,
                    queue,
                    _dir: None,
                    drop_pg: None,
                }),
                Ok(Err(e)) => {
                    unreachable_server("Redis", &url, explicit.is_some(), e);
                    None
                }
                Err(e) => {
                    unreachable_server("Redis", &url, explicit.is_some(), e);
                    None
                }
            }
        }
    }
}

/// `postgres://u@h:p/db?x` with the database replaced by `name`.
fn with_database(server: &str, name: &str) -> String {
    let (main, query) = match server.split_once('?') {
        Some((m, q)) => (m, format!("?{q}")),
        None => (server, String::new()),
    };
    let after_scheme = main.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match main[after_scheme..].find('/') {
        Some(i) => &main[..after_scheme + i],
        None => main,
    };
    format!("{base}/{name}{query}")
}

impl Place {
    /// Runs `test` on a fresh place of `backend` (unless skipped), then removes what the
    /// test created, whether it passed or not.
    async fn run<F>(backend: Backend, test: F)
    where
        F: AsyncFnOnce(&Place),
    {
        let Some(place) = place(backend).await else {
            return;
        };
        let result = AssertUnwindSafe(test(&place)).catch_unwind().await;
        place.cleanup().await;
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// Removes what the test created (best effort).
    async fn cleanup(&self) {
        match self.backend {
            Backend::Sqlite => {}
            Backend::Postgres => {
                if let Some((server, name)) = &self.drop_pg {
                    use sqlx::Connection;
                    if let Ok(mut admin) = sqlx::PgConnection::connect(server).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut admin)
                        .await;
                        admin.close().await.ok();
                    }
                }
            }
            Backend::Redis => {
                let Ok(client) = redis::Client::open(self.url.as_str()) else {
                    return;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return;
                };
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", self.queue))
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _ = redis::cmd("DEL")
                        .arg(&keys)
                        .query_async::<i64>(&mut conn)
                        .await;
                }
                let _ = redis::cmd("ZREM")
                    .arg("core:apalis:queues:list")
                    .arg(format!("{}:workers", self.queue))
                    .query_async::<i64>(&mut conn)
                    .await;
            }
        }
    }
}

/// Short intervals for tests: heartbeat 1 s, a worker is dead after 3 s of silence,
/// retries after 300 ms, 600 ms, … (each plus up to 50 % jitter).
fn fast(queue: &str) -> QueueConfig {
    QueueConfig {
        queue: queue.to_owned(),
        concurrency: 4,
        max_attempts: 3,
        backoff_min: Duration::from_millis(300),
        backoff_max: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(1),
        missed_heartbeats: 3,
        poll_interval: Duration::from_millis(50),
        ..QueueConfig::default()
    }
}

/// A monitor running on its own task until stopped (or aborted: a crash).
struct Running {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), MonitorError>>,
}

fn start(monitor: Monitor) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(monitor.run_with_signal(async move {
        let _ = stopped.await;
        Ok(())
    }));
    Running { stop, handle }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("monitor stops")
            .expect("monitor task")
            .expect("monitor ends without worker errors");
    }
}

fn consumer<F, Fut>(f: F) -> SendFn
where
    F: Fn(SendNotification) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move |job| f(job).boxed())
}

/// Waits until `done()` holds, polling; panics after `limit`.
async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------

/// 20 jobs pushed concurrently, two consumers: every job runs exactly once.
async fn each_job_runs_exactly_once(place: &Place) {
    let queue = JobQueue::connect_with(&place.url, fast(&place.queue))
        .await
        .expect("connect");
    assert_eq!(
        queue.backend_name(),
        format!("{:?}", place.backend).to_lowercase()
    );

    futures::future::try_join_all((0..20).map(|id| {
        let queue = queue.clone();
        async move {
            queue
                .push(SendNotification {
                    notification_id: id,
                })
                .await
        }
    }))
    .await
    .expect("push 20 jobs");

    let seen = Arc::new(Mutex::new(Vec::<i32>::new()));
    let send = {
        let seen = seen.clone();
        consumer(move |job| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                seen.lock().unwrap().push(job.notification_id);
                Ok(())
            }
        })
    };
    let monitor = queue.register_consumer(Monitor::new(), send.clone());
    let monitor = queue.register_consumer(monitor, send);
    let running = start(monitor);

    wait_until("20 jobs", Duration::from_secs(30), || {
        seen.lock().unwrap().len() >= 20
    })
    .await;
    // Anything run twice would show up now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.stop().await;

    let mut ids = seen.lock().unwrap().clone();
    ids.sort();
    assert_eq!(ids, (0..20).collect::<Vec<_>>(), "each job exactly once");
}

/// Job 1 fails twice, then succeeds on its 3rd (last allowed) attempt; job 2 always fails
/// and stops after `max_attempts` = 3. Delays between attempts grow.
async fn failed_jobs_retry_with_backoff_then_stop(place: &Place) {
    let config = fast(&place.queue);
    let max_attempts = config.max_attempts;
    let queue = JobQueue::connect_with(&place.url, config.clone())
        .await
        .expect("connect");

    let attempts = Arc::new(Mutex::new(HashMap::<i32, Vec<Instant>>::new()));
    let succeeded = Arc::new(Mutex::new(Vec::<i32>::new()));
    let send = {
        let attempts = attempts.clone();
        let succeeded = succeeded.clone();
        consumer(move |job| {
            let attempts = attempts.clone();
            let succeeded = succeeded.clone();
            async move {
                let id = job.notification_id;
                let n = {
                    let mut a = attempts.lock().unwrap();
                    let v = a.entry(id).or_default();
                    v.push(Instant::now());
                    v.len()
                };
                match id {
                    1 if n >= 3 => {
                        succeeded.lock().unwrap().push(id);
                        Ok(())
                    }
                    _ => Err(format!("attempt {n} of job {id} fails")),
                }
            }
        })
    };
    for id in [1, 2] {
        queue
            .push(SendNotification {
                notification_id: id,
            })
            .await
            .expect("push");
    }
    let running = start(queue.register_consumer(Monitor::new(), send));

    let count = |id: i32| attempts.lock().unwrap().get(&id).map_or(0, Vec::len);
    wait_until("job 1 succeeds", Duration::from_secs(30), || {
        succeeded.lock().unwrap().contains(&1)
    })
    .await;
    wait_until("job 2 uses its attempts", Duration::from_secs(30), || {
        count(2) >= max_attempts
    })
    .await;
    // A storm would show here: the SQL backends re-fetch a failed job at once, Redis
    // re-schedules it `attempt` seconds later.
    tokio::time::sleep(Duration::from_millis(max_attempts as u64 * 1000 + 1500)).await;
    running.stop().await;

    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts[&1].len(), 3, "job 1: two failures, then success");
    assert_eq!(succeeded.lock().unwrap().as_slice(), &[1]);
    assert_eq!(
        attempts[&2].len(),
        max_attempts,
        "job 2 stops after max_attempts"
    );
    for id in [1, 2] {
        let gaps: Vec<Duration> = attempts[&id].windows(2).map(|w| w[1] - w[0]).collect();
        for (k, gap) in gaps.iter().enumerate() {
            assert!(
                *gap >= config.backoff_min * 2u32.pow(k as u32),
                "job {id}: retry {} waits at least backoff_min × 2^{k}: {gaps:?}",
                k + 1
            );
        }
        assert!(
            gaps.windows(2).all(|g| g[1] > g[0]),
            "job {id}: delays between attempts grow: {gaps:?}"
        );
    }
}

/// Jobs running for more than twice the orphan timeout (7 heartbeats), on two busy
/// consumers that watch each other's heartbeats, are not re-run.
async fn long_jobs_are_not_rerun(place: &Place) {
    let config = QueueConfig {
        concurrency: 2,
        ..fast(&place.queue)
    };
    let run_for = config.orphan_timeout() * 2 + Duration::from_secs(1);
    let queue = JobQueue::connect_with(&place.url, config)
        .await
        .expect("connect");

    let started = Arc::new(Mutex::new(Vec::<i32>::new()));
    let finished = Arc::new(Mutex::new(Vec::<i32>::new()));
    let send = {
        let started = started.clone();
        let finished = finished.clone();
        consumer(move |job| {
            let started = started.clone();
            let finished = finished.clone();
            async move {
                started.lock().unwrap().push(job.notification_id);
                tokio::time::sleep(run_for).await;
                finished.lock().unwrap().push(job.notification_id);
                Ok(())
            }
        })
    };
    for id in 0..4 {
        queue
            .push(SendNotification {
                notification_id: id,
            })
            .await
            .expect("push");
    }
    // Two consumers (as `daypass serve` and `daypass-worker`), two jobs each.
    let monitor = queue.register_consumer(Monitor::new(), send.clone());
    let running = start(queue.register_consumer(monitor, send));

    wait_until("4 long jobs", run_for * 2 + Duration::from_secs(10), || {
        finished.lock().unwrap().len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.stop().await;

    let mut started = started.lock().unwrap().clone();
    started.sort();
    assert_eq!(started, vec![0, 1, 2, 3], "each long job started once");
}

/// The other side of the heartbeat: a job whose worker died (no ack, no more
/// heartbeats) is re-enqueued after the orphan timeout and run by a live worker.
async fn jobs_of_a_dead_worker_are_recovered(place: &Place) {
    let config = fast(&place.queue);
    // Two processes: the one that dies, and the one that lives on.
    let dying = JobQueue::connect_with(&place.url, config.clone())
        .await
        .expect("connect");
    let living = JobQueue::connect_with(&place.url, config.clone())
        .await
        .expect("connect");

    let starts = Arc::new(Mutex::new(0usize));
    let done = Arc::new(Mutex::new(false));
    let send = {
        let starts = starts.clone();
        let done = done.clone();
        consumer(move |_job| {
            let starts = starts.clone();
            let done = done.clone();
            async move {
                let n = {
                    let mut s = starts.lock().unwrap();
                    *s += 1;
                    *s
                };
                if n == 1 {
                    // The first run hangs until its process dies.
                    futures::future::pending::<()>().await;
                }
                *done.lock().unwrap() = true;
                Ok(())
            }
        })
    };
    dying
        .push(SendNotification { notification_id: 7 })
        .await
        .expect("push");
    let crashed = start(dying.register_consumer(Monitor::new(), send.clone()));
    wait_until("first run", Duration::from_secs(10), || {
        *starts.lock().unwrap() == 1
    })
    .await;
    crashed.handle.abort();
    let died = Instant::now();

    let running = start(living.register_consumer(Monitor::new(), send));
    wait_until(
        "recovery by the living worker",
        config.orphan_timeout() + Duration::from_secs(10),
        || *done.lock().unwrap(),
    )
    .await;
    let after = died.elapsed();
    running.stop().await;
    assert_eq!(*starts.lock().unwrap(), 2, "the orphaned job ran once more");
    // The dead worker's last heartbeat was up to one interval before it died, and the
    // SQLite and Redis backends count whole seconds.
    assert!(
        after >= config.orphan_timeout() - config.heartbeat_interval * 2,
        "not before the orphan timeout: {after:?}"
    );
}

/// With the default `DAYPASS_QUEUE_URL` the SQLite queue lives in the ledger's file. Its
/// own connections stay durable (`synchronous = NORMAL`, not apalis's `OFF`), and it
/// waits for the ledger's write lock (longer than sqlx's default 5 s busy timeout)
/// instead of failing with "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_shares_the_ledger_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("daypass.db").display()
    );
    let ledger = daypass_domain::Db::connect(&url).await.expect("ledger");
    ledger.migrate().await.expect("ledger migrations");
    let config = fast("daypass.send_notification");
    let queue = JobQueue::connect_with(&url, config.clone())
        .await
        .expect("queue in the ledger's file");

    let QueueStorage::Sqlite(storage) = queue.storage() else {
        panic!("a SQLite queue");
    };
    let mut conns = Vec::new();
    for _ in 0..config.pool_size {
        conns.push(storage.pool().acquire().await.expect("queue connection"));
    }
    for conn in &mut conns {
        let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .expect("pragma");
        assert_eq!(sync, 1, "queue connections are synchronous = NORMAL");
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&mut **conn)
            .await
            .expect("pragma");
        assert_eq!(mode, "wal");
    }
    drop(conns);

    let seen = Arc::new(Mutex::new(Vec::<i32>::new()));
    let send = {
        let seen = seen.clone();
        consumer(move |job| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(job.notification_id);
                Ok(())
            }
        })
    };
    // As in production (`build_monitor`): a worker stopped by the locked file comes back.
    let running = start(queue.register_consumer(daypass_queue::restarting_monitor(), send));

    // The ledger takes the write lock (BEGIN IMMEDIATE) and keeps it for 6 s, while
    // the consumer polls and heart-beats and a producer pushes.
    let hold = Duration::from_secs(6);
    let (locked_tx, locked) = oneshot::channel();
    let holder = tokio::spawn(async move {
        let tx = ledger.begin_write().await.expect("ledger write lock");
        let _ = locked_tx.send(());
        tokio::time::sleep(hold).await;
        tx.commit().await.expect("ledger commit");
        ledger
    });
    locked.await.expect("lock taken");
    let pushed = Instant::now();
    queue
        .push(SendNotification {
            notification_id: 42,
        })
        .await
        .expect("push waits for the ledger's lock");
    assert!(
        pushed.elapsed() >= hold - Duration::from_secs(1),
        "push had to wait"
    );
    // The consumer's polls failed on the lock for 6 s and back off; on a loaded
    // machine its next successful poll can come well after the lock is released.
    wait_until("the job", Duration::from_secs(60), || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    // And the ledger can still write while the queue works.
    let ledger = holder.await.expect("holder");
    ledger
        .begin_write()
        .await
        .expect("ledger write lock again")
        .commit()
        .await
        .expect("commit");
    running.stop().await;
    assert_eq!(seen.lock().unwrap().as_slice(), &[42]);
}

#[tokio::test]
async fn rejects_unknown_schemes_and_bad_configs() {
    let err = JobQueue::connect("mysql://localhost/x").await.unwrap_err();
    assert!(err.to_string().contains("mysql"), "{err}");
    let bad = QueueConfig {
        heartbeat_interval: Duration::from_millis(500),
        ..QueueConfig::default()
    };
    assert!(
        JobQueue::connect_with("sqlite::memory:", bad)
            .await
            .is_err()
    );
    let q = JobQueue::connect("sqlite::memory:")
        .await
        .expect("in-memory");
    assert_eq!(q.backend_name(), "sqlite");
    q.push(SendNotification { notification_id: 1 })
        .await
        .expect("push in memory");
}

macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                Place::run(Backend::Sqlite, super::$test).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                Place::run(Backend::Postgres, super::$test).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                Place::run(Backend::Redis, super::$test).await
            }
        }
    )*};
}

on_every_backend!(
    each_job_runs_exactly_once,
    failed_jobs_retry_with_backoff_then_stop,
    long_jobs_are_not_rerun,
    jobs_of_a_dead_worker_are_recovered,
);
