//! The connection a pool of [`crate::PgConnector`] hands out: tokio-postgres's client plus the
//! bookkeeping that keeps it clean (statements in flight, open transaction, raw use) and its
//! statement cache.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::AbortHandle;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{CancelToken, Client, Row, Statement, ToStatement, Transaction};

use std::time::Duration;

use crate::pool::KillSwitch;
use crate::statements::StatementCache;
use crate::tls::MakeRustls;

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

/// A cached statement the server no longer honours: 0A000 "cached plan must not change result
/// type" after a schema change, or 26000 "prepared statement … does not exist" after a
/// `DISCARD ALL` / `DEALLOCATE` the cache did not see. Either way the execution did nothing.
fn is_stale_statement(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == "26000")
        || e.as_db_error().is_some_and(|db| {
            db.code().code() == "0A000"
                && db
                    .message()
                    .contains("cached plan must not change result type")
        })
}

/// The first word of `sql`, after blanks and comments.
pub(crate) fn first_keyword(sql: &str) -> &str {
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
    &s[..s.bytes().take_while(u8::is_ascii_alphabetic).count()]
}

/// True when `sql` starts with a transaction-control keyword (after blanks and comments).
fn is_transaction_control(sql: &str) -> bool {
    let word = first_keyword(sql);
    [
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
        "PREPARE",
    ]
    .iter()
    .any(|k| word.eq_ignore_ascii_case(k))
}

/// Parameter types tried, in order, for unnamed statements (cache size 0): the natural
/// PostgreSQL type of each common Rust type comes first for it (`i32` → int4, `&str` → text …).
pub(crate) const UNNAMED_PARAM_TYPES: &[Type] = &[
    Type::INT4,
    Type::INT8,
    Type::INT2,
    Type::TEXT,
    Type::BOOL,
    Type::FLOAT8,
    Type::FLOAT4,
    Type::BYTEA,
    Type::CHAR,
    Type::OID,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMP,
    Type::DATE,
    Type::TIME,
    Type::UUID,
    Type::NUMERIC,
    Type::INET,
    Type::INT4_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::BOOL_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::BYTEA_ARRAY,
];

/// Where to send a CancelRequest for a connection: the host it was opened to.
#[derive(Debug, Clone)]
pub(crate) enum CancelTarget {
    Tcp { host: String, port: u16 },
    Unix { path: std::path::PathBuf },
}

/// A stream whose shutdown also waits for the peer to close: used for CancelRequests, so that
/// "sent" means "the server has acted on it".
struct UntilEof<S> {
    inner: S,
    shut: bool,
}

