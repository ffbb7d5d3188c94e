//! One pool of connections to one target.
//!
//! The machinery is generic over a [`Connector`] — how a connection is opened, checked, reset and
//! killed — so that waiters, guards and cancellation can be driven by a fake connector with paused
//! time in fast tests; the real connector is [`crate::PgConnector`].
//!
//! # Shape
//! All bookkeeping lives in one `State` behind one `std::sync::Mutex`, held only for a few
//! instructions and never across an `.await`. Connections are opened by spawned connect tasks
//! (never by the acquiring future itself), so a cancelled acquire never abandons a half-made
//! handshake, and at most `max_connecting` handshakes run at once. Returned connections are handed
//! straight to the oldest waiter (FIFO, exactly one woken per connection) or pushed on the idle
//! stack (most recently used first out). A background worker reaps idle and expired connections,
//! keeps `min_idle` connections open, resets dirty connections and retries failed connects with
//! backoff.

mod counters;
mod error;
mod evict;
mod guard;
mod hooks;
mod leak;
mod state;
mod worker;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use counters::{ClosedCounters, PoolCounters};
pub use error::{AcquireError, ConnectError};
pub use guard::PooledConnection;

use counters::Counters;
use state::State;

/// How the pool opens, checks, resets and kills connections.
///
/// The pool calls these from its own tasks; every future it awaits is bounded by one of the pool's
/// timeouts, so an implementation may hang without hanging the pool.
pub trait Connector: Send + Sync + 'static {
    /// The connection the pool hands out.
    type Conn: Send + Sync + 'static;

    /// Opens one connection (handshake, TLS, authentication).
    fn connect(&self) -> impl Future<Output = Result<Self::Conn, ConnectError>> + Send;

    /// How many hosts `connect` may try in turn: the pool bounds one connect attempt by
    /// `connect_timeout × hosts`.
    fn hosts(&self) -> u32 {
        1
    }

    /// A password-free description of the target, for errors (`127.0.0.1:5432/app`).
    fn target(&self) -> String;

    /// True when the connection is known to be dead (no round trip).
    fn is_closed(&self, conn: &Self::Conn) -> bool;

    /// True when the connection may be inside a transaction or have a statement in flight, so it
    /// must be reset before anyone else gets it.
    fn needs_reset(&self, conn: &Self::Conn) -> bool;

    /// A cheap round trip proving the connection is alive.
    fn validate<'a>(
        &'a self,
        conn: &'a Self::Conn,
    ) -> impl Future<Output = Result<(), ConnectError>> + Send + 'a;

    /// Brings a dirty connection back to a clean state (cancel what is in flight, ROLLBACK).
    fn reset<'a>(
        &'a self,
        conn: &'a Self::Conn,
    ) -> impl Future<Output = Result<(), ConnectError>> + Send + 'a;

    /// True when [`Connector::before_acquire`] has work to do. Read once per acquire, so a
    /// connector without an acquire check pays nothing for it. Default: false.
    fn has_acquire_check(&self) -> bool {
        false
    }

    /// The application's check before a connection is handed out: `true` hands it out,
    /// `false` (or an error) closes it and the acquire takes another. The pool bounds it by
    /// the acquire deadline and closes the connection if it does not finish.
    fn before_acquire<'a>(
        &'a self,
        conn: &'a Self::Conn,
    ) -> impl Future<Output = Result<bool, ConnectError>> + Send + 'a {
        let _ = conn;
        async { Ok(true) }
    }

    /// Severs the connection from the outside, even while a user holds it: the pool calls this
    /// for connections still checked out when `close()` reaches its deadline, and for dirty
    /// connections it gives up on.
    fn kill(&self, conn: &Self::Conn) -> KillSwitch;
}

/// A handle that severs one connection (cancels its statement and closes its socket).
pub struct KillSwitch(Option<Box<dyn FnOnce() + Send + Sync>>);

impl KillSwitch {
    /// A kill switch running `f` when pulled.
    pub fn new(f: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(f)))
    }

    /// A kill switch that does nothing.
    pub fn noop() -> Self {
        Self(None)
    }

    pub(crate) fn pull(mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl std::fmt::Debug for KillSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KillSwitch")
    }
}

