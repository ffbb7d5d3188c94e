//! The API an application uses all day: statements with retries that never duplicate a write,
//! query timeouts that cancel on the server, transactions rerun whole, exclusive checkout,
//! status and metrics.

mod call;
mod client;
mod copy;
mod lane;
mod op;
mod read;
pub mod route;
mod router;
mod stats;
mod stream;
mod transaction;
mod tx;
mod tx_options;

use std::sync::{Arc, Weak};
use std::time::Duration;

pub use call::Call;
pub use client::GenericClient;
pub use copy::{CopyInSink, CopyOutStream};
pub(crate) use lane::ping as lane_ping;
pub use op::{Exec, One, Op, Opt, Params, Rows};
pub use router::Router;
pub use stream::RowStream;
pub use transaction::TxCall;
pub use tx::{Savepoint, Tx};
pub use tx_options::{IsolationLevel, TxOptions};

pub use crate::metrics::{ConnectionCounters, PoolSnapshot, QueryCounters, Snapshot};

use crate::config::HealthThresholds;
use crate::connect::PgConnector;
use crate::error::Error;
use crate::metrics::{FailoverSnapshot, PoolInput};
use crate::pool::{Pool, PooledConnection};
use route::{FailoverStats, Marking};
use stats::QueryStats;

/// Time limits and retry policy of the query path. `Default` gives the profiles' values.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ManagerOptions {
    /// One statement's execution; on expiry the server is sent a CancelRequest. Default: 30 s.
    pub query_timeout: Duration,
    /// A statement slower than this is counted and logged as slow. Default: 100 ms.
    pub slow_query_threshold: Duration,
    /// Retries after the first attempt. Default: 3.
    pub retry_attempts: u32,
    /// Time a call may spend beyond its first attempt. Default: 5 s.
    pub retry_budget: Duration,
    /// After a query timeout: bound on the cancel request, then on the statement ending.
    /// Default: 2 s.
    pub cancel_grace: Duration,
    /// The backoff before each retry (the last one repeats), each with ±20% jitter.
    /// Default: 100 ms, 500 ms, 2 s.
    pub retry_delays: Vec<Duration>,
    /// `DB_HEALTH_CHECK_INTERVAL`: the health checker's period (at least 1 s); `None` runs no
    /// checker. Default: 60 s (the development profile).
    pub health_check_interval: Option<Duration>,
    /// Where the health grades change. Default: DESIGN.md's table.
    pub health_thresholds: HealthThresholds,
    /// `DB_PIPELINE_CONNECTIONS`: connections of the pipelined lane, checked out of the
    /// primary pool and shared by single-statement calls; 0 = no lane. Ignored when the
    /// statement cache is off (size 0, for PgBouncer): see [`crate::config::QueryConfig`].
    /// Default: the development profile's.
    pub pipeline_connections: u32,
    /// The bound on statements in flight per lane connection; a call finding every lane
    /// connection full waits for room (a stall, counted). Default: 256.
    pub pipeline_max_in_flight: u32,
}

impl Default for ManagerOptions {
    /// The development profile's query and retry settings.
    fn default() -> Self {
        // One source of defaults: the configuration's development profile.
        let p = crate::config::Profile::Development;
        let query = crate::config::QueryConfig::for_profile(p);
        let retry = crate::config::RetryConfig::for_profile(p);
        Self {
            query_timeout: query.query_timeout,
            slow_query_threshold: query.slow_query_threshold,
            retry_attempts: retry.attempts,
            retry_budget: retry.budget,
            cancel_grace: Duration::from_secs(2),
            retry_delays: crate::config::RETRY_DELAYS.to_vec(),
            health_check_interval: Some(
                crate::config::HealthConfig::for_profile(crate::config::Profile::Development)
                    .interval,
            ),
            health_thresholds: HealthThresholds::default(),
            pipeline_connections: crate::config::PoolConfig::for_profile(p).pipeline_connections,
            pipeline_max_in_flight: DEFAULT_PIPELINE_MAX_IN_FLIGHT,
        }
    }
}

/// Default [`ManagerOptions::pipeline_max_in_flight`].
pub(crate) const DEFAULT_PIPELINE_MAX_IN_FLIGHT: u32 = 256;

struct Shared {
    router: Arc<Router>,
    /// The pipelined lane (`DB_PIPELINE_CONNECTIONS` > 0, statement cache on).
    lane: Option<Arc<crate::lane::Lane>>,
    opts: ManagerOptions,
    stats: QueryStats,
    /// The health checker (which also probes roles), aborted with the manager.
    checker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(h) = self.checker.get_mut().ok().and_then(Option::take) {
            h.abort();
        }
    }
}

