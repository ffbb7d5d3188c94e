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

    /// After the after-connect hook: false when it left a transaction open or a statement in
    /// flight (the connection is then closed); otherwise the connection starts clean, so its
    /// session settings are not reset away as if used raw.
    pub(crate) fn settle_after_init(&self) -> bool {
        if self.in_flight.load(Relaxed) > 0 || self.in_tx.load(Relaxed) {
            return false;
        }
        self.raw.store(false, Relaxed);
        true
    }
}
