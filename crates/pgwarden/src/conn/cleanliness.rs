//! Cleanliness state: what the pool asks before reuse (statements in flight, an open
//! transaction, raw use) and the reset that brings a session back to clean.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use tokio_postgres::Statement;

use super::sniff::is_transaction_control;
use super::{PgConn, Sql};

/// Decrements the in-flight count only when the statement finished (not when its future was
/// dropped): an abandoned statement leaves the connection marked.
pub(super) struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    pub(super) fn start(c: &'a AtomicU32) -> Self {
        c.fetch_add(1, Relaxed);
        Self(c)
    }
    pub(super) fn done(self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Awaits a statement future with the connection's in-flight count raised.
///
/// Cancellation safety: dropping the enclosing future before the statement finishes leaves the
/// count raised, so the connection is reset (cancel + ROLLBACK) before reuse. (A macro, not an
/// async fn: awaiting in place keeps every call's future smaller.)
macro_rules! tracked {
    ($conn:expr, $fut:expr) => {{
        let guard = $crate::conn::cleanliness::InFlight::start(&$conn.in_flight);
        let out = $fut.await;
        guard.done();
        out
    }};
}
pub(super) use tracked;

impl PgConn {
    /// Statements sent through the tracked methods and not yet answered.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// True when the last statement's execution was sent. When false, its failure happened
    /// while preparing it, or the connection was already closed: nothing ran, and running it
    /// again cannot run it twice.
    pub(crate) fn reached_execution(&self) -> bool {
        self.executing.load(Relaxed)
    }

    pub(super) fn mark_execution_sent(&self) {
        // A client already closed cannot send: the statement never reaches the server.
        self.executing.store(!self.client.is_closed(), Relaxed);
    }

    /// Brings the session back to a clean state: cancels a statement left in flight, rolls
    /// back any transaction, and with `discard_all` (when the client was used raw) also runs
    /// `DISCARD ALL`.
    pub(crate) async fn reset_session(&self, discard_all: bool) -> Result<(), String> {
        if self.in_flight.load(Relaxed) > 0 {
            // A statement was abandoned mid-flight: stop it on the server first, so the
            // ROLLBACK below does not queue behind it.
            self.cancel_confirmed()
                .await
                .map_err(|e| format!("cancelling an abandoned statement: {e}"))?;
        }
        let run = |sql: &'static str| async move {
            self.client
                .batch_execute(sql)
                .await
                .map_err(|e| format!("{sql}: {e}"))
        };
        run("ROLLBACK").await?;
        if discard_all && self.raw.load(Relaxed) {
            run("DISCARD ALL").await?;
            // The server dropped every prepared statement. (The Close each dropped handle
            // sends is harmless: closing a nonexistent statement is not an error.)
            let stale: Vec<Statement> = self.cache().drain();
            drop(stale);
        }
        self.in_flight.store(0, Relaxed);
        self.in_tx.store(false, Relaxed);
        self.raw.store(false, Relaxed);
        Ok(())
    }

    /// True when the connection may be inside a transaction or have a statement in flight.
    pub fn needs_reset(&self) -> bool {
        self.in_flight.load(Relaxed) > 0 || self.in_tx.load(Relaxed) || self.raw.load(Relaxed)
    }

    pub(super) fn mark_if_transaction_control<T: Sql + ?Sized>(&self, sql: &T) {
        if sql.text().is_some_and(is_transaction_control) {
            self.raw.store(true, Relaxed);
        }
    }
}
