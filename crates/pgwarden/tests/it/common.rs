//! Shared helpers: pools on harness servers, and the invariants checked after every fault.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwarden::config::SslMode;
use pgwarden::{ConnectOptions, PgConnector, PgPool, Pool, PoolOptions};
use pgwarden_testdb::PgServer;
use tokio::time::Instant;

/// A unique application_name per pool, so each test finds its own sessions.
pub(crate) fn app_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "pgw-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Pool options fit for tests: short timeouts so a hang shows as a failure quickly.
pub(crate) fn test_opts(max: u32, min: u32) -> PoolOptions {
    let mut o = PoolOptions::sized(max, min);
    o.acquire_timeout = Duration::from_secs(5);
    o.connect_timeout = Duration::from_secs(3);
    o
}

pub(crate) fn connector(server: &PgServer, db: &str, app: &str) -> PgConnector {
    connector_for(&server.pg_config(db), SslMode::Disable, None, app)
}

pub(crate) fn connector_for(
    cfg: &tokio_postgres::Config,
    mode: SslMode,
    root: Option<&std::path::Path>,
    app: &str,
) -> PgConnector {
    let mut co = ConnectOptions::default();
    co.application_name = Some(app.to_owned());
    co.connect_timeout = Duration::from_secs(3);
    PgConnector::new(cfg, mode, root, co).expect("connector")
}

/// A pool on `server`'s database `db`, with its own application_name.
pub(crate) fn pool(server: &PgServer, db: &str, tag: &str, opts: PoolOptions) -> (PgPool, String) {
    let app = app_name(tag);
    (Pool::new(connector(server, db, &app), opts), app)
}

/// The shared server and a fresh database on it.
pub(crate) fn shared_db() -> (Arc<PgServer>, String) {
    let server = PgServer::shared().expect("shared server");
    let db = server.create_database(None).expect("database");
    (server, db)
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a blocking harness call off the runtime threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// The invariants of ../shared/FAULTS.md checked after every scenario, once the pool is quiet:
/// never above max; PostgreSQL's sessions for the pool's application_name match the pool's own
/// count; no session idle in transaction; no orphaned active query.
pub(crate) async fn assert_invariants(server: &Arc<PgServer>, pool: &PgPool, app: &str) {
    let max = pool.status().max;
    // Let resets and reaping finish.
    eventually(Duration::from_secs(10), "pool quiet", || async {
        let s = pool.status();
        s.in_use == 0 && s.opening == 0 && s.size == s.idle
    })
    .await;
    let s = pool.status();
    assert!(s.size <= max, "size within max: {s}");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let size = pool.status().size as usize;
        let (srv, app2) = (Arc::clone(server), app.to_owned());
        let sessions = blocking(move || srv.sessions(&app2))
            .await
            .expect("sessions");
        let bad: Vec<_> = sessions
            .iter()
            .filter(|s| s.state != "idle")
            .map(|s| format!("{} {:?} {:?}", s.pid, s.state, s.query))
            .collect();
        if sessions.len() == size && bad.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "invariants: pool size {size}, server sessions {}, not idle: {bad:?}",
            sessions.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until a session of `app` is active running a statement containing `needle`.
pub(crate) async fn wait_until_running(server: &Arc<PgServer>, app: &str, needle: &str) {
    eventually(Duration::from_secs(5), needle, || {
        let (s, a, n) = (Arc::clone(server), app.to_owned(), needle.to_owned());
        async move {
            blocking(move || {
                s.sessions(&a)
                    .unwrap()
                    .iter()
                    .any(|x| x.state == "active" && x.query.contains(&n))
            })
            .await
        }
    })
    .await;
}

/// Log lines written through `tracing` while the returned guard lives (this thread only), at
/// `level` and above, without colours: read them with [`LogCapture::text`].
pub(crate) struct LogCapture {
    buf: Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct CaptureWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Starts capturing on this thread (use a current-thread runtime).
    pub(crate) fn start(level: tracing::Level) -> Self {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = CaptureWriter(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        Self { buf, _guard }
    }

    /// Everything captured so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

/// A primary with a database holding an empty `ledger (id bigint PRIMARY KEY)` table, and a
/// streaming standby of it (`pg_basebackup -R`, same limits); the standby shares the
/// primary's server slot.
pub(crate) async fn primary_with_standby() -> (Arc<PgServer>, Arc<PgServer>, String) {
    let primary = Arc::new(PgServer::start().expect("primary"));
    let db = primary.create_database(None).expect("db");
    primary
        .psql(&db, "CREATE TABLE ledger (id bigint PRIMARY KEY)")
        .expect("table");
    let standby = Arc::new(
        blocking({
            let p = Arc::clone(&primary);
            move || p.start_replica().expect("replica")
        })
        .await,
    );
    (primary, standby, db)
}
