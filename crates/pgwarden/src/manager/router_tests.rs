//! How probe answers change the topology: up/down, read-write/read-only, the preferred host of a
//! multi-host target, the overflow feed. No server: the answers are given.

use std::time::Duration;

use super::*;
use crate::connect::{ConnectOptions, Role};
use crate::pool::PoolOptions;

fn pool(hosts: &str) -> Pool<PgConnector> {
    let pg: tokio_postgres::Config = format!("host={hosts} port=1 user=nobody dbname=none")
        .parse()
        .unwrap();
    let c = PgConnector::new(
        &pg,
        crate::config::SslMode::Disable,
        None,
        ConnectOptions::default(),
    )
    .unwrap();
    Pool::new(c, PoolOptions::sized(4, 0))
}

fn answer(index: usize, role: Result<Role, &str>) -> HostRole {
    HostRole {
        index,
        host: format!("h{index}"),
        role: role.map_err(str::to_owned),
    }
}

fn router(primary_hosts: &str, failover: bool) -> Router {
    let f = failover.then(|| pool("10.0.0.9"));
    Router::new(
        pool(primary_hosts),
        f,
        false,
        80,
        Duration::from_millis(100),
    )
}

#[tokio::test]
async fn probe_answers_set_reachability_and_writability() {
    let r = router("10.0.0.1", true);
    assert_eq!(
        (r.is_up(PoolId::Primary), r.writable(PoolId::Primary)),
        (true, None)
    );
    r.apply(PoolId::Primary, &[answer(0, Ok(Role::ReadWrite))]);
    assert_eq!(r.writable(PoolId::Primary), Some(true));
    assert!(!r.primary_degraded());
    // Unreachable: down, and what it was stays known.
    r.apply(PoolId::Primary, &[answer(0, Err("connection refused"))]);
    assert!(!r.is_up(PoolId::Primary));
    assert_eq!(r.writable(PoolId::Primary), Some(true));
    assert!(r.primary_degraded());
    // Back read-only (default_transaction_read_only, or a standby): writes go elsewhere.
    r.apply(PoolId::Primary, &[answer(0, Ok(Role::ReadOnly))]);
    assert!(r.is_up(PoolId::Primary));
    assert_eq!(r.writable(PoolId::Primary), Some(false));
    assert!(r.primary_degraded());
    r.apply(PoolId::Failover, &[answer(0, Ok(Role::ReadWrite))]);
    assert_eq!(r.pick(1, Marking::Write), PoolId::Failover);
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Primary);
    r.apply(PoolId::Primary, &[answer(0, Ok(Role::Standby))]);
    assert_eq!(r.writable(PoolId::Primary), Some(false));
}

#[tokio::test]
async fn a_multi_host_target_follows_its_read_write_host() {
    let r = router("10.0.0.1,10.0.0.2", false);
    let prefer = |r: &Router| r.primary().connector().prefer_host(usize::MAX);
    r.apply(
        PoolId::Primary,
        &[answer(0, Ok(Role::ReadWrite)), answer(1, Ok(Role::Standby))],
    );
    assert_eq!(prefer(&r), 0);
    r.primary().connector().prefer_host(0);
    // Switchover: the first host is gone, the second promoted.
    r.apply(
        PoolId::Primary,
        &[answer(0, Err("refused")), answer(1, Ok(Role::ReadWrite))],
    );
    assert_eq!(
        r.writable(PoolId::Primary),
        Some(true),
        "one host takes writes"
    );
    assert!(r.is_up(PoolId::Primary));
    assert_eq!(prefer(&r), 1);
    r.primary().connector().prefer_host(1);
    // The old primary back read-only: the preference stays on the promoted one.
    r.apply(
        PoolId::Primary,
        &[
            answer(0, Ok(Role::ReadOnly)),
            answer(1, Ok(Role::ReadWrite)),
        ],
    );
    assert_eq!(prefer(&r), 1);
    // Every host refuses writes: the target is read-only.
    r.apply(
        PoolId::Primary,
        &[answer(0, Ok(Role::ReadOnly)), answer(1, Ok(Role::Standby))],
    );
    assert_eq!(r.writable(PoolId::Primary), Some(false));
}

#[tokio::test]
async fn without_failover_everything_goes_to_the_primary_and_stats_stay_zero() {
    let r = router("10.0.0.1", false);
    r.apply(PoolId::Primary, &[answer(0, Ok(Role::ReadOnly))]);
    for attempt in 1..=4 {
        assert_eq!(r.pick(attempt, Marking::Write), PoolId::Primary);
    }
    assert_eq!(r.failover_stats(), FailoverStats::default());
}
