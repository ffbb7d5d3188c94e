//! Transactions whose whole body is rerun on serialization failures and deadlocks.

use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

use tokio::time::Instant;
use tokio_postgres::Row;

use super::call::{bounded, checkout, refused_as_read_only, Ctx, Params, Retrying};
use super::route::Marking;
use super::{ManagerOptions, PoolManager};
use crate::conn::PgConn;
use crate::error::Error;
use crate::pool::PooledConnection;
use crate::retry::{classify, Verdict};

/// The future a transaction body returns.
pub type TxFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 't>>;

/// The transaction handed to a body: statements through the connection's statement cache,
/// each under the query timeout.
pub struct Tx<'t> {
    conn: &'t PgConn,
    opts: &'t ManagerOptions,
    /// The first failure that aborted the transaction on the server, and its SQLSTATE.
    failed: Mutex<Option<(String, Option<String>)>>,
    /// A statement timed out and did not provably end: the connection must be closed.
    discard: AtomicBool,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl<'t> Tx<'t> {
    async fn run<T>(&self, fut: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let ctx = Ctx {
            idempotent: false,
            in_transaction: true,
            commit: false,
            atomic: true,
        };
        let (r, discard) = bounded(self.opts, self.conn, fut, ctx).await;
        if discard {
            self.discard.store(true, Relaxed);
        }
        r.map_err(|(e, _)| {
            // Server errors, a lost connection and a timeout abort the transaction; client-side
            // errors (a wrong row count, a parameter of the wrong type) do not.
            let aborts = match &e {
                Error::Query { error, .. } | Error::OutcomeUnknown { error } => {
                    error.code().is_some() || error.is_closed()
                }
                Error::QueryTimeout { .. } => true,
                _ => false,
            };
            if aborts {
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                if failed.is_none() {
                    *failed = Some((e.to_string(), e.code().map(str::to_owned)));
                }
            }
            e
        })
    }

    /// Every row of a statement.
    ///
    /// # Errors
    /// [`Error::Query`] or [`Error::QueryTimeout`]; either aborts the transaction.
    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.run(async { self.conn.query(sql, params).await.map_err(Error::query) })
            .await
    }

    /// Exactly one row.
    ///
    /// # Errors
    /// As [`Tx::query`], and [`Error::RowCount`] when the statement returns no row or several
    /// (which does not abort the transaction).
    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        self.run(self.conn.query_one(sql, params)).await
    }

    /// Zero or one row.
    ///
    /// # Errors
    /// As [`Tx::query_one`].
    pub async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        self.run(self.conn.query_opt(sql, params)).await
    }

    /// The number of rows affected.
    ///
    /// # Errors
    /// As [`Tx::query`].
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        self.run(async { self.conn.execute(sql, params).await.map_err(Error::query) })
            .await
    }

    /// The connection the transaction runs on (for its row streams).
    pub(super) fn conn(&self) -> &'t PgConn {
        self.conn
    }

    /// Starts a row stream's statement, bounded and recorded as every other statement.
    pub(super) async fn start_stream(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<tokio_postgres::RowStream, Error> {
        self.run(async {
            self.conn
                .start_stream(sql, params)
                .await
                .map_err(Error::query)
        })
        .await
    }

    /// A row stream's statement failed or was abandoned: the transaction cannot commit.
    pub(super) fn note_failure(&self, reason: String, code: Option<String>) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.is_none() {
            *failed = Some((reason, code));
        }
    }
}

/// A failed COMMIT: rerun the body on 40001 / 40P01 (the transaction rolled back); keep
/// "outcome unknown" for a lost COMMIT; otherwise final.
fn commit_failure(e: Error, v: Verdict) -> (Error, Verdict) {
    if rerunnable(e.code()) {
        (e, Verdict::Retry)
    } else {
        (e, v)
    }
}

/// 40001 serialization failure, 40P01 deadlock: the transaction rolled back and running the
/// whole body again may succeed.
fn rerunnable(code: Option<&str>) -> bool {
    crate::sqlstate::transaction_rerun(code)
}

fn rolled_back(reason: impl Into<String>, code: Option<String>) -> Error {
    Error::RolledBack {
        reason: reason.into(),
        code,
    }
}