/// The failover side of a manager: the second pool and when it engages.
#[derive(Debug)]
#[non_exhaustive]
pub struct FailoverOptions {
    /// The failover pool (`DB_FAILOVER_POOL_MAX`).
    pub pool: Pool<PgConnector>,
    /// It targets the primary's own server (no `DB_FAILOVER_URL`): reserve capacity.
    pub same_target: bool,
    /// Primary utilization (percent) that engages it (`DB_FAILOVER_THRESHOLD`).
    pub threshold_pct: u8,
}

impl FailoverOptions {
    /// Failover on `pool`, engaging at `threshold_pct`.
    pub fn new(pool: Pool<PgConnector>, same_target: bool, threshold_pct: u8) -> Self {
        Self {
            pool,
            same_target,
            threshold_pct,
        }
    }
}

/// Read routing: the read pool on `DB_READ_URL` and its lag limit.
#[derive(Debug)]
#[non_exhaustive]
pub struct ReadOptions {
    /// The read pool (a standby's target).
    pub pool: Pool<PgConnector>,
    /// `DB_READ_MAX_LAG` in bytes of WAL; 0 = no limit.
    pub max_lag_bytes: u64,
}

impl ReadOptions {
    /// Reads on `pool` while its standby is at most `max_lag_bytes` behind (0 = no limit).
    pub fn new(pool: Pool<PgConnector>, max_lag_bytes: u64) -> Self {
        Self {
            pool,
            max_lag_bytes,
        }
    }
}

/// A manager that does not keep it alive (for background tasks).
#[derive(Clone)]
pub(crate) struct WeakManager(Weak<Shared>);

impl WeakManager {
    /// The manager, if it still exists.
    pub(crate) fn upgrade(&self) -> Option<PoolManager> {
        self.0.upgrade().map(|inner| PoolManager { inner })
    }
}

/// The pool manager. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct PoolManager {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for PoolManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolManager")
            .field("router", &self.inner.router)
            .field("options", &self.inner.opts)
            .finish()
    }
}

impl PoolManager {
    /// A manager over `primary` alone. Starts the health checker (see
    /// [`ManagerOptions::health_check_interval`]), so it must be called inside a Tokio runtime.
    pub fn new(primary: Pool<PgConnector>, opts: ManagerOptions) -> Self {
        Self::with_failover(primary, None, opts)
    }

    /// A manager over `primary` and, when given, a failover pool. The health checker, which
    /// also probes the roles, runs every [`ManagerOptions::health_check_interval`] (every
    /// 250 ms while the primary is down or read-only). Call [`Router::refresh_topology`] once
    /// at start-up to know the roles before the first call.
    ///
    /// # Panics
    /// When called outside a tokio runtime with a health-check interval.
    pub fn with_failover(
        primary: Pool<PgConnector>,
        failover: Option<FailoverOptions>,
        opts: ManagerOptions,
    ) -> Self {
        Self::with_pools(primary, failover, None, opts)
    }

    /// As [`PoolManager::with_failover`], with a read pool for `.read_only()` calls when
    /// given. Call [`Router::refresh_read`] once at start-up: until its standby's lag is
    /// measured, reads go to the primary.
    ///
    /// # Panics
    /// When called outside a tokio runtime with a health-check interval.
    pub fn with_pools(
        primary: Pool<PgConnector>,
        failover: Option<FailoverOptions>,
        read: Option<ReadOptions>,
        opts: ManagerOptions,
    ) -> Self {
        let probe_timeout = primary
            .options()
            .connect_timeout
            .min(Duration::from_secs(2));
        let (failover, same, threshold) = match failover {
            Some(f) => (Some(f.pool), f.same_target, f.threshold_pct),
            None => (None, false, 100),
        };
        // Acquire waits are recorded by `PoolId::index`: primary 0, failover 1, read 2.
        let pools = if read.is_some() {
            3
        } else if failover.is_some() {
            2
        } else {
            1
        };
        let lane = lane_for(&primary, &opts);
        let mut router = Router::new(primary, failover, same, threshold, probe_timeout);
        if let Some(r) = read {
            router = router.with_read_pool(r.pool, r.max_lag_bytes);
        }
        let router = Arc::new(router);
        let interval = opts.health_check_interval;
        let db = Self {
            inner: Arc::new(Shared {
                router,
                lane,
                opts,
                stats: QueryStats::new(pools),
                checker: std::sync::Mutex::new(None),
            }),
        };
        if let Some(interval) = interval {
            let handle = crate::health::checker::spawn(db.downgrade(), interval);
            *db.inner.checker.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        }
        db
    }

    pub(crate) fn downgrade(&self) -> WeakManager {
        WeakManager(Arc::downgrade(&self.inner))
    }

