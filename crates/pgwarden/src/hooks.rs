//! Connection hooks: the application's code run on every new connection (the after-connect
//! hook, and `DB_CONNECT_INIT_SQL` for the common case), inside the connect and bounded by the
//! connect timeout. A hook that fails, panics or hangs is a connect failure: the connection is
//! closed and never reaches the pool.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use crate::conn::PgConn;
use crate::pool::{ConnectError, KillSwitch};

/// What a hook returns.
pub type HookResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The future a hook returns.
pub type HookFuture<'c> = Pin<Box<dyn Future<Output = HookResult> + Send + 'c>>;

type AfterConnectFn = dyn for<'c> Fn(&'c PgConn) -> HookFuture<'c> + Send + Sync;

/// Code run on every new connection before the pool hands it out (after
/// [`crate::ConnectOptions::init_sql`]): session settings, type registration … (not `LISTEN`: pooled
/// connections drop notifications; see [`crate::PoolManager::listener`]). It runs
/// within the connect timeout; an error, a panic or a hang there is a connect failure and the
/// connection is closed. What it sets on the session stays (the pool's reset does not undo it,
/// except `DISCARD ALL` after raw use). A transaction it leaves open is rolled back (when
/// opened through a batch or the raw client) or refused as a connect failure (when opened with
/// [`PgConn::transaction`] and not finished).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = pgwarden_testdb::PgServer::shared()?;
/// # let url = server.url("postgres");
/// use pgwarden::{AfterConnect, Config, ConnectOptions, ManagerOptions, PgConnector};
/// use pgwarden::{Pool, PoolManager, PoolOptions};
///
/// let config = Config::from_vars([("DATABASE_URL", url.as_str())])?;
/// let mut co = ConnectOptions::from_config(&config);
/// co.init_sql = Some("SET TIME ZONE 'UTC'".into()); // DB_CONNECT_INIT_SQL
/// co.after_connect = Some(AfterConnect::new(|conn| {
///     Box::pin(async move {
///         conn.execute("SET search_path TO public", &[]).await?;
///         Ok(())
///     })
/// }));
/// let target = config.database_url.as_ref().unwrap();
/// let connector = PgConnector::new(&target.pg_config(), target.ssl_mode(), None, co)?;
/// let db = PoolManager::new(Pool::new(connector, PoolOptions::sized(2, 0)), ManagerOptions::default());
/// let tz: String = db.query_one("SHOW TIME ZONE", &[]).await?.get(0);
/// assert_eq!(tz, "UTC");
/// # db.close(std::time::Duration::from_secs(1)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AfterConnect(Arc<AfterConnectFn>);

impl AfterConnect {
    /// A hook running `f` on every new connection.
    pub fn new<F>(f: F) -> Self
    where
        F: for<'c> Fn(&'c PgConn) -> HookFuture<'c> + Send + Sync + 'static,
    {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for AfterConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterConnect(..)")
    }
}

/// The future a before-acquire check returns: `Ok(true)` hands the connection out.
pub type CheckFuture<'c> = Pin<
    Box<dyn Future<Output = Result<bool, Box<dyn std::error::Error + Send + Sync>>> + Send + 'c>,
>;

type BeforeAcquireFn = dyn for<'c> Fn(&'c PgConn) -> CheckFuture<'c> + Send + Sync;

/// The application's check of a connection before each acquire hands it out (after the
/// pool's own checks): `Ok(true)` hands it out; `Ok(false)`, an error, a panic, or not
/// finishing within the acquire timeout closes it, and the acquire takes another connection
/// within the same deadline.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = pgwarden_testdb::PgServer::shared()?;
/// use pgwarden::{BeforeAcquire, ConnectOptions, PgConnector, Pool, PoolOptions};
///
/// let mut co = ConnectOptions::default();
/// // Hand out only connections to a server that accepts writes.
/// co.before_acquire = Some(BeforeAcquire::new(|conn| {
///     Box::pin(async move {
///         let row = conn.query_one("SELECT pg_is_in_recovery()", &[]).await?;
///         Ok(!row.get::<_, bool>(0))
///     })
/// }));
/// let connector = PgConnector::new(&server.pg_config("postgres"), pgwarden::SslMode::Disable, None, co)?;
/// let pool = Pool::new(connector, PoolOptions::sized(1, 0));
/// let conn = pool.get().await?;
/// # drop(conn);
/// # pool.close(std::time::Duration::from_secs(1)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct BeforeAcquire(pub(crate) Arc<BeforeAcquireFn>);

