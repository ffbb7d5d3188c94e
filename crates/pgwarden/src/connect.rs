//! The real connector: tokio-postgres over TCP (rustls) or a Unix socket, and the connection
//! type it hands out, which tracks its own cleanliness.
//!
//! tokio-postgres does not expose the transaction status the server reports after every
//! statement, so [`PgConn`] keeps its own: statements run through its methods are counted while
//! in flight (a future dropped mid-statement leaves the count up), transactions opened with
//! [`PgConn::transaction`] are open until their commit or rollback completes, and anything the
//! pool cannot see — the raw client, simple-protocol batches, transaction control written as
//! SQL — marks the connection for a reset. A connection that needs one gets a bounded
//! `ROLLBACK` (after a CancelRequest when a statement was left in flight) before anyone else
//! sees it.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_postgres::config::Host;
use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, Client, Row, Statement, ToStatement, Transaction};

use crate::config::SslMode;
use crate::error::ConnectError;
use crate::pool::{Connector, KillSwitch};
use crate::statements::{CacheCounters, CacheStats, StatementCache};
use crate::tls::{MakeRustls, TlsError};

/// What is reset on a connection that was used in ways the pool cannot see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResetPolicy {
    /// Only the transaction state (`ROLLBACK`). Session state — `SET`, temporary tables,
    /// advisory locks, `LISTEN` — stays with the connection. Default.
    #[default]
    Rollback,
    /// `ROLLBACK` then `DISCARD ALL`, which also drops prepared statements, temporary tables,
    /// session settings, advisory locks and `LISTEN` registrations.
    DiscardAll,
}

/// How connections are opened (beyond the target itself).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// One handshake to one host (TCP, TLS, authentication). Default: 5 s.
    pub connect_timeout: Duration,
    /// `application_name` of every connection. Default: `pgwarden`.
    pub application_name: Option<String>,
    /// TCP keepalive idle time (tokio-postgres's own default is 2 h). Default: 30 s.
    pub keepalive_idle: Duration,
    /// What a reset does. Default: [`ResetPolicy::Rollback`].
    pub reset_policy: ResetPolicy,
    /// Prepared statements cached per connection (LRU); 0 disables the cache. Default: 1000.
    pub statement_cache_size: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            application_name: Some("pgwarden".to_owned()),
            keepalive_idle: Duration::from_secs(30),
            reset_policy: ResetPolicy::Rollback,
            statement_cache_size: 1000,
        }
    }
}

struct HostTarget {
    label: String,
    config: tokio_postgres::Config,
}

/// Opens tokio-postgres connections to one target, trying its hosts in turn, each within the
/// connect timeout.
pub struct PgConnector {
    hosts: Vec<HostTarget>,
    tls: MakeRustls,
    opts: ConnectOptions,
    cache_counters: Arc<CacheCounters>,
}

impl std::fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnector")
            .field("target", &self.target())
            .finish_non_exhaustive()
    }
}

impl PgConnector {
    /// A connector for `pg` (its own `sslmode` is ignored: `ssl_mode` decides).
    ///
    /// # Errors
    /// When the TLS settings cannot be honoured (verify-* without a usable root certificate).
    pub fn new(
        pg: &tokio_postgres::Config,
        ssl_mode: SslMode,
        root_cert: Option<&Path>,
        opts: ConnectOptions,
    ) -> Result<Self, TlsError> {
        let tls = MakeRustls::new(ssl_mode, root_cert)?;
        let hosts = split_hosts(pg, ssl_mode, &opts);
        Ok(Self {
            hosts,
            tls,
            opts,
            cache_counters: Arc::default(),
        })
    }

    /// Statement cache counters of every connection this connector opened.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache_counters.snapshot()
    }

    fn new_cache(&self) -> Mutex<StatementCache<Statement>> {
        Mutex::new(StatementCache::new(
            self.opts.statement_cache_size,
            Arc::clone(&self.cache_counters),
        ))
    }

    /// The options.
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }
}