    /// True once [`PoolManager::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.router.primary().is_closed()
    }

    /// The pools the health checker pings, by name.
    pub(crate) fn health_targets(&self) -> Vec<(String, &Pool<PgConnector>)> {
        let router = &self.inner.router;
        std::iter::once(router.primary())
            .chain(router.failover())
            .map(|p| (p.options().name.clone(), p))
            .collect()
    }

    /// Every row of a statement. Treated as a possible write unless marked
    /// [`Call::idempotent`] or [`Call::read_only`].
    pub fn query<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Call<'a, Rows> {
        Call::new(self, sql, params)
    }

    /// Exactly one row (an error for none or several).
    pub fn query_one<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Call<'a, One> {
        Call::new(self, sql, params)
    }

    /// Zero or one row.
    pub fn query_opt<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Call<'a, Opt> {
        Call::new(self, sql, params)
    }

    /// The number of rows a statement affected.
    pub fn execute<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Call<'a, Exec> {
        Call::new(self, sql, params)
    }

    /// An exclusive connection for everything else (session settings, advisory locks …). Used
    /// through its raw client it is reset (ROLLBACK) when it comes back. For COPY use
    /// [`PoolManager::copy_in`] / [`PoolManager::copy_out`] (bounded by the query timeout);
    /// for LISTEN, [`PoolManager::listener`]: a pooled connection is not read between
    /// statements, so its notifications are dropped.
    ///
    /// # Errors
    /// [`Error::Acquire`], as [`Pool::get`]. The connection comes from the pool the router
    /// picks for a first attempt of a possible write: the primary, or the failover pool while
    /// overflow is engaged.
    // A plain function returning a future: `#[track_caller]` does nothing on an `async fn`,
    // and leak detection reports the caller's file and line.
    #[track_caller]
    pub fn get(
        &self,
    ) -> impl std::future::Future<Output = Result<PooledConnection<PgConnector>, Error>> + Send + '_
    {
        let at = std::panic::Location::caller();
        async move {
            let router = &self.inner.router;
            let id = router.pick(1, Marking::Write);
            let pool = router.pool(id);
            let started = tokio::time::Instant::now();
            let got = pool
                .get_until(started + pool.options().acquire_timeout)
                .await;
            self.inner.stats.acquire(id.index(), started.elapsed());
            let mut conn = got?;
            PooledConnection::watch_leak(&mut conn, at);
            Ok(conn)
        }
    }

    /// The primary pool.
    pub fn pool(&self) -> &Pool<PgConnector> {
        self.inner.router.primary()
    }

    /// The failover pool, when failover is enabled.
    pub fn failover_pool(&self) -> Option<&Pool<PgConnector>> {
        self.inner.router.failover()
    }

    /// The read pool, when `DB_READ_URL` is set.
    pub fn read_pool(&self) -> Option<&Pool<PgConnector>> {
        self.inner.router.read_pool()
    }

    /// The router: topology, the role probe ([`Router::refresh_topology`]) and the overflow
    /// switch.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// The snapshot's `failover` section.
    fn failover_snapshot(&self) -> FailoverSnapshot {
        let router = &self.inner.router;
        let f = router.failover_stats();
        FailoverSnapshot {
            enabled: router.failover().is_some(),
            active: f.active,
            activations: f.activations,
            active_ms: f.active_ms,
        }
    }

    /// Overflow activity: the snapshot's `failover` section.
    pub fn failover_stats(&self) -> FailoverStats {
        self.inner.router.failover_stats()
    }

    /// The options.
    pub fn options(&self) -> &ManagerOptions {
        &self.inner.opts
    }

    /// The pipelined lane's figures (all zero when there is no lane).
    pub fn lane_stats(&self) -> crate::lane::LaneStats {
        self.inner
            .lane
            .as_ref()
            .map(|l| l.stats())
            .unwrap_or_default()
    }

    /// Opens the pipelined lane's connections now, each bounded by the acquire timeout
    /// (otherwise they open on the first calls, which meanwhile take the exclusive path).
    pub async fn prewarm_lane(&self) {
        if let Some(lane) = &self.inner.lane {
            lane.prewarm().await;
        }
    }

    /// Shuts down: see [`Pool::close`]. The health checker stops.
    pub async fn close(&self, grace: Duration) {
        if let Some(lane) = &self.inner.lane {
            lane.close();
        }
        if let Some(h) = self
            .inner
            .checker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
        let router = &self.inner.router;
        let read = async {
            if let Some(r) = router.read_pool() {
                r.close(grace).await;
            }
        };
        match router.failover() {
            Some(f) => {
                tokio::join!(router.primary().close(grace), f.close(grace), read);
            }
            None => {
                tokio::join!(router.primary().close(grace), read);
            }
        }
    }

    /// What the snapshot and the Prometheus text are built from; samples the utilization
    /// for the health window.
    fn inputs(&self) -> (Vec<PoolInput>, crate::metrics::Figures) {
        let router = &self.inner.router;
        let input = |pool: &Pool<PgConnector>| {
            let s = pool.status();
            PoolInput {
                name: pool.options().name.clone(),
                max: s.max,
                total: s.size,
                active: s.in_use,
                idle: s.idle,
                waiting: s.waiting,
                // Both pools serve checkouts (the failover pool on overflow and failover), so
                // graded utilization is over their joint capacity.
                serves_checkouts: true,
                counters: pool.counters(),
                cache: pool.connector().cache_stats(),
            }
        };
        let mut pools = vec![input(router.primary())];
        if let Some(f) = router.failover() {
            pools.push(input(f));
        }
        if let Some(r) = router.read_pool() {
            // Reads only, and they fall back to the primary: not checkout capacity.
            pools.push(PoolInput {
                serves_checkouts: false,
                ..input(r)
            });
        }
        let now = tokio::time::Instant::now();
        let rec = &self.inner.stats.recorder;
        rec.sample_utilization(now, crate::metrics::checkout_utilization_pct(&pools));
        let mut fig = rec.figures(now);
        if router.read_pool().is_some() && router.failover().is_none() {
            // The read pool's waits sit at index 2: line them up with `pools`.
            fig.waits.remove(1);
        }
        (pools, fig)
    }

    /// The metrics at this moment (see [`Snapshot`]; serialize it for dashboards).
    pub fn metrics(&self) -> Snapshot {
        let (pools, fig) = self.inputs();
        let mut snapshot = crate::metrics::build(
            &pools,
            &fig,
            self.failover_snapshot(),
            &self.inner.opts.health_thresholds,
        );
        snapshot.read = self.inner.router.read_stats();
        snapshot.lane = self.lane_stats();
        snapshot
    }

    /// The status block:
    ///
    /// ```text
    /// Pool Health: GOOD
    ///    Active: 8/100 (8%)
    ///    Idle: 92
    ///    Query Time: 45ms avg (p95 80ms, p99 120ms)
    ///    Slow: 0 queries in the last minute
    ///    Failover: INACTIVE
    /// ```
    ///
    /// Query time and slow queries are the last minute's, as graded.
    pub fn status(&self) -> String {
        crate::metrics::status_text(&self.metrics())
    }

    /// The metrics in the Prometheus text format (content type
    /// [`crate::metrics::PROMETHEUS_CONTENT_TYPE`]), names as in DESIGN.md.
    pub fn prometheus(&self) -> String {
        let (pools, fig) = self.inputs();
        let mut snapshot = crate::metrics::build(
            &pools,
            &fig,
            self.failover_snapshot(),
            &self.inner.opts.health_thresholds,
        );
        snapshot.read = self.inner.router.read_stats();
        snapshot.lane = self.lane_stats();
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        crate::metrics::prometheus_text(&snapshot, &fig, &names)
    }

    /// Runs one health check now, as the background checker does every
    /// `DB_HEALTH_CHECK_INTERVAL`: pings each pool (acquire + `SELECT 1`, bounded) and logs the
    /// status block (INFO when good, WARN on a warning, ERROR when critical).
    pub async fn check_health(&self) -> crate::health::HealthCheck {
        crate::health::checker::tick(self).await
    }

    /// Turns the recording of metrics on (the default) or off. Off, the figures stop moving;
    /// it exists to measure what recording costs.
    pub fn set_metrics_recording(&self, on: bool) {
        self.inner.stats.recorder.set_enabled(on);
    }
}

