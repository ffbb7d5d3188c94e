//! Transactions: the manager's `BEGIN` / `COMMIT`, and [`PgConn::transaction`] whose
//! statements are tracked and bounded like every other.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement, Transaction};

use super::api::{at_most_one, exactly_one, statement_error};
use super::cancel::{Canceller, CANCEL_GRACE};
use super::cleanliness::{tracked, InFlight};
use super::sniff::is_transaction_control;
use super::{PgConn, Sql};

impl PgConn {
    /// `BEGIN` (with the transaction's options) for the manager's transaction API; the
    /// connection counts as dirty until [`PgConn::finish`] completes.
    pub(crate) async fn begin(&self, begin_sql: &str) -> Result<(), tokio_postgres::Error> {
        self.in_tx.store(true, Relaxed);
        tracked!(self, self.client.batch_execute(begin_sql))
    }

    /// A `SAVEPOINT`, `RELEASE` or `ROLLBACK TO` the manager's transaction writes: inside a
    /// transaction opened with [`PgConn::begin`], which [`PgConn::finish`] still ends, so the
    /// connection is not marked as used raw.
    pub(crate) async fn savepoint_control(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        tracked!(self, self.client.batch_execute(sql))
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
    /// dirty until the commit or rollback has completed. Its statements are tracked like every
    /// other (a dropped statement future leaves the connection marked, so it is cancelled and
    /// rolled back before reuse) and each runs under [`crate::ConnectOptions::query_timeout`].
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
            track: Tracking {
                in_flight: &self.in_flight,
                in_tx: &self.in_tx,
                raw: &self.raw,
                cancel: &self.cancel,
                query_timeout: self.query_timeout,
            },
            failed: Mutex::new(None),
        })
    }
}

/// The connection's bookkeeping, borrowed by its open transaction (which holds the client).
#[derive(Clone, Copy)]
struct Tracking<'a> {
    in_flight: &'a AtomicU32,
    in_tx: &'a AtomicBool,
    raw: &'a AtomicBool,
    cancel: &'a Canceller,
    query_timeout: Duration,
}

/// Why a bounded statement did not return a result.
enum Failure {
    Pg(tokio_postgres::Error),
    /// The query timeout fired; `ended`: the statement provably stopped after the cancel.
    Timeout {
        ended: bool,
    },
}

impl Tracking<'_> {
    /// Runs `fut` counted in flight and under the query timeout. On expiry the statement is
    /// cancelled (a confirmed cancel) and given what is left of one grace period to end.
    ///
    /// Cancellation safety: if this future is dropped, or the statement does not end after
    /// the cancel, the in-flight count stays raised: the pool cancels and rolls back before
    /// reuse, and [`PgTransaction::commit`] refuses to commit.
    async fn bounded<R>(
        self,
        fut: impl Future<Output = Result<R, tokio_postgres::Error>>,
    ) -> Result<R, Failure> {
        let guard = InFlight::start(self.in_flight);
        let mut fut = std::pin::pin!(fut);
        if let Ok(out) = tokio::time::timeout(self.query_timeout, fut.as_mut()).await {
            guard.done();
            return out.map_err(Failure::Pg);
        }
        let grace_end = Instant::now() + CANCEL_GRACE;
        // Boxed: the cancel's connect-and-handshake future is large and rarely needed.
        let cancelled = matches!(
            Box::pin(tokio::time::timeout_at(grace_end, self.cancel.confirmed())).await,
            Ok(Ok(()))
        );
        if !cancelled {
            return Err(Failure::Timeout { ended: false });
        }
        match tokio::time::timeout_at(grace_end, fut).await {
            Ok(out) => {
                guard.done();
                match out {
                    // It finished just as the timeout fired: its result stands.
                    Ok(v) => Ok(v),
                    Err(e) if e.code().is_some_and(|c| c.code() == "57014") => {
                        Err(Failure::Timeout { ended: true })
                    }
                    Err(e) => Err(Failure::Pg(e)),
                }
            }
            Err(_) => Err(Failure::Timeout { ended: false }),
        }
    }

    /// Stops a statement left in flight (its future was dropped), so that what follows does
    /// not queue behind it. False when the cancel could not be confirmed.
    async fn cancel_abandoned(self) -> bool {
        if self.in_flight.load(Relaxed) == 0 {
            return true;
        }
        matches!(
            Box::pin(tokio::time::timeout(CANCEL_GRACE, self.cancel.confirmed())).await,
            Ok(Ok(()))
        )
    }

    /// After a COMMIT or ROLLBACK answered by the server: nothing is in flight (everything
    /// sent before it has been answered) and no transaction is open.
    fn finished(self) {
        self.in_flight.store(0, Relaxed);
        self.in_tx.store(false, Relaxed);
    }

    /// The library's error for a failure. `commit`: the failure was the COMMIT's, whose
    /// outcome is unknown when it did not provably end.
    fn error(self, f: Failure, commit: bool) -> crate::Error {
        match f {
            Failure::Pg(e) if commit && e.is_closed() => crate::Error::OutcomeUnknown { error: e },
            Failure::Pg(e) => statement_error(e),
            Failure::Timeout { ended } => crate::Error::QueryTimeout {
                after: self.query_timeout,
                ended,
                unknown: commit && !ended,
            },
        }
    }
}

/// A transaction on a [`PgConn`]. Its statements are counted in flight and bounded by the
/// query timeout; a statement that failed or was abandoned makes [`PgTransaction::commit`]
/// roll back and say so. Dropped without a commit, it is rolled back.
pub struct PgTransaction<'a> {
    tx: Transaction<'a>,
    track: Tracking<'a>,
    /// The first failure that aborted the transaction on the server (or may have).
    failed: Mutex<Option<(String, Option<String>)>>,
}