impl BeforeAcquire {
    /// A check running `f` before each acquire hands a connection out.
    pub fn new<F>(f: F) -> Self
    where
        F: for<'c> Fn(&'c PgConn) -> CheckFuture<'c> + Send + Sync + 'static,
    {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for BeforeAcquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeAcquire(..)")
    }
}

/// What happens to a connection coming back to the pool ([`AfterRelease`]'s decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Release {
    /// Back to the idle connections (after the usual reset if it came back dirty).
    Keep,
    /// `ROLLBACK` and `DISCARD ALL` first: session settings, temporary tables, prepared
    /// statements and advisory locks are dropped.
    Reset,
    /// Closed.
    Close,
}

/// The future an after-release hook returns.
pub type ReleaseFuture<'c> = Pin<
    Box<dyn Future<Output = Result<Release, Box<dyn std::error::Error + Send + Sync>>> + Send + 'c>,
>;

type AfterReleaseFn = dyn for<'c> Fn(&'c PgConn) -> ReleaseFuture<'c> + Send + Sync;

/// The application's decision on each connection coming back: keep, reset or close. It runs
/// in the pool's background worker (never in the releasing task), bounded by the pool's
/// reset timeout; an error, a panic or a hang closes the connection. With this hook set every
/// release goes through the worker, which costs a task hop per checkout.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = pgwarden_testdb::PgServer::shared()?;
/// use pgwarden::{AfterRelease, ConnectOptions, PgConnector, Pool, PoolOptions, Release};
///
/// let mut co = ConnectOptions::default();
/// // Sessions that created temporary tables are reset before anyone else gets them.
/// co.after_release = Some(AfterRelease::new(|conn| {
///     Box::pin(async move {
///         let row = conn
///             .query_one("SELECT count(*) FROM pg_class WHERE relpersistence = 't'", &[])
///             .await?;
///         Ok(if row.get::<_, i64>(0) > 0 { Release::Reset } else { Release::Keep })
///     })
/// }));
/// let connector = PgConnector::new(&server.pg_config("postgres"), pgwarden::SslMode::Disable, None, co)?;
/// let pool = Pool::new(connector, PoolOptions::sized(1, 0));
/// drop(pool.get().await?);
/// # pool.close(std::time::Duration::from_secs(1)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AfterRelease(pub(crate) Arc<AfterReleaseFn>);

impl AfterRelease {
    /// A hook deciding with `f` what happens to each connection coming back.
    pub fn new<F>(f: F) -> Self
    where
        F: for<'c> Fn(&'c PgConn) -> ReleaseFuture<'c> + Send + Sync + 'static,
    {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for AfterRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterRelease(..)")
    }
}

/// Runs the before-acquire check (the pool bounds it and catches a panic).
pub(crate) async fn before_acquire(
    hook: &BeforeAcquire,
    conn: &PgConn,
    target: &str,
) -> Result<bool, ConnectError> {
    (hook.0)(conn).await.map_err(|e| {
        ConnectError::transient(target, format!("the before-acquire check failed: {e}"))
    })
}

