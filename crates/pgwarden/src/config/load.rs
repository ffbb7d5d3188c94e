//! Loading a [`Config`] from an injected environment: every variable parsed, every problem
//! collected, then validation.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use super::parse::{
    parse_bool, parse_bytes, parse_count, parse_duration, parse_percent, ParseError,
};
use super::syntax::{edit_distance, redact_unparsed};
use super::{Config, ConfigError, DbTarget, Problem, Profile, Source};

/// Every variable pgwarden reads, in the order of DESIGN.md's table (`APP_ENV`, the host
/// application's variable, is read for the profile only). `PGWARDEN_PG_BIN` belongs to the
/// test harness and the CLI.
pub(crate) const VARIABLES: [&str; 26] = [
    "DB_PROFILE",
    "APP_ENV",
    "DATABASE_URL",
    "DB_FAILOVER_URL",
    "DB_POOL_MAX",
    "DB_POOL_MIN",
    "DB_CONNECT_TIMEOUT",
    "DB_ACQUIRE_TIMEOUT",
    "DB_POOL_IDLE_TIMEOUT",
    "DB_POOL_MAX_LIFETIME",
    "DB_QUERY_TIMEOUT",
    "DB_RETRY_ATTEMPTS",
    "DB_RETRY_BUDGET",
    "DB_ENABLE_FAILOVER",
    "DB_FAILOVER_POOL_MAX",
    "DB_FAILOVER_THRESHOLD",
    "DB_STATEMENT_CACHE_SIZE",
    "DB_SLOW_QUERY_THRESHOLD",
    "DB_HEALTH_CHECK_INTERVAL",
    "DB_APPLICATION_NAME",
    "DB_SSL_ROOT_CERT",
    "DB_READ_URL",
    "DB_READ_MAX_LAG",
    "DB_LEAK_DETECTION_THRESHOLD",
    "DB_CONNECT_INIT_SQL",
    "DB_PIPELINE_CONNECTIONS",
];

/// Variables that are not pgwarden's configuration but must not get "did you mean" warnings.
const NEIGHBOURS: &[&str] = &["PGWARDEN_PG_BIN"];

/// Whether `name` is one of [`VARIABLES`].
pub(crate) fn is_known_variable(name: &str) -> bool {
    VARIABLES.contains(&name)
}

/// A value from the environment: text, or bytes that are not UTF-8.
pub(crate) enum RawValue {
    Text(String),
    NotUtf8,
}

pub(crate) type RawVars = BTreeMap<String, RawValue>;

pub(crate) fn from_str_pairs<I, K, V>(vars: I) -> RawVars
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    vars.into_iter()
        .map(|(k, v)| {
            (
                k.as_ref().to_string(),
                RawValue::Text(v.as_ref().to_string()),
            )
        })
        .collect()
}

pub(crate) fn from_os(vars: impl Iterator<Item = (OsString, OsString)>) -> RawVars {
    vars.filter_map(|(k, v)| {
        // A variable whose name is not UTF-8 cannot be one of ours.
        let k = k.into_string().ok()?;
        let v = match v.into_string() {
            Ok(v) => RawValue::Text(v),
            Err(_) => RawValue::NotUtf8,
        };
        Some((k, v))
    })
    .collect()
}

/// The known variable closest to `name` (case-insensitive), if within distance 2.
fn did_you_mean(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    VARIABLES
        .iter()
        .chain(NEIGHBOURS)
        .map(|v| (edit_distance(&upper, v), *v))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, v)| v)
}

struct Loader {
    vars: RawVars,
    problems: Vec<Problem>,
}

impl Loader {
    /// The trimmed text of `name` when it is set, non-empty and UTF-8; a problem otherwise.
    fn text(&mut self, name: &'static str) -> Option<String> {
        match self.vars.get(name)? {
            RawValue::NotUtf8 => {
                self.problems.push(Problem::new(
                    name,
                    "(not valid UTF-8)",
                    format!("{name} is not valid UTF-8"),
                    format!("set {name} to UTF-8 text, or unset it to use the default"),
                ));
                None
            }
            RawValue::Text(t) if t.trim().is_empty() => {
                self.problems.push(Problem::new(
                    name,
                    "",
                    format!("{name} is set but empty"),
                    format!("give {name} a value, or unset it to use the profile default"),
                ));
                None
            }
            RawValue::Text(t) => Some(t.trim().to_string()),
        }
    }

