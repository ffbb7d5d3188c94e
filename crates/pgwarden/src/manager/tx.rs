//! The handle a transaction body gets ([`Tx`]) and its nested transactions ([`Savepoint`]).

use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio_postgres::Row;

use super::call::{bounded, Ctx};
use super::op::Params;
use super::PoolManager;
use crate::conn::PgConn;
use crate::error::Error;
use crate::{PgConnector, PooledConnection};

/// What the manager and every handle of one transaction attempt share: the connection and
/// what happened on it.
pub(super) struct Shared {
    pub(super) conn: PooledConnection<PgConnector>,
    db: PoolManager,
    /// Lock rule: held only to read or update, never across an `.await`.
    state: Mutex<State>,
    /// A statement timed out and did not provably end: the connection must be closed.
    pub(super) discard: AtomicBool,
    /// The body returned and the transaction is being (or was) committed or rolled back: a
    /// handle that outlived the body must not run statements outside it.
    pub(super) over: AtomicBool,
}

#[derive(Default)]
struct State {
    /// The first failure that aborted the transaction on the server (or may have).
    failed: Option<Failed>,
    /// The outermost savepoint whose handle was dropped without commit or rollback: rolled back
    /// to (and released) before anything else runs. `Drop` cannot await, and nothing else runs
    /// on the connection meanwhile, so doing it then has the same effect.
    pending_rollback: Option<u32>,
}

struct Failed {
    reason: String,
    code: Option<String>,
    /// The lowest savepoint depth a failure happened at (0: outside any savepoint). Rolling
    /// back to a savepoint at this depth or lower undoes them all.
    depth: u32,
}

/// SQL name of the savepoint at `depth` (1 for the outermost). Generated, never user text:
/// savepoints nest strictly, so one name per depth is unique among those open.
fn savepoint_name(depth: u32) -> String {
    format!("pgwarden_sp_{depth}")
}

pub(super) fn rolled_back(reason: impl Into<String>, code: Option<String>) -> Error {
    Error::RolledBack {
        reason: reason.into(),
        code,
    }
}

impl Shared {
    pub(super) fn new(conn: PooledConnection<PgConnector>, db: &PoolManager) -> Self {
        Self {
            conn,
            db: db.clone(),
            state: Mutex::new(State::default()),
            discard: AtomicBool::new(false),
            over: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the first failure recorded, if any.
    pub(super) fn take_failure(&self) -> Option<(String, Option<String>)> {
        self.state().failed.take().map(|f| (f.reason, f.code))
    }

    /// Records a failure at savepoint `depth`.
    pub(super) fn note_failure(&self, reason: String, code: Option<String>, depth: u32) {
        let mut state = self.state();
        match &mut state.failed {
            Some(f) => f.depth = f.depth.min(depth),
            None => {
                state.failed = Some(Failed {
                    reason,
                    code,
                    depth,
                })
            }
        }
    }

    /// Runs one statement under the query timeout, recording a failure that aborts the
    /// transaction at savepoint `depth`.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, Error>>,
        depth: u32,
    ) -> Result<T, Error> {
        let ctx = Ctx {
            idempotent: false,
            in_transaction: true,
            commit: false,
            atomic: true,
        };
        let (r, discard) = bounded(&self.db.inner.opts, &self.conn, fut, ctx).await;
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
                self.note_failure(e.to_string(), e.code().map(str::to_owned), depth);
            }
            e
        })
    }

    /// Before a statement: refuses once the transaction is over, and rolls back to a savepoint
    /// whose handle was dropped. `depth`: the savepoint depth the caller runs at.
    pub(super) async fn ready(&self, depth: u32) -> Result<(), Error> {
        if self.over.load(Relaxed) {
            return Err(rolled_back(
                "the transaction is over: its handle was used after the body returned",
                None,
            ));
        }
        self.flush_pending(depth).await
    }

    /// Rolls back to a savepoint whose handle was dropped, if any.
    pub(super) async fn flush_pending(&self, depth: u32) -> Result<(), Error> {
        let pending = self.state().pending_rollback.take();
        match pending {
            Some(to) => self.roll_back_to(to, depth).await,
            None => Ok(()),
        }
    }

    /// `ROLLBACK TO` and `RELEASE` the savepoint at depth `to`: the failures inside it are
    /// undone with it.
    async fn roll_back_to(&self, to: u32, depth: u32) -> Result<(), Error> {
        let name = savepoint_name(to);
        let sql = format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}");
        self.control(&sql, depth).await?;
        let mut state = self.state();
        if state.failed.as_ref().is_some_and(|f| f.depth >= to) {
            state.failed = None;
        }
        Ok(())
    }

    /// A savepoint statement the library writes (never user text), so the connection is not
    /// marked as used raw.
    async fn control(&self, sql: &str, depth: u32) -> Result<(), Error> {
        let conn: &PgConn = &self.conn;
        self.bounded(
            async { conn.savepoint_control(sql).await.map_err(Error::query) },
            depth,
        )
        .await
    }
}

