//! From a [`Config`] to running pools: the one place where configuration meets machinery.

use crate::config::{Config, ConfigError, DbTarget, PoolConfig, Problem};
use crate::connect::{ConnectOptions, PgConnector};
use crate::error::BuildError;
use crate::manager::{FailoverOptions, ManagerOptions, PoolManager, ReadOptions};
use crate::pool::{Pool, PoolOptions};
use crate::tls::TlsError;

impl PoolOptions {
    /// Pool options from the configuration's pool section, under `name`.
    pub fn from_config(pool: &PoolConfig, name: &str) -> Self {
        let mut o = PoolOptions::sized(pool.max_size, pool.min_idle);
        o.name = name.to_owned();
        o.connect_timeout = pool.connect_timeout;
        o.acquire_timeout = pool.acquire_timeout;
        o.idle_timeout = pool.idle_timeout;
        o.max_lifetime = pool.max_lifetime;
        o.leak_detection_threshold = Some(pool.leak_detection_threshold).filter(|t| !t.is_zero());
        o
    }
}

impl ConnectOptions {
    /// Connect options from the configuration.
    pub fn from_config(config: &Config) -> Self {
        ConnectOptions {
            connect_timeout: config.pool.connect_timeout,
            application_name: Some(config.pool.application_name.clone()),
            statement_cache_size: config.query.statement_cache_size,
            query_timeout: config.query.query_timeout,
            init_sql: config.pool.connect_init_sql.clone(),
            ..ConnectOptions::default()
        }
    }
}

impl ManagerOptions {
    /// Query-path options from the configuration.
    pub fn from_config(config: &Config) -> Self {
        ManagerOptions {
            query_timeout: config.query.query_timeout,
            slow_query_threshold: config.query.slow_query_threshold,
            retry_attempts: config.retry.attempts,
            retry_budget: config.retry.budget,
            retry_delays: crate::config::RETRY_DELAYS.to_vec(),
            health_check_interval: Some(config.health.interval),
            health_thresholds: config.health.thresholds.clone(),
            pipeline_connections: config.pool.pipeline_connections,
            ..ManagerOptions::default()
        }
    }
}

impl PgConnector {
    /// A connector for `target` with the configuration's TLS root certificate and connect
    /// options.
    ///
    /// # Errors
    /// When the TLS settings cannot be honoured (verify-* without a usable root certificate).
    pub fn for_target(target: &DbTarget, config: &Config) -> Result<Self, TlsError> {
        let opts = ConnectOptions {
            target_session_attrs: Some(target.session_attrs()),
            ..ConnectOptions::from_config(config)
        };
        PgConnector::new(
            target.pg_config(),
            target.ssl_mode(),
            config.root_cert_for(target),
            opts,
        )
    }
}

/// The read pool's size: a quarter of `DB_POOL_MAX`, at least 2 (but never above it). Reads
/// that find it full while the primary has room go to the primary.
pub(crate) fn read_pool_max(pool_max: u32) -> u32 {
    (pool_max / 4).max(2).min(pool_max)
}

impl PoolManager {
    /// Loads the configuration from the environment (profile + `DB_*` overrides), validates
    /// it, builds the pool and prewarms `DB_POOL_MIN` connections.
    ///
    /// # Errors
    /// [`BuildError::Config`] with every configuration problem; otherwise as
    /// [`PoolManager::from_config`].
    pub async fn from_env() -> Result<Self, BuildError> {
        let config = Config::from_env().map_err(BuildError::Config)?;
        Self::from_config(&config).await
    }

    /// Builds the pools from a loaded configuration (the failover pool with
    /// `DB_ENABLE_FAILOVER`, the read pool with `DB_READ_URL`), prewarms the primary, probes
    /// every target's role and the read target's lag, and starts the periodic probe
    /// (`DB_HEALTH_CHECK_INTERVAL`). A failover target that cannot be reached
    /// does not stop the manager: it is marked down, warned about once and probed again.
    ///
    /// # Errors
    /// [`BuildError::Config`] when `DATABASE_URL` is missing or the configuration is invalid,
    /// [`BuildError::Tls`] when its TLS settings cannot be honoured, and
    /// [`BuildError::Prewarm`] (with the connect error inside) when the server cannot be
    /// reached or refuses the credentials.
    pub async fn from_config(config: &Config) -> Result<Self, BuildError> {
        config.validate().map_err(BuildError::Config)?;
        let idle = config.set_but_not_yet_effective();
        if !idle.is_empty() {
            // Once per manager: the user expects these to do something, and they do not yet.
            tracing::warn!("settings with no effect yet: {}", idle.join(", "));
        }
        let Some(target) = config.database_url.as_ref() else {
            return Err(BuildError::Config(ConfigError {
                problems: vec![Problem {
                    variable: "DATABASE_URL".into(),
                    value: String::new(),
                    message: "is not set".into(),
                    fix: "set DATABASE_URL=postgres://user@host:5432/dbname".into(),
                }],
            }));
        };
        let connector = PgConnector::for_target(target, config).map_err(BuildError::Tls)?;
        let pool = Pool::new(connector, PoolOptions::from_config(&config.pool, "primary"));
        let failover = match (config.failover.enabled, config.failover_target()) {
            (true, Some(fo_target)) => {
                let connector =
                    PgConnector::for_target(fo_target, config).map_err(BuildError::Tls)?;
                let mut opts = PoolOptions::from_config(&config.pool, "failover");
                opts.max_size = config.failover.pool_max;
                // Reserve capacity: opened when overflow or a failure needs it.
                opts.min_idle = 0;
                Some(FailoverOptions::new(
                    Pool::new(connector, opts),
                    config.failover_url.is_none(),
                    config.failover.threshold_pct,
                ))
            }
            _ => None,
        };
        let read = match &config.read_url {
            Some(read_target) => {
                let connector =
                    PgConnector::for_target(read_target, config).map_err(BuildError::Tls)?;
                let mut opts = PoolOptions::from_config(&config.pool, "read");
                opts.max_size = read_pool_max(config.pool.max_size);
                // Opened on demand: the lag probe opens the first one at start-up.
                opts.min_idle = 0;
                Some(ReadOptions::new(
                    Pool::new(connector, opts),
                    config.read.max_lag_bytes,
                ))
            }
            None => None,
        };
        pool.prewarm().await.map_err(BuildError::Prewarm)?;
        let m = PoolManager::with_pools(pool, failover, read, ManagerOptions::from_config(config));
        m.router().refresh_topology().await;
        // Before the first read: a standby whose lag is unknown serves none. A read target
        // that is down or not a standby is warned about here, not refused: roles change.
        m.router().refresh_read().await;
        m.prewarm_lane().await;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_read_pool_is_a_quarter_of_the_primary_at_least_two_never_more() {
        for (pool_max, read_max) in [(100, 25), (20, 5), (8, 2), (3, 2), (2, 2), (1, 1), (0, 0)] {
            assert_eq!(
                super::read_pool_max(pool_max),
                read_max,
                "DB_POOL_MAX={pool_max}"
            );
        }
    }
}
