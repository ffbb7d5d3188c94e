//! Cross-field and range checks of a [`Config`], however it was built.

use std::time::Duration;

use super::parse::format_duration;
use super::{
    Config, ConfigError, DbTarget, Problem, MAX_APPLICATION_NAME_BYTES, MAX_PIPELINE_CONNECTIONS,
    MIN_HEALTH_CHECK_INTERVAL, MIN_LEAK_DETECTION_THRESHOLD,
};

impl Config {
    /// Checks ranges and consistency, reporting every problem at once: a zero or too small
    /// pool, `DB_POOL_MIN` above `DB_POOL_MAX`, zero timeouts, an acquire timeout shorter than
    /// the connect timeout, a health interval under 1 s, a failover threshold outside 1–100, an
    /// enabled failover pool of size 0, `sslmode=verify-*` without a root certificate, an
    /// `application_name` longer than PostgreSQL keeps.
    ///
    /// Loading ([`Config::from_vars`], [`Config::from_env`]) first clamps a profile default
    /// that contradicts a value the user set (`DB_POOL_MAX=4` alone lowers the default
    /// `DB_POOL_MIN` to 4, shown as [`Source::Clamped`](super::Source::Clamped)); what is
    /// left for these checks are values set on both sides of a rule, and changes made in code.
    ///
    /// # Errors
    /// A [`ConfigError`] listing every problem, each with its variable, value and fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut push = |var: &'static str, message: String, fix: String| {
            out.push(Problem::new(var, self.render(var), message, fix));
        };
        let p = self.profile;
        let pool = &self.pool;

        if pool.max_size == 0 {
            push(
                "DB_POOL_MAX",
                "DB_POOL_MAX is 0: the pool could never open a connection".into(),
                format!(
                    "set DB_POOL_MAX to 1 or more (the {p} default is {})",
                    super::PoolConfig::for_profile(p).max_size
                ),
            );
        }
        if pool.min_idle > pool.max_size {
            push(
                "DB_POOL_MIN",
                format!(
                    "DB_POOL_MIN ({}) is above DB_POOL_MAX ({})",
                    pool.min_idle, pool.max_size
                ),
                format!(
                    "set DB_POOL_MIN to at most {} or raise DB_POOL_MAX",
                    pool.max_size
                ),
            );
        }
        let lane = pool.pipeline_connections;
        if lane > MAX_PIPELINE_CONNECTIONS {
            push(
                "DB_PIPELINE_CONNECTIONS",
                format!("DB_PIPELINE_CONNECTIONS ({lane}) is above {MAX_PIPELINE_CONNECTIONS}: a few shared connections carry the load of many"),
                "set DB_PIPELINE_CONNECTIONS between 0 (no lane) and 4 or so".into(),
            );
        } else if lane > 0 && pool.max_size > 0 && lane >= pool.max_size {
            push(
                "DB_PIPELINE_CONNECTIONS",
                format!(
                    "DB_PIPELINE_CONNECTIONS ({lane}) is not below DB_POOL_MAX ({}): the lane's connections are taken from the primary pool, leaving none for transactions and get()",
                    pool.max_size
                ),
                format!(
                    "set DB_PIPELINE_CONNECTIONS to at most {} or raise DB_POOL_MAX",
                    pool.max_size.saturating_sub(1)
                ),
            );
        }
        let zero_checks: [(&'static str, Duration, &str); 5] = [
            (
                "DB_CONNECT_TIMEOUT",
                pool.connect_timeout,
                "a handshake could never finish",
            ),
            (
                "DB_ACQUIRE_TIMEOUT",
                pool.acquire_timeout,
                "no acquire could ever succeed",
            ),
            (
                "DB_POOL_IDLE_TIMEOUT",
                pool.idle_timeout,
                "every idle connection above the minimum would be closed at once",
            ),
            (
                "DB_POOL_MAX_LIFETIME",
                pool.max_lifetime,
                "every connection would be recycled at once",
            ),
            (
                "DB_QUERY_TIMEOUT",
                self.query.query_timeout,
                "every statement would time out",
            ),
        ];
        for (var, d, why) in zero_checks {
            if d.is_zero() {
                let default = self.render_default(var);
                push(
                    var,
                    format!("{var} is 0: {why}"),
                    format!("set {var} to a positive duration such as {default}"),
                );
            }
        }
        if !pool.acquire_timeout.is_zero()
            && !pool.connect_timeout.is_zero()
            && pool.acquire_timeout < pool.connect_timeout
        {
            push(
                "DB_ACQUIRE_TIMEOUT",
                format!(
                    "DB_ACQUIRE_TIMEOUT ({}) is shorter than DB_CONNECT_TIMEOUT ({}): an acquire that must connect would time out before the handshake may finish",
                    format_duration(pool.acquire_timeout),
                    format_duration(pool.connect_timeout)
                ),
                format!(
                    "set DB_ACQUIRE_TIMEOUT to at least {} or lower DB_CONNECT_TIMEOUT",
                    format_duration(pool.connect_timeout)
                ),
            );
        }
        if self.retry.attempts > 0 && self.retry.budget.is_zero() {
            push(
                "DB_RETRY_BUDGET",
                format!("DB_RETRY_BUDGET is 0 but DB_RETRY_ATTEMPTS is {}: no retry could ever start", self.retry.attempts),
                "set DB_RETRY_BUDGET to a positive duration such as 5s, or DB_RETRY_ATTEMPTS=0 to disable retries".into(),
            );
        }
        let leak = self.pool.leak_detection_threshold;
        if !leak.is_zero() && leak < MIN_LEAK_DETECTION_THRESHOLD {
            push(
                "DB_LEAK_DETECTION_THRESHOLD",
                format!(
                    "DB_LEAK_DETECTION_THRESHOLD={} is under 100ms (almost every checkout would be reported)",
                    format_duration(leak)
                ),
                "set DB_LEAK_DETECTION_THRESHOLD to 0 (off) or 100ms or more, e.g. 30s".into(),
            );
        }
        if self.health.interval < MIN_HEALTH_CHECK_INTERVAL {
            push(
                "DB_HEALTH_CHECK_INTERVAL",
                "DB_HEALTH_CHECK_INTERVAL is under 1s".into(),
                format!(
                    "set DB_HEALTH_CHECK_INTERVAL to 1s or more (the {p} default is {})",
                    self.render_default("DB_HEALTH_CHECK_INTERVAL")
                ),
            );
        }
        let t = self.failover.threshold_pct;
        if !(1..=100).contains(&t) {
            push(
                "DB_FAILOVER_THRESHOLD",
                format!("DB_FAILOVER_THRESHOLD {t}% is outside 1–100"),
                "write a whole number from 1 to 100, e.g. 80 or 80%".into(),
            );
        }
        if self.failover.enabled && self.failover.pool_max == 0 {
            push(
                "DB_FAILOVER_POOL_MAX",
                "DB_FAILOVER_POOL_MAX is 0 while failover is enabled (DB_ENABLE_FAILOVER=true): the failover pool could never open a connection".into(),
                format!(
                    "set DB_FAILOVER_POOL_MAX to 1 or more (the {p} default is {}), or DB_ENABLE_FAILOVER=false",
                    self.render_default("DB_FAILOVER_POOL_MAX")
                ),
            );
        }
        let app = &pool.application_name;
        if app.is_empty() || app.len() > MAX_APPLICATION_NAME_BYTES {
            push(
                "DB_APPLICATION_NAME",
                format!("DB_APPLICATION_NAME must be 1 to {MAX_APPLICATION_NAME_BYTES} bytes (PostgreSQL truncates longer names, so backends could not be found by name)"),
                format!("shorten DB_APPLICATION_NAME to at most {MAX_APPLICATION_NAME_BYTES} bytes"),
            );
        }
        if pool
            .connect_init_sql
            .as_ref()
            .is_some_and(|s| s.trim().is_empty())
        {
            push(
                "DB_CONNECT_INIT_SQL",
                "DB_CONNECT_INIT_SQL is set but empty: there is no SQL to run on new connections".into(),
                "write the SQL to run on every new connection, e.g. DB_CONNECT_INIT_SQL=\"SET TIME ZONE 'UTC'\", or unset it".into(),
            );
        }
        for (var, target) in [
            ("DATABASE_URL", &self.database_url),
            ("DB_FAILOVER_URL", &self.failover_url),
            ("DB_READ_URL", &self.read_url),
        ] {
            if let Some(t) = target {
                self.check_tls(var, t, &mut push);
            }
        }
        out
    }

    fn check_tls(
        &self,
        var: &'static str,
        t: &DbTarget,
        push: &mut impl FnMut(&'static str, String, String),
    ) {
        if t.ssl_mode().verifies() && self.root_cert_for(t).is_none() {
            push(
                var,
                format!("{var} has sslmode={} but no root certificate to verify the server with", t.ssl_mode()),
                format!("add sslrootcert=/path/to/ca.pem to {var} or set DB_SSL_ROOT_CERT=/path/to/ca.pem (or use sslmode=require to encrypt without verifying)"),
            );
        }
    }
}
