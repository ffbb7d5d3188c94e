//! The router: owns the pools and the topology (which target is up, which accepts writes), and
//! picks the pool for every checkout with [`route`]. The pools stay generic; everything about
//! failover lives here.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::read::ReadSide;
use super::route::{
    route, route_read, FailoverStats, Marking, Overflow, PoolId, PoolView, RouteInput,
};
use crate::config::SessionAttrs;
use crate::connect::{HostRole, PgConnector, Role};
use crate::pool::{Connector, Pool};

/// What the router knows of one pool's target. Atomics: read on every checkout.
#[derive(Debug)]
struct TargetState {
    up: AtomicBool,
    /// [`UNKNOWN`], [`WRITABLE`] or [`READ_ONLY`].
    writable: AtomicU8,
    /// The "down" warning was logged for this outage (warned once, not every probe).
    warned: AtomicBool,
}

const UNKNOWN: u8 = 0;
const WRITABLE: u8 = 1;
const READ_ONLY: u8 = 2;

impl TargetState {
    fn new() -> Self {
        Self {
            up: AtomicBool::new(true),
            writable: AtomicU8::new(UNKNOWN),
            warned: AtomicBool::new(false),
        }
    }

    fn writable(&self) -> Option<bool> {
        match self.writable.load(Ordering::Relaxed) {
            WRITABLE => Some(true),
            READ_ONLY => Some(false),
            _ => None,
        }
    }

    fn view(&self, pool: &Pool<PgConnector>) -> PoolView {
        let s = pool.status();
        PoolView {
            in_use: s.in_use,
            max: s.max,
            up: self.up.load(Ordering::Relaxed),
            writable: self.writable(),
        }
    }
}