/// One tokio-postgres config per host, so each host gets the whole connect timeout for its
/// whole handshake (tokio-postgres's own timeout covers only the TCP connect).
fn split_hosts(
    pg: &tokio_postgres::Config,
    ssl_mode: SslMode,
    opts: &ConnectOptions,
) -> Vec<HostTarget> {
    let hosts = pg.get_hosts();
    let ports = pg.get_ports();
    let hostaddrs = pg.get_hostaddrs();
    let n = hosts.len().max(hostaddrs.len()).max(1);
    (0..n)
        .map(|i| {
            let mut c = tokio_postgres::Config::new();
            if let Some(u) = pg.get_user() {
                c.user(u);
            }
            if let Some(p) = pg.get_password() {
                c.password(p);
            }
            if let Some(d) = pg.get_dbname() {
                c.dbname(d);
            }
            if let Some(o) = pg.get_options() {
                c.options(o);
            }
            match (&opts.application_name, pg.get_application_name()) {
                (Some(name), _) => {
                    c.application_name(name);
                }
                (None, Some(name)) => {
                    c.application_name(name);
                }
                (None, None) => {}
            }
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            let (label, unix) = match hosts.get(i) {
                Some(Host::Tcp(h)) => {
                    c.host(h);
                    (format!("{h}:{port}"), false)
                }
                Some(Host::Unix(p)) => {
                    c.host_path(p);
                    (format!("{}/.s.PGSQL.{port}", p.display()), true)
                }
                None => (String::from("?"), false),
            };
            let label = match hostaddrs.get(i) {
                Some(addr) => {
                    c.hostaddr(*addr);
                    if hosts.is_empty() {
                        format!("{addr}:{port}")
                    } else {
                        label
                    }
                }
                None => label,
            };
            c.port(port);
            // TLS is never attempted over a Unix socket (as libpq).
            c.ssl_mode(if unix {
                tokio_postgres::config::SslMode::Disable
            } else {
                MakeRustls::pg_mode(ssl_mode)
            });
            c.connect_timeout(opts.connect_timeout);
            c.keepalives(true);
            c.keepalives_idle(opts.keepalive_idle);
            c.keepalives_interval(Duration::from_secs(10));
            c.keepalives_retries(3);
            c.target_session_attrs(pg.get_target_session_attrs());
            c.channel_binding(pg.get_channel_binding());
            let db = pg.get_dbname().unwrap_or("");
            HostTarget {
                label: format!("{label}/{db}"),
                config: c,
            }
        })
        .collect()
}

impl Connector for PgConnector {
    type Conn = PgConn;

