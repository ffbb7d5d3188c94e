//! The effective configuration: every variable, its value in the syntax users write
//! (redacted), and where it came from.

use std::fmt;

use super::load::VARIABLES;
use super::parse::{format_bytes, format_duration};
use super::{Config, Profile};

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The profile's default.
    Profile(Profile),
    /// The named environment variable (for the profile: `DB_PROFILE` or `APP_ENV`).
    Env(&'static str),
    /// Set explicitly by the CLI or by code after loading.
    Override,
    /// pgwarden's built-in fallback: no profile chosen (development), or an unset URL.
    Default,
    /// The profile's default contradicted a value the user set, so it was moved to agree
    /// with it (`DB_POOL_MAX=4` alone clamps the profile's `DB_POOL_MIN` of 5 to 4).
    Clamped {
        /// The profile whose default was clamped.
        profile: Profile,
        /// The user-set variable it gave way to.
        to: &'static str,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Profile(p) => write!(f, "{p} profile default"),
            Source::Env(var) => write!(f, "environment ({var})"),
            Source::Override => f.write_str("override"),
            Source::Default => f.write_str("built-in default"),
            Source::Clamped { profile, to } => {
                write!(f, "{profile} profile default, clamped to {to}")
            }
        }
    }
}

/// One line of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The environment variable.
    pub variable: &'static str,
    /// The value as a user would write it (`5s`, `80%`, a URL with `***` for the password).
    pub value: String,
    /// Where the value came from.
    pub source: Source,
}

impl fmt::Display for Setting {
    /// `DB_POOL_MAX=100  # production profile default` (the source as a shell comment).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}  # {}", self.variable, self.value, self.source)
    }
}

impl Config {
    /// Every variable pgwarden reads, in DESIGN.md's order, with its redacted value and
    /// source. A value changed in code after loading shows as [`Source::Override`] (or as the
    /// profile default when it equals it).
    pub fn effective(&self) -> Vec<Setting> {
        VARIABLES
            .iter()
            .map(|&variable| Setting {
                variable,
                value: self.render(variable),
                source: self.source_of(variable),
            })
            .collect()
    }

    pub(crate) fn source_of(&self, variable: &str) -> Source {
        let now = self.render(variable);
        match self.sources.get(variable) {
            Some((source, then)) if *then == now => return *source,
            _ => {}
        }
        match variable {
            "DB_PROFILE" if self.profile == Profile::Development => Source::Default,
            "DB_PROFILE" => Source::Override,
            "APP_ENV" if self.app_env.is_some() => Source::Env("APP_ENV"),
            "APP_ENV" => Source::Default,
            "DATABASE_URL" if self.database_url.is_none() => Source::Default,
            _ if now == self.render_default(variable) => Source::Profile(self.profile),
            _ => Source::Override,
        }
    }

    /// The value of `variable` of the profile's defaults, rendered.
    pub(crate) fn render_default(&self, variable: &str) -> String {
        Config::for_profile(self.profile).render(variable)
    }

    /// The current value of `variable`, rendered in the syntax users write; URLs redacted.
    pub(crate) fn render(&self, variable: &str) -> String {
        let d = format_duration;
        match variable {
            "DB_PROFILE" => self.profile.to_string(),
            "APP_ENV" => self.app_env.clone().unwrap_or_else(|| "(not set)".into()),
            "DATABASE_URL" => self
                .database_url
                .as_ref()
                .map_or_else(|| "(not set)".into(), |t| t.redacted()),
            "DB_FAILOVER_URL" => self
                .failover_url
                .as_ref()
                .map_or_else(|| "(the primary's target)".into(), |t| t.redacted()),
            "DB_READ_URL" => self
                .read_url
                .as_ref()
                .map_or_else(|| "(none)".into(), |t| t.redacted()),
            "DB_READ_MAX_LAG" => format_bytes(self.read.max_lag_bytes),
            "DB_POOL_MAX" => self.pool.max_size.to_string(),
            "DB_POOL_MIN" => self.pool.min_idle.to_string(),
            "DB_PIPELINE_CONNECTIONS" => self.pool.pipeline_connections.to_string(),
            "DB_CONNECT_TIMEOUT" => d(self.pool.connect_timeout),
            "DB_ACQUIRE_TIMEOUT" => d(self.pool.acquire_timeout),
            "DB_POOL_IDLE_TIMEOUT" => d(self.pool.idle_timeout),
            "DB_POOL_MAX_LIFETIME" => d(self.pool.max_lifetime),
            "DB_QUERY_TIMEOUT" => d(self.query.query_timeout),
            "DB_RETRY_ATTEMPTS" => self.retry.attempts.to_string(),
            "DB_RETRY_BUDGET" => d(self.retry.budget),
            "DB_ENABLE_FAILOVER" => self.failover.enabled.to_string(),
            "DB_FAILOVER_POOL_MAX" => self.failover.pool_max.to_string(),
            "DB_FAILOVER_THRESHOLD" => format!("{}%", self.failover.threshold_pct),
            "DB_STATEMENT_CACHE_SIZE" => self.query.statement_cache_size.to_string(),
            "DB_SLOW_QUERY_THRESHOLD" => d(self.query.slow_query_threshold),
            "DB_HEALTH_CHECK_INTERVAL" => d(self.health.interval),
            "DB_APPLICATION_NAME" => self.pool.application_name.clone(),
            // "0ms" is off; rendered values parse back, so no "(off)" here.
            "DB_LEAK_DETECTION_THRESHOLD" => d(self.pool.leak_detection_threshold),
            "DB_CONNECT_INIT_SQL" => self
                .pool
                .connect_init_sql
                .clone()
                .unwrap_or_else(|| "(none)".into()),
            "DB_SSL_ROOT_CERT" => self
                .tls
                .root_cert
                .as_ref()
                .map_or_else(|| "(none)".into(), |p| p.display().to_string()),
            _ => String::new(),
        }
    }
}
