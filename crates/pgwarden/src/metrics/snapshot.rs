//! The snapshot: the manager's figures at one moment, as dashboards, the CLI and the status
//! block read them. Field names are fixed by DESIGN.md ("Metrics snapshot"); extras follow
//! the same style.

use std::collections::BTreeMap;

use serde::Serialize;

use super::recorder::{ErrorClass, Figures, RetryReason, Timing, WINDOW_BUCKET, WINDOW_BUCKETS};
use crate::health::{self, HealthSnapshot, HealthThresholds, HealthWindow};
use crate::pool::{ClosedCounters, PoolCounters};
use crate::statements::CacheStats;

/// A distribution of durations, in milliseconds (all 0 when nothing was recorded).
/// Percentiles come from an HDR histogram with 1% resolution; `avg` is exact.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Latency {
    /// Values recorded.
    pub count: u64,
    /// Average.
    pub avg: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    pub(crate) fn of(t: &Timing) -> Self {
        Self {
            count: t.count(),
            avg: t.avg_ms(),
            p50: t.quantile_ms(0.50),
            p95: t.quantile_ms(0.95),
            p99: t.quantile_ms(0.99),
            p999: t.quantile_ms(0.999),
            max: t.max_ms(),
        }
    }
}

/// Acquires by how they ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AcquireCounts {
    /// Served at once by an idle connection.
    pub direct: u64,
    /// Served after waiting (for a returned or a new connection).
    pub waited: u64,
    /// Hit the acquire deadline.
    pub timed_out: u64,
    /// Dropped by the caller before completing.
    pub cancelled: u64,
    /// Failed by a permanent connect error or a closed pool.
    pub failed: u64,
}

impl AcquireCounts {
    fn of(k: &PoolCounters) -> Self {
        Self {
            direct: k.acquires_direct,
            waited: k.acquires_waited,
            timed_out: k.acquires_timed_out,
            cancelled: k.acquires_cancelled,
            failed: k.acquires_failed,
        }
    }

    fn add(&mut self, o: &Self) {
        self.direct += o.direct;
        self.waited += o.waited;
        self.timed_out += o.timed_out;
        self.cancelled += o.cancelled;
        self.failed += o.failed;
    }
}

/// Connection lifecycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConnectionCounters {
    /// Connections opened.
    pub opened: u64,
    /// Connections closed, by reason.
    pub closed: ClosedCounters,
    /// Connect attempts that failed.
    pub connect_failures: u64,
    /// Checkouts held longer than `DB_LEAK_DETECTION_THRESHOLD` (0 while it is off).
    pub leaks: u64,
    /// Acquisitions served by a connection used before, in percent (0 without acquisitions).
    pub reuse_rate_pct: f64,
}

impl ConnectionCounters {
    fn of(k: &PoolCounters) -> Self {
        Self {
            opened: k.opened,
            closed: k.closed.clone(),
            connect_failures: k.connect_failures,
            leaks: k.leaks,
            reuse_rate_pct: k.reuse_rate_pct(),
        }
    }
}

/// One pool (`pools.<name>.*`).
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
    /// Active share of this pool's maximum, in percent.
    pub utilization_pct: f64,
    /// True when the pool can serve a checkout now (the primary; the failover pool when
    /// failover is enabled): its capacity counts in the graded utilization.
    pub serves_checkouts: bool,
    /// Acquires by how they ended.
    pub acquires: AcquireCounts,
    /// Time acquires from this pool took, timeouts included.
    pub acquire_wait_ms: Latency,
    /// Connection lifecycle of this pool.
    pub connections: ConnectionCounters,
    /// This pool's statement cache.
    pub statement_cache: CacheStats,
}

/// Failed calls by class (`queries.errors.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ErrorCounts {
    /// No connection within the acquire timeout.
    pub acquire_timeout: u64,
    /// Connecting failed for a reason waiting cannot heal.
    pub connect: u64,
    /// The statement hit the query timeout.
    pub query_timeout: u64,
    /// The server rejected the statement.
    pub statement: u64,
    /// The connection was lost after a possible write was sent.
    pub outcome_unknown: u64,
    /// A transaction body asked for a rollback.
    pub rolled_back: u64,
    /// The manager was closed.
    pub closed: u64,
    /// Anything else.
    pub other: u64,
}

