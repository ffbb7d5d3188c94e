//! `COPY ... FROM STDIN` and `COPY ... TO STDOUT`: started here and counted in flight until
//! the COPY provably ended, so a sink or stream dropped half-way leaves the connection marked
//! and the pool cancels and rolls back before reuse.

use bytes::Bytes;

use super::cleanliness::InFlight;
use super::PgConn;

impl PgConn {
    /// Starts a `COPY ... TO STDOUT`. On success the in-flight count stays raised until
    /// [`PgConn::copy_ended`].
    pub(crate) async fn start_copy_out(
        &self,
        sql: &str,
    ) -> Result<tokio_postgres::CopyOutStream, tokio_postgres::Error> {
        self.mark_if_transaction_control(sql);
        self.mark_execution_sent();
        let guard = InFlight::start(&self.in_flight);
        match self.client.copy_out(sql).await {
            // Cancellation safety: not `done` — the COPY runs until its stream ends.
            Ok(stream) => Ok(stream),
            Err(e) => {
                guard.done();
                Err(e)
            }
        }
    }

    /// Starts a `COPY ... FROM STDIN`. On success the in-flight count stays raised until
    /// [`PgConn::copy_ended`]. (Dropping the sink sends CopyFail: the server aborts the COPY.)
    pub(crate) async fn start_copy_in(
        &self,
        sql: &str,
    ) -> Result<tokio_postgres::CopyInSink<Bytes>, tokio_postgres::Error> {
        self.mark_if_transaction_control(sql);
        self.mark_execution_sent();
        let guard = InFlight::start(&self.in_flight);
        match self.client.copy_in(sql).await {
            // Cancellation safety: not `done` — the COPY is open until finished or failed.
            Ok(sink) => Ok(sink),
            Err(e) => {
                guard.done();
                Err(e)
            }
        }
    }

    /// The COPY started by [`PgConn::start_copy_out`] or [`PgConn::start_copy_in`] provably
    /// ended (the server answered its end): the connection is idle again.
    pub(crate) fn copy_ended(&self) {
        self.stream_ended();
    }
}
