//! The API an application uses all day: statements with retries that never duplicate a write,
//! query timeouts that cancel on the server, transactions rerun whole, exclusive checkout,
//! status and metrics.

mod call;
pub mod route;
mod router;
mod stats;
mod topology_task;
mod transaction;

use std::sync::Arc;
use std::time::Duration;

pub use call::{Call, Exec, One, Op, Opt, Params, Rows};
pub use router::Router;
pub use stats::{ConnectionCounters, PoolSnapshot, QueryCounters, Snapshot};
pub use transaction::{Tx, TxFuture};

use crate::connect::PgConnector;
use crate::error::Error;
use crate::pool::{Pool, PooledConnection};
use route::{FailoverStats, Marking, PoolId};
use stats::QueryStats;

/// Time limits and retry policy of the query path. `Default` gives the profiles' values.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        }
    }
}

struct Shared {
    router: Arc<Router>,
    opts: ManagerOptions,
    stats: QueryStats,
    /// The periodic role probe; aborted with the manager.
    probe_task: Option<tokio::task::AbortHandle>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(t) = &self.probe_task {
            t.abort();
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
    /// A manager over `primary` alone, with no periodic role probe (a 25006 still re-checks
    /// the roles).
    pub fn new(primary: Pool<PgConnector>, opts: ManagerOptions) -> Self {
        Self::with_failover(primary, None, None, opts)
    }

    /// A manager over `primary` and, when given, a failover pool; roles are probed every
    /// `probe_interval` when given (`DB_HEALTH_CHECK_INTERVAL`). Call
    /// [`Router::refresh_topology`] once at start-up to know the roles before the first call.
    ///
    /// # Panics
    /// When called outside a tokio runtime with a `probe_interval`.
    pub fn with_failover(
        primary: Pool<PgConnector>,
        failover: Option<FailoverOptions>,
        probe_interval: Option<Duration>,
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
        let router = Arc::new(Router::new(
            primary,
            failover,
            same,
            threshold,
            probe_timeout,
        ));
        let probe_task = probe_interval
            .map(|every| topology_task::spawn(Arc::downgrade(&router), every).abort_handle());
        Self {
            inner: Arc::new(Shared {
                router,
                opts,
                stats: QueryStats::new(),
                probe_task,
            }),
        }
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

    /// An exclusive connection for everything else (COPY, LISTEN, session settings …). Used
    /// through its raw client it is reset (ROLLBACK) when it comes back.
    ///
    /// # Errors
    /// [`Error::Acquire`], as [`Pool::get`]. The connection comes from the pool the router
    /// picks for a first attempt of a possible write: the primary, or the failover pool while
    /// overflow is engaged.
    pub async fn get(&self) -> Result<PooledConnection<PgConnector>, Error> {
        let router = &self.inner.router;
        Ok(router.pool(router.pick(1, Marking::Write)).get().await?)
    }

    /// The primary pool.
    pub fn pool(&self) -> &Pool<PgConnector> {
        self.inner.router.primary()
    }

    /// The failover pool, when failover is enabled.
    pub fn failover_pool(&self) -> Option<&Pool<PgConnector>> {
        self.inner.router.failover()
    }

    /// The router: topology, the role probe ([`Router::refresh_topology`]) and the overflow
    /// switch.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// Overflow activity: the snapshot's `failover` section.
    pub fn failover_stats(&self) -> FailoverStats {
        self.inner.router.failover_stats()
    }

    /// The options.
    pub fn options(&self) -> &ManagerOptions {
        &self.inner.opts
    }

    /// Shuts down: see [`Pool::close`].
    pub async fn close(&self, grace: Duration) {
        if let Some(t) = &self.inner.probe_task {
            t.abort();
        }
        let router = &self.inner.router;
        match router.failover() {
            Some(f) => {
                tokio::join!(router.primary().close(grace), f.close(grace));
            }
            None => router.primary().close(grace).await,
        }
    }

    /// The metrics at this moment.
    pub fn metrics(&self) -> Snapshot {
        let router = &self.inner.router;
        let pool = router.primary();
        let mut k = pool.counters();
        let mut cache = pool.connector().cache_stats();
        let mut pools = std::collections::BTreeMap::new();
        pools.insert(PoolId::Primary.name().to_owned(), pool.status().into());
        if let Some(f) = router.failover() {
            pools.insert(PoolId::Failover.name().to_owned(), f.status().into());
            k = stats::merge_counters(k, &f.counters());
            cache = stats::merge_cache(cache, &f.connector().cache_stats());
        }
        Snapshot {
            pools,
            queries: self.inner.stats.snapshot(),
            connections: ConnectionCounters {
                opened: k.opened,
                reuse_rate_pct: k.reuse_rate_pct(),
                closed: k.closed,
            },
            statement_cache: cache,
            failover: router.failover_stats(),
        }
    }

    /// A short human-readable status block.
    pub fn status(&self) -> String {
        let m = self.metrics();
        let q = &m.queries;
        let mut out = String::new();
        for (name, p) in &m.pools {
            out.push_str(&format!(
                "Pool {name}: active {}/{} ({:.0}%), idle {}, waiting {}\n",
                p.active, p.max, p.utilization_pct, p.idle, p.waiting
            ));
        }
        if self.inner.router.failover().is_some() {
            let f = &m.failover;
            out.push_str(&format!(
                "Failover: {}, {} activations, {:.0} ms active\n",
                if f.active { "engaged" } else { "standing by" },
                f.activations,
                f.active_ms
            ));
        }
        out.push_str(&format!(
            "Queries: {} ({:.2}% ok), {:.1} ms avg, {:.1} ms max, {} slow, {} retries, {} outcome unknown\n",
            q.total, q.success_rate_pct, q.avg_ms, q.max_ms, q.slow, q.retries, q.outcome_unknown
        ));
        out.push_str(&format!(
            "Connections: {} opened, reuse {:.1}%; statement cache {} hits / {} misses / {} evictions",
            m.connections.opened,
            m.connections.reuse_rate_pct,
            m.statement_cache.hits,
            m.statement_cache.misses,
            m.statement_cache.evictions
        ));
        out
    }
}
