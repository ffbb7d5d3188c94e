//! A new connection's initialisation: `DB_CONNECT_INIT_SQL` and the state after the
//! after-connect hook.

use std::sync::atomic::Ordering::Relaxed;

use super::PgConn;

impl PgConn {
    /// Runs `DB_CONNECT_INIT_SQL` (simple protocol; several statements allowed). Not marked
    /// raw: the session settings it makes are meant to stay.
    pub(crate) async fn run_init_sql(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(sql).await
    }

    /// After the after-connect hook: `Ok(false)` when it left a tracked transaction open or a
    /// statement in flight (the connection is then closed). When it used the connection in
    /// ways the pool cannot see (raw client, batches), a `ROLLBACK` ends any transaction it
    /// left open. Either way the connection then starts clean, so the session settings the
    /// hook made are not reset away as if used raw.
    pub(crate) async fn settle_after_init(&self) -> Result<bool, tokio_postgres::Error> {
        if self.in_flight.load(Relaxed) > 0 || self.in_tx.load(Relaxed) {
            return Ok(false);
        }
        if self.raw.load(Relaxed) {
            self.client.batch_execute("ROLLBACK").await?;
            self.raw.store(false, Relaxed);
        }
        Ok(true)
    }
}