/// Sizing and timing of one pool. `Default` gives the development profile's values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolOptions {
    /// Name used in logs, errors and metrics (`primary`, `failover`). Default: `primary`.
    pub name: String,
    /// Connections never exceed this, those being opened included. Default: 30.
    pub max_size: u32,
    /// Idle connections kept open (prewarmed) while the total stays within `max_size`. Default: 5.
    pub min_idle: u32,
    /// One handshake to one host. Default: 5 s.
    pub connect_timeout: Duration,
    /// One acquire: waiting, connecting and validating together. Default: 5 s.
    pub acquire_timeout: Duration,
    /// Idle connections above `min_idle` are closed after this long unused. Default: 60 s.
    pub idle_timeout: Duration,
    /// Connections are recycled after this long, less up to 2.5% jitter. Default: 30 min.
    pub max_lifetime: Duration,
    /// A connection idle longer than this is pinged before it is handed out. Default: 1 s.
    pub validation_window: Duration,
    /// Bound on that ping (and on the remaining acquire time). Default: 2 s.
    pub validation_timeout: Duration,
    /// Bound on resetting a dirty connection; past it the connection is killed. Default: 2 s.
    pub reset_timeout: Duration,
    /// Handshakes in flight at once, so a recovering server is not stampeded. Default: 3.
    pub max_connecting: u32,
    /// `DB_LEAK_DETECTION_THRESHOLD`: a checkout through [`Pool::get`] (or the manager's `get()`
    /// and `transaction()`) held longer than this is logged at WARN with the caller's file and
    /// line, counted (`leaks`), and logged again when it comes back. `None` (the default) is
    /// off and costs nothing.
    pub leak_detection_threshold: Option<Duration>,
}

impl Default for PoolOptions {
    /// The development profile's pool settings ([`crate::config::PoolConfig::for_profile`]).
    fn default() -> Self {
        // One source of defaults: the configuration's development profile.
        let c = crate::config::PoolConfig::for_profile(crate::config::Profile::Development);
        Self {
            name: "primary".to_owned(),
            max_size: c.max_size,
            min_idle: c.min_idle,
            connect_timeout: c.connect_timeout,
            acquire_timeout: c.acquire_timeout,
            idle_timeout: c.idle_timeout,
            max_lifetime: c.max_lifetime,
            validation_window: Duration::from_secs(1),
            validation_timeout: Duration::from_secs(2),
            reset_timeout: Duration::from_secs(2),
            max_connecting: 3,
            leak_detection_threshold: None,
        }
    }
}

impl PoolOptions {
    /// Options with the given maximum and minimum, the rest default.
    pub fn sized(max_size: u32, min_idle: u32) -> Self {
        Self {
            max_size,
            min_idle: min_idle.min(max_size),
            ..Self::default()
        }
    }
}

/// The pool at one moment. Not atomic with the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Maximum connections.
    pub max: u32,
    /// Connections open or being opened.
    pub size: u32,
    /// Open connections ready to hand out.
    pub idle: u32,
    /// Connections checked out.
    pub in_use: u32,
    /// Acquires waiting for a connection.
    pub waiting: u32,
    /// Handshakes in flight.
    pub opening: u32,
}

impl Status {
    /// In-use share of the maximum, in percent (0–100).
    pub fn utilization_pct(&self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            f64::from(self.in_use) * 100.0 / f64::from(self.max)
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "size {}/{}, idle {}, in use {}, waiting {}",
            self.size, self.max, self.idle, self.in_use, self.waiting
        )?;
        if self.opening > 0 {
            write!(f, ", opening {}", self.opening)?;
        }
        Ok(())
    }
}

/// A pool of connections to one target. Cheap to clone: clones share the pool.
pub struct Pool<C: Connector> {
    inner: Arc<Inner<C>>,
}

impl<C: Connector> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: Connector> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.inner.opts.name)
            .field("target", &self.inner.connector.target())
            .field("status", &self.status())
            .finish()
    }
}

pub(crate) struct Inner<C: Connector> {
    pub(crate) connector: C,
    pub(crate) opts: PoolOptions,
    /// Lock rule: held only for bookkeeping — never across an `.await`, never while a connection
    /// is dropped (dropping a client may run its own code).
    state: Mutex<State<C::Conn>>,
    pub(crate) counters: Counters,
    /// Wakes the background worker (reaping, replenishing, resets, connect retries).
    wake: Arc<Notify>,
    /// Signalled when a connection opens, a connect fails, or the size shrinks (`prewarm`, `close`).
    changed: Notify,
    /// Connections with a lower id are closed instead of reused (see [`Pool::evict_all`]).
    pub(crate) evict_below: std::sync::atomic::AtomicU64,
}

impl<C: Connector> Drop for Inner<C> {
    fn drop(&mut self) {
        // The worker holds only a weak reference; let it notice at once.
        self.wake.notify_one();
    }
}

impl<C: Connector> Inner<C> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<C::Conn>> {
        // A panic while holding the lock leaves only counters behind (no invariant spans an
        // unwind point), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn status(&self) -> Status {
        self.lock().status(self.opts.max_size)
    }
}

