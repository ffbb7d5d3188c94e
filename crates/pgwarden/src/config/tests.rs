use std::path::PathBuf;
use std::time::Duration;

use super::*;

pub(super) const PW: &str = "hunter2-S3cr3t";

pub(super) fn load(vars: &[(&str, &str)]) -> Config {
    Config::from_vars(vars.iter().copied()).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn problems(vars: &[(&str, &str)]) -> ConfigError {
    match Config::from_vars(vars.iter().copied()) {
        Ok(c) => panic!("expected problems, got {c:?}"),
        Err(e) => e,
    }
}

/// Asserts one problem names `var` and its message and fix contain the given texts.
pub(super) fn assert_problem(e: &ConfigError, var: &str, in_message: &str, in_fix: &str) {
    let p = e
        .problems
        .iter()
        .find(|p| p.variable == var)
        .unwrap_or_else(|| panic!("no problem for {var}: {e}"));
    assert!(p.message.contains(in_message), "{p}");
    assert!(p.fix.contains(in_fix), "{p}");
    let line = p.to_string();
    assert!(line.starts_with(&format!("{var}=")), "{line}");
    assert!(e.to_string().contains(&line));
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn every_variable_is_parsed_into_the_config() {
    let c = load(&[
        ("DB_PROFILE", "staging"),
        ("DATABASE_URL", "postgres://app:pw@primary:5432/app"),
        ("DB_FAILOVER_URL", "postgres://app:pw@standby:5433/app"),
        ("DB_POOL_MAX", "40"),
        ("DB_POOL_MIN", "4"),
        ("DB_CONNECT_TIMEOUT", "2s"),
        ("DB_ACQUIRE_TIMEOUT", "3000"),
        ("DB_POOL_IDLE_TIMEOUT", "90s"),
        ("DB_POOL_MAX_LIFETIME", "1h"),
        ("DB_QUERY_TIMEOUT", "10s"),
        ("DB_RETRY_ATTEMPTS", "2"),
        ("DB_RETRY_BUDGET", "1.5s"),
        ("DB_ENABLE_FAILOVER", "off"),
        ("DB_FAILOVER_POOL_MAX", "7"),
        ("DB_FAILOVER_THRESHOLD", "75%"),
        ("DB_STATEMENT_CACHE_SIZE", "0"),
        ("DB_SLOW_QUERY_THRESHOLD", "250ms"),
        ("DB_HEALTH_CHECK_INTERVAL", "2m"),
        ("DB_APPLICATION_NAME", "orders-api"),
        ("DB_LEAK_DETECTION_THRESHOLD", "30s"),
        ("DB_SSL_ROOT_CERT", "/etc/ssl/ca.pem"),
        ("DB_CONNECT_INIT_SQL", "SET TIME ZONE 'UTC'"),
        (
            "DB_READ_URL",
            "postgres://app:pw@replica:5434/app?target_session_attrs=standby",
        ),
        ("DB_READ_MAX_LAG", "4 MB"),
        ("DB_PIPELINE_CONNECTIONS", "3"),
    ]);
    assert_eq!(c.profile, Profile::Staging);
    assert_eq!(c.read_url.as_ref().unwrap().hosts(), ["replica"]);
    assert_eq!(c.read.max_lag_bytes, 4 << 20);
    assert_eq!(c.render("DB_READ_MAX_LAG"), "4MB");
    assert_eq!(c.database_url.as_ref().unwrap().hosts(), ["primary"]);
    assert_eq!(c.failover_url.as_ref().unwrap().ports(), [5433]);
    assert_eq!(c.failover_target().unwrap().hosts(), ["standby"]);
    assert_eq!(
        c.pool,
        PoolConfig {
            max_size: 40,
            min_idle: 4,
            connect_timeout: ms(2_000),
            acquire_timeout: ms(3_000),
            idle_timeout: ms(90_000),
            max_lifetime: ms(3_600_000),
            application_name: "orders-api".into(),
            leak_detection_threshold: ms(30_000),
            connect_init_sql: Some("SET TIME ZONE 'UTC'".into()),
            pipeline_connections: 3,
        }
    );
    assert_eq!(
        c.query,
        QueryConfig {
            query_timeout: ms(10_000),
            slow_query_threshold: ms(250),
            statement_cache_size: 0
        }
    );
    assert_eq!(
        c.retry,
        RetryConfig {
            attempts: 2,
            budget: ms(1_500)
        }
    );
    assert_eq!(
        c.failover,
        FailoverConfig {
            enabled: false,
            pool_max: 7,
            threshold_pct: 75
        }
    );
    assert_eq!(c.failover.release_pct(), 65);
    assert_eq!(c.health.interval, ms(120_000));
    assert_eq!(c.tls.root_cert, Some(PathBuf::from("/etc/ssl/ca.pem")));
    assert_eq!(c.render("DB_CONNECT_INIT_SQL"), "SET TIME ZONE 'UTC'");
    // Every variable except APP_ENV came from the environment.
    for s in c.effective() {
        if s.variable != "APP_ENV" {
            assert_eq!(s.source, Source::Env(s.variable), "{s}");
        }
    }
}

#[test]
fn development_defaults_exactly_per_design_table() {
    let c = Config::for_profile(Profile::Development);
    assert_eq!((c.pool.max_size, c.pool.min_idle), (30, 5));
    assert_eq!((c.failover.enabled, c.failover.pool_max), (false, 10));
    assert_eq!(c.health.interval, ms(60_000));
    assert_common_defaults(&c);
}

#[test]
fn staging_defaults_exactly_per_design_table() {
    let c = Config::for_profile(Profile::Staging);
    assert_eq!((c.pool.max_size, c.pool.min_idle), (50, 10));
    assert_eq!((c.failover.enabled, c.failover.pool_max), (true, 10));
    assert_eq!(c.health.interval, ms(30_000));
    assert_common_defaults(&c);
}

#[test]
fn production_defaults_exactly_per_design_table() {
    let c = Config::for_profile(Profile::Production);
    assert_eq!((c.pool.max_size, c.pool.min_idle), (100, 25));
    assert_eq!((c.failover.enabled, c.failover.pool_max), (true, 20));
    assert_eq!(c.health.interval, ms(30_000));
    assert_common_defaults(&c);
}

fn assert_common_defaults(c: &Config) {
    assert_eq!(c.pool.connect_timeout, ms(5_000));
    assert_eq!(c.pool.acquire_timeout, ms(5_000));
    assert_eq!(c.pool.idle_timeout, ms(60_000));
    assert_eq!(c.pool.max_lifetime, ms(30 * 60_000));
    assert_eq!(c.pool.application_name, "pgwarden");
    assert_eq!(c.query.query_timeout, ms(30_000));
    assert_eq!(c.query.slow_query_threshold, ms(100));
    assert_eq!(c.query.statement_cache_size, 1000);
    assert_eq!(c.retry.attempts, 3);
    assert_eq!(c.retry.budget, ms(5_000));
    assert_eq!(c.failover.threshold_pct, 80);
    assert_eq!(c.failover.release_pct(), 70);
    assert!(c.read_url.is_none());
    assert_eq!(c.read.max_lag_bytes, 16 << 20);
    assert_eq!(c.render("DB_READ_MAX_LAG"), "16MB");
    assert_eq!(c.tls.root_cert, None);
    assert!(c.database_url.is_none() && c.failover_url.is_none());
    let h = &c.health.thresholds;
    assert_eq!(
        (h.utilization_warning_pct, h.utilization_critical_pct),
        (60.0, 80.0)
    );
    assert_eq!(
        (h.avg_query_warning, h.avg_query_critical),
        (ms(50), ms(100))
    );
    assert_eq!((h.p95_warning, h.p95_critical), (ms(80), ms(150)));
    assert_eq!(
        (h.success_rate_warning_pct, h.success_rate_critical_pct),
        (99.0, 95.0)
    );
    assert_eq!(
        (h.slow_per_min_warning, h.slow_per_min_critical),
        (5.0, 20.0)
    );
    assert_eq!(RETRY_DELAYS, [ms(100), ms(500), ms(2_000)]);
    assert_eq!(RetryConfig::delay_before(1), ms(100));
    assert_eq!(RetryConfig::delay_before(4), ms(2_000));
    c.validate().expect("defaults are valid");
}

#[test]
fn empty_environment_is_development_without_url() {
    let c = load(&[]);
    assert_eq!(c.profile, Profile::Development);
    assert!(c.database_url.is_none());
    assert!(c.warnings().is_empty());
}

#[test]
fn profile_names_aliases_and_case() {
    for (name, p) in [
        ("development", Profile::Development),
        ("dev", Profile::Development),
        ("DEV", Profile::Development),
        ("staging", Profile::Staging),
        ("Stage", Profile::Staging),
        ("production", Profile::Production),
        ("prod", Profile::Production),
        (" PRODUCTION ", Profile::Production),
    ] {
        assert_eq!(name.parse::<Profile>(), Ok(p), "{name}");
        assert_eq!(load(&[("DB_PROFILE", name)]).profile, p, "{name}");
        assert_eq!(load(&[("APP_ENV", name)]).profile, p, "{name}");
    }
    assert_eq!(Profile::Production.to_string(), "production");
    assert_eq!(Profile::Staging.to_string(), "staging");
    assert_eq!(Profile::Development.to_string(), "development");
}

#[test]
fn db_profile_wins_over_app_env_and_override_wins_over_both() {
    let c = load(&[("APP_ENV", "prod"), ("DB_PROFILE", "stage")]);
    assert_eq!(c.profile, Profile::Staging);
    let c = Config::from_vars_with_profile(
        [("APP_ENV", "prod"), ("DB_PROFILE", "stage")],
        Some(Profile::Development),
    )
    .unwrap();
    assert_eq!(c.profile, Profile::Development);
    assert_eq!(c.effective()[0].source, Source::Override);
    let c = load(&[("APP_ENV", "production")]);
    assert_eq!(c.effective()[0].source, Source::Env("APP_ENV"));
}

#[test]
fn unknown_db_profile_is_an_error() {
    let e = problems(&[("DB_PROFILE", "qa")]);
    assert_problem(
        &e,
        "DB_PROFILE",
        "not a profile",
        "development, staging or production",
    );
    assert_eq!(e.problems[0].value, "qa");
}

#[test]
fn unknown_app_env_falls_back_to_development_with_a_warning() {
    let c = load(&[("APP_ENV", "test")]);
    assert_eq!(c.profile, Profile::Development);
    assert!(
        c.warnings()[0].contains("APP_ENV=test"),
        "{:?}",
        c.warnings()
    );
    assert!(c.warnings()[0].contains("development"));
    // Empty APP_ENV (the host application's variable) counts as unset.
    assert!(load(&[("APP_ENV", "")]).warnings().is_empty());
}

#[test]
fn invalid_db_profile_with_override_is_only_a_warning() {
    let c =
        Config::from_vars_with_profile([("DB_PROFILE", "qa")], Some(Profile::Production)).unwrap();
    assert_eq!(c.profile, Profile::Production);
    assert!(c.warnings()[0].contains("DB_PROFILE=qa"));
}

#[test]
fn password_never_shown_anywhere() {
    let url = format!("postgres://app:{PW}@db:5432/app?sslmode=require");
    let c = load(&[
        ("DATABASE_URL", &url),
        (
            "DB_FAILOVER_URL",
            &format!("host=b user=app password='{PW}'"),
        ),
    ]);
    let mut shown = vec![format!("{c:?}"), format!("{c:#?}")];
    shown.extend(c.effective().iter().map(|s| s.to_string()));
    shown.push(c.database_url.as_ref().unwrap().to_string());
    for s in &shown {
        assert!(!s.contains(PW) && !s.contains("hunter2"), "{s}");
    }
    assert!(shown
        .iter()
        .any(|s| s.contains("postgres://app:***@db:5432/app?sslmode=require")));
    // Bad URLs, and problems about good URLs.
    for bad in [
        format!("postgres://app:{PW}@db:x/app"),
        format!("postgres://app:{PW}"),
        format!("postgres://app:{PW}@db/app?sslmode=verify-full"),
        format!("host=db password={PW} {PW}"),
        PW.to_string(),
    ] {
        let e = problems(&[("DATABASE_URL", &bad)]);
        let text = format!("{e}\n{e:?}");
        assert!(!text.contains("hunter2"), "{bad} -> {text}");
    }
}

#[test]
fn effective_lists_every_variable_with_sources() {
    let c = load(&[
        ("DB_PROFILE", "prod"),
        ("DB_POOL_MAX", "80"),
        ("DB_FAILOVER_THRESHOLD", "90"),
    ]);
    let eff = c.effective();
    assert_eq!(eff.len(), super::load::VARIABLES.len());
    let get = |v: &str| eff.iter().find(|s| s.variable == v).unwrap().clone();
    assert_eq!(get("DB_PROFILE").value, "production");
    assert_eq!(get("DB_PROFILE").source, Source::Env("DB_PROFILE"));
    assert_eq!(
        (get("DB_POOL_MAX").value, get("DB_POOL_MAX").source),
        ("80".into(), Source::Env("DB_POOL_MAX"))
    );
    assert_eq!(get("DB_FAILOVER_THRESHOLD").value, "90%");
    let min = get("DB_POOL_MIN");
    assert_eq!(
        (min.value.as_str(), min.source),
        ("25", Source::Profile(Profile::Production))
    );
    assert_eq!(get("DB_CONNECT_TIMEOUT").value, "5s");
    assert_eq!(get("DB_POOL_MAX_LIFETIME").value, "30m");
    assert_eq!(get("DB_SLOW_QUERY_THRESHOLD").value, "100ms");
    assert_eq!(get("DB_ENABLE_FAILOVER").value, "true");
    assert_eq!(get("DATABASE_URL").source, Source::Default);
    assert_eq!(
        min.to_string(),
        "DB_POOL_MIN=25  # production profile default"
    );
    assert_eq!(
        get("DB_POOL_MAX").to_string(),
        "DB_POOL_MAX=80  # environment (DB_POOL_MAX)"
    );
    assert_eq!(
        get("DB_PROFILE").source.to_string(),
        "environment (DB_PROFILE)"
    );
}

#[test]
fn effective_values_parse_back_to_the_same_config() {
    let c = load(&[
        ("DB_PROFILE", "staging"),
        ("DB_RETRY_BUDGET", "1.5s"),
        ("DB_POOL_IDLE_TIMEOUT", "61000"),
    ]);
    let vars: Vec<(String, String)> = c
        .effective()
        .into_iter()
        .filter(|s| !s.value.starts_with('('))
        .map(|s| (s.variable.to_string(), s.value))
        .collect();
    let again = Config::from_vars(vars).unwrap();
    assert_eq!(
        (again.pool, again.retry, again.query, again.failover),
        (c.pool, c.retry, c.query, c.failover)
    );
}

#[test]
fn changes_in_code_show_as_overrides() {
    let mut c = load(&[("DB_POOL_MAX", "80")]);
    c.pool.max_size = 12;
    c.query.query_timeout = ms(1_000);
    let t = DbTarget::parse("host=/tmp/pg port=5433 user=postgres").unwrap();
    c.set_database_url(t, Source::Override);
    let eff = c.effective();
    let src = |v: &str| eff.iter().find(|s| s.variable == v).unwrap().source;
    assert_eq!(src("DB_POOL_MAX"), Source::Override);
    assert_eq!(src("DB_QUERY_TIMEOUT"), Source::Override);
    assert_eq!(src("DATABASE_URL"), Source::Override);
    assert_eq!(src("DB_POOL_MIN"), Source::Profile(Profile::Development));
}

#[test]
fn did_you_mean_for_near_misses() {
    let c = load(&[
        ("DB_POOL_MAXX", "5"),
        ("DB_POL_MIN", "5"),
        ("DATABASE_URI", "x"),
        ("db_pool_max", "5"),
        ("DB_HOST", "elsewhere"),
        ("HOME", "/root"),
        ("PGWARDEN_PG_BIN", "/usr/lib/postgresql/17/bin"),
    ]);
    let w = c.warnings().join("\n");
    assert!(
        w.contains("DB_POOL_MAXX is not a pgwarden variable; did you mean DB_POOL_MAX?"),
        "{w}"
    );
    assert!(
        w.contains("DB_POL_MIN is not a pgwarden variable; did you mean DB_POOL_MIN?"),
        "{w}"
    );
    assert!(w.contains("did you mean DATABASE_URL?"), "{w}");
    assert!(w.contains("db_pool_max is not a pgwarden variable; did you mean DB_POOL_MAX? (names are case-sensitive)"), "{w}");
    assert_eq!(c.warnings().len(), 4, "{w}");
    assert_eq!(c.pool.max_size, 30);
}

#[test]
fn failover_url_without_failover_is_a_warning() {
    let c = load(&[("DB_FAILOVER_URL", "postgres://u@standby/db")]);
    assert!(
        c.warnings()[0].contains("DB_ENABLE_FAILOVER=false"),
        "{:?}",
        c.warnings()
    );
    assert!(load(&[
        ("DB_PROFILE", "prod"),
        ("DB_FAILOVER_URL", "postgres://u@standby/db")
    ])
    .warnings()
    .is_empty());
}

#[test]
fn read_routing_settings_in_every_profile() {
    for profile in ["development", "staging", "production"] {
        assert_eq!(
            load(&[("DB_PROFILE", profile)]).read.max_lag_bytes,
            16 << 20
        );
        let c = load(&[
            ("DB_PROFILE", profile),
            ("DB_READ_URL", "postgres://u:pw-read@replica/db"),
            ("DB_READ_MAX_LAG", "1kB"),
        ]);
        assert_eq!(c.read.max_lag_bytes, 1024, "{profile}");
        let shown = c.render("DB_READ_URL");
        assert!(
            shown.contains("replica") && !shown.contains("pw-read"),
            "{shown}"
        );
        assert!(!format!("{c:?}").contains("pw-read"), "{profile}: Debug");
        assert!(c.set_but_not_yet_effective().is_empty(), "{profile}");
    }
}

#[test]
fn read_max_lag_without_read_url_is_a_warning() {
    let c = load(&[("DB_READ_MAX_LAG", "1MB")]);
    assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
    assert!(
        c.warnings()[0].contains("DB_READ_URL"),
        "{:?}",
        c.warnings()
    );
    assert!(load(&[
        ("DB_READ_MAX_LAG", "1MB"),
        ("DB_READ_URL", "postgres://u@standby/db")
    ])
    .warnings()
    .is_empty());
    assert!(
        load(&[]).warnings().is_empty(),
        "the profile's default alone"
    );
}

#[test]
fn root_cert_from_url_wins_over_env() {
    let c = load(&[
        (
            "DATABASE_URL",
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/url-ca.pem",
        ),
        ("DB_SSL_ROOT_CERT", "/env-ca.pem"),
        ("DB_FAILOVER_URL", "postgres://u@h2/db?sslmode=verify-ca"),
        ("DB_ENABLE_FAILOVER", "true"),
    ]);
    let primary = c.database_url.as_ref().unwrap();
    assert_eq!(
        c.root_cert_for(primary),
        Some(std::path::Path::new("/url-ca.pem"))
    );
    let fo = c.failover_url.as_ref().unwrap();
    assert_eq!(
        c.root_cert_for(fo),
        Some(std::path::Path::new("/env-ca.pem"))
    );
}

#[test]
fn later_pairs_win() {
    assert_eq!(
        load(&[
            ("DB_POOL_MAX", "1"),
            ("DB_POOL_MIN", "0"),
            ("DB_POOL_MAX", "9")
        ])
        .pool
        .max_size,
        9
    );
}

#[test]
fn empty_connect_init_sql_is_a_problem_naming_the_fix() {
    let err = Config::from_vars([
        ("DATABASE_URL", "postgres://app@db/app"),
        ("DB_CONNECT_INIT_SQL", "  "),
    ])
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("DB_CONNECT_INIT_SQL"), "{text}");
    assert!(text.contains("unset it"), "{text}");
    let c = Config::for_profile(Profile::Production);
    assert_eq!(c.pool.connect_init_sql, None);
    assert_eq!(c.render("DB_CONNECT_INIT_SQL"), "(none)");
}
