//! Profiles and the plain configuration types, with every default as a named const.
//!
//! The values follow the "Configuration" table of DESIGN.md exactly; each field's doc repeats
//! its default per profile.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A deployment profile: picks the defaults of every setting.
///
/// Selected by `DB_PROFILE`, else `APP_ENV`, else [`Profile::Development`]; the CLI's
/// `--profile` overrides both. Parsing accepts `development`/`dev`, `staging`/`stage` and
/// `production`/`prod`, case-insensitive; `Display` prints the lowercase full name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Local development: a smaller pool, no failover pool.
    #[default]
    Development,
    /// Staging: a medium pool with failover.
    Staging,
    /// Production: the largest pool, failover on, frequent health checks.
    Production,
}

impl Profile {
    /// All profiles, in order.
    pub const ALL: [Profile; 3] = [Profile::Development, Profile::Staging, Profile::Production];

    /// The lowercase full name (`"production"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Development => "development",
            Profile::Staging => "staging",
            Profile::Production => "production",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of [`Profile::from_str`]: the name is none of the accepted spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile `{0}`: expected development (dev), staging (stage) or production (prod)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Profile::Development),
            "staging" | "stage" => Ok(Profile::Staging),
            "production" | "prod" => Ok(Profile::Production),
            _ => Err(UnknownProfile(s.to_string())),
        }
    }
}

/// Default `DB_POOL_MAX` in development.
pub(crate) const DEV_POOL_MAX: u32 = 30;
/// Default `DB_POOL_MAX` in staging.
pub(crate) const STAGING_POOL_MAX: u32 = 50;
/// Default `DB_POOL_MAX` in production.
pub(crate) const PRODUCTION_POOL_MAX: u32 = 100;
/// Default `DB_POOL_MIN` in development.
pub(crate) const DEV_POOL_MIN: u32 = 5;
/// Default `DB_POOL_MIN` in staging.
pub(crate) const STAGING_POOL_MIN: u32 = 10;
/// Default `DB_POOL_MIN` in production.
pub(crate) const PRODUCTION_POOL_MIN: u32 = 25;
/// Default `DB_CONNECT_TIMEOUT` (every profile): 5 s.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `DB_ACQUIRE_TIMEOUT` (every profile): 5 s.
pub(crate) const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `DB_POOL_IDLE_TIMEOUT` (every profile): 60 s.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `DB_POOL_MAX_LIFETIME` (every profile): 30 min.
pub(crate) const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Default `DB_QUERY_TIMEOUT` (every profile): 30 s.
pub(crate) const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `DB_RETRY_ATTEMPTS` (every profile): 3 retries after the first attempt.
pub(crate) const DEFAULT_RETRY_ATTEMPTS: u32 = 3;
/// Default `DB_RETRY_BUDGET` (every profile): 5 s.
pub(crate) const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(5);
/// The backoff before retry 1, 2 and 3 (each with jitter); later retries reuse the last delay.
pub(crate) const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];
/// Default `DB_ENABLE_FAILOVER` in development.
pub(crate) const DEV_ENABLE_FAILOVER: bool = false;
/// Default `DB_ENABLE_FAILOVER` in staging.
pub(crate) const STAGING_ENABLE_FAILOVER: bool = true;
/// Default `DB_ENABLE_FAILOVER` in production.
pub(crate) const PRODUCTION_ENABLE_FAILOVER: bool = true;
/// Default `DB_FAILOVER_POOL_MAX` in development.
pub(crate) const DEV_FAILOVER_POOL_MAX: u32 = 10;
/// Default `DB_FAILOVER_POOL_MAX` in staging.
pub(crate) const STAGING_FAILOVER_POOL_MAX: u32 = 10;
/// Default `DB_FAILOVER_POOL_MAX` in production.
pub(crate) const PRODUCTION_FAILOVER_POOL_MAX: u32 = 20;
/// Default `DB_FAILOVER_THRESHOLD` (every profile): 80 %.
pub(crate) const DEFAULT_FAILOVER_THRESHOLD_PCT: u8 = 80;
/// How far below the threshold utilization must fall before the failover pool is released.
pub(crate) const FAILOVER_RELEASE_GAP_PCT: u8 = 10;
/// Default `DB_STATEMENT_CACHE_SIZE` (every profile): 1000 prepared statements per connection.
pub(crate) const DEFAULT_STATEMENT_CACHE_SIZE: usize = 1000;
/// Default `DB_SLOW_QUERY_THRESHOLD` (every profile): 100 ms.
pub(crate) const DEFAULT_SLOW_QUERY_THRESHOLD: Duration = Duration::from_millis(100);
/// Default `DB_HEALTH_CHECK_INTERVAL` in development: 60 s.
pub(crate) const DEV_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Default `DB_HEALTH_CHECK_INTERVAL` in staging: 30 s.
pub(crate) const STAGING_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Default `DB_HEALTH_CHECK_INTERVAL` in production: 30 s.
pub(crate) const PRODUCTION_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// The shortest accepted `DB_HEALTH_CHECK_INTERVAL`: 1 s.
pub(crate) const MIN_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Default `DB_LEAK_DETECTION_THRESHOLD` (every profile): 0, off.
pub(crate) const DEFAULT_LEAK_DETECTION_THRESHOLD: Duration = Duration::ZERO;
/// The shortest accepted non-zero `DB_LEAK_DETECTION_THRESHOLD`: 100 ms.
pub(crate) const MIN_LEAK_DETECTION_THRESHOLD: Duration = Duration::from_millis(100);
/// Default `DB_PIPELINE_CONNECTIONS` in development.
pub(crate) const DEV_PIPELINE_CONNECTIONS: u32 = 0;
/// Default `DB_PIPELINE_CONNECTIONS` in staging.
pub(crate) const STAGING_PIPELINE_CONNECTIONS: u32 = 0;
/// Default `DB_PIPELINE_CONNECTIONS` in production.
pub(crate) const PRODUCTION_PIPELINE_CONNECTIONS: u32 = 0;
/// The most accepted `DB_PIPELINE_CONNECTIONS`: a handful of shared connections carries the
/// throughput of many more exclusive ones.
pub(crate) const MAX_PIPELINE_CONNECTIONS: u32 = 64;
/// Default `DB_APPLICATION_NAME` (every profile).
pub(crate) const DEFAULT_APPLICATION_NAME: &str = "pgwarden";
/// PostgreSQL truncates `application_name` to this many bytes (NAMEDATALEN - 1).
pub(crate) const MAX_APPLICATION_NAME_BYTES: usize = 63;