impl<C: Connector> Pool<C> {
    /// Builds a pool and starts its background worker, which opens `min_idle` connections at
    /// once. Use [`Pool::prewarm`] to wait for them.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(connector: C, mut opts: PoolOptions) -> Self {
        opts.max_size = opts.max_size.max(1);
        opts.min_idle = opts.min_idle.min(opts.max_size);
        opts.max_connecting = opts.max_connecting.max(1);
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            connector,
            opts,
            state: Mutex::new(State::new()),
            counters: Counters::default(),
            wake: Arc::clone(&wake),
            changed: Notify::new(),
            evict_below: std::sync::atomic::AtomicU64::new(0),
        });
        tokio::spawn(worker::run(Arc::downgrade(&inner), wake));
        Self { inner }
    }

    /// Waits until `min_idle` connections are open, or fails with the reason they are not.
    ///
    /// # Errors
    /// [`AcquireError::Connect`] at the first permanent connect failure;
    /// [`AcquireError::TimedOut`] when the minimum is not reached within the acquire timeout.
    pub async fn prewarm(&self) -> Result<(), AcquireError> {
        let start = Instant::now();
        let deadline = start + self.inner.opts.acquire_timeout;
        loop {
            let notified = self.inner.changed();
            {
                let st = self.inner.lock();
                let open = st.open_count();
                if open >= self.inner.opts.min_idle || st.closed {
                    return Ok(());
                }
                if let Some(e) = st.last_error.as_ref().filter(|e| e.is_permanent()) {
                    return Err(AcquireError::Connect(e.clone()));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let st = self.inner.lock();
                return Err(AcquireError::TimedOut {
                    pool: self.inner.opts.name.clone(),
                    waited: start.elapsed(),
                    last_connect_error: st.last_error.clone(),
                    status: st.status(self.inner.opts.max_size),
                });
            }
        }
    }

    /// Checks out a connection, waiting up to the acquire timeout.
    ///
    /// A connection idle for longer than the validation window is pinged first; a dead one is
    /// replaced without the caller seeing an error.
    ///
    /// # Errors
    /// [`AcquireError::TimedOut`] (with the last connect error and a pool snapshot),
    /// [`AcquireError::Connect`] when connecting fails for a reason waiting cannot heal,
    /// [`AcquireError::Closed`].
    ///
    /// # Cancellation
    /// Dropping the future at any point leaks nothing: a waiter is removed from the queue, a
    /// connection handed to it in the meantime goes back to the pool, and a connection dropped
    /// in the middle of its validation ping is closed.
    // A plain function returning a future: `#[track_caller]` does nothing on an `async fn`.
    #[track_caller]
    pub fn get(
        &self,
    ) -> impl std::future::Future<Output = Result<PooledConnection<C>, AcquireError>> + Send + '_
    {
        let at = std::panic::Location::caller();
        async move {
            // No clock read here: the deadline is fixed from the first clock read the acquire
            // makes anyway (a read costs ~45 ns on a VM, the idle path's largest cost).
            let mut conn = guard::acquire(&self.inner, None).await?;
            PooledConnection::watch_leak(&mut conn, at);
            Ok(conn)
        }
    }

    /// Like [`Pool::get`] with an explicit deadline (the caller's remaining budget).
    ///
    /// # Errors
    /// As [`Pool::get`].
    pub async fn get_until(&self, deadline: Instant) -> Result<PooledConnection<C>, AcquireError> {
        guard::acquire(&self.inner, Some(deadline)).await
    }

    /// Like [`Pool::get_until`] (`None`: the acquire timeout from the acquire's first clock
    /// reading), also returning the acquire's readings, or its first reading with a failure.
    pub(crate) async fn get_timed(
        &self,
        deadline: Option<Instant>,
    ) -> Result<guard::Timed<C>, (AcquireError, Option<Instant>)> {
        guard::acquire_timed(&self.inner, deadline).await
    }

    /// The pool at this moment.
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// Counters since the pool was built.
    pub fn counters(&self) -> PoolCounters {
        self.inner.counters.snapshot()
    }

    /// The pool's options.
    pub fn options(&self) -> &PoolOptions {
        &self.inner.opts
    }

    /// The connector.
    pub fn connector(&self) -> &C {
        &self.inner.connector
    }

    /// The last connect failure, cleared by the next successful connect.
    pub fn last_connect_error(&self) -> Option<ConnectError> {
        self.inner.lock().last_error.clone()
    }

    /// True once `close()` was called.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Shuts the pool down: new acquires fail with "pool closed", waiters are woken with that
    /// error, idle connections are closed at once, and checked-out connections are closed as
    /// they come back. Connections still checked out after `grace` are killed (their statement
    /// cancelled, their socket closed), so no server session outlives the call by more than
    /// the time it takes the server to notice.
    pub async fn close(&self, grace: Duration) {
        worker::close(&self.inner, grace).await;
    }
}
