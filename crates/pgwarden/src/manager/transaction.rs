//! Transactions whose whole body is rerun on serialization failures and deadlocks.

use std::future::{Future, IntoFuture};
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::time::Instant;

use super::call::{bounded, checkout, Ctx, Retrying};
use super::op::refused_as_read_only;
use super::route::Marking;
use super::tx::{rolled_back, Shared, Tx};
use super::tx_options::TxOptions;
use super::PoolManager;
use crate::conn::PgConn;
use crate::error::Error;
use crate::pool::PooledConnection;
use crate::retry::{classify, Verdict};

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

impl PoolManager {
    /// Runs `body` in a transaction and commits it; `.await` what this returns, after setting
    /// [`TxCall::options`] if the transaction needs them. On a serialization failure (40001) or
    /// a deadlock (40P01) — in the body or at COMMIT — the transaction is rolled back and the
    /// **whole body** runs again, with the same options, within the retry attempts and budget;
    /// a single statement is never retried alone. Any other error rolls back and is returned.
    ///
    /// The body is a closure written `|tx| async move { … }`: it gets an owned [`Tx`] for each
    /// attempt and may be called again, so it is `FnMut`. Values it uses are captured by
    /// reference (`let name = &name;` before the closure) or cloned inside it. (Rust 1.85's
    /// async closures, `async |tx| { … }`, would let the body borrow from the closure, but the
    /// future such a closure returns cannot be required to be `Send` on stable Rust, and a
    /// transaction's future must be `Send` to be spawned.)
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = pgwarden_testdb::PgServer::shared()?;
    /// # let url = server.url(&server.create_database(None)?);
    /// # let config = pgwarden::Config::from_vars([("DATABASE_URL", url.as_str()), ("DB_POOL_MIN", "0")])?;
    /// # let db = pgwarden::PoolManager::from_config(&config).await?;
    /// # db.execute("CREATE TABLE acct (id int PRIMARY KEY, bal int)", &[]).await?;
    /// # db.execute("INSERT INTO acct VALUES (1, 100), (2, 0)", &[]).await?;
    /// let amount = 10;
    /// let moved: u64 = db
    ///     .transaction(|tx| async move {
    ///         tx.execute("UPDATE acct SET bal = bal - $1 WHERE id = 1", &[&amount]).await?;
    ///         tx.execute("UPDATE acct SET bal = bal + $1 WHERE id = 2", &[&amount]).await
    ///     })
    ///     .await?;
    /// assert_eq!(moved, 1);
    /// # db.close(std::time::Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The body's error; [`Error::OutcomeUnknown`] when the connection was lost during COMMIT;
    /// [`Error::RolledBack`] when a statement failed but the body still returned `Ok`, or the
    /// body kept its [`Tx`] past its end; [`Error::RetriesExhausted`] when reruns ran out.
    ///
    /// # Cancellation
    /// Dropping the future rolls the transaction back: its connection goes back marked
    /// in-transaction and the pool rolls it back before reuse.
    // A plain function: leak detection reports the caller's file and line.
    #[track_caller]
    pub fn transaction<F, Fut, T>(&self, body: F) -> TxCall<'_, F>
    where
        // Stated here, not only where the call is awaited, so that the closure's argument
        // type is inferred.
        F: FnMut(Tx) -> Fut + Send,
        Fut: Future<Output = Result<T, Error>> + Send,
        T: Send,
    {
        TxCall {
            db: self,
            body,
            options: TxOptions::new(),
            at: Location::caller(),
        }
    }
}

/// A transaction from [`PoolManager::transaction`]; `.await` it. By default it begins with
/// `BEGIN` alone (the server's default isolation level and access mode); set
/// [`TxCall::options`] to choose them.
#[must_use = "a transaction does nothing until it is awaited"]
pub struct TxCall<'a, F> {
    db: &'a PoolManager,
    body: F,
    options: TxOptions,
    /// Where `transaction()` was called, for leak detection.
    at: &'static Location<'static>,
}

impl<F> std::fmt::Debug for TxCall<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxCall")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<F> TxCall<'_, F> {
    /// The transaction's isolation level and access mode, carried by its `BEGIN` on every
    /// attempt. A `READ ONLY` transaction still runs on the read-write server; a write in it
    /// fails with 25006, which is returned, not rerun.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = pgwarden_testdb::PgServer::shared()?;
    /// # let url = server.url("postgres");
    /// # let config = pgwarden::Config::from_vars([("DATABASE_URL", url.as_str()), ("DB_POOL_MIN", "0")])?;
    /// # let db = pgwarden::PoolManager::from_config(&config).await?;
    /// use pgwarden::{IsolationLevel, TxOptions};
    ///
    /// let level: String = db
    ///     .transaction(|tx| async move {
    ///         Ok(tx.query_one("SHOW transaction_isolation", &[]).await?.get(0))
    ///     })
    ///     .options(TxOptions::new().isolation(IsolationLevel::Serializable).read_only(true))
    ///     .await?;
    /// assert_eq!(level, "serializable");
    /// # db.close(std::time::Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn options(mut self, options: TxOptions) -> Self {
        self.options = options;
        self
    }
}