/// The primary pool: its size and the time limits of its connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// `DB_POOL_MAX`: the most connections the primary pool opens.
    /// Default: 30 development, 50 staging, 100 production.
    pub max_size: u32,
    /// `DB_POOL_MIN`: idle connections kept open (prewarmed), at most `max_size`.
    /// Default: 5 development, 10 staging, 25 production.
    pub min_idle: u32,
    /// `DB_CONNECT_TIMEOUT`: one TCP + TLS + authentication handshake.
    /// Default: 5 s in every profile.
    pub connect_timeout: Duration,
    /// `DB_ACQUIRE_TIMEOUT`: getting a connection from a pool for one attempt (waiting,
    /// connecting, validating); at least `connect_timeout`. Default: 5 s in every profile.
    pub acquire_timeout: Duration,
    /// `DB_POOL_IDLE_TIMEOUT`: idle connections above `min_idle` are closed after this.
    /// Default: 60 s in every profile.
    pub idle_timeout: Duration,
    /// `DB_POOL_MAX_LIFETIME`: a connection is recycled after this (±2.5 % jitter).
    /// Default: 30 min in every profile.
    pub max_lifetime: Duration,
    /// `DB_APPLICATION_NAME`: the `application_name` of every connection (at most 63 bytes).
    /// Default: `pgwarden` in every profile.
    pub application_name: String,
    /// `DB_LEAK_DETECTION_THRESHOLD`: a checkout (`get()`, a transaction) held longer than
    /// this is logged at WARN with the caller's file and line, and counted; 0 = off (at least
    /// 100 ms otherwise). Default: 0 (off) in every profile.
    #[serde(default)]
    pub leak_detection_threshold: Duration,
    /// `DB_CONNECT_INIT_SQL`: SQL run on every new connection, within the connect timeout; a
    /// failure is a connect failure. Default: none in every profile.
    #[serde(default)]
    pub connect_init_sql: Option<String>,
    /// `DB_PIPELINE_CONNECTIONS`: connections of the pipelined lane, shared by many callers'
    /// single statements; 0 = no lane. They are checked out of the primary pool, so they count
    /// in `max_size` (which must stay above them), and the lane is off when the statement
    /// cache is (`DB_STATEMENT_CACHE_SIZE=0`). Default: 0 in every profile.
    #[serde(default)]
    pub pipeline_connections: u32,
}

