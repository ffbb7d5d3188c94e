//! Transactions: the manager's `BEGIN` / `COMMIT` and [`PgConn::transaction`].

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use tokio_postgres::Transaction;

use super::cleanliness::{tracked, InFlight};
use super::PgConn;

impl PgConn {
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
