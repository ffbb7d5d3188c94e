//! The pipelined lane: a few connections shared by many callers' single statements.
//!
//! PostgreSQL answers the statements sent on one connection in order, and tokio-postgres lets
//! any number of tasks send on one `Client` at once: each statement goes out as its own
//! Parse/Bind/Execute/Sync, so it is its own implicit transaction and its error touches no other
//! statement. The lane keeps `DB_PIPELINE_CONNECTIONS` such connections and sends each call to
//! the one with the fewest statements in flight.
//!
//! What makes sharing safe:
//! - **No CancelRequest, ever.** A cancel hits whatever the backend runs at that moment, on a
//!   shared connection another caller's statement. The server enforces the time limit instead:
//!   `statement_timeout` is set on every lane connection when it joins the lane. A caller whose
//!   own deadline passes abandons only its own response (tokio-postgres reads and drops it).
//! - **Bounded in-flight per connection** (backpressure): a caller finding every connection at
//!   the bound waits for room (a *stall*, counted) until its acquire deadline, then takes the
//!   exclusive path. No unbounded queue.
//! - **A lost connection** fails all its statements at once; the manager's retry loop reruns
//!   the idempotent ones on another lane connection and reports the others as "outcome
//!   unknown". The lost connection is replaced in the background.
//! - **Budget**: lane connections are checked out of the primary pool and held, so they count
//!   in `DB_POOL_MAX` (they show as active connections of the primary pool) and the pool never
//!   opens more than its maximum. A lane connection is closed, never returned, when the lane
//!   lets it go: its session has the lane's `statement_timeout`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::connect::PgConnector;
use crate::pool::{Pool, PooledConnection};
use crate::PgConn;

/// After a failed connect, a lane slot waits this long before trying again (the pool's own
/// connect backoff applies as well).
const RECONNECT_GAP: Duration = Duration::from_millis(250);

/// The lane's figures (the snapshot's `lane` section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LaneStats {
    /// Lane connections configured (`DB_PIPELINE_CONNECTIONS`; 0 when the lane is off).
    pub configured: u32,
    /// Lane connections open now.
    pub connections: u32,
    /// Statements sent on lane connections and not yet answered (or abandoned).
    pub in_flight: u32,
    /// The bound on statements in flight per lane connection.
    pub max_in_flight_per_connection: u32,
    /// Statements the lane served (answered, successfully or not).
    pub served: u64,
    /// Calls that found every lane connection at its in-flight bound and waited for room.
    pub stalls: u64,
    /// Lane connections lost (closed under their statements).
    pub lost: u64,
    /// Lane connections opened.
    pub opened: u64,
}

/// One shared connection: a checkout of the primary pool, closed (not returned) when dropped.
pub(crate) struct LaneConn {
    conn: Option<PooledConnection<PgConnector>>,
}

impl LaneConn {
    pub(crate) fn pg(&self) -> &PgConn {
        self.conn.as_ref().expect("present until drop")
    }
}

impl Drop for LaneConn {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            PooledConnection::discard(c);
        }
    }
}

struct Slot {
    conn: RwLock<Option<Arc<LaneConn>>>,
    /// `conn` is `Some`: read on every call without the lock.
    live: AtomicBool,
    connecting: AtomicBool,
    failed_at: Mutex<Option<Instant>>,
    /// Room for statements in flight on this connection.
    permits: Semaphore,
}

/// A caller's place on a lane connection: the connection and a unit of its in-flight bound,
/// released when the caller is done (or drops its future).
pub(crate) struct Entered<'a> {
    pub(crate) slot: usize,
    pub(crate) conn: Arc<LaneConn>,
    _permit: SemaphorePermit<'a>,
}

