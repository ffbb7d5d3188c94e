//! One test per validation and parse problem, and several at once.

use super::tests::{assert_problem, load, ms, problems, PW};
use super::*;

#[test]
fn unparseable_number_names_variable_and_fix() {
    let e = problems(&[("DB_POOL_MAX", "lots")]);
    assert_problem(&e, "DB_POOL_MAX", "not a whole number", "whole number");
    assert!(
        e.problems[0]
            .fix
            .contains("default in the development profile: 30"),
        "{e}"
    );
}

#[test]
fn unparseable_duration_names_variable_and_fix() {
    let e = problems(&[("DB_QUERY_TIMEOUT", "30 seconds")]);
    assert_problem(&e, "DB_QUERY_TIMEOUT", "unknown unit", "ms, s, m or h");
}

#[test]
fn unparseable_boolean_names_variable_and_fix() {
    let e = problems(&[("DB_ENABLE_FAILOVER", "maybe")]);
    assert_problem(&e, "DB_ENABLE_FAILOVER", "not a boolean", "true or false");
}

#[test]
fn unparseable_url_names_variable_and_fix() {
    let e = problems(&[("DATABASE_URL", "postgres://u@h:port/db")]);
    assert_problem(&e, "DATABASE_URL", "cannot be parsed", "numeric port");
    let e = problems(&[("DB_FAILOVER_URL", "postgres://u@h/db?bogus=1")]);
    assert_problem(&e, "DB_FAILOVER_URL", "cannot be parsed", "libpq");
}

#[test]
fn empty_value_is_a_problem() {
    let e = problems(&[("DB_POOL_MAX", ""), ("DATABASE_URL", "  ")]);
    assert_problem(&e, "DB_POOL_MAX", "set but empty", "unset it");
    assert_problem(&e, "DATABASE_URL", "set but empty", "unset it");
}

#[test]
fn pool_min_above_max() {
    let e = problems(&[("DB_POOL_MAX", "10"), ("DB_POOL_MIN", "20")]);
    assert_problem(&e, "DB_POOL_MIN", "above DB_POOL_MAX (10)", "at most 10");
}

#[test]
fn pool_max_zero() {
    let e = problems(&[("DB_POOL_MAX", "0"), ("DB_POOL_MIN", "0")]);
    assert_problem(&e, "DB_POOL_MAX", "is 0", "1 or more");
}

#[test]
fn threshold_outside_1_to_100() {
    assert_problem(
        &problems(&[("DB_FAILOVER_THRESHOLD", "0")]),
        "DB_FAILOVER_THRESHOLD",
        "outside 1–100",
        "1 to 100",
    );
    assert_problem(
        &problems(&[("DB_FAILOVER_THRESHOLD", "101%")]),
        "DB_FAILOVER_THRESHOLD",
        "outside 1–100",
        "1 to 100",
    );
    assert_problem(
        &problems(&[("DB_FAILOVER_THRESHOLD", "1000")]),
        "DB_FAILOVER_THRESHOLD",
        "outside 1–100",
        "1 to 100",
    );
    assert_eq!(
        load(&[("DB_FAILOVER_THRESHOLD", "1")])
            .failover
            .threshold_pct,
        1
    );
    assert_eq!(
        load(&[("DB_FAILOVER_THRESHOLD", "100%")])
            .failover
            .threshold_pct,
        100
    );
}

#[test]
fn threshold_as_fraction_gets_the_hint() {
    let e = problems(&[("DB_FAILOVER_THRESHOLD", "0.8")]);
    assert_problem(&e, "DB_FAILOVER_THRESHOLD", "0.8", "write 80 for 80%");
}

#[test]
fn health_interval_under_one_second() {
    let e = problems(&[("DB_HEALTH_CHECK_INTERVAL", "999ms")]);
    assert_problem(&e, "DB_HEALTH_CHECK_INTERVAL", "under 1s", "1s or more");
    assert_eq!(e.problems[0].value, "999ms");
    assert_eq!(
        load(&[("DB_HEALTH_CHECK_INTERVAL", "1s")]).health.interval,
        ms(1_000)
    );
}