    async fn connect(&self) -> Result<PgConn, ConnectError> {
        let mut last = None;
        for h in &self.hosts {
            let attempt = tokio::time::timeout(
                self.opts.connect_timeout,
                h.config.connect(self.tls.clone()),
            )
            .await;
            match attempt {
                Ok(Ok((client, connection))) => {
                    let label = h.label.clone();
                    let driver = tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(target = %label, error = %e, "connection ended with an error");
                        }
                    });
                    return Ok(PgConn {
                        cancel: client.cancel_token(),
                        client,
                        tls: self.tls.clone(),
                        driver: driver.abort_handle(),
                        reset_policy: self.opts.reset_policy,
                        cache: self.new_cache(),
                        in_flight: AtomicU32::new(0),
                        in_tx: AtomicBool::new(false),
                        raw: AtomicBool::new(false),
                    });
                }
                Ok(Err(e)) => last = Some(ConnectError::from_pg(&h.label, &e)),
                Err(_) => {
                    last = Some(ConnectError::transient(
                        &h.label,
                        format!(
                            "handshake timed out after {}ms (DB_CONNECT_TIMEOUT)",
                            self.opts.connect_timeout.as_millis()
                        ),
                    ));
                }
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::permanent("?", "no host to connect to")))
    }

    fn hosts(&self) -> u32 {
        self.hosts.len() as u32
    }

    fn target(&self) -> String {
        self.hosts
            .iter()
            .map(|h| h.label.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn is_closed(&self, conn: &PgConn) -> bool {
        conn.client.is_closed()
    }

    fn needs_reset(&self, conn: &PgConn) -> bool {
        conn.needs_reset()
    }

    async fn validate<'a>(&'a self, conn: &'a PgConn) -> Result<(), ConnectError> {
        conn.client
            .check_connection()
            .await
            .map_err(|e| ConnectError::from_pg(self.target(), &e))
    }

    async fn reset<'a>(&'a self, conn: &'a PgConn) -> Result<(), ConnectError> {
        let err = |e: tokio_postgres::Error| ConnectError::from_pg(self.target(), &e);
        if conn.in_flight.load(Relaxed) > 0 {
            // A statement was abandoned mid-flight: stop it on the server first, so the
            // ROLLBACK below does not queue behind it. Once cancel_query returns, the server
            // has signalled the backend: the cancel lands on that statement or, if it had
            // already ended, is ignored while the backend waits for the next command. It can
            // never hit a later statement.
            conn.cancel
                .cancel_query(self.tls.clone())
                .await
                .map_err(err)?;
        }
        conn.client.batch_execute("ROLLBACK").await.map_err(err)?;
        if conn.raw.load(Relaxed) && self.opts.reset_policy == ResetPolicy::DiscardAll {
            conn.client
                .batch_execute("DISCARD ALL")
                .await
                .map_err(err)?;
            // The server dropped every prepared statement. (The Close each dropped handle
            // sends is harmless: closing a nonexistent statement is not an error.)
            let stale: Vec<Statement> = conn.cache().drain();
            drop(stale);
        }
        conn.in_flight.store(0, Relaxed);
        conn.in_tx.store(false, Relaxed);
        conn.raw.store(false, Relaxed);
        Ok(())
    }

    fn kill(&self, conn: &PgConn) -> KillSwitch {
        let cancel = conn.cancel.clone();
        let driver = conn.driver.clone();
        let tls = self.tls.clone();
        KillSwitch::new(move || match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(2), cancel.cancel_query(tls))
                        .await;
                    driver.abort();
                });
            }
            Err(_) => driver.abort(),
        })
    }
}

/// SQL the connection can run: text (checked for transaction control) or a prepared statement.
pub trait Sql: ToStatement + Sync {
    /// The SQL text, when known.
    fn text(&self) -> Option<&str>;
    /// The prepared statement, when this is one.
    fn prepared(&self) -> Option<&Statement> {
        None
    }
}

impl Sql for str {
    fn text(&self) -> Option<&str> {
        Some(self)
    }
}

impl Sql for String {
    fn text(&self) -> Option<&str> {
        Some(self)
    }
}

impl Sql for Statement {
    fn text(&self) -> Option<&str> {
        None
    }
    fn prepared(&self) -> Option<&Statement> {
        Some(self)
    }
}

/// 0A000 "cached plan must not change result type": a cached statement outlived a schema
/// change.
fn is_stale_plan(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code().code() == "0A000"
            && db
                .message()
                .contains("cached plan must not change result type")
    })
}

/// True when `sql` starts with a transaction-control keyword (after blanks and comments).
fn is_transaction_control(sql: &str) -> bool {
    let mut s = sql.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    let word: String = s
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_uppercase();
    matches!(
        word.as_str(),
        "BEGIN"
            | "START"
            | "COMMIT"
            | "END"
            | "ROLLBACK"
            | "ABORT"
            | "SAVEPOINT"
            | "RELEASE"
            | "PREPARE"
    )
}

/// A connection handed out by a [`crate::Pool`] of [`PgConnector`]. Its statement methods mirror
/// tokio-postgres's and keep the connection's cleanliness tracked.
pub struct PgConn {
    client: Client,
    cancel: CancelToken,
    tls: MakeRustls,
    driver: AbortHandle,
    reset_policy: ResetPolicy,
    /// Lock rule: held only to look up or insert, never across an `.await`.
    cache: Mutex<StatementCache<Statement>>,
    /// Statements sent through the tracked methods and not yet answered.
    in_flight: AtomicU32,
    /// A transaction opened with `transaction()` has not finished.
    in_tx: AtomicBool,
    /// Used in ways the pool cannot see through: reset before reuse.
    raw: AtomicBool,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("closed", &self.client.is_closed())
            .field("needs_reset", &self.needs_reset())
            .finish()
    }
}

