//! `DB_PIPELINE_CONNECTIONS`: parsed, validated against the pool it is taken from, listed.

use super::tests::{assert_problem, load, problems};
use super::*;

#[test]
fn pipeline_connections_is_parsed_listed_and_defaulted_in_every_profile() {
    for (p, want) in [
        (Profile::Development, DEV_PIPELINE_CONNECTIONS),
        (Profile::Staging, STAGING_PIPELINE_CONNECTIONS),
        (Profile::Production, PRODUCTION_PIPELINE_CONNECTIONS),
    ] {
        let c = Config::for_profile(p);
        assert_eq!(c.pool.pipeline_connections, want, "{p}");
        assert!(want < PoolConfig::for_profile(p).max_size, "{p}");
        assert!(c.validate().is_ok(), "{p}");
    }
    let c = load(&[("DB_PIPELINE_CONNECTIONS", "4")]);
    assert_eq!(c.pool.pipeline_connections, 4);
    let line = c
        .effective()
        .into_iter()
        .find(|s| s.variable == "DB_PIPELINE_CONNECTIONS")
        .expect("listed by effective()");
    assert_eq!(line.value, "4");
    assert_eq!(
        load(&[("DB_PIPELINE_CONNECTIONS", "0")])
            .pool
            .pipeline_connections,
        0
    );
}

#[test]
fn pipeline_connections_must_leave_the_pool_a_connection_and_stay_small() {
    let e = problems(&[("DB_POOL_MAX", "4"), ("DB_PIPELINE_CONNECTIONS", "4")]);
    assert_problem(
        &e,
        "DB_PIPELINE_CONNECTIONS",
        "not below DB_POOL_MAX (4)",
        "at most 3",
    );
    let e = problems(&[("DB_PIPELINE_CONNECTIONS", "65")]);
    assert_problem(&e, "DB_PIPELINE_CONNECTIONS", "above 64", "between 0");
    let e = problems(&[("DB_PIPELINE_CONNECTIONS", "two")]);
    assert_problem(
        &e,
        "DB_PIPELINE_CONNECTIONS",
        "not a whole number",
        "whole number",
    );
    assert_eq!(
        load(&[("DB_POOL_MAX", "4"), ("DB_PIPELINE_CONNECTIONS", "3")])
            .pool
            .pipeline_connections,
        3
    );
}