/// The transaction handed to a body of [`PoolManager::transaction`]: statements through the
/// connection's statement cache, each under the query timeout. A failed statement aborts the
/// transaction (unless a [`Savepoint`] around it is rolled back); the manager then rolls back
/// instead of committing.
///
/// Owned and `'static`, so that a body is written `|tx| async move { … }`. It is only valid
/// while the body runs: the manager commits when the body returns, and a handle kept past it
/// (returned, or moved into a task) makes the transaction roll back and its statements fail.
pub struct Tx {
    shared: Arc<Shared>,
    /// Savepoints open on this handle: statements run at this depth.
    depth: u32,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("savepoints", &self.depth)
            .finish_non_exhaustive()
    }
}

impl Tx {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared, depth: 0 }
    }

    async fn run<T>(&self, fut: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        self.shared.ready(self.depth).await?;
        self.shared.bounded(fut, self.depth).await
    }

    fn pg(&self) -> &PgConn {
        &self.shared.conn
    }

    /// Every row of a statement.
    ///
    /// # Errors
    /// [`Error::Query`] or [`Error::QueryTimeout`]; either aborts the transaction.
    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        let conn = self.pg();
        self.run(async { conn.query(sql, params).await.map_err(Error::query) })
            .await
    }

    /// Exactly one row.
    ///
    /// # Errors
    /// As [`Tx::query`], and [`Error::RowCount`] when the statement returns no row or several
    /// (which does not abort the transaction).
    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        self.run(self.pg().query_one(sql, params)).await
    }

    /// Zero or one row.
    ///
    /// # Errors
    /// As [`Tx::query_one`].
    pub async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        self.run(self.pg().query_opt(sql, params)).await
    }

    /// The number of rows affected.
    ///
    /// # Errors
    /// As [`Tx::query`].
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        let conn = self.pg();
        self.run(async { conn.execute(sql, params).await.map_err(Error::query) })
            .await
    }

    /// A nested transaction (`SAVEPOINT`, under a name the library generates): its work is
    /// kept by [`Savepoint::commit`] and undone by [`Savepoint::rollback`] — or by dropping the
    /// handle — while the outer transaction goes on. A statement that fails inside a savepoint
    /// that is then rolled back does not stop the outer transaction from committing.
    ///
    /// The savepoint borrows the transaction, so savepoints end innermost first; statements
    /// run through the savepoint (it derefs to [`Tx`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = pgwarden_testdb::PgServer::shared()?;
    /// # let url = server.url(&server.create_database(None)?);
    /// # let config = pgwarden::Config::from_vars([("DATABASE_URL", url.as_str()), ("DB_POOL_MIN", "0")])?;
    /// # let db = pgwarden::PoolManager::from_config(&config).await?;
    /// db.execute("CREATE TABLE doc_sp (id int PRIMARY KEY)", &[]).await?;
    /// db.transaction(|mut tx| async move {
    ///     tx.execute("INSERT INTO doc_sp VALUES (1)", &[]).await?;
    ///     let sp = tx.savepoint().await?;
    ///     // A duplicate key fails inside the savepoint only.
    ///     if sp.execute("INSERT INTO doc_sp VALUES (1)", &[]).await.is_err() {
    ///         sp.rollback().await?;
    ///     } else {
    ///         sp.commit().await?;
    ///     }
    ///     tx.execute("INSERT INTO doc_sp VALUES (2)", &[]).await
    /// })
    /// .await?;
    /// let n: i64 = db.query_one("SELECT count(*) FROM doc_sp", &[]).await?.get(0);
    /// assert_eq!(n, 2);
    /// # db.close(std::time::Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Tx::query`] (for the `SAVEPOINT` statement).
    pub async fn savepoint(&mut self) -> Result<Savepoint<'_>, Error> {
        let depth = self.depth + 1;
        self.shared.ready(self.depth).await?;
        let sql = format!("SAVEPOINT {}", savepoint_name(depth));
        self.shared.control(&sql, self.depth).await?;
        self.depth = depth;
        Ok(Savepoint {
            tx: self,
            depth,
            open: true,
        })
    }

    /// The connection the transaction runs on (for its row streams).
    pub(super) fn conn(&self) -> &PgConn {
        self.pg()
    }

    /// Starts a row stream's statement, bounded and recorded as every other statement.
    pub(super) async fn start_stream(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<tokio_postgres::RowStream, Error> {
        let conn = self.pg();
        self.run(async { conn.start_stream(sql, params).await.map_err(Error::query) })
            .await
    }

    /// A row stream's statement failed or was abandoned: the transaction cannot commit (unless
    /// the savepoint it ran in is rolled back).
    pub(super) fn note_failure(&self, reason: String, code: Option<String>) {
        self.shared.note_failure(reason, code, self.depth);
    }
}