#[test]
fn acquire_timeout_shorter_than_connect_timeout() {
    let e = problems(&[("DB_CONNECT_TIMEOUT", "10s"), ("DB_ACQUIRE_TIMEOUT", "2s")]);
    assert_problem(
        &e,
        "DB_ACQUIRE_TIMEOUT",
        "shorter than DB_CONNECT_TIMEOUT (10s)",
        "at least 10s",
    );
    assert!(
        load(&[("DB_CONNECT_TIMEOUT", "2s"), ("DB_ACQUIRE_TIMEOUT", "2s")])
            .validate()
            .is_ok()
    );
}

#[test]
fn bad_sslmode_in_url() {
    let e = problems(&[("DATABASE_URL", "postgres://u:pw@h/db?sslmode=allow")]);
    assert_problem(&e, "DATABASE_URL", "sslmode `allow`", "verify-full");
}

#[test]
fn failover_pool_zero_when_enabled() {
    let e = problems(&[("DB_ENABLE_FAILOVER", "yes"), ("DB_FAILOVER_POOL_MAX", "0")]);
    assert_problem(
        &e,
        "DB_FAILOVER_POOL_MAX",
        "is 0 while failover is enabled",
        "1 or more",
    );
    assert!(
        load(&[("DB_ENABLE_FAILOVER", "no"), ("DB_FAILOVER_POOL_MAX", "0")])
            .validate()
            .is_ok()
    );
}

#[test]
fn zero_timeouts_are_problems() {
    for var in [
        "DB_CONNECT_TIMEOUT",
        "DB_ACQUIRE_TIMEOUT",
        "DB_POOL_IDLE_TIMEOUT",
        "DB_POOL_MAX_LIFETIME",
        "DB_QUERY_TIMEOUT",
    ] {
        let e = problems(&[(var, "0")]);
        assert_problem(&e, var, "is 0", "positive duration");
    }
    let e = problems(&[("DB_RETRY_BUDGET", "0"), ("DB_RETRY_ATTEMPTS", "3")]);
    assert_problem(&e, "DB_RETRY_BUDGET", "is 0", "DB_RETRY_ATTEMPTS=0");
    assert!(
        load(&[("DB_RETRY_BUDGET", "0"), ("DB_RETRY_ATTEMPTS", "0")])
            .validate()
            .is_ok()
    );
}

#[test]
fn verify_modes_need_a_root_certificate() {
    for mode in ["verify-ca", "verify-full"] {
        let url = format!("postgres://u:pw@h/db?sslmode={mode}");
        let e = problems(&[("DATABASE_URL", &url)]);
        assert_problem(
            &e,
            "DATABASE_URL",
            "no root certificate",
            "DB_SSL_ROOT_CERT",
        );
        assert!(e.problems[0].value.contains(":***@"), "{e}");
        let e = problems(&[("DB_FAILOVER_URL", &url)]);
        assert_problem(&e, "DB_FAILOVER_URL", "no root certificate", "sslrootcert=");
        load(&[("DATABASE_URL", &url), ("DB_SSL_ROOT_CERT", "/ca.pem")]);
        load(&[("DATABASE_URL", &format!("{url}&sslrootcert=/ca.pem"))]);
    }
    for mode in ["disable", "prefer", "require"] {
        load(&[("DATABASE_URL", &format!("postgres://u@h/db?sslmode={mode}"))]);
    }
}

#[test]
fn application_name_longer_than_postgres_keeps() {
    let long = "x".repeat(64);
    let e = problems(&[("DB_APPLICATION_NAME", &long)]);
    assert_problem(&e, "DB_APPLICATION_NAME", "1 to 63 bytes", "at most 63");
}

#[test]
fn leak_detection_threshold_is_off_by_default_and_at_least_100ms_when_on() {
    for p in [Profile::Development, Profile::Staging, Profile::Production] {
        assert_eq!(
            PoolConfig::for_profile(p).leak_detection_threshold,
            std::time::Duration::ZERO
        );
    }
    let e = problems(&[("DB_LEAK_DETECTION_THRESHOLD", "50ms")]);
    assert_problem(
        &e,
        "DB_LEAK_DETECTION_THRESHOLD",
        "under 100ms",
        "0 (off) or 100ms or more",
    );
    assert_eq!(
        load(&[("DB_LEAK_DETECTION_THRESHOLD", "0")])
            .pool
            .leak_detection_threshold,
        std::time::Duration::ZERO
    );
    assert_eq!(
        load(&[("DB_LEAK_DETECTION_THRESHOLD", "30s")])
            .pool
            .leak_detection_threshold,
        ms(30_000)
    );
}

