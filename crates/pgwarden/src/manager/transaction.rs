//! Transactions whose whole body is rerun on serialization failures and deadlocks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use tokio::time::Instant;
use tokio_postgres::Row;

use super::call::Params;
use super::PoolManager;
use crate::conn::PgConn;
use crate::error::Error;
use crate::retry::{classify, RetryClock, Verdict};

/// The future a transaction body returns.
pub type TxFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 't>>;

/// The transaction handed to a body: statements through the connection's statement cache.
pub struct Tx<'t> {
    conn: &'t PgConn,
    /// The first statement failure (SQLSTATE and message), which aborted the transaction.
    failed: Mutex<Option<String>>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl<'t> Tx<'t> {
    fn note<T>(&self, r: Result<T, tokio_postgres::Error>) -> Result<T, Error> {
        r.map_err(|pg| {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            if failed.is_none() {
                let code = pg.code().map_or("", |c| c.code());
                *failed = Some(format!("{pg} [SQLSTATE {code}]"));
            }
            Error::Query(pg, 0)
        })
    }

    /// Every row of a statement.
    ///
    /// # Errors
    /// [`Error::Query`]; a failure aborts the transaction.
    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.note(self.conn.query(sql, params).await)
    }

    /// Exactly one row.
    ///
    /// # Errors
    /// As [`Tx::query`], and when the statement returns no row or several.
    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        self.note(self.conn.query_one(sql, params).await)
    }

    /// Zero or one row.
    ///
    /// # Errors
    /// As [`Tx::query`], and when the statement returns several rows.
    pub async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        self.note(self.conn.query_opt(sql, params).await)
    }

    /// The number of rows affected.
    ///
    /// # Errors
    /// As [`Tx::query`].
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        self.note(self.conn.execute(sql, params).await)
    }
}

/// 40001 serialization failure, 40P01 deadlock: the transaction rolled back and running the
/// whole body again may succeed.
fn rerunnable(code: Option<&str>) -> bool {
    matches!(code, Some("40001" | "40P01"))
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
    pub async fn transaction<T, F>(&self, mut body: F) -> Result<T, Error>
    where
        T: Send,
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send,
    {
        let started = Instant::now();
        let opts = &self.inner.opts;
        let mut clock = RetryClock::new(opts.retry_attempts, opts.retry_budget);
        let result = loop {
            let mut deadline = Instant::now() + self.inner.primary.options().acquire_timeout;
            if let Some(end) = clock.budget_end() {
                deadline = deadline.min(end);
            }
            match self.tx_attempt(&mut body, deadline).await {
                Ok(v) => break Ok(v),
                Err((e, Verdict::Retry)) => match clock.next_delay(Instant::now()) {
                    Some(delay) => {
                        self.inner.stats.retry();
                        tracing::debug!(error = %e, "rerunning the transaction body");
                        tokio::time::sleep(delay).await;
                    }
                    None if clock.retries() == 0 => break Err(e),
                    None => {
                        break Err(Error::RetriesExhausted {
                            attempts: clock.retries() + 1,
                            elapsed: started.elapsed(),
                            last: Box::new(e),
                        })
                    }
                },
                Err((e, _)) => break Err(e),
            }
        };
        self.inner.stats.call(started.elapsed(), &result);
        result
    }

    async fn tx_attempt<T, F>(&self, body: &mut F, deadline: Instant) -> Result<T, (Error, Verdict)>
    where
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T>,
    {
        let conn = self.inner.primary.get_until(deadline).await.map_err(|e| {
            let v = if e.is_transient() {
                Verdict::Retry
            } else {
                Verdict::Fail
            };
            (e, v)
        })?;
        // Nothing has run before BEGIN is answered: any failure of it may be retried.
        conn.begin().await.map_err(|pg| {
            let v = classify(&pg, true, false, false);
            (Error::Query(pg, 0), v)
        })?;
        // Cancellation safety: if this future is dropped from here on, the connection goes
        // back marked in-transaction and the pool rolls it back before reuse.
        let tx = Tx {
            conn: &conn,
            failed: Mutex::new(None),
        };
        let out = body(&tx).await;
        let failed = tx.failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (out, failed) {
            (Ok(v), None) => match conn.finish(true).await {
                Ok(()) => Ok(v),
                Err(pg) => {
                    let code = pg.code().map(|c| c.code().to_owned());
                    if rerunnable(code.as_deref()) {
                        Err((Error::Query(pg, 0), Verdict::Retry))
                    } else {
                        match classify(&pg, false, true, true) {
                            Verdict::OutcomeUnknown => {
                                Err((Error::OutcomeUnknown(pg), Verdict::OutcomeUnknown))
                            }
                            v => Err((Error::Query(pg, 0), v)),
                        }
                    }
                }
            },
            (Ok(_), Some(first)) => {
                // The body swallowed a failed statement. COMMIT would quietly roll back;
                // say so instead.
                let _ = conn.finish(false).await;
                Err((Error::RolledBack(first), Verdict::Fail))
            }
            (Err(e), _) => {
                // If the rollback fails the connection stays marked and the pool resets it.
                let _ = conn.finish(false).await;
                let v = if rerunnable(e.code()) {
                    Verdict::Retry
                } else {
                    Verdict::Fail
                };
                Err((e, v))
            }
        }
    }
}