impl PoolConfig {
    /// The defaults of `profile`.
    pub fn for_profile(profile: Profile) -> PoolConfig {
        let (max_size, min_idle) = match profile {
            Profile::Development => (DEV_POOL_MAX, DEV_POOL_MIN),
            Profile::Staging => (STAGING_POOL_MAX, STAGING_POOL_MIN),
            Profile::Production => (PRODUCTION_POOL_MAX, PRODUCTION_POOL_MIN),
        };
        PoolConfig {
            max_size,
            min_idle,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            application_name: DEFAULT_APPLICATION_NAME.to_string(),
            leak_detection_threshold: DEFAULT_LEAK_DETECTION_THRESHOLD,
            connect_init_sql: None,
            pipeline_connections: match profile {
                Profile::Development => DEV_PIPELINE_CONNECTIONS,
                Profile::Staging => STAGING_PIPELINE_CONNECTIONS,
                Profile::Production => PRODUCTION_PIPELINE_CONNECTIONS,
            },
        }
    }
}

/// Statement execution: time limits and the prepared-statement cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryConfig {
    /// `DB_QUERY_TIMEOUT`: one statement's execution; on expiry the server is sent a
    /// CancelRequest. Default: 30 s in every profile.
    pub query_timeout: Duration,
    /// `DB_SLOW_QUERY_THRESHOLD`: a statement slower than this counts as slow (0 = every
    /// statement). Default: 100 ms in every profile.
    pub slow_query_threshold: Duration,
    /// `DB_STATEMENT_CACHE_SIZE`: prepared statements cached per connection; 0 = no cache.
    /// Default: 1000 in every profile.
    pub statement_cache_size: usize,
}

impl QueryConfig {
    /// The defaults of `profile` (the same in every profile).
    pub fn for_profile(_profile: Profile) -> QueryConfig {
        QueryConfig {
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            slow_query_threshold: DEFAULT_SLOW_QUERY_THRESHOLD,
            statement_cache_size: DEFAULT_STATEMENT_CACHE_SIZE,
        }
    }
}

/// Retries of calls that provably did not commit or were marked idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryConfig {
    /// `DB_RETRY_ATTEMPTS`: retries after the first attempt (3 = up to 4 attempts; 0 = never
    /// retry). The delays are those of [`RetryConfig::delay_before`]. Default: 3 in every
    /// profile.
    pub attempts: u32,
    /// `DB_RETRY_BUDGET`: the time a call may spend beyond its first attempt; no new attempt
    /// or backoff starts once it is spent. Default: 5 s in every profile.
    pub budget: Duration,
}

impl RetryConfig {
    /// The defaults of `profile` (the same in every profile).
    pub fn for_profile(_profile: Profile) -> RetryConfig {
        RetryConfig {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            budget: DEFAULT_RETRY_BUDGET,
        }
    }

    /// The backoff before retry number `retry` (1-based), before jitter: 100 ms, 500 ms, 2 s,
    /// then 2 s again.
    pub fn delay_before(retry: u32) -> Duration {
        let i = (retry.max(1) as usize - 1).min(RETRY_DELAYS.len() - 1);
        RETRY_DELAYS[i]
    }
}

/// The failover (overflow) pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverConfig {
    /// `DB_ENABLE_FAILOVER`: whether the failover pool exists.
    /// Default: false development, true staging, true production.
    pub enabled: bool,
    /// `DB_FAILOVER_POOL_MAX`: the most connections the failover pool opens (at least 1 when
    /// enabled). Default: 10 development, 10 staging, 20 production.
    pub pool_max: u32,
    /// `DB_FAILOVER_THRESHOLD`: primary utilization in percent (1–100) at which the failover
    /// pool engages; released 10 points below ([`FailoverConfig::release_pct`]).
    /// Default: 80 in every profile.
    pub threshold_pct: u8,
}

impl FailoverConfig {
    /// The defaults of `profile`.
    pub fn for_profile(profile: Profile) -> FailoverConfig {
        let (enabled, pool_max) = match profile {
            Profile::Development => (DEV_ENABLE_FAILOVER, DEV_FAILOVER_POOL_MAX),
            Profile::Staging => (STAGING_ENABLE_FAILOVER, STAGING_FAILOVER_POOL_MAX),
            Profile::Production => (PRODUCTION_ENABLE_FAILOVER, PRODUCTION_FAILOVER_POOL_MAX),
        };
        FailoverConfig {
            enabled,
            pool_max,
            threshold_pct: DEFAULT_FAILOVER_THRESHOLD_PCT,
        }
    }

