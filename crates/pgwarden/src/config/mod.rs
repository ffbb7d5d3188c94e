//! Configuration: profiles, the environment variables of DESIGN.md, validation and the
//! effective (redacted) configuration with the source of every value.
//!
//! ```
//! use pgwarden::config::{Config, Profile};
//!
//! let cfg = Config::from_vars([
//!     ("DB_PROFILE", "prod"),
//!     ("DATABASE_URL", "postgres://app:s3cret@db1:5432,db2:5432/app?sslmode=require"),
//!     ("DB_POOL_MAX", "80"),
//!     ("DB_QUERY_TIMEOUT", "10s"),
//! ])?;
//! assert_eq!(cfg.profile, Profile::Production);
//! assert_eq!(cfg.pool.max_size, 80);
//! assert_eq!(cfg.pool.min_idle, 25); // production default
//! for s in cfg.effective() {
//!     assert!(!s.value.contains("s3cret"));
//! }
//! # Ok::<(), pgwarden::config::ConfigError>(())
//! ```
//!
//! Syntax of values:
//! - **durations**: a plain whole number is milliseconds (`60000`); a number with a unit `ms`,
//!   `s`, `m` or `h` may have a fraction (`1.5s`, `30m`). A plain fraction (`1.5`) is rejected
//!   because it is ambiguous.
//! - **percentages**: `80` or `80%`; `0.8` is rejected with the hint "write 80 for 80%".
//! - **booleans**: true/false, 1/0, yes/no, on/off, case-insensitive.
//! - Values are trimmed; a variable that is set but empty is reported as a problem (it is
//!   almost always a mistake — unset it to get the default). `APP_ENV`, which belongs to the host
//!   application, is the exception: empty counts as unset.

mod clamp;
mod effective;
mod error;
mod load;
mod parse;
mod profile;
mod session_attrs;
mod syntax;
mod target;
mod tls;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

pub use effective::{Setting, Source};
pub use error::{ConfigError, Problem};
pub(crate) use parse::format_bytes;
pub use profile::*;
pub use session_attrs::{SessionAttrs, UnknownSessionAttrs};
pub use target::{DbTarget, TargetError};
pub use tls::{Secret, SslMode};

/// Settings that are parsed and validated but have no effect yet. `PoolManager::from_config`
/// warns when the user sets one. A setting added ahead of its feature goes here until the
/// feature lands: none today.
pub(crate) const NOT_YET_EFFECTIVE: &[&str] = &[];

/// The whole pgwarden configuration. Build it with [`Config::from_env`],
/// [`Config::from_vars`] or [`Config::for_profile`]; check code-made changes with
/// [`Config::validate`].
///
/// `Debug` never shows a password (targets print redacted).
#[derive(Debug, Clone)]
pub struct Config {
    /// The profile whose defaults fill every unset variable (`DB_PROFILE`, else `APP_ENV`).
    /// Default: development.
    pub profile: Profile,
    /// `DATABASE_URL`: the primary target. The library requires it when building a pool; the
    /// CLI falls back to a throwaway server, so loading does not fail without it.
    /// Default: none in every profile.
    pub database_url: Option<DbTarget>,
    /// `DB_FAILOVER_URL`: the failover pool's target; `None` uses the primary's target.
    /// Default: none (the primary's target) in every profile.
    pub failover_url: Option<DbTarget>,
    /// `DB_READ_URL`: the standby for `.read_only()` calls (which fall back to the primary
    /// while it is down, not a standby, or lags more than `DB_READ_MAX_LAG`). Default: none.
    pub read_url: Option<DbTarget>,
    /// Read routing's lag limit. Default: [`ReadConfig::for_profile`].
    pub read: ReadConfig,
    /// The primary pool. Default: [`PoolConfig::for_profile`].
    pub pool: PoolConfig,
    /// Statement execution. Default: [`QueryConfig::for_profile`].
    pub query: QueryConfig,
    /// Retries. Default: [`RetryConfig::for_profile`].
    pub retry: RetryConfig,
    /// The failover pool. Default: [`FailoverConfig::for_profile`].
    pub failover: FailoverConfig,
    /// Health checks and grades. Default: [`HealthConfig::for_profile`].
    pub health: HealthConfig,
    /// TLS settings outside the URL. Default: [`TlsConfig::default`] (no root certificate).
    pub tls: TlsConfig,
    /// Where each variable's value came from, with its rendering at that time (so a value
    /// changed later in code shows as an override).
    sources: BTreeMap<&'static str, (Source, String)>,
    /// The raw `APP_ENV`, shown by `effective()`.
    app_env: Option<String>,
    warnings: Vec<String>,
}

