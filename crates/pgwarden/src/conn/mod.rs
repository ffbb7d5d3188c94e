//! The connection a pool of [`crate::PgConnector`] hands out: tokio-postgres's client plus the
//! bookkeeping that keeps it clean (statements in flight, open transaction, raw use) and its
//! statement cache.
//!
//! One file per concern: [`sniff`] reads SQL text, [`cancel`] is the confirmed cancel,
//! [`unnamed`] runs statements without naming them (cache off), [`cleanliness`] is the state
//! that says whether the connection needs a reset, [`cache`] is the statement-cache glue,
//! [`api`] the statement methods an application calls, [`transaction`] the transactions, and
//! [`copy`] the start of `COPY` in and out.

mod api;
mod cache;
mod cancel;
mod cleanliness;

mod copy;

mod deadline;

mod init;
mod sniff;
mod stream;
mod transaction;
mod unnamed;

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_postgres::{Client, Statement};

use crate::statements::StatementCache;
use crate::tls::MakeRustls;

pub(crate) use api::{at_most_one, exactly_one};
pub(crate) use cache::is_stale_statement;
pub(crate) use cancel::CancelTarget;
use cancel::Canceller;
pub use sniff::Sql;
pub(crate) use sniff::{pins_session, runs_procedure};
pub use transaction::PgTransaction;

/// A connection handed out by a [`crate::Pool`] of [`crate::PgConnector`]. Its statement
/// methods mirror tokio-postgres's and keep the connection's cleanliness tracked.
pub struct PgConn {
    client: Client,
    cancel: Canceller,
    driver: AbortHandle,
    /// Bound on each statement of a [`PgTransaction`] and on its commit.
    query_timeout: Duration,
    /// Lock rule: held only to look up or insert, never across an `.await`.
    cache: Mutex<StatementCache<Statement>>,
    /// The cache's size is not 0 (fixed when the connection opens): asked on every statement,
    /// so without taking the cache's lock.
    caching: bool,
    /// Statements sent through the tracked methods and not yet answered.
    in_flight: AtomicU32,
    /// A transaction opened with `transaction()` has not finished.
    in_tx: AtomicBool,
    /// The last statement got as far as its execution being sent (not only its preparation),
    /// on a connection that was open: before that point, a failure ran nothing.
    executing: AtomicBool,
    /// Used in ways the pool cannot see through: reset before reuse.
    raw: AtomicBool,
    /// The query timeout's timer, kept from one statement to the next.
    timer: deadline::StatementTimer,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("closed", &self.client.is_closed())
            .field("needs_reset", &self.needs_reset())
            .finish()
    }
}

impl PgConn {
    pub(crate) fn new(
        client: Client,
        driver: AbortHandle,
        tls: MakeRustls,
        cancel_target: CancelTarget,
        cache: Mutex<StatementCache<Statement>>,
        query_timeout: Duration,
    ) -> Self {
        let caching = cache.lock().unwrap_or_else(|p| p.into_inner()).enabled();
        Self {
            caching,
            cancel: Canceller {
                token: client.cancel_token(),
                target: cancel_target,
                tls,
            },
            client,
            driver,
            query_timeout,
            cache,
            in_flight: AtomicU32::new(0),
            in_tx: AtomicBool::new(false),
            executing: AtomicBool::new(false),
            raw: AtomicBool::new(false),
            timer: deadline::StatementTimer::default(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The client, shared by the pipelined lane's callers. Not marked raw: a lane connection
    /// is never handed out again (it is closed when the lane lets it go).
    pub(crate) fn shared_client(&self) -> &Client {
        &self.client
    }

    /// The cheapest round trip (a Sync message).
    pub(crate) async fn ping(&self) -> Result<(), tokio_postgres::Error> {
        self.client.check_connection().await
    }
}
