//! The API an application uses all day: statements with retries that never duplicate a write,
//! query timeouts that cancel on the server, transactions rerun whole, exclusive checkout,
//! status and metrics.

mod call;
mod client;
mod stats;
mod stream;
mod transaction;

use std::sync::Arc;
use std::time::Duration;

pub use call::{Call, Exec, One, Op, Opt, Params, Rows};
pub use client::GenericClient;
pub use stats::{ConnectionCounters, PoolSnapshot, QueryCounters, Snapshot};
pub use stream::RowStream;
pub use transaction::{Tx, TxFuture};

use crate::connect::PgConnector;
use crate::error::Error;
use crate::pool::{Pool, PooledConnection};
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
    primary: Pool<PgConnector>,
    opts: ManagerOptions,
    stats: QueryStats,
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
    /// A manager over `primary`.
    pub fn new(primary: Pool<PgConnector>, opts: ManagerOptions) -> Self {
        Self {
            inner: Arc::new(Shared {
                primary,
                opts,
                stats: QueryStats::new(),
            }),
        }
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
    pub async fn get(&self) -> Result<PooledConnection<PgConnector>, Error> {
        Ok(self.inner.primary.get().await?)
    }

    /// The primary pool.
    pub fn pool(&self) -> &Pool<PgConnector> {
        &self.inner.primary
    }

    /// The options.
    pub fn options(&self) -> &ManagerOptions {
        &self.inner.opts
    }

    /// Shuts down: see [`Pool::close`].
    pub async fn close(&self, grace: Duration) {
        self.inner.primary.close(grace).await;
    }

    /// The metrics at this moment.
    pub fn metrics(&self) -> Snapshot {
        let pool = &self.inner.primary;
        let k = pool.counters();
        let mut pools = std::collections::BTreeMap::new();
        pools.insert(pool.options().name.clone(), pool.status().into());
        Snapshot {
            pools,
            queries: self.inner.stats.snapshot(),
            connections: ConnectionCounters {
                opened: k.opened,
                reuse_rate_pct: k.reuse_rate_pct(),
                closed: k.closed,
            },
            statement_cache: pool.connector().cache_stats(),
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
