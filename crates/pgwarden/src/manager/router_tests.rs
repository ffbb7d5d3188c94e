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

#[tokio::test]
async fn reads_go_to_the_read_pool_only_once_its_standby_is_measured_and_close_enough() {
    use super::super::read::Found;
    use crate::manager::route::ReadFallback;
    let r = router("10.0.0.1", true).with_read_pool(pool("10.0.0.7"), 1024);
    let read = || r.read.as_ref().unwrap();
    let reason = |why: ReadFallback| r.read_stats().fallbacks_by_reason.get(why);
    // Not measured yet: never used blindly.
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Primary);
    assert_eq!(reason(ReadFallback::Unmeasured), 1);
    read().record(Found::Standby(Some(100)));
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Read);
    // Writes and unmarked or idempotent calls never go there; a read's retry goes to the
    // primary side.
    assert_eq!(r.pick(1, Marking::Write), PoolId::Primary);
    assert_eq!(r.pick(1, Marking::Idempotent), PoolId::Primary);
    assert_eq!(r.pick(3, Marking::ReadOnly), PoolId::Failover);
    assert_eq!(reason(ReadFallback::Retry), 1);
    assert!(r.has_alternative(PoolId::Read, Marking::ReadOnly));
    // Over the limit, then caught up.
    read().record(Found::Standby(Some(1025)));
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Primary);
    assert_eq!(reason(ReadFallback::Lagging), 1);
    read().record(Found::Standby(Some(0)));
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Read);
    // The primary's position unknown (the primary down): the last measure stands.
    read().record(Found::Standby(None));
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Read);
    // A failed connect: down, and the lag forgotten until a fresh measure.
    r.note_reachable(PoolId::Read, false);
    assert!(!r.is_up(PoolId::Read));
    assert!(r.is_up(PoolId::Primary), "the primary's state is its own");
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Primary);
    assert_eq!(reason(ReadFallback::Down), 1);
    read().record(Found::Standby(None));
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Primary);
    assert_eq!(reason(ReadFallback::Unmeasured), 2);
    read().record(Found::Standby(Some(10)));
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Read);
    // An exhausted read pool at probe time changes nothing.
    read().record(Found::Busy);
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Read);
    // Promoted: not a standby any more.
    read().record(Found::NotStandby);
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Primary);
    assert_eq!(reason(ReadFallback::NotStandby), 1);
    read().record(Found::Down("refused".into()));
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Primary);
    assert_eq!(r.writable(PoolId::Read), Some(false));

    let s = r.read_stats();
    assert!(s.enabled && !s.serving);
    assert_eq!((s.routed, s.fallbacks), (5, 7));
    assert_eq!(s.lag_bytes, None);
    assert_eq!(s.max_lag_bytes, 1024);
}

#[tokio::test]
async fn without_a_read_pool_reads_follow_the_failover_rules_and_read_stats_stay_zero() {
    let r = router("10.0.0.1", true);
    assert_eq!(r.pick(1, Marking::ReadOnly), PoolId::Primary);
    assert!(std::ptr::eq(r.pool(PoolId::Read), r.primary()));
    assert_eq!(r.read_stats(), crate::metrics::ReadSnapshot::default());
}
