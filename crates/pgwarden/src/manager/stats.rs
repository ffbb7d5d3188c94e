//! Counters of the query path, and the snapshot the status text and dashboards read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::route::FailoverStats;
use super::ManagerOptions;
use crate::error::Error;
use crate::pool::{ClosedCounters, PoolCounters, Status};
use crate::statements::CacheStats;

pub(crate) struct QueryStats {
    started: Instant,
    total: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    outcome_unknown: AtomicU64,
    slow: AtomicU64,
    latency_ns: AtomicU64,
    max_latency_ns: AtomicU64,
}

impl QueryStats {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            total: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            outcome_unknown: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            latency_ns: AtomicU64::new(0),
            max_latency_ns: AtomicU64::new(0),
        }
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// One call, retries included, counted once.
    pub(crate) fn call<T>(&self, elapsed: Duration, result: &Result<T, Error>) {
        self.total.fetch_add(1, Relaxed);
        match result {
            Ok(_) => self.succeeded.fetch_add(1, Relaxed),
            Err(e) => {
                if e.outcome_unknown() {
                    self.outcome_unknown.fetch_add(1, Relaxed);
                }
                self.failed.fetch_add(1, Relaxed)
            }
        };
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.fetch_add(ns, Relaxed);
        self.max_latency_ns.fetch_max(ns, Relaxed);
    }

    /// One statement execution: slow ones are counted and logged with their SQL text and
    /// duration — never their parameter values.
    pub(crate) fn statement(&self, sql: &str, elapsed: Duration, opts: &ManagerOptions) {
        if elapsed > opts.slow_query_threshold {
            self.slow.fetch_add(1, Relaxed);
            tracing::warn!(
                sql,
                duration_ms = elapsed.as_secs_f64() * 1e3,
                threshold_ms = opts.slow_query_threshold.as_millis() as u64,
                "slow query"
            );
        }
    }

    pub(crate) fn snapshot(&self) -> QueryCounters {
        let total = self.total.load(Relaxed);
        let succeeded = self.succeeded.load(Relaxed);
        let slow = self.slow.load(Relaxed);
        let minutes = (self.started.elapsed().as_secs_f64() / 60.0).max(1.0 / 60.0);
        QueryCounters {
            total,
            succeeded,
            failed: self.failed.load(Relaxed),
            success_rate_pct: if total == 0 {
                100.0
            } else {
                succeeded as f64 * 100.0 / total as f64
            },
            retries: self.retries.load(Relaxed),
            outcome_unknown: self.outcome_unknown.load(Relaxed),
            slow,
            slow_per_min: slow as f64 / minutes,
            avg_ms: if total == 0 {
                0.0
            } else {
                self.latency_ns.load(Relaxed) as f64 / total as f64 / 1e6
            },
            max_ms: self.max_latency_ns.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// Calls through the manager. A call that succeeds after retries counts once, as a success.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QueryCounters {
    /// Calls completed.
    pub total: u64,
    /// Calls that succeeded (after retries or not).
    pub succeeded: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Succeeded share of the calls, in percent (100 when there were none).
    pub success_rate_pct: f64,
    /// Retries (extra attempts) made.
    pub retries: u64,
    /// Calls whose outcome is unknown (connection lost after a possible write was sent).
    pub outcome_unknown: u64,
    /// Statements slower than `DB_SLOW_QUERY_THRESHOLD`.
    pub slow: u64,
    /// Slow statements per minute since the manager started.
    pub slow_per_min: f64,
    /// Average call latency, retries included, in milliseconds.
    pub avg_ms: f64,
    /// Slowest call, in milliseconds.
    pub max_ms: f64,
}

/// One pool in the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PoolSnapshot {
    /// Maximum connections.
    pub max: u32,
    /// Connections open or being opened.
    pub total: u32,
    /// Connections checked out.
    pub active: u32,
    /// Connections ready.
    pub idle: u32,
    /// Acquires waiting.
    pub waiting: u32,
    /// Active share of the maximum, in percent.
    pub utilization_pct: f64,
}

impl From<Status> for PoolSnapshot {
    fn from(s: Status) -> Self {
        Self {
            max: s.max,
            total: s.size,
            active: s.in_use,
            idle: s.idle,
            waiting: s.waiting,
            utilization_pct: s.utilization_pct(),
        }
    }
}

/// Connection lifecycle counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConnectionCounters {
    /// Connections opened.
    pub opened: u64,
    /// Connections closed, by reason.
    pub closed: ClosedCounters,
    /// Acquisitions served by a connection used before, in percent.
    pub reuse_rate_pct: f64,
}

/// The manager's metrics at one moment (not atomic across fields). Durations in
/// milliseconds, shares in percent; names as in DESIGN.md.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// Pools by name.
    pub pools: std::collections::BTreeMap<String, PoolSnapshot>,
    /// Calls.
    pub queries: QueryCounters,
    /// Connections.
    pub connections: ConnectionCounters,
    /// Statement cache, all connections together.
    pub statement_cache: CacheStats,
    /// Overflow to the failover pool: `active`, `activations`, `active_ms`.
    pub failover: FailoverStats,
}

/// Both pools' counters as one (the snapshot's `connections` covers every pool).
pub(crate) fn merge_counters(mut a: PoolCounters, b: &PoolCounters) -> PoolCounters {
    a.acquires_direct += b.acquires_direct;
    a.acquires_waited += b.acquires_waited;
    a.acquires_timed_out += b.acquires_timed_out;
    a.acquires_cancelled += b.acquires_cancelled;
    a.acquires_failed += b.acquires_failed;
    a.reused += b.reused;
    a.wait_ms_total += b.wait_ms_total;
    a.opened += b.opened;
    a.connect_failures += b.connect_failures;
    a.resets += b.resets;
    let (c, d) = (&mut a.closed, &b.closed);
    c.idle += d.idle;
    c.lifetime += d.lifetime;
    c.broken += d.broken;
    c.failed_validation += d.failed_validation;
    c.dirty += d.dirty;
    c.shutdown += d.shutdown;
    a
}

/// Both pools' statement caches as one.
pub(crate) fn merge_cache(mut a: CacheStats, b: &CacheStats) -> CacheStats {
    a.hits += b.hits;
    a.misses += b.misses;
    a.evictions += b.evictions;
    a
}