/// Runs the after-release hook and carries out its decision (the pool bounds it).
pub(crate) async fn after_release(
    hook: &AfterRelease,
    conn: &PgConn,
    target: &str,
    discard_all: bool,
) -> Result<(), ConnectError> {
    // A statement still in flight or a transaction left open is ended first: the hook's
    // statements would queue behind it or run inside it.
    if conn.needs_reset() {
        conn.reset_session(discard_all)
            .await
            .map_err(|e| ConnectError::transient(target, e))?;
    }
    let decision = AssertUnwindSafe(async { (hook.0)(conn).await })
        .catch_unwind()
        .await;
    let fail = |what: String| Err(ConnectError::transient(target, what));
    match decision {
        Ok(Ok(Release::Keep)) => {
            if conn.needs_reset() {
                // The hook's own raw use.
                conn.reset_session(discard_all)
                    .await
                    .map_err(|e| ConnectError::transient(target, e))?;
            }
            Ok(())
        }
        Ok(Ok(Release::Reset)) => {
            let _ = conn.client_marking_raw();
            conn.reset_session(true)
                .await
                .map_err(|e| ConnectError::transient(target, e))
        }
        Ok(Ok(Release::Close)) => fail("the after-release hook closed it".into()),
        Ok(Err(e)) => fail(format!("the after-release hook failed: {e}")),
        Err(_) => fail("the after-release hook panicked".into()),
    }
}

/// Runs `DB_CONNECT_INIT_SQL` and the after-connect hook on a new connection, within the
/// connect timeout. On failure the caller drops `conn`, which closes it.
pub(crate) async fn after_connect(
    init_sql: Option<&str>,
    hook: Option<&AfterConnect>,
    connect_timeout: Duration,
    conn: &PgConn,
    label: &str,
) -> Result<(), ConnectError> {
    // Cancellation safety: until the hook has finished with nothing in flight, a statement it
    // sent may still run on the server after the connection is dropped (a backend busy in a
    // statement does not notice its client left): the kill switch cancels it. Pulled on a
    // timeout here, and when the pool's own connect bound drops this future.
    let mut unfinished = Unfinished(Some(conn.kill_switch()));
    let work = async {
        if let Some(sql) = init_sql {
            conn.run_init_sql(sql)
                .await
                .map_err(|e| init_sql_error(label, &e))?;
        }
        if let Some(hook) = hook {
            // Called inside the future, so a panic in the call itself is caught too.
            let run = AssertUnwindSafe(async { (hook.0)(conn).await }).catch_unwind();
            match run.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(ConnectError::transient(
                        label,
                        format!("the after-connect hook failed: {e}"),
                    ))
                }
                Err(_) => {
                    return Err(ConnectError::permanent(
                        label,
                        "the after-connect hook panicked",
                    ))
                }
            }
        }
        let settled = conn
            .settle_after_init()
            .await
            .map_err(|e| ConnectError::from_pg(label, &e))?;
        if !settled {
            return Err(ConnectError::permanent(
                label,
                "the after-connect hook left a transaction open or a statement running",
            ));
        }
        Ok(())
    };
    match tokio::time::timeout(connect_timeout, work).await {
        Ok(r) => {
            if conn.in_flight() == 0 {
                unfinished.0 = None;
            }
            r
        }
        Err(_) => Err(ConnectError::transient(
            label,
            format!(
                "DB_CONNECT_INIT_SQL or the after-connect hook did not finish within {}ms (DB_CONNECT_TIMEOUT)",
                connect_timeout.as_millis()
            ),
        )),
    }
}

/// Pulls the kill switch of a connection whose hook did not finish cleanly.
struct Unfinished(Option<KillSwitch>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(k) = self.0.take() {
            k.pull();
        }
    }
}

/// A failure of `DB_CONNECT_INIT_SQL` (the SQL itself is not repeated: it may carry secrets).
/// A syntax, access or data error would fail on every connection: permanent.
fn init_sql_error(label: &str, e: &tokio_postgres::Error) -> ConnectError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let message = format!(
                "DB_CONNECT_INIT_SQL failed: {} (SQLSTATE {code})",
                db.message()
            );
            if code.starts_with("42") || code.starts_with("22") {
                ConnectError::permanent(label, message)
            } else {
                ConnectError::transient(label, message)
            }
        }
        None => ConnectError::from_pg(label, e),
    }
}