impl<S> UntilEof<S> {
    fn new(inner: S) -> Self {
        Self { inner, shut: false }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for UntilEof<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for UntilEof<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.shut {
            std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            self.shut = true;
        }
        let mut scratch = [0u8; 256];
        loop {
            let mut rb = ReadBuf::new(&mut scratch);
            match std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb)) {
                Ok(()) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => {}
                // A reset after the server closed is as good as a close.
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// A connection handed out by a [`crate::Pool`] of [`PgConnector`]. Its statement methods mirror
/// tokio-postgres's and keep the connection's cleanliness tracked.
pub struct PgConn {
    client: Client,
    cancel: CancelToken,
    cancel_target: CancelTarget,
    tls: MakeRustls,
    driver: AbortHandle,
    /// Lock rule: held only to look up or insert, never across an `.await`.
    cache: Mutex<StatementCache<Statement>>,
    /// Statements sent through the tracked methods and not yet answered.
    in_flight: AtomicU32,
    /// A transaction opened with `transaction()` has not finished.
    in_tx: AtomicBool,
    /// The last statement got as far as its execution being sent (not only its preparation),
    /// on a connection that was open: before that point, a failure ran nothing.
    executing: AtomicBool,
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

/// Awaits a statement future with the connection's in-flight count raised.
///
/// Cancellation safety: dropping the enclosing future before the statement finishes leaves the
/// count raised, so the connection is reset (cancel + ROLLBACK) before reuse. (A macro, not an
/// async fn: awaiting in place keeps every call's future smaller.)
macro_rules! tracked {
    ($conn:expr, $fut:expr) => {{
        let guard = InFlight::start(&$conn.in_flight);
        let out = $fut.await;
        guard.done();
        out
    }};
}

impl PgConn {
    pub(crate) fn new(
        client: Client,
        driver: AbortHandle,
        tls: MakeRustls,
        cancel_target: CancelTarget,
        cache: Mutex<StatementCache<Statement>>,
    ) -> Self {
        Self {
            cancel: client.cancel_token(),
            cancel_target,
            client,
            tls,
            driver,
            cache,
            in_flight: AtomicU32::new(0),
            in_tx: AtomicBool::new(false),
            executing: AtomicBool::new(false),
            raw: AtomicBool::new(false),
        }
    }

    /// Statements sent through the tracked methods and not yet answered.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// True when the last statement's execution was sent. When false, its failure happened
    /// while preparing it, or the connection was already closed: nothing ran, and running it
    /// again cannot run it twice.
    pub(crate) fn reached_execution(&self) -> bool {
        self.executing.load(Relaxed)
    }

    fn executing_now(&self) {
        // A client already closed cannot send: the statement never reaches the server.
        self.executing.store(!self.client.is_closed(), Relaxed);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The cheapest round trip (a Sync message).
    pub(crate) async fn ping(&self) -> Result<(), tokio_postgres::Error> {
        self.client.check_connection().await
    }

    /// Brings the session back to a clean state: cancels a statement left in flight, rolls
    /// back any transaction, and with `discard_all` (when the client was used raw) also runs
    /// `DISCARD ALL`.
    pub(crate) async fn reset_session(&self, discard_all: bool) -> Result<(), String> {
        if self.in_flight.load(Relaxed) > 0 {
            // A statement was abandoned mid-flight: stop it on the server first, so the
            // ROLLBACK below does not queue behind it.
            self.cancel_confirmed()
                .await
                .map_err(|e| format!("cancelling an abandoned statement: {e}"))?;
        }
        let run = |sql: &'static str| async move {
            self.client
                .batch_execute(sql)
                .await
                .map_err(|e| format!("{sql}: {e}"))
        };
        run("ROLLBACK").await?;
        if discard_all && self.raw.load(Relaxed) {
            run("DISCARD ALL").await?;
            // The server dropped every prepared statement. (The Close each dropped handle
            // sends is harmless: closing a nonexistent statement is not an error.)
            let stale: Vec<Statement> = self.cache().drain();
            drop(stale);
        }
        self.in_flight.store(0, Relaxed);
        self.in_tx.store(false, Relaxed);
        self.raw.store(false, Relaxed);
        Ok(())
    }

    /// Cancels the running statement and closes the socket, even while someone holds the
    /// connection.
    pub(crate) fn kill_switch(&self) -> KillSwitch {
        let cancel = self.cancel.clone();
        let driver = self.driver.clone();
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

    /// Cancels the statement running on this connection and returns only once the server has
    /// acted on the request: PostgreSQL signals the backend, then closes the cancel connection,
    /// and this waits for that close (tokio-postgres's own `cancel_query` returns as soon as the
    /// request is written). So the cancel lands on the statement running now or — if that one
    /// already ended — is ignored while the backend waits for its next command; it cannot hit a
    /// statement sent after this returns.
    ///
    /// # Errors
    /// When the cancel connection cannot be made or the request not sent.
    pub async fn cancel_confirmed(&self) -> std::io::Result<()> {
        let sent = match &self.cancel_target {
            CancelTarget::Tcp { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                let tls = <MakeRustls as MakeTlsConnect<UntilEof<tokio::net::TcpStream>>>::make_tls_connect(
                    &mut self.tls.clone(),
                    host,
                )?;
                self.cancel
                    .cancel_query_raw(UntilEof::new(stream), tls)
                    .await
            }
            CancelTarget::Unix { path } => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                self.cancel
                    .cancel_query_raw(UntilEof::new(stream), tokio_postgres::NoTls)
                    .await
            }
        };
        sent.map_err(std::io::Error::other)
    }

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
        // Boxed: a miss is rare, and tokio-postgres's prepare future is large.
        let stmt = tracked!(self, Box::pin(self.client.prepare(sql)))?;
        let evicted = self.cache().insert(sql, stmt.clone());
        // Dropping the evicted statement queues its Close on this connection.
        drop(evicted);
        Ok(stmt)
    }

    /// With the statement cache off (size 0, for PgBouncer in transaction mode), a statement
    /// given as text runs as one self-contained batch — Parse, Bind, Describe, Execute, Sync of
    /// the unnamed statement — so nothing named outlives it and it cannot straddle two server
    /// connections; it is also one round trip instead of two. That needs each parameter's type
    /// up front: each is the first of [`UNNAMED_PARAM_TYPES`] its Rust type encodes as. When a
    /// parameter fits none (a custom type), `None`: the call prepares a named statement instead.
    #[allow(clippy::type_complexity)]
    fn unnamed<'a, 'p, T: Sql + ?Sized>(
        &self,
        sql: &'a T,
        params: &[&'p (dyn ToSql + Sync)],
    ) -> Option<(&'a str, Vec<(&'p (dyn ToSql + Sync), Type)>)> {
        let text = sql.text()?;
        if self.cache().enabled() {
            return None;
        }
        let mut scratch = bytes::BytesMut::new();
        let mut typed = Vec::with_capacity(params.len());
        for &p in params {
            let ty = UNNAMED_PARAM_TYPES.iter().find(|ty| {
                scratch.clear();
                p.to_sql_checked(ty, &mut scratch).is_ok()
            })?;
            typed.push((p, ty.clone()));
        }
        self.note(sql);
        // One batch: the execution is sent with the parse.
        self.executing_now();
        Some((text, typed))
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
        self.executing.store(false, Relaxed);
        // One await of `run` on the common path keeps this future (and every call's) small;
        // the rare paths are boxed.
        let (stmt, cached) = match (sql.prepared(), sql.text()) {
            (Some(stmt), _) => (stmt.clone(), None),
            (None, Some(text)) if !self.cache().enabled() => {
                let stmt = tracked!(self, Box::pin(self.client.prepare(text)))?;
                (stmt, None)
            }
            (None, Some(text)) => (self.prepare_cached(text).await?, Some(text)),
            (None, None) => unreachable!("Sql gives a text or a statement"),
        };
        self.executing_now();
        match (tracked!(self, run(stmt)), cached) {
            (Err(e), Some(text)) if is_stale_statement(&e) => {
                drop(self.cache().remove(text));
                if self.in_tx.load(Relaxed) || self.raw.load(Relaxed) {
                    // The failure aborted the transaction: running again inside it would only
                    // meet 25P02. The next use prepares afresh.
                    return Err(e);
                }
                Box::pin(async {
                    self.executing.store(false, Relaxed);
                    let stmt = self.prepare_cached(text).await?;
                    self.executing_now();
                    tracked!(self, run(stmt))
                })
                .await
            }
            (other, _) => other,
        }
    }

    /// True when the connection may be inside a transaction or have a statement in flight.
    pub fn needs_reset(&self) -> bool {
        self.in_flight.load(Relaxed) > 0 || self.in_tx.load(Relaxed) || self.raw.load(Relaxed)
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
        if let Some((text, typed)) = self.unnamed(sql, params) {
            return tracked!(self, Box::pin(self.client.query_typed(text, &typed)));
        }
        self.with_statement(sql, |s| async move { self.client.query(&s, params).await })
            .await
    }

    /// Runs a statement returning exactly one row. The statement always runs to its end (all
    /// rows are read) before a wrong row count is reported, so the connection is never left
    /// with the statement still running, and a write in it has committed.
    ///
    /// # Errors
    /// [`crate::Error::Query`] with the server's error; [`crate::Error::RowCount`] when the
    /// statement returned no row or several.
    pub async fn query_one<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, crate::Error> {
        let mut rows = self.query(sql, params).await.map_err(crate::Error::query)?;
        match rows.len() {
            1 => Ok(rows.pop().expect("one row")),
            got => Err(crate::Error::RowCount {
                expected: "exactly one",
                got,
            }),
        }
    }

    /// Runs a statement returning at most one row (read to its end, as [`PgConn::query_one`]).
    ///
    /// # Errors
    /// [`crate::Error::Query`] with the server's error; [`crate::Error::RowCount`] when the
    /// statement returned several rows.
    pub async fn query_opt<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, crate::Error> {
        let mut rows = self.query(sql, params).await.map_err(crate::Error::query)?;
        match rows.len() {
            0 => Ok(None),
            1 => Ok(rows.pop()),
            got => Err(crate::Error::RowCount {
                expected: "at most one",
                got,
            }),
        }
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
        if let Some((text, typed)) = self.unnamed(sql, params) {
            return tracked!(self, Box::pin(self.client.execute_typed(text, &typed)));
        }
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
        tracked!(self, self.client.prepare(sql))
    }

    /// Runs one or more statements with the simple protocol. The pool cannot see what they
    /// did to the transaction state, so the connection is reset when it comes back.
    ///
    /// # Errors
    /// As [`PgConn::query`].
    pub async fn batch_execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.raw.store(true, Relaxed);
        tracked!(self, self.client.batch_execute(sql))
    }

    /// `BEGIN` for the manager's transaction API; the connection counts as dirty until
    /// [`PgConn::finish`] completes.
    pub(crate) async fn begin(&self) -> Result<(), tokio_postgres::Error> {
        self.in_tx.store(true, Relaxed);
        tracked!(self, self.client.batch_execute("BEGIN"))
    }

    /// `COMMIT` or `ROLLBACK` of a transaction opened with [`PgConn::begin`]. On success the
    /// connection is clean again; on failure it stays marked for a reset.
    pub(crate) async fn finish(&self, commit: bool) -> Result<(), tokio_postgres::Error> {
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        tracked!(self, self.client.batch_execute(sql))?;
        self.in_tx.store(false, Relaxed);
        Ok(())
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