impl<'a, F, Fut, T> IntoFuture for TxCall<'a, F>
where
    F: FnMut(Tx) -> Fut + Send + 'a,
    Fut: Future<Output = Result<T, Error>> + Send + 'a,
    T: Send + 'a,
{
    type Output = Result<T, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        let TxCall {
            db,
            mut body,
            options,
            at,
        } = self;
        Box::pin(async move {
            let begin = options.begin_sql();
            let mut retrying = Retrying::new(db, "transaction");
            loop {
                let (n, deadline) = (retrying.attempt(), retrying.deadline());
                let outcome = db
                    .tx_attempt(&mut body, &options, &begin, n, deadline, at)
                    .await;
                if let Some(result) = retrying.next(outcome).await {
                    return result;
                }
            }
        })
    }
}

impl PoolManager {
    async fn tx_attempt<T, F, Fut>(
        &self,
        body: &mut F,
        options: &TxOptions,
        begin: &str,
        n: u32,
        deadline: Instant,
        at: &'static Location<'static>,
    ) -> Result<T, (Error, Verdict)>
    where
        F: FnMut(Tx) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        // A transaction may write: only a read-write server serves it.
        let (mut conn, id) = checkout(self, deadline, n, Marking::Write).await?;
        PooledConnection::watch_leak(&mut conn, at);
        // Nothing has run before BEGIN is answered: any failure of it may be retried.
        conn.begin(begin).await.map_err(|pg| {
            let v = classify(&pg, true, false, false);
            (Error::query(pg), v)
        })?;
        // Cancellation safety: if this future is dropped from here on, the connection goes
        // back marked in-transaction (when the last handle is dropped) and the pool rolls it
        // back before reuse.
        let shared = Arc::new(Shared::new(conn, self));
        let out = body(Tx::new(Arc::clone(&shared))).await;
        // No statement may start from here on (through a handle the body kept).
        shared.over.store(true, Relaxed);
        let (result, conn) = match Arc::try_unwrap(shared) {
            Ok(shared) => {
                let result = self.end(&shared, out, false).await;
                let discard = shared.discard.load(Relaxed);
                (result, Some((shared.conn, discard)))
            }
            Err(shared) => {
                // The body kept its handle (returned it, or moved it into a task): roll back.
                // The connection goes back to the pool when that handle is dropped.
                (self.end(&shared, out, true).await, None)
            }
        };
        match conn {
            Some((conn, true)) => PooledConnection::discard(conn),
            Some((conn, false)) => drop(conn),
            None => {}
        }
        match result {
            // Asked for READ ONLY: a 25006 is the transaction's own refusal, not a standby's.
            Err((e, v)) if options.is_read_only() => Err((e, v)),
            // Refused as read-only: the transaction rolled back, so the whole body reruns on
            // the read-write server, as after a serialization failure.
            Err((e, _)) if refused_as_read_only(self, id, Marking::Write, &e).await => {
                Err((e, Verdict::Retry))
            }
            r => r,
        }
    }

    /// Commits or rolls back after the body returned `out` (`kept`: a handle outlived the
    /// body). Sets the shared discard flag when the connection must be closed.
    async fn end<T>(
        &self,
        shared: &Shared,
        out: Result<T, Error>,
        kept: bool,
    ) -> Result<T, (Error, Verdict)> {
        let pg: &PgConn = &shared.conn;
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
        let abandoned = pg.in_flight() > 0;
        let discard = shared.discard.load(Relaxed);
        if out.is_ok() && !kept && !abandoned && !discard {
            // A savepoint dropped just before the body returned is rolled back to first. (A
            // failure is recorded and makes the transaction roll back below.)
            let _ = shared.flush_pending(0).await;
        }
        let failed = shared.take_failure();
        let mut discard = shared.discard.load(Relaxed);
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
                (Ok(_), _) if abandoned || kept => {
                    // A statement's future was dropped inside the body: it may still fail and
                    // abort the transaction, and COMMIT would then quietly roll back. A handle
                    // kept past the body could run statements after COMMIT.
                    let (r, d) = finish(false).await;
                    discard = d || r.is_err();
                    let reason = if kept {
                        "the body kept its transaction handle past its end"
                    } else {
                        "a statement in the body was abandoned before it finished"
                    };
                    Err((rolled_back(reason, None), Verdict::Fail))
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
        if discard {
            shared.discard.store(true, Relaxed);
        }
        result
    }
}