impl ErrorCounts {
    fn of(e: &[u64; ErrorClass::COUNT]) -> Self {
        let g = |c: ErrorClass| e[c as usize];
        Self {
            acquire_timeout: g(ErrorClass::AcquireTimeout),
            connect: g(ErrorClass::Connect),
            query_timeout: g(ErrorClass::QueryTimeout),
            statement: g(ErrorClass::Statement),
            outcome_unknown: g(ErrorClass::OutcomeUnknown),
            rolled_back: g(ErrorClass::RolledBack),
            closed: g(ErrorClass::Closed),
            other: g(ErrorClass::Other),
        }
    }
}

/// Retries by what caused them (`queries.retries_by_reason.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RetryCounts {
    /// No connection within the acquire timeout.
    pub acquire_timeout: u64,
    /// Connecting failed.
    pub connect: u64,
    /// The connection was lost.
    pub connection_lost: u64,
    /// Serialization failure (40001).
    pub serialization: u64,
    /// Deadlock (40P01).
    pub deadlock: u64,
    /// Any other transient failure.
    pub other: u64,
}

impl RetryCounts {
    fn of(r: &[u64; RetryReason::COUNT]) -> Self {
        let g = |c: RetryReason| r[c as usize];
        Self {
            acquire_timeout: g(RetryReason::AcquireTimeout),
            connect: g(RetryReason::Connect),
            connection_lost: g(RetryReason::ConnectionLost),
            serialization: g(RetryReason::Serialization),
            deadlock: g(RetryReason::Deadlock),
            other: g(RetryReason::Other),
        }
    }
}

/// Calls through the manager (`queries.*`). A call that succeeds after retries counts once,
/// as a success.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QueryCounters {
    /// Calls completed.
    pub total: u64,
    /// Calls that succeeded (after retries or not).
    pub succeeded: u64,
    /// Calls that failed (outcome unknown included).
    pub failed: u64,
    /// Succeeded share of the calls, in percent (100 without calls).
    pub success_rate_pct: f64,
    /// Retries (extra attempts) made.
    pub retries: u64,
    /// Retries by what caused them.
    pub retries_by_reason: RetryCounts,
    /// Failed calls whose outcome is unknown (a possible write may or may not have committed).
    pub outcome_unknown: u64,
    /// Failed calls by class.
    pub errors: ErrorCounts,
    /// Statements slower than `DB_SLOW_QUERY_THRESHOLD`, since the start.
    pub slow: u64,
    /// Slow statements in the last minute (as `health.window.slow_per_min`).
    pub slow_per_min: f64,
}

/// Failover (`failover.*`): all zero and false while failover is off.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FailoverSnapshot {
    /// The failover pool exists and may serve checkouts.
    pub enabled: bool,
    /// The failover pool is serving checkouts now.
    pub active: bool,
    /// Times it became active.
    pub activations: u64,
    /// Time spent active, in milliseconds (the current spell included).
    pub active_ms: f64,
}

/// The manager's metrics at one moment. Durations in milliseconds, shares in percent (0–100).
///
/// A snapshot reads its sources one after the other: it is not atomic across fields (a call
/// completing meanwhile may be counted in `queries` but not yet in `latency_ms`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// Pools by name.
    pub pools: BTreeMap<String, PoolSnapshot>,
    /// Calls.
    pub queries: QueryCounters,
    /// Call time, retries and backoff included, since the start.
    pub latency_ms: Latency,
    /// Acquire time of every pool together, timeouts included, since the start.
    pub acquire_wait_ms: Latency,
    /// Acquires of every pool together.
    pub acquires: AcquireCounts,
    /// Connections of every pool together.
    pub connections: ConnectionCounters,
    /// Statement caches of every pool together.
    pub statement_cache: CacheStats,
    /// Failover.
    pub failover: FailoverSnapshot,
    /// Read routing (`DB_READ_URL`).
    pub read: super::ReadSnapshot,
    /// Health grade of the last minute.
    pub health: HealthSnapshot,
    /// The pipelined lane (`DB_PIPELINE_CONNECTIONS`): connections, statements in flight,
    /// served, stalls. All 0 without a lane. Its connections are checkouts of the primary
    /// pool, so they also count in that pool's `active`.
    pub lane: crate::lane::LaneStats,
}

/// What the snapshot needs to know of one pool.
#[derive(Debug, Clone)]
pub(crate) struct PoolInput {
    pub(crate) name: String,
    pub(crate) max: u32,
    pub(crate) total: u32,
    pub(crate) active: u32,
    pub(crate) idle: u32,
    pub(crate) waiting: u32,
    pub(crate) serves_checkouts: bool,
    pub(crate) counters: PoolCounters,
    pub(crate) cache: CacheStats,
}

