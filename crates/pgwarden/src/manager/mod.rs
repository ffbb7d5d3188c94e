//! The API an application uses all day: statements with retries that never duplicate a write,
//! query timeouts that cancel on the server, transactions rerun whole, exclusive checkout,
//! status and metrics.

mod call;
mod stats;
mod transaction;

use std::sync::{Arc, Weak};
use std::time::Duration;

pub use call::{Call, Exec, One, Op, Opt, Params, Rows};
pub use transaction::{Tx, TxFuture};

pub use crate::metrics::{ConnectionCounters, PoolSnapshot, QueryCounters, Snapshot};

use crate::config::HealthThresholds;
use crate::connect::PgConnector;
use crate::error::Error;
use crate::metrics::{FailoverSnapshot, PoolInput};
use crate::pool::{Pool, PooledConnection};
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
        }
    }
}

struct Shared {
    primary: Pool<PgConnector>,
    opts: ManagerOptions,
    stats: QueryStats,
    /// The health checker, aborted with the manager.
    checker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(h) = self.checker.get_mut().ok().and_then(Option::take) {
            h.abort();
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
            .field("primary", &self.inner.primary)
            .field("options", &self.inner.opts)
            .finish()
    }
}

impl PoolManager {
    /// A manager over `primary`. Starts the health checker (see
    /// [`ManagerOptions::health_check_interval`]), so it must be called inside a Tokio runtime.
    pub fn new(primary: Pool<PgConnector>, opts: ManagerOptions) -> Self {
        let interval = opts.health_check_interval;
        let db = Self {
            inner: Arc::new(Shared {
                primary,
                opts,
                stats: QueryStats::new(1),
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
        self.inner.primary.is_closed()
    }

    /// The pools the health checker pings, by name.
    pub(crate) fn health_targets(&self) -> Vec<(String, &Pool<PgConnector>)> {
        vec![(
            self.inner.primary.options().name.clone(),
            &self.inner.primary,
        )]
    }

    /// Every row of a statement. Treated as a possible write unless marked
    /// [`Call::idempotent`].
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

    /// An exclusive connection for everything else (COPY, LISTEN, session settings …). Used
    /// through its raw client it is reset (ROLLBACK) when it comes back.
    ///
    /// # Errors
    /// [`Error::Acquire`], as [`Pool::get`].
    // A plain function returning a future: `#[track_caller]` does nothing on an `async fn`,
    // and leak detection reports the caller's file and line.
    #[track_caller]
    pub fn get(
        &self,
    ) -> impl std::future::Future<Output = Result<PooledConnection<PgConnector>, Error>> + Send + '_
    {
        let at = std::panic::Location::caller();
        async move {
            let started = tokio::time::Instant::now();
            let deadline = started + self.inner.primary.options().acquire_timeout;
            let got = self.inner.primary.get_until(deadline).await;
            self.inner.stats.acquire(0, started.elapsed());
            let mut conn = got?;
            PooledConnection::watch_leak(&mut conn, at);
            Ok(conn)
        }
    }

    /// The primary pool.
    pub fn pool(&self) -> &Pool<PgConnector> {
        &self.inner.primary
    }

    /// The options.
    pub fn options(&self) -> &ManagerOptions {
        &self.inner.opts
    }

    /// Shuts down: see [`Pool::close`]. The health checker stops.
    pub async fn close(&self, grace: Duration) {
        if let Some(h) = self
            .inner
            .checker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
        self.inner.primary.close(grace).await;
    }

    /// What the snapshot and the Prometheus text are built from; samples the utilization
    /// for the health window.
    fn inputs(&self) -> (Vec<PoolInput>, crate::metrics::Figures) {
        let pool = &self.inner.primary;
        let s = pool.status();
        let pools = vec![PoolInput {
            name: pool.options().name.clone(),
            max: s.max,
            total: s.size,
            active: s.in_use,
            idle: s.idle,
            waiting: s.waiting,
            serves_checkouts: true,
            counters: pool.counters(),
            cache: pool.connector().cache_stats(),
        }];
        let now = tokio::time::Instant::now();
        let rec = &self.inner.stats.recorder;
        rec.sample_utilization(now, crate::metrics::checkout_utilization_pct(&pools));
        (pools, rec.figures(now))
    }

    /// The metrics at this moment (see [`Snapshot`]; serialize it for dashboards).
    pub fn metrics(&self) -> Snapshot {
        let (pools, fig) = self.inputs();
        crate::metrics::build(
            &pools,
            &fig,
            FailoverSnapshot::default(),
            &self.inner.opts.health_thresholds,
        )
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
        let snapshot = crate::metrics::build(
            &pools,
            &fig,
            FailoverSnapshot::default(),
            &self.inner.opts.health_thresholds,
        );
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