/// Decrements the in-flight count only when the statement finished (not when its future was
/// dropped): an abandoned statement leaves the connection marked.
struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    fn start(c: &'a AtomicU32) -> Self {
        c.fetch_add(1, Relaxed);
        Self(c)
    }
    fn done(self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl PgConn {
    fn cache(&self) -> MutexGuard<'_, StatementCache<Statement>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Statements in this connection's cache.
    pub fn cached_statements(&self) -> usize {
        self.cache().len()
    }

    /// The prepared statement for `sql`, from the cache or prepared (and cached) now.
    ///
    /// # Errors
    /// The server's error preparing it, or a closed connection.
    pub async fn prepare_cached(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.cache().get(sql) {
            return Ok(s);
        }
        self.note(sql);
        let stmt = self.tracked(self.client.prepare(sql)).await?;
        let evicted = self.cache().insert(sql, stmt.clone());
        // Dropping the evicted statement queues its Close on this connection.
        drop(evicted);
        Ok(stmt)
    }

    /// Runs `run` with the statement for `sql`: cached when the text is known and the cache is
    /// on. When the server says a cached plan went stale (0A000 "cached plan must not change
    /// result type", after a schema change), the statement is dropped, prepared again and run
    /// once more — safe, since the failed execution did nothing.
    async fn with_statement<T, R, F, Fut>(
        &self,
        sql: &T,
        run: F,
    ) -> Result<R, tokio_postgres::Error>
    where
        T: Sql + ?Sized,
        F: Fn(Statement) -> Fut,
        Fut: Future<Output = Result<R, tokio_postgres::Error>>,
    {
        self.note(sql);
        let text = match (sql.prepared(), sql.text()) {
            (Some(stmt), _) => return self.tracked(run(stmt.clone())).await,
            (None, Some(text)) => text,
            (None, None) => unreachable!("Sql gives a text or a statement"),
        };
        if !self.cache().enabled() {
            let stmt = self.tracked(self.client.prepare(text)).await?;
            return self.tracked(run(stmt)).await;
        }
        let stmt = self.prepare_cached(text).await?;
        match self.tracked(run(stmt)).await {
            Err(e) if is_stale_plan(&e) => {
                drop(self.cache().remove(text));
                let stmt = self.prepare_cached(text).await?;
                self.tracked(run(stmt)).await
            }
            other => other,
        }
    }

    /// True when the connection may be inside a transaction or have a statement in flight.
    pub fn needs_reset(&self) -> bool {
        self.in_flight.load(Relaxed) > 0 || self.in_tx.load(Relaxed) || self.raw.load(Relaxed)
    }

    /// The reset policy this connection was opened with.
    pub fn reset_policy(&self) -> ResetPolicy {
        self.reset_policy
    }

    /// The raw tokio-postgres client. Anything done through it is invisible to the pool, so the
    /// connection is reset (ROLLBACK, and DISCARD ALL when so configured) when it comes back.
    pub fn client(&self) -> &Client {
        self.raw.store(true, Relaxed);
        &self.client
    }

    /// A token to cancel the statement running on this connection.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// The TLS connector, for [`CancelToken::cancel_query`].
    pub fn tls(&self) -> MakeRustls {
        self.tls.clone()
    }

    async fn tracked<F: Future>(&self, f: F) -> F::Output {
        // Cancellation safety: dropping this future before `done` leaves the count raised,
        // so the connection is reset (cancel + ROLLBACK) before reuse.
        let guard = InFlight::start(&self.in_flight);
        let out = f.await;
        guard.done();
        out
    }

    fn note<T: Sql + ?Sized>(&self, sql: &T) {
        if sql.text().is_some_and(is_transaction_control) {
            self.raw.store(true, Relaxed);
        }
    }

    /// Runs a statement and returns its rows (tokio-postgres's `query`).
    ///
    /// # Errors
    /// The server's error, or a closed connection.
    pub async fn query<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.with_statement(sql, |s| async move { self.client.query(&s, params).await })
            .await
    }

    /// Runs a statement returning exactly one row.
    ///
    /// # Errors
    /// As [`PgConn::query`], and when the statement returns no row or several.
    pub async fn query_one<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        self.with_statement(
            sql,
            |s| async move { self.client.query_one(&s, params).await },
        )
        .await
    }

    /// Runs a statement returning at most one row.
    ///
    /// # Errors
    /// As [`PgConn::query`], and when the statement returns several rows.
    pub async fn query_opt<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        self.with_statement(
            sql,
            |s| async move { self.client.query_opt(&s, params).await },
        )
        .await
    }

    /// Runs a statement and returns the number of rows it affected.
    ///
    /// # Errors
    /// As [`PgConn::query`].
    pub async fn execute<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.with_statement(
            sql,
            |s| async move { self.client.execute(&s, params).await },
        )
        .await
    }

    /// Prepares a statement (closed on the server when the last clone is dropped).
    ///
    /// # Errors
    /// As [`PgConn::query`].
    pub async fn prepare(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        self.note(sql);
        self.tracked(self.client.prepare(sql)).await
    }

    /// Runs one or more statements with the simple protocol. The pool cannot see what they
    /// did to the transaction state, so the connection is reset when it comes back.
    ///
    /// # Errors
    /// As [`PgConn::query`].
    pub async fn batch_execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.raw.store(true, Relaxed);
        self.tracked(self.client.batch_execute(sql)).await
    }

    /// Begins a transaction. It is rolled back unless committed; the connection counts as
    /// dirty until the commit or rollback has completed.
    ///
    /// # Errors
    /// As [`PgConn::query`].
    pub async fn transaction(&mut self) -> Result<PgTransaction<'_>, tokio_postgres::Error> {
        self.in_tx.store(true, Relaxed);
        let guard = InFlight::start(&self.in_flight);
        let tx = self.client.transaction().await?;
        guard.done();
        Ok(PgTransaction {
            tx,
            in_tx: &self.in_tx,
        })
    }
}