impl Config {
    /// The defaults of `profile`, with no database URL.
    pub fn for_profile(profile: Profile) -> Config {
        Config {
            profile,
            database_url: None,
            failover_url: None,
            read_url: None,
            read: ReadConfig::for_profile(profile),
            pool: PoolConfig::for_profile(profile),
            query: QueryConfig::for_profile(profile),
            retry: RetryConfig::for_profile(profile),
            failover: FailoverConfig::for_profile(profile),
            health: HealthConfig::for_profile(profile),
            tls: TlsConfig::default(),
            sources: BTreeMap::new(),
            app_env: None,
            warnings: Vec::new(),
        }
    }

    /// Loads from the process environment. Non-UTF-8 values of pgwarden's variables are
    /// reported as problems; other variables are ignored.
    ///
    /// # Errors
    /// A [`ConfigError`] with every parse and validation problem.
    pub fn from_env() -> Result<Config, ConfigError> {
        load::load(load::from_os(std::env::vars_os()), None)
    }

    /// Loads from (name, value) pairs, as if they were the environment: the profile's defaults,
    /// overridden by every variable set. Unknown variables are ignored (a near miss of a known
    /// `DB_*` name gets a warning). Later pairs win over earlier ones.
    ///
    /// # Errors
    /// A [`ConfigError`] with every parse problem and every [`validate`](Config::validate)
    /// problem, all at once.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        Self::from_vars_with_profile(vars, None)
    }

    /// As [`from_vars`](Config::from_vars), with a profile that overrides `DB_PROFILE` and
    /// `APP_ENV` (the CLI's `--profile`).
    ///
    /// # Errors
    /// As [`from_vars`](Config::from_vars).
    pub fn from_vars_with_profile<I, K, V>(
        vars: I,
        profile_override: Option<Profile>,
    ) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        load::load(load::from_str_pairs(vars), profile_override)
    }

    /// Warnings found while loading: unknown variables close to a known one, an `APP_ENV`
    /// that is not a profile, a failover URL while failover is off.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Sets the primary target (the CLI's throwaway server, or code), recording its source.
    pub fn set_database_url(&mut self, target: DbTarget, source: Source) {
        let rendered = target.redacted();
        self.database_url = Some(target);
        self.sources.insert("DATABASE_URL", (source, rendered));
    }

    /// The failover pool's target: `DB_FAILOVER_URL`, else the primary's.
    pub fn failover_target(&self) -> Option<&DbTarget> {
        self.failover_url.as_ref().or(self.database_url.as_ref())
    }

    /// The root certificate to verify `target` with: its `sslrootcert`, else
    /// `DB_SSL_ROOT_CERT`.
    pub fn root_cert_for<'a>(&'a self, target: &'a DbTarget) -> Option<&'a Path> {
        target.ssl_root_cert().or(self.tls.root_cert.as_deref())
    }

    /// The settings the user set (environment, CLI or code) that pgwarden parses and checks
    /// but does not act on yet: see [`NOT_YET_EFFECTIVE`]. A profile's defaults are never
    /// listed.
    pub(crate) fn set_but_not_yet_effective(&self) -> Vec<&'static str> {
        NOT_YET_EFFECTIVE
            .iter()
            .copied()
            .filter(|v| matches!(self.source_of(v), Source::Env(_) | Source::Override))
            .collect()
    }

    pub(crate) fn record(&mut self, variable: &'static str, source: Source) {
        let rendered = self.render(variable);
        self.sources.insert(variable, (source, rendered));
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_clamp;
#[cfg(test)]
mod tests_lane;
#[cfg(test)]
mod tests_problems;