/// The pools and the topology. See the module docs.
pub struct Router {
    primary: Pool<PgConnector>,
    failover: Option<Pool<PgConnector>>,
    /// The failover pool targets the primary's own server (no `DB_FAILOVER_URL`): one probe
    /// answers for both.
    failover_same_target: bool,
    states: [TargetState; 2],
    overflow: Mutex<Overflow>,
    threshold_pct: u8,
    probe_timeout: Duration,
    /// Serializes probes: a burst of 25006 errors re-checks the roles once, not once each.
    probing: tokio::sync::Mutex<()>,
    /// The read pool (`DB_READ_URL`) and its standby's state.
    read: Option<ReadSide>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("primary", &self.primary)
            .field("failover", &self.failover)
            .field("states", &self.states)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router over `primary` and, when failover is enabled, `failover` (engaging at
    /// `threshold_pct` utilization of the primary). The probe is bounded by `probe_timeout`.
    pub fn new(
        primary: Pool<PgConnector>,
        failover: Option<Pool<PgConnector>>,
        failover_same_target: bool,
        threshold_pct: u8,
        probe_timeout: Duration,
    ) -> Self {
        Self {
            primary,
            failover,
            failover_same_target,
            states: [TargetState::new(), TargetState::new()],
            overflow: Mutex::new(Overflow::new(threshold_pct)),
            threshold_pct,
            probe_timeout,
            probing: tokio::sync::Mutex::new(()),
            read: None,
        }
    }

    /// Adds a read pool: `.read_only()` calls go there while its standby is up, in recovery
    /// and at most `max_lag_bytes` behind (0 = no limit). Its lag is unknown, so it serves no
    /// reads, until [`Router::refresh_read`] measured it.
    pub fn with_read_pool(mut self, pool: Pool<PgConnector>, max_lag_bytes: u64) -> Self {
        self.read = Some(ReadSide::new(pool, max_lag_bytes));
        self
    }

    /// The pool `id` (the primary when failover, or read routing, is off).
    pub fn pool(&self, id: PoolId) -> &Pool<PgConnector> {
        match (id, &self.failover, &self.read) {
            (PoolId::Failover, Some(f), _) => f,
            (PoolId::Read, _, Some(r)) => &r.pool,
            _ => &self.primary,
        }
    }

    /// The read pool, when `DB_READ_URL` is set.
    pub fn read_pool(&self) -> Option<&Pool<PgConnector>> {
        self.read.as_ref().map(|r| &r.pool)
    }

    /// The snapshot's `read` section (all zero without a read pool).
    pub fn read_stats(&self) -> crate::metrics::ReadSnapshot {
        self.read
            .as_ref()
            .map(ReadSide::snapshot)
            .unwrap_or_default()
    }

    /// Measures the read pool's standby: reachable, in recovery, its lag behind the primary.
    /// The health checker calls it every tick; the manager once at start-up.
    pub async fn refresh_read(&self) {
        if let Some(r) = &self.read {
            r.probe(self.primary.connector(), self.probe_timeout).await;
        }
    }

    /// The primary pool.
    pub fn primary(&self) -> &Pool<PgConnector> {
        &self.primary
    }

    /// The failover pool, when failover is enabled.
    pub fn failover(&self) -> Option<&Pool<PgConnector>> {
        self.failover.as_ref()
    }

    /// The primary's and the failover pool's (the read pool keeps its own, in [`ReadSide`]).
    fn state(&self, id: PoolId) -> &TargetState {
        &self.states[usize::from(id == PoolId::Failover)]
    }

    /// Feeds the primary's utilization to the overflow switch; returns whether it is engaged.
    fn observe_overflow(&self, primary: &PoolView) -> bool {
        let mut o = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        o.observe(primary.utilization_pct(), Instant::now())
    }

    /// The pool that serves attempt `attempt` (1-based) of a call marked `marking`.
    pub fn pick(&self, attempt: u32, marking: Marking) -> PoolId {
        if let (Marking::ReadOnly, Some(r)) = (marking, &self.read) {
            let primary = self.state(PoolId::Primary).view(&self.primary);
            match route_read(attempt, &r.view(), &primary) {
                Ok(()) => {
                    r.routed();
                    return PoolId::Read;
                }
                Err(why) => r.fell_back(why),
            }
        }
        let Some(failover) = &self.failover else {
            return PoolId::Primary;
        };
        let primary = self.state(PoolId::Primary).view(&self.primary);
        let overflow = self.observe_overflow(&primary);
        route(&RouteInput {
            attempt,
            marking,
            overflow,
            threshold_pct: self.threshold_pct,
            primary,
            failover: Some(self.state(PoolId::Failover).view(failover)),
        })
    }

    /// The `failover` section of the snapshot.
    pub fn failover_stats(&self) -> FailoverStats {
        if self.failover.is_none() {
            return FailoverStats::default();
        }
        self.overflow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats(Instant::now())
    }

    /// Whether the target of pool `id` is known to accept writes (`None`: not probed yet).
    pub fn writable(&self, id: PoolId) -> Option<bool> {
        match (id, &self.read) {
            // Reads only: it never takes a write, whatever its server is.
            (PoolId::Read, Some(_)) => Some(false),
            _ => self.state(id).writable(),
        }
    }

    /// Whether the target of pool `id` answered the last probe.
    pub fn is_up(&self, id: PoolId) -> bool {
        match (id, &self.read) {
            (PoolId::Read, Some(r)) => r.is_up(),
            _ => self.state(id).up.load(Ordering::Relaxed),
        }
    }

    /// Whether a pool other than `id` could serve a call marked `marking` (failover enabled,
    /// its target up and, for a possible write, not known read-only): a retry after an
    /// exhausted pool's timeout then has somewhere to go.
    pub fn has_alternative(&self, id: PoolId, marking: Marking) -> bool {
        if id == PoolId::Read {
            // A read's retry goes to the primary side.
            return self
                .state(PoolId::Primary)
                .view(&self.primary)
                .serves(marking)
                || self.has_alternative(PoolId::Primary, marking);
        }
        let Some(failover) = &self.failover else {
            return false;
        };
        let other = match id {
            PoolId::Primary => PoolId::Failover,
            PoolId::Failover | PoolId::Read => PoolId::Primary,
        };
        let pool = match other {
            PoolId::Failover => failover,
            PoolId::Primary | PoolId::Read => &self.primary,
        };
        self.state(other).view(pool).serves(marking)
    }

    /// The primary is down or refuses writes: the probe runs more often until it recovers.
    pub fn primary_degraded(&self) -> bool {
        let st = self.state(PoolId::Primary);
        !st.up.load(Ordering::Relaxed) || st.writable() == Some(false)
    }

    /// Records that a checkout on pool `id` reached (`true`) or could not reach its server.
    pub fn note_reachable(&self, id: PoolId, up: bool) {
        match (id, &self.read) {
            (PoolId::Read, Some(r)) => r.note_reachable(up),
            // Stored only on a change: every call reports, and a store on every call would
            // keep moving the flag's cache line between the runtime's worker threads.
            _ => {
                let flag = &self.state(id).up;
                if flag.load(Ordering::Relaxed) != up {
                    flag.store(up, Ordering::Relaxed);
                }
            }
        }
    }

    /// Re-checks every target's role (the periodic probe, and after a failure): which host is
    /// up, which accepts writes. Multi-host targets are steered to their read-write host.
    /// Also feeds the overflow switch, so it releases (and counts its time) without traffic.
    pub async fn refresh_topology(&self) {
        let _one = self.probing.lock().await;
        let primary = self
            .primary
            .connector()
            .probe_roles(self.probe_timeout)
            .await;
        self.apply(PoolId::Primary, &primary);
        if let Some(failover) = &self.failover {
            if self.failover_same_target {
                self.apply(PoolId::Failover, &primary);
            } else {
                let roles = failover.connector().probe_roles(self.probe_timeout).await;
                self.apply(PoolId::Failover, &roles);
            }
            let view = self.state(PoolId::Primary).view(&self.primary);
            self.observe_overflow(&view);
        }
    }

    /// A write on pool `id` was refused with 25006 (read-only transaction): it did not run.
    /// The target is marked read-only at once, then its roles are re-checked.
    pub async fn on_read_only(&self, id: PoolId) {
        if id == PoolId::Read {
            // Only `.read_only()` calls run there, and their 25006 is their own.
            return;
        }
        self.state(id).writable.store(READ_ONLY, Ordering::Relaxed);
        self.pool(id).evict_all();
        if id == PoolId::Primary && self.failover_same_target {
            if let Some(f) = &self.failover {
                self.state(PoolId::Failover)
                    .writable
                    .store(READ_ONLY, Ordering::Relaxed);
                f.evict_all();
            }
        }
        tracing::warn!(
            pool = id.name(),
            "a write was refused as read-only (25006): re-checking roles"
        );
        self.refresh_topology().await;
    }

    fn apply(&self, id: PoolId, roles: &[HostRole]) {
        let st = self.state(id);
        let pool = self.pool(id);
        let up = roles.iter().any(|h| h.role.is_ok());
        let attrs = pool.connector().session_attrs();
        let standby_up = roles.iter().any(|h| h.role == Ok(Role::Standby));
        // A target asking for a standby (or any read-only session) gets one, as in libpq:
        // it serves no writes, and is steered to that host rather than the read-write one.
        let wants_read_only = matches!(attrs, SessionAttrs::Standby | SessionAttrs::ReadOnly)
            || (attrs == SessionAttrs::PreferStandby && standby_up);
        let rw = roles
            .iter()
            .find(|h| matches!(h.role, Ok(r) if r.writable()))
            .filter(|_| !wants_read_only);
        if wants_read_only {
            let need = attrs.passes()[0];
            if let Some(h) = roles.iter().find(
                |h| matches!(h.role, Ok(r) if need.accepts(r == Role::Standby, !r.writable())),
            ) {
                pool.connector().prefer_host(h.index);
            }
        }
        // The read-write host moved (a multi-host target after a switchover): connections on
        // the old one would refuse writes.
        let moved = rw.is_some_and(|h| pool.connector().prefer_host(h.index) != h.index);
        let writable = match (up, rw) {
            (_, Some(_)) => WRITABLE,
            (true, None) => READ_ONLY,
            (false, None) => st.writable.load(Ordering::Relaxed),
        };
        if up {
            pool.retry_connects_now();
        }
        let was_up = st.up.swap(up, Ordering::Relaxed);
        let was = st.writable.swap(writable, Ordering::Relaxed);
        if up && !was_up {
            st.warned.store(false, Ordering::Relaxed);
            tracing::info!(pool = id.name(), target = %pool.connector().target(), "target is reachable again");
        }
        if !up && !st.warned.swap(true, Ordering::Relaxed) {
            let why: Vec<String> = roles
                .iter()
                .filter_map(|h| h.role.as_ref().err().map(|e| format!("{}: {e}", h.host)))
                .collect();
            tracing::warn!(pool = id.name(), reasons = %why.join("; "), "target is down; probing again every health check");
        }
        if writable != was && was != UNKNOWN {
            match (writable, rw) {
                (WRITABLE, Some(h)) => {
                    tracing::warn!(pool = id.name(), host = %h.host, "writes go to the read-write host")
                }
                _ => tracing::warn!(pool = id.name(), "target no longer accepts writes"),
            }
        }
        if moved || (was == WRITABLE && writable == READ_ONLY) {
            // Connections opened while the target was writable would refuse writes now.
            pool.evict_all();
        }
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