/// A transaction on a [`PgConn`]: derefs to tokio-postgres's [`Transaction`].
pub struct PgTransaction<'a> {
    tx: Transaction<'a>,
    in_tx: &'a AtomicBool,
}

impl<'a> std::ops::Deref for PgTransaction<'a> {
    type Target = Transaction<'a>;
    fn deref(&self) -> &Transaction<'a> {
        &self.tx
    }
}

impl<'a> std::ops::DerefMut for PgTransaction<'a> {
    fn deref_mut(&mut self) -> &mut Transaction<'a> {
        &mut self.tx
    }
}

impl PgTransaction<'_> {
    /// Commits. Once this returns `Ok`, the connection is clean again.
    ///
    /// # Errors
    /// The server's error (the transaction is then over, rolled back), or a lost connection —
    /// in which case the commit's outcome is unknown.
    pub async fn commit(self) -> Result<(), tokio_postgres::Error> {
        let in_tx = self.in_tx;
        self.tx.commit().await?;
        in_tx.store(false, Relaxed);
        Ok(())
    }

    /// Rolls back. Once this returns `Ok`, the connection is clean again.
    ///
    /// # Errors
    /// The server's error, or a lost connection.
    pub async fn rollback(self) -> Result<(), tokio_postgres::Error> {
        let in_tx = self.in_tx;
        self.tx.rollback().await?;
        in_tx.store(false, Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_recognised_past_blanks_and_comments() {
        for sql in [
            "BEGIN",
            "  begin;",
            "start transaction isolation level serializable",
            "-- comment\nCOMMIT",
            "/* x */ rollback",
            "/* a */ -- b\n  SAVEPOINT s1",
            "END",
            "abort",
            "release savepoint s",
            "PREPARE TRANSACTION 'x'",
        ] {
            assert!(is_transaction_control(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "insert into begin_log values (1)",
            "beginning",
            "",
            "-- BEGIN",
            "/* BEGIN */ SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert!(!is_transaction_control(sql), "{sql}");
        }
    }
}