#[test]
fn non_utf8_value_is_a_problem_not_a_panic() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let vars = vec![
        (
            OsString::from("DB_POOL_MAX"),
            OsString::from_vec(vec![0xff, 0x31]),
        ),
        (OsString::from_vec(vec![0xff]), OsString::from("x")),
        (OsString::from("OTHER"), OsString::from_vec(vec![0xfe])),
    ];
    let e = load::load(load::from_os(vars.into_iter()), None).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_problem(&e, "DB_POOL_MAX", "not valid UTF-8", "UTF-8");
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = problems(&[
        ("DB_PROFILE", "prod"),
        (
            "DATABASE_URL",
            &format!("postgres://u:{PW}@h/db?sslmode=verify-full"),
        ),
        ("DB_POOL_MAX", "ten"),
        ("DB_POOL_MIN", "500"),
        ("DB_ENABLE_FAILOVER", "sometimes"),
        ("DB_FAILOVER_THRESHOLD", "0.8"),
        ("DB_HEALTH_CHECK_INTERVAL", "100ms"),
        ("DB_CONNECT_TIMEOUT", "10s"),
        ("DB_ACQUIRE_TIMEOUT", "1s"),
        ("DB_QUERY_TIMEOUT", "soon"),
    ]);
    for var in [
        "DATABASE_URL",
        "DB_POOL_MAX",
        "DB_POOL_MIN",
        "DB_ENABLE_FAILOVER",
        "DB_FAILOVER_THRESHOLD",
        "DB_HEALTH_CHECK_INTERVAL",
        "DB_ACQUIRE_TIMEOUT",
        "DB_QUERY_TIMEOUT",
    ] {
        assert!(e.mentions(var), "{var} missing from:\n{e}");
    }
    assert_eq!(e.to_string().lines().count(), e.problems.len());
    assert!(!e.to_string().contains(PW) && !format!("{e:?}").contains(PW));
}

#[test]
fn a_variable_that_failed_to_parse_is_not_reported_twice() {
    let e = problems(&[("DB_HEALTH_CHECK_INTERVAL", "fast")]);
    assert_eq!(e.problems.len(), 1, "{e}");
}

#[test]
fn validate_catches_problems_made_in_code() {
    let mut c = Config::for_profile(Profile::Production);
    c.pool.max_size = 0;
    c.health.interval = ms(10);
    let e = c.validate().unwrap_err();
    assert!(
        e.mentions("DB_POOL_MAX")
            && e.mentions("DB_POOL_MIN")
            && e.mentions("DB_HEALTH_CHECK_INTERVAL"),
        "{e}"
    );
}

#[test]
fn read_max_lag_takes_postgres_sizes_and_rejects_the_rest() {
    use super::parse::{format_bytes, parse_bytes};
    for (text, bytes) in [
        ("0", 0),
        ("1024", 1024),
        ("512B", 512),
        ("64kB", 64 << 10),
        ("16MB", 16 << 20),
        ("16 mb", 16 << 20),
        ("2GB", 2 << 30),
        ("1TB", 1 << 40),
    ] {
        assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        // Rendered values parse back to the same size.
        assert_eq!(parse_bytes(&format_bytes(bytes)), Ok(bytes), "{text}");
    }
    assert_eq!(format_bytes(1536), "1536B");
    assert_eq!(format_bytes(3 << 19), "1536kB");
    assert_eq!(load(&[("DB_READ_MAX_LAG", "0")]).read.max_lag_bytes, 0);
    for bad in ["-1", "16XB", "MB", "1.5MB", "99999999999TB"] {
        let e = problems(&[("DB_READ_MAX_LAG", bad)]);
        assert_problem(&e, "DB_READ_MAX_LAG", "", "");
    }
    let e = problems(&[(
        "DB_READ_URL",
        "postgres://u@h/db?target_session_attrs=never",
    )]);
    assert_problem(&e, "DB_READ_URL", "cannot be parsed", "prefer-standby");
}