impl PoolManager {
    /// Runs `body` in a transaction and commits it. On a serialization failure (40001) or a
    /// deadlock (40P01) — in the body or at COMMIT — the transaction is rolled back and the
    /// **whole body** runs again, within the retry attempts and budget; a single statement is
    /// never retried alone. Any other error rolls back and is returned.
    ///
    /// ```no_run
    /// # async fn demo(db: &pgwarden::PoolManager) -> Result<(), pgwarden::Error> {
    /// let moved: u64 = db
    ///     .transaction(|tx| {
    ///         Box::pin(async move {
    ///             tx.execute("UPDATE acct SET bal = bal - 10 WHERE id = 1", &[]).await?;
    ///             tx.execute("UPDATE acct SET bal = bal + 10 WHERE id = 2", &[]).await
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The body's error; [`Error::OutcomeUnknown`] when the connection was lost during COMMIT;
    /// [`Error::RolledBack`] when a statement failed but the body still returned `Ok`;
    /// [`Error::RetriesExhausted`] when reruns ran out.
    // A plain function returning a future: `#[track_caller]` does nothing on an `async fn`,
    // and leak detection reports the caller's file and line.
    #[track_caller]
    pub fn transaction<'a, T, F>(
        &'a self,
        mut body: F,
    ) -> impl Future<Output = Result<T, Error>> + Send + 'a
    where
        T: Send + 'a,
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send + 'a,
    {
        let at = Location::caller();
        async move {
            let mut retrying = Retrying::new(self, "transaction");
            loop {
                let (n, deadline) = (retrying.attempt(), retrying.deadline());
                let outcome = self.tx_attempt(&mut body, n, deadline, at).await;
                if let Some(result) = retrying.next(outcome).await {
                    return result;
                }
            }
        }
    }

    async fn tx_attempt<T, F>(
        &self,
        body: &mut F,
        n: u32,
        deadline: Instant,
        at: &'static Location<'static>,
    ) -> Result<T, (Error, Verdict)>
    where
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T>,
    {
        // A transaction may write: only a read-write server serves it.
        let (mut conn, id) = checkout(self, deadline, n, Marking::Write).await?;
        PooledConnection::watch_leak(&mut conn, at);
        // Nothing has run before BEGIN is answered: any failure of it may be retried.
        conn.begin().await.map_err(|pg| {
            let v = classify(&pg, true, false, false);
            (Error::query(pg), v)
        })?;
        // Cancellation safety: if this future is dropped from here on, the connection goes
        // back marked in-transaction and the pool rolls it back before reuse.
        let (result, discard) = {
            let pg: &PgConn = &conn;
            let tx = Tx {
                conn: pg,
                opts: &self.inner.opts,
                failed: Mutex::new(None),
                discard: AtomicBool::new(false),
            };
            let out = body(&tx).await;
            let failed = tx.failed.lock().unwrap_or_else(|p| p.into_inner()).take();
            let abandoned = pg.in_flight() > 0;
            let finish = |commit: bool| {
                let ctx = Ctx {
                    idempotent: false,
                    in_transaction: true,
                    commit,
                    atomic: true,
                };
                let fut = async move { pg.finish(commit).await.map_err(Error::query) };
                bounded(&self.inner.opts, pg, fut, ctx)
            };
            let mut discard = tx.discard.load(Relaxed);
            let result = if discard {
                // A statement timed out and may still run: close the connection, which rolls the
                // transaction back on the server.
                Err(match (out, failed) {
                    (Err(e), _) => (e, Verdict::Fail),
                    (Ok(_), Some((reason, code))) => (rolled_back(reason, code), Verdict::Fail),
                    (Ok(_), None) => (rolled_back("a statement timed out", None), Verdict::Fail),
                })
            } else {
                match (out, failed) {
                    (Ok(_), _) if abandoned => {
                        // A statement's future was dropped inside the body: it may still fail and
                        // abort the transaction, and COMMIT would then quietly roll back.
                        let (r, d) = finish(false).await;
                        discard = d || r.is_err();
                        Err((
                            rolled_back(
                                "a statement in the body was abandoned before it finished",
                                None,
                            ),
                            Verdict::Fail,
                        ))
                    }
                    (Ok(v), None) => {
                        let (r, d) = finish(true).await;
                        discard = d;
                        match r {
                            Ok(()) => Ok(v),
                            Err((e, v)) => Err(commit_failure(e, v)),
                        }
                    }
                    (Ok(_), Some((reason, code))) => {
                        // The body swallowed a failed statement. COMMIT would quietly roll back;
                        // say so instead.
                        let (r, d) = finish(false).await;
                        discard = d || r.is_err();
                        Err((rolled_back(reason, code), Verdict::Fail))
                    }
                    (Err(e), _) => {
                        // If the rollback fails the connection stays marked and the pool resets it.
                        let (r, d) = finish(false).await;
                        discard = d || r.is_err();
                        let v = if rerunnable(e.code()) {
                            Verdict::Retry
                        } else {
                            Verdict::Fail
                        };
                        Err((e, v))
                    }
                }
            };
            (result, discard)
        };
        if discard {
            PooledConnection::discard(conn);
        } else {
            drop(conn);
        }
        match result {
            // Refused as read-only: the transaction rolled back, so the whole body reruns on
            // the read-write server, as after a serialization failure.
            Err((e, _)) if refused_as_read_only(self, id, Marking::Write, &e).await => {
                Err((e, Verdict::Retry))
            }
            r => r,
        }
    }
}
