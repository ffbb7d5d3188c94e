//! Statements whose rows are read as a stream: started here, counted in flight until the last
//! row (or the error) is read, so a stream dropped half-read leaves the connection marked and
//! the pool cancels the statement and rolls back before reuse.

use tokio_postgres::types::ToSql;

use super::cleanliness::{tracked, InFlight};
use super::PgConn;

impl PgConn {
    /// Starts `sql` and returns its rows as a stream. On success the in-flight count stays
    /// raised until [`PgConn::stream_ended`]: until then the connection needs a reset.
    pub(crate) async fn start_stream(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<tokio_postgres::RowStream, tokio_postgres::Error> {
        self.executing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        if let Some((text, typed)) = self.unnamed(sql, params) {
            // Cache off: one self-contained batch of the unnamed statement, as for the other
            // calls — a named statement prepared in one round trip and bound in the next can
            // land on two server connections behind a transaction-mode pooler.
            let guard = InFlight::start(&self.in_flight);
            return match self.client.query_typed_raw(text, typed).await {
                // Cancellation safety: as below.
                Ok(rows) => Ok(rows),
                Err(e) => {
                    guard.done();
                    Err(e)
                }
            };
        }
        self.mark_if_transaction_control(sql);
        let stmt = if self.caching {
            self.prepare_cached(sql).await?
        } else {
            tracked!(self, Box::pin(self.client.prepare(sql)))?
        };
        self.mark_execution_sent();
        let guard = InFlight::start(&self.in_flight);
        match self.client.query_raw(&stmt, params.iter().copied()).await {
            // Cancellation safety: not `done` — the statement is running until its stream
            // ends; dropped before that, the connection stays marked.
            Ok(rows) => Ok(rows),
            Err(e) => {
                guard.done();
                Err(e)
            }
        }
    }

    /// The stream started by [`PgConn::start_stream`] was read to its end (or its error):
    /// the statement is over.
    pub(crate) fn stream_ended(&self) {
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