impl std::fmt::Debug for PgTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTransaction").finish_non_exhaustive()
    }
}

impl<'a> PgTransaction<'a> {
    /// Runs one statement of the transaction, recording a failure that aborts it: a server
    /// error, a lost connection, a timeout. (Client-side errors, such as a parameter of the
    /// wrong type, abort nothing.)
    async fn run<R>(
        &self,
        sql: Option<&str>,
        fut: impl Future<Output = Result<R, tokio_postgres::Error>>,
    ) -> Result<R, crate::Error> {
        if sql.is_some_and(is_transaction_control) {
            // COMMIT or ROLLBACK written as SQL ends the transaction behind the pool's back.
            self.track.raw.store(true, Relaxed);
        }
        self.track.bounded(fut).await.map_err(|f| {
            let aborts = match &f {
                Failure::Pg(e) => e.code().is_some() || e.is_closed(),
                Failure::Timeout { .. } => true,
            };
            let e = self.track.error(f, false);
            if aborts {
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.get_or_insert_with(|| (e.to_string(), e.code().map(str::to_owned)));
            }
            e
        })
    }

    /// Runs a statement and returns its rows.
    ///
    /// # Errors
    /// [`crate::Error::Query`] with the server's error, or [`crate::Error::QueryTimeout`];
    /// either aborts the transaction.
    pub async fn query<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, crate::Error> {
        self.run(sql.text(), self.tx.query(sql, params)).await
    }

    /// Runs a statement returning exactly one row (read to its end).
    ///
    /// # Errors
    /// As [`PgTransaction::query`], and [`crate::Error::RowCount`] for no row or several
    /// (which does not abort the transaction).
    pub async fn query_one<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, crate::Error> {
        exactly_one(self.query(sql, params).await?)
    }

    /// Runs a statement returning at most one row (read to its end).
    ///
    /// # Errors
    /// As [`PgTransaction::query_one`].
    pub async fn query_opt<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, crate::Error> {
        at_most_one(self.query(sql, params).await?)
    }

    /// Runs a statement and returns the number of rows it affected.
    ///
    /// # Errors
    /// As [`PgTransaction::query`].
    pub async fn execute<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, crate::Error> {
        self.run(sql.text(), self.tx.execute(sql, params)).await
    }

    /// Prepares a statement.
    ///
    /// # Errors
    /// As [`PgTransaction::query`].
    pub async fn prepare(&self, sql: &str) -> Result<Statement, crate::Error> {
        self.run(Some(sql), self.tx.prepare(sql)).await
    }

    /// Runs one or more statements with the simple protocol. The pool cannot see what they
    /// did to the transaction state, so the connection is reset when it comes back.
    ///
    /// # Errors
    /// As [`PgTransaction::query`].
    pub async fn batch_execute(&self, sql: &str) -> Result<(), crate::Error> {
        self.track.raw.store(true, Relaxed);
        self.run(None, self.tx.batch_execute(sql)).await
    }

    /// tokio-postgres's transaction, for what the methods above do not cover (savepoints,
    /// COPY, portals), and the connection marked as used raw: statements run through it are
    /// not tracked or bounded, so the connection is reset when it comes back.
    pub fn transaction_marking_raw(&mut self) -> &mut Transaction<'a> {
        self.track.raw.store(true, Relaxed);
        &mut self.tx
    }

    /// Commits. Once this returns `Ok`, the transaction committed and the connection is clean
    /// again. When a statement in it failed, timed out or was abandoned (its future dropped
    /// before it finished), COMMIT would only roll back: the transaction is rolled back instead
    /// and the error says so.
    ///
    /// # Errors
    /// [`crate::Error::RolledBack`] as above; the server's error (the transaction is then
    /// over, rolled back); [`crate::Error::QueryTimeout`]; [`crate::Error::OutcomeUnknown`]
    /// when the connection was lost during the COMMIT.
    pub async fn commit(self) -> Result<(), crate::Error> {
        let PgTransaction { tx, track, failed } = self;
        let failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
        let abandoned = track.in_flight.load(Relaxed) > 0;
        if failed.is_some() || abandoned {
            let (reason, code) = failed.unwrap_or_else(|| {
                (
                    "a statement in the transaction was abandoned before it finished".to_owned(),
                    None,
                )
            });
            // If the rollback fails the connection stays marked and the pool resets it; either
            // way nothing was committed.
            let _ = roll_back(tx, track).await;
            return Err(crate::Error::RolledBack { reason, code });
        }
        track
            .bounded(tx.commit())
            .await
            .map_err(|f| track.error(f, true))?;
        track.finished();
        Ok(())
    }

    /// Rolls back (after cancelling a statement left in flight). Once this returns `Ok`, the
    /// connection is clean again.
    ///
    /// # Errors
    /// The server's error, a timeout, or a lost connection.
    pub async fn rollback(self) -> Result<(), crate::Error> {
        let PgTransaction { tx, track, .. } = self;
        roll_back(tx, track).await
    }
}

/// ROLLBACK, after cancelling a statement left in flight so that it does not wait behind it.
async fn roll_back(tx: Transaction<'_>, track: Tracking<'_>) -> Result<(), crate::Error> {
    // An unconfirmed cancel leaves the ROLLBACK to wait (bounded) behind the statement.
    track.cancel_abandoned().await;
    track
        .bounded(tx.rollback())
        .await
        .map_err(|f| track.error(f, false))?;
    track.finished();
    Ok(())
}
