//! Profile defaults that contradict a user-set value are clamped to it; values the user set
//! on both sides of a rule are an error naming both.

use super::tests::{assert_problem, load, ms, problems};
use super::*;

fn source(c: &Config, var: &str) -> Source {
    c.effective()
        .into_iter()
        .find(|s| s.variable == var)
        .unwrap_or_else(|| panic!("{var} not in effective()"))
        .source
}

fn clamped(profile: Profile, to: &'static str) -> Source {
    Source::Clamped { profile, to }
}

#[test]
fn pool_max_alone_clamps_the_default_min() {
    let c = load(&[("DB_POOL_MAX", "4")]);
    assert_eq!((c.pool.max_size, c.pool.min_idle), (4, 4));
    assert_eq!(
        source(&c, "DB_POOL_MIN"),
        clamped(Profile::Development, "DB_POOL_MAX")
    );
    assert_eq!(source(&c, "DB_POOL_MAX"), Source::Env("DB_POOL_MAX"));
    let line = c
        .effective()
        .into_iter()
        .find(|s| s.variable == "DB_POOL_MIN")
        .unwrap()
        .to_string();
    assert_eq!(
        line,
        "DB_POOL_MIN=4  # development profile default, clamped to DB_POOL_MAX"
    );
    c.validate().unwrap();

    let c = load(&[("DB_PROFILE", "prod"), ("DB_POOL_MAX", "10")]);
    assert_eq!(c.pool.min_idle, 10);
    assert_eq!(
        source(&c, "DB_POOL_MIN"),
        clamped(Profile::Production, "DB_POOL_MAX")
    );
}

#[test]
fn pool_min_alone_raises_the_default_max() {
    let c = load(&[("DB_POOL_MIN", "40")]);
    assert_eq!((c.pool.max_size, c.pool.min_idle), (40, 40));
    assert_eq!(
        source(&c, "DB_POOL_MAX"),
        clamped(Profile::Development, "DB_POOL_MIN")
    );
}

#[test]
fn pool_min_and_max_both_set_and_crossed_is_an_error_naming_both() {
    let e = problems(&[("DB_POOL_MAX", "4"), ("DB_POOL_MIN", "5")]);
    assert_problem(
        &e,
        "DB_POOL_MIN",
        "DB_POOL_MIN (5) is above DB_POOL_MAX (4)",
        "at most 4",
    );
}

#[test]
fn a_user_value_that_agrees_with_the_defaults_clamps_nothing() {
    let c = load(&[("DB_POOL_MAX", "10"), ("DB_CONNECT_TIMEOUT", "1s")]);
    assert_eq!(c.pool.min_idle, 5);
    assert_eq!(c.pool.acquire_timeout, ms(5_000));
    assert_eq!(
        source(&c, "DB_POOL_MIN"),
        Source::Profile(Profile::Development)
    );
    assert_eq!(
        source(&c, "DB_ACQUIRE_TIMEOUT"),
        Source::Profile(Profile::Development)
    );
}

#[test]
fn connect_timeout_alone_raises_the_default_acquire_timeout() {
    let c = load(&[("DB_CONNECT_TIMEOUT", "10s")]);
    assert_eq!(c.pool.acquire_timeout, ms(10_000));
    assert_eq!(
        source(&c, "DB_ACQUIRE_TIMEOUT"),
        clamped(Profile::Development, "DB_CONNECT_TIMEOUT")
    );
}

#[test]
fn acquire_timeout_alone_lowers_the_default_connect_timeout() {
    let c = load(&[("DB_ACQUIRE_TIMEOUT", "200ms")]);
    assert_eq!(c.pool.connect_timeout, ms(200));
    assert_eq!(
        source(&c, "DB_CONNECT_TIMEOUT"),
        clamped(Profile::Development, "DB_ACQUIRE_TIMEOUT")
    );
}

#[test]
fn acquire_and_connect_timeouts_both_set_and_crossed_is_an_error_naming_both() {
    let e = problems(&[
        ("DB_ACQUIRE_TIMEOUT", "200ms"),
        ("DB_CONNECT_TIMEOUT", "1s"),
    ]);
    assert_problem(
        &e,
        "DB_ACQUIRE_TIMEOUT",
        "DB_ACQUIRE_TIMEOUT (200ms) is shorter than DB_CONNECT_TIMEOUT (1s)",
        "lower DB_CONNECT_TIMEOUT",
    );
}

