//! Profile defaults that contradict a value the user set give way to it.
//!
//! `DB_POOL_MAX=4` alone means "at most 4 connections": the profile's `DB_POOL_MIN` of 5 is
//! then clamped to 4 instead of refusing the configuration. Only values the user set on both
//! sides of a rule are an error (reported by [`Config::validate`]). Each clamped default shows
//! in [`Config::effective`] as [`Source::Clamped`], naming the variable it gave way to.

use super::{Config, Source};

impl Config {
    /// Whether `variable` was set by the user (environment, CLI or code via a recorded
    /// override), as opposed to holding its profile's default.
    pub(crate) fn is_user_set(&self, variable: &str) -> bool {
        matches!(
            self.sources.get(variable),
            Some((Source::Env(_) | Source::Override, _))
        )
    }

    /// Moves every profile default that contradicts a user-set value to agree with it, one
    /// rule of [`Config::validate`] at a time. Called once, after loading. `invalid` names the
    /// variables the user set to a value that could not be parsed: they hold their default but
    /// were set, so nothing is clamped against them.
    pub(crate) fn clamp_defaults(&mut self, invalid: &[String]) {
        let gives_way = |c: &Config, default: &str, user: &str| {
            !c.is_user_set(default) && !invalid.iter().any(|v| v == default) && c.is_user_set(user)
        };
        // DB_POOL_MIN <= DB_POOL_MAX.
        if self.pool.min_idle > self.pool.max_size {
            if gives_way(self, "DB_POOL_MIN", "DB_POOL_MAX") {
                self.pool.min_idle = self.pool.max_size;
                self.mark_clamped("DB_POOL_MIN", "DB_POOL_MAX");
            } else if gives_way(self, "DB_POOL_MAX", "DB_POOL_MIN") {
                self.pool.max_size = self.pool.min_idle;
                self.mark_clamped("DB_POOL_MAX", "DB_POOL_MIN");
            }
        }
        // DB_PIPELINE_CONNECTIONS < DB_POOL_MAX: the lane leaves the exclusive path a
        // connection. A profile's lane gives way to a small user-set pool.
        let lane = self.pool.pipeline_connections;
        if lane > 0
            && lane >= self.pool.max_size
            && gives_way(self, "DB_PIPELINE_CONNECTIONS", "DB_POOL_MAX")
        {
            self.pool.pipeline_connections = self.pool.max_size.saturating_sub(1);
            self.mark_clamped("DB_PIPELINE_CONNECTIONS", "DB_POOL_MAX");
        }
        // DB_ACQUIRE_TIMEOUT >= DB_CONNECT_TIMEOUT (a zero is its own problem, left alone).
        let (acquire, connect) = (self.pool.acquire_timeout, self.pool.connect_timeout);
        if !acquire.is_zero() && !connect.is_zero() && acquire < connect {
            if gives_way(self, "DB_ACQUIRE_TIMEOUT", "DB_CONNECT_TIMEOUT") {
                self.pool.acquire_timeout = connect;
                self.mark_clamped("DB_ACQUIRE_TIMEOUT", "DB_CONNECT_TIMEOUT");
            } else if gives_way(self, "DB_CONNECT_TIMEOUT", "DB_ACQUIRE_TIMEOUT") {
                self.pool.connect_timeout = acquire;
                self.mark_clamped("DB_CONNECT_TIMEOUT", "DB_ACQUIRE_TIMEOUT");
            }
        }
        // DB_RETRY_BUDGET=0 leaves no time for a retry: the default attempts become 0. (A
        // user-set attempts count never conflicts with the default budget, which is positive.)
        if self.retry.attempts > 0
            && self.retry.budget.is_zero()
            && gives_way(self, "DB_RETRY_ATTEMPTS", "DB_RETRY_BUDGET")
        {
            self.retry.attempts = 0;
            self.mark_clamped("DB_RETRY_ATTEMPTS", "DB_RETRY_BUDGET");
        }
        // DB_FAILOVER_POOL_MAX=0 means no failover pool: the profile's DB_ENABLE_FAILOVER=true
        // becomes false. (A user-set true never conflicts with the default size, which is
        // positive.)
        if self.failover.enabled
            && self.failover.pool_max == 0
            && gives_way(self, "DB_ENABLE_FAILOVER", "DB_FAILOVER_POOL_MAX")
        {
            self.failover.enabled = false;
            self.mark_clamped("DB_ENABLE_FAILOVER", "DB_FAILOVER_POOL_MAX");
        }
    }

    fn mark_clamped(&mut self, variable: &'static str, to: &'static str) {
        let source = Source::Clamped {
            profile: self.profile,
            to,
        };
        self.record(variable, source);
    }
}