    /// Parses `name` with `parse`; on success stores it with `set` and records the source.
    fn field<T>(
        &mut self,
        cfg: &mut Config,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, ParseError>,
        set: impl FnOnce(&mut Config, T),
    ) {
        let Some(text) = self.text(name) else { return };
        match parse(&text) {
            Ok(v) => {
                set(cfg, v);
                cfg.record(name, Source::Env(name));
            }
            Err((message, fix)) => {
                let default = cfg.render(name);
                self.problems.push(Problem::new(
                    name,
                    text,
                    format!("{name} {message}"),
                    format!("{fix} (default in the {} profile: {default})", cfg.profile),
                ));
            }
        }
    }

    fn target(&mut self, cfg: &mut Config, name: &'static str) -> Option<DbTarget> {
        let text = self.text(name)?;
        match DbTarget::parse(&text) {
            Ok(t) => {
                cfg.sources.insert(name, (Source::Env(name), t.redacted()));
                Some(t)
            }
            Err(e) => {
                self.problems.push(Problem::new(
                    name,
                    redact_unparsed(&text),
                    format!("{name} cannot be parsed: {e}"),
                    e.fix(),
                ));
                None
            }
        }
    }
}

fn select_profile(
    l: &mut Loader,
    profile_override: Option<Profile>,
    warnings: &mut Vec<String>,
) -> (Profile, Source, Option<String>) {
    let app_env = match l.vars.get("APP_ENV") {
        Some(RawValue::Text(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
        Some(RawValue::NotUtf8) => Some("(not valid UTF-8)".to_string()),
        _ => None,
    };
    if let Some(p) = profile_override {
        if let Some(RawValue::Text(t)) = l.vars.get("DB_PROFILE") {
            if t.trim().parse::<Profile>().is_err() {
                warnings.push(format!(
                    "DB_PROFILE={} is not a profile; ignored because the profile is set to {p} explicitly",
                    t.trim()
                ));
            }
        }
        return (p, Source::Override, app_env);
    }
    if l.vars.contains_key("DB_PROFILE") {
        if let Some(t) = l.text("DB_PROFILE") {
            match t.parse::<Profile>() {
                Ok(p) => return (p, Source::Env("DB_PROFILE"), app_env),
                Err(_) => l.problems.push(Problem::new(
                    "DB_PROFILE",
                    t,
                    "DB_PROFILE is not a profile",
                    "set DB_PROFILE to development, staging or production (or dev, stage, prod)",
                )),
            }
        }
        // Keep going with the development defaults to find the other problems.
        return (Profile::Development, Source::Default, app_env);
    }
    if let Some(a) = &app_env {
        match a.parse::<Profile>() {
            Ok(p) => return (p, Source::Env("APP_ENV"), app_env),
            Err(_) => warnings.push(format!(
                "APP_ENV={a} is not a pgwarden profile; using the development profile (set DB_PROFILE to development, staging or production to choose)"
            )),
        }
    }
    (Profile::Development, Source::Default, app_env)
}

pub(crate) fn load(
    vars: RawVars,
    profile_override: Option<Profile>,
) -> Result<Config, ConfigError> {
    let mut l = Loader {
        vars,
        problems: Vec::new(),
    };
    let mut warnings = Vec::new();
    let (profile, profile_source, app_env) =
        select_profile(&mut l, profile_override, &mut warnings);
    let mut cfg = Config::for_profile(profile);
    cfg.app_env = app_env;
    cfg.record("DB_PROFILE", profile_source);

    cfg.database_url = l.target(&mut cfg, "DATABASE_URL");
    cfg.failover_url = l.target(&mut cfg, "DB_FAILOVER_URL");
    cfg.read_url = l.target(&mut cfg, "DB_READ_URL");
    l.field(&mut cfg, "DB_READ_MAX_LAG", parse_bytes, |c, v| {
        c.read.max_lag_bytes = v
    });
    l.field(&mut cfg, "DB_POOL_MAX", parse_count, |c, v| {
        c.pool.max_size = v
    });
    l.field(&mut cfg, "DB_POOL_MIN", parse_count, |c, v| {
        c.pool.min_idle = v
    });
    l.field(&mut cfg, "DB_PIPELINE_CONNECTIONS", parse_count, |c, v| {
        c.pool.pipeline_connections = v
    });
    l.field(&mut cfg, "DB_CONNECT_TIMEOUT", parse_duration, |c, v| {
        c.pool.connect_timeout = v
    });
    l.field(&mut cfg, "DB_ACQUIRE_TIMEOUT", parse_duration, |c, v| {
        c.pool.acquire_timeout = v
    });
    l.field(&mut cfg, "DB_POOL_IDLE_TIMEOUT", parse_duration, |c, v| {
        c.pool.idle_timeout = v
    });
    l.field(&mut cfg, "DB_POOL_MAX_LIFETIME", parse_duration, |c, v| {
        c.pool.max_lifetime = v
    });
    l.field(&mut cfg, "DB_QUERY_TIMEOUT", parse_duration, |c, v| {
        c.query.query_timeout = v
    });
    l.field(&mut cfg, "DB_RETRY_ATTEMPTS", parse_count, |c, v| {
        c.retry.attempts = v
    });
    l.field(&mut cfg, "DB_RETRY_BUDGET", parse_duration, |c, v| {
        c.retry.budget = v
    });
    l.field(&mut cfg, "DB_ENABLE_FAILOVER", parse_bool, |c, v| {
        c.failover.enabled = v
    });
    l.field(&mut cfg, "DB_FAILOVER_POOL_MAX", parse_count, |c, v| {
        c.failover.pool_max = v
    });
    l.field(&mut cfg, "DB_FAILOVER_THRESHOLD", parse_percent, |c, v| {
        c.failover.threshold_pct = v
    });
    l.field(&mut cfg, "DB_STATEMENT_CACHE_SIZE", parse_count, |c, v| {
        c.query.statement_cache_size = v
    });
    l.field(
        &mut cfg,
        "DB_SLOW_QUERY_THRESHOLD",
        parse_duration,
        |c, v| c.query.slow_query_threshold = v,
    );
    l.field(
        &mut cfg,
        "DB_HEALTH_CHECK_INTERVAL",
        parse_duration,
        |c, v| c.health.interval = v,
    );
    l.field(
        &mut cfg,
        "DB_APPLICATION_NAME",
        |s| Ok(s.to_string()),
        |c, v| c.pool.application_name = v,
    );
    l.field(
        &mut cfg,
        "DB_CONNECT_INIT_SQL",
        |s| Ok(s.to_string()),
        |c, v| c.pool.connect_init_sql = Some(v),
    );
    l.field(
        &mut cfg,
        "DB_SSL_ROOT_CERT",
        |s| Ok(PathBuf::from(s)),
        |c, v| c.tls.root_cert = Some(v),
    );
    l.field(
        &mut cfg,
        "DB_LEAK_DETECTION_THRESHOLD",
        parse_duration,
        |c, v| c.pool.leak_detection_threshold = v,
    );

    for name in l.vars.keys() {
        if is_known_variable(name) || NEIGHBOURS.contains(&name.as_str()) {
            continue;
        }
        let upper = name.to_ascii_uppercase();
        if !(upper.starts_with("DB_")
            || upper.starts_with("DATABASE")
            || upper.starts_with("PGWARDEN"))
        {
            continue;
        }
        if let Some(known) = did_you_mean(name) {
            let case = if upper == known {
                " (names are case-sensitive)"
            } else {
                ""
            };
            warnings.push(format!(
                "{name} is not a pgwarden variable; did you mean {known}?{case}"
            ));
        }
    }
    if cfg.failover_url.is_some() && !cfg.failover.enabled {
        warnings.push(format!(
            "DB_FAILOVER_URL is set but failover is off (DB_ENABLE_FAILOVER={}); set DB_ENABLE_FAILOVER=true to use it",
            cfg.failover.enabled
        ));
    }
    if cfg.read_url.is_none() && matches!(cfg.source_of("DB_READ_MAX_LAG"), Source::Env(_)) {
        warnings.push(
            "DB_READ_MAX_LAG is set but DB_READ_URL is not: there is no standby to route reads to; set DB_READ_URL to a standby to use it".into(),
        );
    }
    cfg.warnings = warnings;

    let failed: Vec<String> = l.problems.iter().map(|p| p.variable.clone()).collect();
    cfg.clamp_defaults(&failed);
    let mut problems = l.problems;
    // A variable that failed to parse kept its default; do not report that default again.
    problems.extend(
        cfg.problems()
            .into_iter()
            .filter(|p| !failed.contains(&p.variable)),
    );
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError { problems })
    }
}