/// The lane `opts` ask for over `primary`. None with the statement cache off: that mode is for
/// PgBouncer in transaction mode, where a session's `statement_timeout` (the lane's only time
/// limit) does not hold and statements of one connection may reach different servers.
fn lane_for(primary: &Pool<PgConnector>, opts: &ManagerOptions) -> Option<Arc<crate::lane::Lane>> {
    if opts.pipeline_connections == 0 {
        return None;
    }
    if primary.connector().options().statement_cache_size == 0 {
        tracing::warn!(
            "DB_PIPELINE_CONNECTIONS is ignored: the statement cache is off (DB_STATEMENT_CACHE_SIZE=0, PgBouncer mode), and the lane needs a server session of its own"
        );
        return None;
    }
    // The lane's connections are the primary pool's: leave the exclusive path at least one.
    let max = primary.options().max_size;
    let connections = opts.pipeline_connections.min(max.saturating_sub(1));
    if connections < opts.pipeline_connections {
        tracing::warn!(
            asked = opts.pipeline_connections,
            connections,
            pool_max = max,
            "the pipelined lane is cut to leave the primary pool a connection of its own"
        );
    }
    if connections == 0 {
        return None;
    }
    Some(crate::lane::Lane::new(
        primary.clone(),
        connections,
        opts.pipeline_max_in_flight,
        opts.query_timeout,
    ))
}