/// A nested transaction from [`Tx::savepoint`]. Statements run through it (it derefs to
/// [`Tx`]); [`Savepoint::commit`] keeps its work (`RELEASE SAVEPOINT`),
/// [`Savepoint::rollback`] undoes it (`ROLLBACK TO SAVEPOINT`). Dropped without either, it is
/// rolled back: before the transaction's next statement or its commit (`Drop` cannot wait for
/// the server, and nothing else runs on the connection in between).
///
/// # Cancellation
/// A `commit()` or `rollback()` future dropped after its statement was sent leaves that
/// statement in flight, as any abandoned statement does: the whole transaction then rolls back
/// and says so. Dropped before it was first polled, the savepoint is rolled back as if dropped.
#[must_use = "a savepoint dropped at once is rolled back at once"]
pub struct Savepoint<'t> {
    tx: &'t mut Tx,
    depth: u32,
    /// Neither committed nor rolled back yet: dropping it rolls back to it.
    open: bool,
}

impl std::fmt::Debug for Savepoint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Savepoint")
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

impl Deref for Savepoint<'_> {
    type Target = Tx;
    fn deref(&self) -> &Tx {
        self.tx
    }
}

impl Savepoint<'_> {
    /// A savepoint inside this one (see [`Tx::savepoint`]).
    ///
    /// # Errors
    /// As [`Tx::savepoint`].
    pub async fn savepoint(&mut self) -> Result<Savepoint<'_>, Error> {
        self.tx.savepoint().await
    }

    /// Marks the savepoint ended before its statement is sent: from here a dropped future
    /// leaves the statement in flight, and the whole transaction rolls back.
    fn close(&mut self) {
        self.open = false;
        self.tx.depth = self.depth - 1;
    }

    /// Keeps the savepoint's work in the transaction (`RELEASE SAVEPOINT`). When a statement
    /// in it failed, that would fail the transaction: it is rolled back to the savepoint
    /// instead, the outer transaction goes on, and the error says so.
    ///
    /// # Errors
    /// [`Error::RolledBack`] as above; otherwise as [`Tx::query`].
    pub async fn commit(mut self) -> Result<(), Error> {
        self.close();
        let (shared, depth) = (&self.tx.shared, self.depth);
        // First the savepoints dropped inside this one, which may undo a failure.
        shared.ready(depth).await?;
        let failed = shared
            .state()
            .failed
            .as_ref()
            .filter(|f| f.depth >= depth)
            .map(|f| (f.reason.clone(), f.code.clone()));
        if let Some((reason, code)) = failed {
            shared.roll_back_to(depth, depth).await?;
            return Err(rolled_back(reason, code));
        }
        let sql = format!("RELEASE SAVEPOINT {}", savepoint_name(depth));
        shared.control(&sql, depth).await
    }

    /// Undoes the savepoint's work (`ROLLBACK TO SAVEPOINT`, then `RELEASE`); the outer
    /// transaction goes on, as if no statement in the savepoint had run or failed.
    ///
    /// # Errors
    /// As [`Tx::query`].
    pub async fn rollback(mut self) -> Result<(), Error> {
        self.close();
        let shared = &self.tx.shared;
        shared.ready(self.depth).await?;
        shared.roll_back_to(self.depth, self.depth).await
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if self.open {
            self.close();
            let mut state = self.tx.shared.state();
            // A savepoint dropped earlier and still pending is an inner one: rolling back to
            // this one undoes it too.
            let to = state
                .pending_rollback
                .map_or(self.depth, |d| d.min(self.depth));
            state.pending_rollback = Some(to);
        }
    }
}