    /// The utilization (percent) below which an engaged failover pool is released:
    /// 10 points below the threshold, never below 0.
    pub fn release_pct(&self) -> u8 {
        self.threshold_pct.saturating_sub(FAILOVER_RELEASE_GAP_PCT)
    }
}

/// The thresholds of the health grade (DESIGN.md "Health grades"). Each metric is graded
/// good / warning / critical; the comparisons are documented per field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthThresholds {
    /// Utilization (percent) at or above which the grade is warning. Default: 60 in every profile.
    pub utilization_warning_pct: f64,
    /// Utilization (percent) at or above which the grade is critical. Default: 80 in every profile.
    pub utilization_critical_pct: f64,
    /// Average query time at or above which the grade is warning. Default: 50 ms in every profile.
    pub avg_query_warning: Duration,
    /// Average query time above which the grade is critical. Default: 100 ms in every profile.
    pub avg_query_critical: Duration,
    /// p95 latency at or above which the grade is warning. Default: 80 ms in every profile.
    pub p95_warning: Duration,
    /// p95 latency above which the grade is critical. Default: 150 ms in every profile.
    pub p95_critical: Duration,
    /// Success rate (percent) at or below which the grade is warning. Default: 99 in every profile.
    pub success_rate_warning_pct: f64,
    /// Success rate (percent) below which the grade is critical. Default: 95 in every profile.
    pub success_rate_critical_pct: f64,
    /// Slow queries per minute at or above which the grade is warning. Default: 5 in every profile.
    pub slow_per_min_warning: f64,
    /// Slow queries per minute above which the grade is critical. Default: 20 in every profile.
    pub slow_per_min_critical: f64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            utilization_warning_pct: 60.0,
            utilization_critical_pct: 80.0,
            avg_query_warning: Duration::from_millis(50),
            avg_query_critical: Duration::from_millis(100),
            p95_warning: Duration::from_millis(80),
            p95_critical: Duration::from_millis(150),
            success_rate_warning_pct: 99.0,
            success_rate_critical_pct: 95.0,
            slow_per_min_warning: 5.0,
            slow_per_min_critical: 20.0,
        }
    }
}

/// The periodic health checker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// `DB_HEALTH_CHECK_INTERVAL`: the health check period, at least 1 s.
    /// Default: 60 s development, 30 s staging, 30 s production.
    pub interval: Duration,
    /// The grade thresholds (not set from the environment).
    /// Default: [`HealthThresholds::default`] in every profile.
    pub thresholds: HealthThresholds,
}

impl HealthConfig {
    /// The defaults of `profile`.
    pub fn for_profile(profile: Profile) -> HealthConfig {
        HealthConfig {
            interval: match profile {
                Profile::Development => DEV_HEALTH_CHECK_INTERVAL,
                Profile::Staging => STAGING_HEALTH_CHECK_INTERVAL,
                Profile::Production => PRODUCTION_HEALTH_CHECK_INTERVAL,
            },
            thresholds: HealthThresholds::default(),
        }
    }
}

/// Default `DB_READ_MAX_LAG` (every profile): 16 MB of WAL.
pub const DEFAULT_READ_MAX_LAG: u64 = 16 * 1024 * 1024;

/// Read routing to a standby (`DB_READ_URL`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadConfig {
    /// `DB_READ_MAX_LAG`: bytes of WAL (the primary's `pg_current_wal_lsn()` minus the
    /// standby's `pg_last_wal_replay_lsn()`) beyond which the standby serves no reads; 0 = no
    /// limit. Default: [`DEFAULT_READ_MAX_LAG`] (16 MB) in every profile.
    pub max_lag_bytes: u64,
}

impl ReadConfig {
    /// The defaults of `profile` (the same in every profile).
    pub fn for_profile(_profile: Profile) -> ReadConfig {
        ReadConfig {
            max_lag_bytes: DEFAULT_READ_MAX_LAG,
        }
    }
}

/// TLS settings that are not part of a URL.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TlsConfig {
    /// `DB_SSL_ROOT_CERT`: the CA file (PEM) for `sslmode=verify-ca` / `verify-full`, used when
    /// the URL has no `sslrootcert`. Default: none in every profile.
    pub root_cert: Option<PathBuf>,
}
