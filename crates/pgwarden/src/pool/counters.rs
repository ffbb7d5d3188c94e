//! Lock-free counters of one pool, and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Idle longer than the idle timeout, above the minimum.
    Idle,
    /// Past its (jittered) maximum lifetime.
    Lifetime,
    /// Found closed by the server or the network.
    Broken,
    /// Failed the ping before reuse.
    FailedValidation,
    /// Came back dirty and could not be reset.
    Dirty,
    /// The pool was closed.
    Shutdown,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) acquires_direct: AtomicU64,
    pub(crate) acquires_waited: AtomicU64,
    pub(crate) acquires_timed_out: AtomicU64,
    pub(crate) acquires_cancelled: AtomicU64,
    pub(crate) acquires_failed: AtomicU64,
    pub(crate) reused: AtomicU64,
    pub(crate) wait_ns: AtomicU64,
    pub(crate) opened: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) resets: AtomicU64,
    pub(crate) leaks: AtomicU64,
    closed_idle: AtomicU64,
    closed_lifetime: AtomicU64,
    closed_broken: AtomicU64,
    closed_failed_validation: AtomicU64,
    closed_dirty: AtomicU64,
    closed_shutdown: AtomicU64,
}

impl Counters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        let c = match reason {
            CloseReason::Idle => &self.closed_idle,
            CloseReason::Lifetime => &self.closed_lifetime,
            CloseReason::Broken => &self.closed_broken,
            CloseReason::FailedValidation => &self.closed_failed_validation,
            CloseReason::Dirty => &self.closed_dirty,
            CloseReason::Shutdown => &self.closed_shutdown,
        };
        Self::inc(c);
    }

    pub(crate) fn waited(&self, d: Duration) {
        self.wait_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub(crate) fn snapshot(&self) -> PoolCounters {
        let g = |c: &AtomicU64| c.load(Relaxed);
        PoolCounters {
            acquires_direct: g(&self.acquires_direct),
            acquires_waited: g(&self.acquires_waited),
            acquires_timed_out: g(&self.acquires_timed_out),
            acquires_cancelled: g(&self.acquires_cancelled),
            acquires_failed: g(&self.acquires_failed),
            reused: g(&self.reused),
            wait_ms_total: g(&self.wait_ns) as f64 / 1e6,
            opened: g(&self.opened),
            connect_failures: g(&self.connect_failures),
            resets: g(&self.resets),
            leaks: g(&self.leaks),
            closed: ClosedCounters {
                idle: g(&self.closed_idle),
                lifetime: g(&self.closed_lifetime),
                broken: g(&self.closed_broken),
                failed_validation: g(&self.closed_failed_validation),
                dirty: g(&self.closed_dirty),
                shutdown: g(&self.closed_shutdown),
            },
        }
    }
}

/// Counters of one pool since it was built.
///
/// A snapshot reads each counter on its own: it is not atomic across fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PoolCounters {
    /// Acquires served at once by an idle connection.
    pub acquires_direct: u64,
    /// Acquires that had to wait (for a returned or a new connection).
    pub acquires_waited: u64,
    /// Acquires that hit the acquire deadline.
    pub acquires_timed_out: u64,
    /// Acquires whose future was dropped before they completed.
    pub acquires_cancelled: u64,
    /// Acquires failed by a permanent connect error or a closed pool.
    pub acquires_failed: u64,
    /// Acquires served by a connection that had been used before.
    pub reused: u64,
    /// Total time acquires spent waiting, in milliseconds.
    pub wait_ms_total: f64,
    /// Connections opened.
    pub opened: u64,
    /// Connect attempts that failed.
    pub connect_failures: u64,
    /// Connections reset (ROLLBACK) after they came back dirty.
    pub resets: u64,
    /// Checkouts held longer than the leak detection threshold (`DB_LEAK_DETECTION_THRESHOLD`).
    pub leaks: u64,
    /// Connections closed, by reason.
    pub closed: ClosedCounters,
}

/// Connections closed, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ClosedCounters {
    /// Idle past the idle timeout, above the minimum.
    pub idle: u64,
    /// Past the maximum lifetime.
    pub lifetime: u64,
    /// Closed by the server or the network.
    pub broken: u64,
    /// Failed the ping before reuse.
    pub failed_validation: u64,
    /// Came back dirty and could not be reset in time.
    pub dirty: u64,
    /// Closed by `close()`.
    pub shutdown: u64,
}

impl PoolCounters {
    /// Acquires that completed with a connection.
    pub fn acquired(&self) -> u64 {
        self.acquires_direct + self.acquires_waited
    }

    /// Share of acquisitions served by a connection used before, in percent (0–100).
    pub fn reuse_rate_pct(&self) -> f64 {
        let n = self.acquired();
        if n == 0 {
            0.0
        } else {
            self.reused as f64 * 100.0 / n as f64
        }
    }
}