/// The lane. See the module docs.
pub(crate) struct Lane {
    pool: Pool<PgConnector>,
    slots: Box<[Slot]>,
    max_in_flight: u32,
    statement_timeout: Duration,
    closed: AtomicBool,
    served: AtomicU64,
    stalls: AtomicU64,
    lost: AtomicU64,
    opened: AtomicU64,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Lane {
    /// A lane of `connections` shared connections checked out of `pool`, each with
    /// `statement_timeout` set to `statement_timeout` and at most `max_in_flight` statements in
    /// flight. Connects nothing yet (see [`Lane::ensure`]).
    pub(crate) fn new(
        pool: Pool<PgConnector>,
        connections: u32,
        max_in_flight: u32,
        statement_timeout: Duration,
    ) -> Arc<Self> {
        let max_in_flight = max_in_flight.max(1);
        let slots = (0..connections)
            .map(|_| Slot {
                conn: RwLock::new(None),
                live: AtomicBool::new(false),
                connecting: AtomicBool::new(false),
                failed_at: Mutex::new(None),
                permits: Semaphore::new(max_in_flight as usize),
            })
            .collect();
        Arc::new(Self {
            pool,
            slots,
            max_in_flight,
            statement_timeout,
            closed: AtomicBool::new(false),
            served: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        })
    }

    fn in_flight(&self, slot: &Slot) -> u32 {
        self.max_in_flight - slot.permits.available_permits() as u32
    }

    /// A place on the live lane connection with the fewest statements in flight; when all are
    /// at the bound, waits for room until `deadline` (a stall). `None`: no live connection (one
    /// is being opened) or no room in time — the call takes the exclusive path.
    pub(crate) async fn enter(self: &Arc<Self>, deadline: Instant) -> Option<Entered<'_>> {
        let mut best: Option<(usize, u32)> = None;
        let mut all_live = true;
        for (i, s) in self.slots.iter().enumerate() {
            if !s.live.load(Relaxed) {
                all_live = false;
                continue;
            }
            let n = self.in_flight(s);
            if best.is_none_or(|(_, b)| n < b) {
                best = Some((i, n));
            }
        }
        if !all_live {
            self.ensure();
        }
        let (i, _) = best?;
        let slot = &self.slots[i];
        let permit = match slot.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                self.stalls.fetch_add(1, Relaxed);
                tokio::time::timeout_at(deadline, slot.permits.acquire())
                    .await
                    .ok()?
                    .ok()?
            }
        };
        let conn = slot
            .conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        if conn.pg().is_closed() {
            self.lost(i, &conn);
            return None;
        }
        Some(Entered {
            slot: i,
            conn,
            _permit: permit,
        })
    }

    /// A statement was answered (or failed) on the lane.
    pub(crate) fn served(&self) {
        self.served.fetch_add(1, Relaxed);
    }

    /// The connection of `slot` was found closed: it leaves the lane and a new one is opened.
    pub(crate) fn lost(self: &Arc<Self>, slot: usize, conn: &Arc<LaneConn>) {
        let s = &self.slots[slot];
        let mut g = s.conn.write().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            s.live.store(false, Relaxed);
            let gone = g.take();
            drop(g);
            drop(gone);
            self.lost.fetch_add(1, Relaxed);
            tracing::warn!(slot, "a lane connection was lost; opening another");
        } else {
            drop(g);
        }
        self.ensure();
    }

    /// Lets every lane connection go (closed when their statements in flight end); the lane
    /// opens new ones on demand. For a target that turned read-only.
    pub(crate) fn retire_all(self: &Arc<Self>) {
        for s in self.slots.iter() {
            s.live.store(false, Relaxed);
            let gone = s.conn.write().unwrap_or_else(|p| p.into_inner()).take();
            drop(gone);
        }
    }

    /// Starts opening a connection for every empty slot not already connecting (and not within
    /// [`RECONNECT_GAP`] of a failed try), in the background.
    pub(crate) fn ensure(self: &Arc<Self>) {
        if self.closed.load(Relaxed) {
            return;
        }
        for (i, s) in self.slots.iter().enumerate() {
            if s.live.load(Relaxed) || s.connecting.swap(true, Relaxed) {
                continue;
            }
            let recent = s
                .failed_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| t.elapsed() < RECONNECT_GAP);
            if recent {
                s.connecting.store(false, Relaxed);
                continue;
            }
            let lane = Arc::clone(self);
            tokio::spawn(async move { lane.fill(i).await });
        }
    }

    /// Opens every empty slot now (at start-up), each bounded by the acquire timeout.
    pub(crate) async fn prewarm(self: &Arc<Self>) {
        let mut fills = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if !s.live.load(Relaxed) && !s.connecting.swap(true, Relaxed) {
                fills.push(self.fill(i));
            }
        }
        futures_util::future::join_all(fills).await;
    }

    /// Opens slot `i` (its `connecting` flag already set; cleared here).
    async fn fill(self: &Arc<Self>, i: usize) {
        let s = &self.slots[i];
        match self.open().await {
            Ok(c) if !self.closed.load(Relaxed) => {
                *s.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(c));
                s.live.store(true, Relaxed);
                self.opened.fetch_add(1, Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                *s.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                tracing::warn!(slot = i, error = %e, "could not open a lane connection");
            }
        }
        s.connecting.store(false, Relaxed);
    }

    async fn open(&self) -> Result<LaneConn, String> {
        let deadline = Instant::now() + self.pool.options().acquire_timeout;
        let conn = self
            .pool
            .get_until(deadline)
            .await
            .map_err(|e| e.to_string())?;
        let conn = LaneConn { conn: Some(conn) };
        // The lane's only time limit: a CancelRequest could hit another caller's statement.
        let ms = self
            .statement_timeout
            .as_millis()
            .clamp(1, i32::MAX as u128);
        let set = format!("SET statement_timeout = {ms}");
        match tokio::time::timeout_at(deadline, conn.pg().shared_client().batch_execute(&set)).await
        {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(e)) => Err(format!("setting statement_timeout: {e}")),
            Err(_) => Err("setting statement_timeout: timed out".into()),
        }
    }

    /// Closes the lane: no new connections; the open ones close as their statements end.
    pub(crate) fn close(self: &Arc<Self>) {
        self.closed.store(true, Relaxed);
        self.retire_all();
    }

    /// The lane's figures now.
    pub(crate) fn stats(&self) -> LaneStats {
        let mut st = LaneStats {
            configured: self.slots.len() as u32,
            max_in_flight_per_connection: self.max_in_flight,
            served: self.served.load(Relaxed),
            stalls: self.stalls.load(Relaxed),
            lost: self.lost.load(Relaxed),
            opened: self.opened.load(Relaxed),
            ..LaneStats::default()
        };
        for s in self.slots.iter() {
            if s.live.load(Relaxed) {
                st.connections += 1;
            }
            st.in_flight += self.in_flight(s);
        }
        st
    }
}