/// In-use share of the capacity of every pool that can serve a checkout, in percent.
pub(crate) fn checkout_utilization_pct(pools: &[PoolInput]) -> f64 {
    let (active, max) = pools
        .iter()
        .filter(|p| p.serves_checkouts)
        .fold((0u64, 0u64), |(a, m), p| {
            (a + u64::from(p.active), m + u64::from(p.max))
        });
    pct(active, max, 0.0)
}

fn pct(part: u64, whole: u64, if_none: f64) -> f64 {
    if whole == 0 {
        if_none
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn add_closed(a: &mut ClosedCounters, b: &ClosedCounters) {
    a.idle += b.idle;
    a.lifetime += b.lifetime;
    a.broken += b.broken;
    a.failed_validation += b.failed_validation;
    a.dirty += b.dirty;
    a.shutdown += b.shutdown;
}

/// Builds the snapshot. `pools[i]` is the pool whose acquires were recorded under index `i`.
/// The graded utilization is the higher of now and the peak sampled in the window.
pub(crate) fn build(
    pools: &[PoolInput],
    fig: &Figures,
    failover: FailoverSnapshot,
    thresholds: &HealthThresholds,
) -> Snapshot {
    let mut out_pools = BTreeMap::new();
    let mut acquires = AcquireCounts::default();
    let mut wait_all = Timing::new();
    let mut conns = ConnectionCounters::default();
    let mut reused = 0;
    let mut cache = CacheStats::default();
    for (i, p) in pools.iter().enumerate() {
        let k = &p.counters;
        let wait = fig.waits.get(i).cloned().unwrap_or_else(Timing::new);
        wait_all.add(&wait);
        let a = AcquireCounts::of(k);
        acquires.add(&a);
        conns.opened += k.opened;
        conns.connect_failures += k.connect_failures;
        conns.leaks += k.leaks;
        add_closed(&mut conns.closed, &k.closed);
        reused += k.reused;
        cache.hits += p.cache.hits;
        cache.misses += p.cache.misses;
        cache.evictions += p.cache.evictions;
        out_pools.insert(
            p.name.clone(),
            PoolSnapshot {
                max: p.max,
                total: p.total,
                active: p.active,
                idle: p.idle,
                waiting: p.waiting,
                utilization_pct: pct(u64::from(p.active), u64::from(p.max), 0.0),
                serves_checkouts: p.serves_checkouts,
                acquires: a,
                acquire_wait_ms: Latency::of(&wait),
                connections: ConnectionCounters::of(k),
                statement_cache: p.cache,
            },
        );
    }
    conns.reuse_rate_pct = pct(reused, acquires.direct + acquires.waited, 0.0);

    let c = &fig.counts;
    let w = &fig.window;
    let now_util = checkout_utilization_pct(pools);
    let window = HealthWindow {
        seconds: (WINDOW_BUCKET * WINDOW_BUCKETS as u32).as_secs_f64(),
        calls: w.calls,
        utilization_pct: w.peak_utilization_pct.map_or(now_util, |p| p.max(now_util)),
        avg_ms: w.latency.avg_ms(),
        p95_ms: w.latency.quantile_ms(0.95),
        p99_ms: w.latency.quantile_ms(0.99),
        success_rate_pct: pct(w.succeeded, w.calls, 100.0),
        slow_per_min: w.slow as f64,
    };
    Snapshot {
        pools: out_pools,
        queries: QueryCounters {
            total: c.total,
            succeeded: c.succeeded,
            failed: c.failed,
            success_rate_pct: pct(c.succeeded, c.total, 100.0),
            retries: fig.retries.iter().sum(),
            retries_by_reason: RetryCounts::of(&fig.retries),
            outcome_unknown: c.outcome_unknown,
            errors: ErrorCounts::of(&c.errors),
            slow: c.slow,
            slow_per_min: w.slow as f64,
        },
        latency_ms: Latency::of(&fig.latency),
        acquire_wait_ms: Latency::of(&wait_all),
        acquires,
        connections: conns,
        statement_cache: cache,
        failover,
        // The manager fills it in: the router holds read routing's figures.
        read: super::ReadSnapshot::default(),
        health: health::grade(&window, thresholds),
        lane: crate::lane::LaneStats::default(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::health::{Grade, Metric};
    use crate::metrics::recorder::{Outcome, Recorder};

    pub(crate) fn pool(name: &str, max: u32, active: u32, serves: bool) -> PoolInput {
        PoolInput {
            name: name.into(),
            max,
            total: active + 2,
            active,
            idle: 2,
            waiting: 0,
            serves_checkouts: serves,
            counters: PoolCounters {
                acquires_direct: 90,
                acquires_waited: 10,
                acquires_timed_out: 3,
                reused: 95,
                opened: 12,
                ..PoolCounters::default()
            },
            cache: CacheStats {
                hits: 80,
                misses: 20,
                evictions: 1,
            },
        }
    }

    #[test]
    fn an_engaged_overflow_pool_reads_warning_not_critical() {
        let fig = Figures::empty(2);
        let t = HealthThresholds::default();
        // The primary is full (100%), the failover pool idle: 50/70 of the capacity is 71%.
        let pools = [pool("primary", 50, 50, true), pool("failover", 20, 0, true)];
        let s = build(&pools, &fig, FailoverSnapshot::default(), &t);
        assert_eq!(s.health.grade, Grade::Warning);
        assert_eq!(s.health.driven_by, Some(Metric::UtilizationPct));
        assert_eq!(s.pools["primary"].utilization_pct, 100.0);
        // Without failover only the primary serves: critical.
        let pools = [
            pool("primary", 50, 50, true),
            pool("failover", 20, 0, false),
        ];
        let s = build(&pools, &fig, FailoverSnapshot::default(), &t);
        assert_eq!(s.health.grade, Grade::Critical);
    }

    #[test]
    fn totals_add_up_over_pools_and_serialize_with_design_names() {
        let t0 = Instant::now();
        let r = Recorder::new(2, t0);
        for _ in 0..9 {
            r.call(t0, Duration::from_millis(4), Outcome::Ok);
        }
        r.call(
            t0,
            Duration::from_millis(4),
            Outcome::Failed {
                class: ErrorClass::Statement,
                unknown: false,
            },
        );
        r.acquire(0, Duration::from_millis(2));
        r.acquire(1, Duration::from_millis(4));
        let pools = [pool("primary", 10, 1, true), pool("failover", 5, 0, false)];
        let s = build(
            &pools,
            &r.figures(t0),
            FailoverSnapshot::default(),
            &HealthThresholds::default(),
        );
        assert_eq!(s.queries.total, 10);
        assert_eq!(s.queries.success_rate_pct, 90.0);
        assert_eq!(s.health.grade, Grade::Critical);
        assert_eq!(s.health.driven_by, Some(Metric::SuccessRatePct));
        assert_eq!(s.acquires.direct, 180);
        assert_eq!(s.acquire_wait_ms.count, 2);
        assert_eq!(s.acquire_wait_ms.avg, 3.0);
        assert_eq!(s.pools["failover"].acquire_wait_ms.avg, 4.0);
        assert_eq!(s.connections.opened, 24);
        assert_eq!(s.connections.reuse_rate_pct, 95.0);
        assert_eq!(s.statement_cache.hits, 160);

        let v = serde_json::to_value(&s).unwrap();
        for key in [
            "/pools/primary/max",
            "/pools/primary/total",
            "/pools/primary/active",
            "/pools/primary/idle",
            "/pools/primary/waiting",
            "/pools/primary/utilization_pct",
            "/queries/total",
            "/queries/succeeded",
            "/queries/failed",
            "/queries/success_rate_pct",
            "/queries/retries",
            "/queries/outcome_unknown",
            "/queries/slow",
            "/queries/slow_per_min",
            "/latency_ms/avg",
            "/latency_ms/p50",
            "/latency_ms/p95",
            "/latency_ms/p99",
            "/latency_ms/p999",
            "/latency_ms/max",
            "/acquire_wait_ms/p999",
            "/connections/opened",
            "/connections/closed/idle",
            "/connections/reuse_rate_pct",
            "/statement_cache/hits",
            "/statement_cache/misses",
            "/statement_cache/evictions",
            "/failover/active",
            "/failover/activations",
            "/failover/active_ms",
            "/health/grade",
            "/health/driven_by",
            "/health/window/utilization_pct",
            "/health/window/avg_ms",
            "/health/window/p95_ms",
            "/health/window/success_rate_pct",
            "/health/window/slow_per_min",
        ] {
            assert!(v.pointer(key).is_some(), "{key} missing from {v:#}");
        }
        assert_eq!(v["failover"]["active"], false);
        assert_eq!(v["health"]["grade"], "critical");
    }
}