#[test]
fn a_zero_retry_budget_alone_clamps_the_default_attempts() {
    let c = load(&[("DB_RETRY_BUDGET", "0")]);
    assert_eq!(c.retry.attempts, 0);
    assert_eq!(
        source(&c, "DB_RETRY_ATTEMPTS"),
        clamped(Profile::Development, "DB_RETRY_BUDGET")
    );
    // The other way round there is no contradiction: the default budget is positive.
    let c = load(&[("DB_RETRY_ATTEMPTS", "7")]);
    assert_eq!((c.retry.attempts, c.retry.budget), (7, ms(5_000)));
}

#[test]
fn retry_attempts_and_a_zero_budget_both_set_is_an_error_naming_both() {
    let e = problems(&[("DB_RETRY_ATTEMPTS", "2"), ("DB_RETRY_BUDGET", "0")]);
    assert_problem(
        &e,
        "DB_RETRY_BUDGET",
        "DB_RETRY_BUDGET is 0 but DB_RETRY_ATTEMPTS is 2",
        "DB_RETRY_ATTEMPTS=0",
    );
}

#[test]
fn a_zero_failover_pool_alone_turns_the_default_failover_off() {
    let c = load(&[("DB_PROFILE", "production"), ("DB_FAILOVER_POOL_MAX", "0")]);
    assert!(!c.failover.enabled);
    assert_eq!(
        source(&c, "DB_ENABLE_FAILOVER"),
        clamped(Profile::Production, "DB_FAILOVER_POOL_MAX")
    );
    // Enabling failover alone keeps the profile's (positive) failover pool size.
    let c = load(&[("DB_ENABLE_FAILOVER", "true")]);
    assert_eq!((c.failover.enabled, c.failover.pool_max), (true, 10));
}

#[test]
fn failover_enabled_and_a_zero_pool_both_set_is_an_error_naming_both() {
    let e = problems(&[("DB_ENABLE_FAILOVER", "on"), ("DB_FAILOVER_POOL_MAX", "0")]);
    assert_problem(
        &e,
        "DB_FAILOVER_POOL_MAX",
        "DB_FAILOVER_POOL_MAX is 0 while failover is enabled (DB_ENABLE_FAILOVER=true)",
        "DB_ENABLE_FAILOVER=false",
    );
}

#[test]
fn nothing_is_clamped_against_a_value_that_failed_to_parse() {
    // DB_POOL_MAX was set (badly): its default must not be raised to hide DB_POOL_MIN's
    // problem.
    let e = problems(&[("DB_POOL_MAX", "ten"), ("DB_POOL_MIN", "500")]);
    assert!(
        e.mentions("DB_POOL_MAX") && e.mentions("DB_POOL_MIN"),
        "{e}"
    );
}

#[test]
fn the_pool_manager_and_connector_defaults_are_the_development_profile() {
    use crate::{ConnectOptions, ManagerOptions, PoolOptions};
    let dev = Config::for_profile(Profile::Development);
    assert_eq!(
        PoolOptions::default(),
        PoolOptions::from_config(&dev.pool, "primary")
    );
    assert_eq!(ManagerOptions::default(), ManagerOptions::from_config(&dev));
    let (d, c) = (ConnectOptions::default(), ConnectOptions::from_config(&dev));
    assert_eq!(d.connect_timeout, c.connect_timeout);
    assert_eq!(d.application_name, c.application_name);
    assert_eq!(d.statement_cache_size, c.statement_cache_size);
}

#[test]
fn settings_without_effect_are_listed_only_when_the_user_set_them() {
    // Production's defaults enable failover: nothing set, nothing listed.
    let c = load(&[("DB_PROFILE", "production")]);
    assert!(c.set_but_not_yet_effective().is_empty());
    let c = load(&[
        ("DB_ENABLE_FAILOVER", "true"),
        ("DB_FAILOVER_URL", "postgres://u@h2/db"),
        ("DB_FAILOVER_POOL_MAX", "4"),
        ("DB_FAILOVER_THRESHOLD", "70"),
        ("DB_HEALTH_CHECK_INTERVAL", "10s"),
        ("DB_POOL_MAX", "8"),
    ]);
    assert!(c.set_but_not_yet_effective().is_empty());
    // Read routing's settings have effect since read routing was built: never listed.
    let c = load(&[
        ("DB_READ_URL", "postgres://u@replica/db"),
        ("DB_READ_MAX_LAG", "0"),
    ]);
    assert!(c.set_but_not_yet_effective().is_empty());
    assert!(NOT_YET_EFFECTIVE.is_empty());
    // The failover settings and the health interval have effect: never listed, even when set
    // in code.
    let mut c = load(&[
        ("DB_FAILOVER_THRESHOLD", "70"),
        ("DB_HEALTH_CHECK_INTERVAL", "60s"),
    ]);
    c.failover.threshold_pct = 90;
    assert!(c.set_but_not_yet_effective().is_empty());
}
