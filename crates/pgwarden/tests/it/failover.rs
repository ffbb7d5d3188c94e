//! Failover against real PostgreSQL: the overflow pool at the utilization threshold, a failover
//! target down at start-up, FAULTS rows 16 (switchover to a promoted standby) and 17 (the old
//! primary back read-only).

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden::config::Config;
use pgwarden::{PoolManager, PooledConnection};
use pgwarden_testdb::{PgServer, StopMode};
use tokio::time::Instant;

use crate::common::*;

/// A manager built the way an application builds it: from `DB_*` variables.
async fn from_vars(vars: &[(&str, String)]) -> PoolManager {
    let config = Config::from_vars(vars.iter().map(|(k, v)| (*k, v.as_str()))).expect("config");
    PoolManager::from_config(&config).await.expect("manager")
}

/// `postgres://postgres@127.0.0.1:P1,127.0.0.1:P2/db?target_session_attrs=read-write`.
fn multi_host_url(a: &PgServer, b: &PgServer, db: &str) -> String {
    format!(
        "postgres://{}@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
        a.superuser(),
        a.port(),
        b.port()
    )
}

async fn count_on(server: &PgServer, db: &str, sql: &str, ids: &[i64]) -> i64 {
    let (client, conn) = server
        .pg_config(db)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("direct connection");
    let driver = tokio::spawn(conn);
    let n: i64 = client.query_one(sql, &[&ids]).await.expect(sql).get(0);
    drop(client);
    driver.abort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_engages_at_threshold_and_releases_below_it() {
    let (server, db) = shared_db();
    let app = app_name("overflow");
    let m = from_vars(&[
        ("DATABASE_URL", server.url(&db)),
        ("DB_POOL_MAX", "5".into()),
        ("DB_POOL_MIN", "0".into()),
        ("DB_ENABLE_FAILOVER", "true".into()),
        ("DB_FAILOVER_POOL_MAX", "2".into()),
        ("DB_FAILOVER_THRESHOLD", "80".into()),
        ("DB_ACQUIRE_TIMEOUT", "700ms".into()),
        ("DB_CONNECT_TIMEOUT", "500ms".into()),
        ("DB_APPLICATION_NAME", app.clone()),
    ])
    .await;
    let fo = m.failover_pool().expect("failover pool").clone();
    let in_use = |m: &PoolManager| (m.pool().status().in_use, fo.status().in_use);
    let mut held: Vec<PooledConnection<pgwarden::PgConnector>> = Vec::new();
    // 4 of 5 on the primary: each decision saw less than 80% (0..=60%).
    for _ in 0..4 {
        held.push(m.get().await.expect("get"));
    }
    assert_eq!(in_use(&m), (4, 0));
    assert!(!m.failover_stats().active, "below the threshold");
    // The primary is at 80%: overflow engages, new checkouts go to the failover pool.
    held.push(m.get().await.expect("get"));
    held.push(m.get().await.expect("get"));
    assert_eq!(in_use(&m), (4, 2));
    let s = m.failover_stats();
    assert!(s.active && s.activations == 1, "{s:?}");
    // The failover pool is full; the primary still has room: it serves rather than wait.
    held.push(m.get().await.expect("get"));
    assert_eq!(in_use(&m), (5, 2));
    // Both full: the checkout waits and times out; neither pool exceeds its maximum.
    let e = m.get().await.expect_err("both pools full");
    assert!(e.is_timeout(), "{e}");
    assert!(fo.status().size <= 2 && m.pool().status().size <= 5);
    // held: 4 primary, 2 failover, 1 primary. Return the last primary one and one failover
    // one: the primary is at 4/5 = 80%, between the release point (70%) and the threshold.
    held.pop();
    held.pop();
    assert_eq!(in_use(&m), (4, 1));
    held.push(m.get().await.expect("get"));
    assert_eq!(
        in_use(&m),
        (4, 2),
        "still engaged at 80%: served by the failover pool"
    );
    // Two primary connections back: 2/5 = 40%.
    held.drain(0..2);
    assert_eq!(in_use(&m), (2, 2));
    held.push(m.get().await.expect("get"));
    assert_eq!(
        in_use(&m),
        (3, 2),
        "released below 70%: served by the primary"
    );
    let s = m.failover_stats();
    assert!(
        !s.active && s.activations == 1 && s.active_ms > 0.0,
        "{s:?}"
    );
    let sessions = server.sessions(&app).expect("sessions").len();
    assert!(sessions <= 7, "{sessions} sessions for pools of 5 + 2");
    drop(held);
    let snap = m.metrics();
    assert!(
        snap.pools.contains_key("failover"),
        "{:?}",
        snap.pools.keys()
    );
    m.close(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_failover_target_does_not_stop_the_manager() {
    let (server, db) = shared_db();
    // A port nothing listens on: take one and release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let m = from_vars(&[
        ("DATABASE_URL", server.url(&db)),
        ("DB_POOL_MAX", "2".into()),
        ("DB_POOL_MIN", "1".into()),
        ("DB_ENABLE_FAILOVER", "true".into()),
        (
            "DB_FAILOVER_URL",
            format!("postgres://postgres@127.0.0.1:{port}/{db}"),
        ),
        ("DB_CONNECT_TIMEOUT", "1s".into()),
        ("DB_APPLICATION_NAME", app_name("fo-down")),
    ])
    .await;
    assert!(!m.router().is_up(pgwarden::manager::route::PoolId::Failover));
    let n: i32 = m.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
    m.close(Duration::from_secs(5)).await;
}

/// FAULTS row 17: a primary turned read-only under its pooled connections. The write is
/// refused with 25006 (provably not run), the host's connections are evicted, roles re-checked
/// and the write rerun on the read-write host, within the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_turned_read_only_evicts_and_writes_move() {
    let (primary, standby, db) = primary_with_standby().await;
    blocking({
        let s = Arc::clone(&standby);
        move || s.promote().expect("promote")
    })
    .await;
    let app = app_name("ro-primary");
    let m = from_vars(&[
        ("DATABASE_URL", multi_host_url(&primary, &standby, &db)),
        ("DB_POOL_MAX", "4".into()),
        ("DB_POOL_MIN", "2".into()),
        ("DB_APPLICATION_NAME", app.clone()),
    ])
    .await;
    assert_eq!(
        primary.sessions(&app).unwrap().len(),
        2,
        "prewarmed on the first host"
    );
    m.execute("INSERT INTO ledger VALUES (1)", &[])
        .await
        .unwrap();
    blocking({
        let p = Arc::clone(&primary);
        move || {
            p.set_setting("default_transaction_read_only", "on")
                .unwrap()
        }
    })
    .await;
    let retries = m.metrics().queries.retries;
    m.execute("INSERT INTO ledger VALUES (2)", &[])
        .await
        .expect("rerun on the read-write host");
    assert!(
        m.metrics().queries.retries > retries,
        "the 25006 was retried"
    );
    for id in 3..10_i64 {
        m.execute("INSERT INTO ledger VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    let later: Vec<i64> = (2..10).collect();
    let sql = "SELECT count(*) FROM ledger WHERE id = ANY($1)";
    assert_eq!(count_on(&standby, &db, sql, &later).await, 8);
    assert_eq!(count_on(&primary, &db, sql, &later).await, 0);
    eventually(
        Duration::from_secs(10),
        "old primary's sessions evicted",
        || {
            let (p, a) = (Arc::clone(&primary), app.clone());
            async move { blocking(move || p.sessions(&a).unwrap().is_empty()).await }
        },
    )
    .await;
    m.close(Duration::from_secs(5)).await;
}

/// The writers' books: every acknowledged id with its time, failures, "outcome unknown" ids.
#[derive(Default)]
struct Books {
    acked: Mutex<Vec<(i64, Instant)>>,
    unknown: Mutex<Vec<i64>>,
    failed: AtomicU32,
    duplicates: AtomicU32,
    failed_after_restart: AtomicU32,
}

/// FAULTS row 16 and the old primary back read-only: steady inserts keyed by client ids,
/// fast-stop the primary, promote the standby; writes resume on it without restarting the
/// manager; the old primary restarted read-only takes no write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_to_a_promoted_standby() {
    const WRITERS: i64 = 4;
    const WAIT_BEFORE_PROMOTE: Duration = Duration::from_secs(1);
    let (primary, standby, db) = primary_with_standby().await;
    let app = app_name("switchover");
    let m = from_vars(&[
        ("DATABASE_URL", multi_host_url(&primary, &standby, &db)),
        ("DB_POOL_MAX", "6".into()),
        ("DB_POOL_MIN", "2".into()),
        // As in staging and production: the failover pool on the same (multi-host) target.
        ("DB_ENABLE_FAILOVER", "true".into()),
        ("DB_FAILOVER_POOL_MAX", "3".into()),
        ("DB_CONNECT_TIMEOUT", "1s".into()),
        ("DB_ACQUIRE_TIMEOUT", "2s".into()),
        ("DB_HEALTH_CHECK_INTERVAL", "1s".into()),
        ("DB_APPLICATION_NAME", app.clone()),
    ])
    .await;
    let books = Arc::new(Books::default());
    let stop = Arc::new(AtomicBool::new(false));
    let restarted_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(90);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (m, books, stop, restarted_at) = (
                m.clone(),
                Arc::clone(&books),
                Arc::clone(&stop),
                Arc::clone(&restarted_at),
            );
            tokio::spawn(async move {
                for seq in 0..100_000_i64 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let id = w * 1_000_000 + seq;
                    let sent = Instant::now();
                    match m.execute("INSERT INTO ledger VALUES ($1)", &[&id]).await {
                        Ok(_) => books.acked.lock().unwrap().push((id, Instant::now())),
                        Err(e) if e.outcome_unknown() => books.unknown.lock().unwrap().push(id),
                        Err(e) if e.code() == Some("23505") => {
                            books.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            books.failed.fetch_add(1, Ordering::Relaxed);
                            if restarted_at.lock().unwrap().is_some_and(|t| sent > t) {
                                eprintln!("write failed after the old primary's restart: {e}");
                                books.failed_after_restart.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked_before = books.acked.lock().unwrap().len();
    assert!(acked_before > 0, "writes flow before the fault");

    let stopped_at = Instant::now();
    blocking({
        let p = Arc::clone(&primary);
        move || p.stop(StopMode::Fast).expect("stop")
    })
    .await;
    // Writes acknowledged until here may have been the old primary's last ones.
    let stop_returned = Instant::now();
    tokio::time::sleep(WAIT_BEFORE_PROMOTE).await;
    let promote_started = Instant::now();
    blocking({
        let s = Arc::clone(&standby);
        move || s.promote().expect("promote")
    })
    .await;
    let promoted_in = promote_started.elapsed();
    let waited = promote_started - stopped_at;
    let acked_after = |books: &Books| {
        books
            .acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| *t > stop_returned)
            .count()
    };
    eventually(
        Duration::from_secs(30),
        "writes resume on the promoted standby",
        || {
            let n = acked_after(&books);
            async move { n >= 20 }
        },
    )
    .await;

    // The old primary comes back with read-only sessions: it must take no write.
    {
        let conf = primary.data_dir().join("postgresql.auto.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .expect("postgresql.auto.conf");
        writeln!(f, "default_transaction_read_only = on").unwrap();
    }
    blocking({
        let p = Arc::clone(&primary);
        move || p.start_again().expect("restart the old primary")
    })
    .await;
    *restarted_at.lock().unwrap() = Some(Instant::now());
    // Two probe periods with the old primary up.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    let acked = books.acked.lock().unwrap().clone();
    let unknown = books.unknown.lock().unwrap().clone();
    let last_on_old = acked
        .iter()
        .filter(|(_, t)| *t > stopped_at && *t <= stop_returned)
        .count();
    let first_after = acked
        .iter()
        .filter(|(_, t)| *t > stop_returned)
        .map(|(_, t)| *t)
        .min()
        .expect("a write acknowledged after the stop");
    assert!(
        first_after >= promote_started,
        "no write acknowledged while nothing was writable"
    );
    let gap = first_after - stopped_at - waited;
    let failed = books.failed.load(Ordering::Relaxed);
    println!(
        "switchover: failover gap {:.0} ms (stop to first acknowledged write on the promoted standby \
         {:.0} ms, minus {:.0} ms waited before promoting; pg_ctl promote took {:.0} ms); \
         {} writes acknowledged ({last_on_old} by the old primary while it shut down), \
         {failed} failed, {} outcome unknown",
        gap.as_secs_f64() * 1000.0,
        (first_after - stopped_at).as_secs_f64() * 1000.0,
        waited.as_secs_f64() * 1000.0,
        promoted_in.as_secs_f64() * 1000.0,
        acked.len(),
        unknown.len(),
    );
    if !unknown.is_empty() {
        println!("switchover: outcome unknown ids: {unknown:?}");
    }
    assert_eq!(
        books.duplicates.load(Ordering::Relaxed),
        0,
        "a write ran twice"
    );
    assert_eq!(
        books.failed_after_restart.load(Ordering::Relaxed),
        0,
        "writes kept flowing while the old primary was back read-only"
    );
    let ids: Vec<i64> = acked.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), ids.iter().collect::<HashSet<_>>().len());
    let on_new = count_on(
        &standby,
        &db,
        "SELECT count(DISTINCT id) FROM ledger WHERE id = ANY($1)",
        &ids,
    )
    .await;
    assert_eq!(
        on_new as usize,
        ids.len(),
        "every acknowledged id on the new primary"
    );
    let restarted = restarted_at.lock().unwrap().expect("restarted");
    let late: Vec<i64> = acked
        .iter()
        .filter(|(_, t)| *t > restarted)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        !late.is_empty(),
        "writes acknowledged after the old primary came back"
    );
    let on_old = count_on(
        &primary,
        &db,
        "SELECT count(*) FROM ledger WHERE id = ANY($1)",
        &late,
    )
    .await;
    assert_eq!(on_old, 0, "the old primary took no write");
    let (p, f) = (m.pool().status(), m.failover_pool().unwrap().status());
    assert!(p.size <= 6 && f.size <= 3, "within max: {p} / {f}");
    m.close(Duration::from_secs(5)).await;
    eventually(Duration::from_secs(10), "no session left", || {
        let (p, s, a) = (Arc::clone(&primary), Arc::clone(&standby), app.clone());
        async move {
            blocking(move || {
                p.sessions(&a).unwrap().is_empty() && s.sessions(&a).unwrap().is_empty()
            })
            .await
        }
    })
    .await;
}

/// The primary down, with `DB_FAILOVER_URL` naming another read-write server: writes follow
/// the attempt flow to the failover pool, go there first while the primary is known down, and
/// come back once the probe finds the primary again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_down_writes_move_to_the_failover_server_and_back() {
    let a = Arc::new(PgServer::start().expect("primary"));
    let db_a = a.create_database(None).unwrap();
    a.psql(&db_a, "CREATE TABLE ledger (id bigint PRIMARY KEY)")
        .expect("table");
    // A second read-write server in the same harness slot (one slot per test: no test waits
    // for a second slot while holding one): a replica, promoted at once.
    let b = Arc::new(
        blocking({
            let a = Arc::clone(&a);
            move || {
                let b = a.start_replica().expect("replica");
                b.promote().expect("promote");
                b
            }
        })
        .await,
    );
    let db_b = db_a.clone();
    let m = from_vars(&[
        ("DATABASE_URL", a.url(&db_a)),
        ("DB_ENABLE_FAILOVER", "true".into()),
        ("DB_FAILOVER_URL", b.url(&db_b)),
        ("DB_POOL_MAX", "3".into()),
        ("DB_POOL_MIN", "1".into()),
        ("DB_FAILOVER_POOL_MAX", "2".into()),
        ("DB_CONNECT_TIMEOUT", "1s".into()),
        ("DB_ACQUIRE_TIMEOUT", "1s".into()),
        ("DB_HEALTH_CHECK_INTERVAL", "1s".into()),
        ("DB_APPLICATION_NAME", app_name("primary-down")),
    ])
    .await;
    let insert = |id: i64| {
        let m = m.clone();
        async move { m.execute("INSERT INTO ledger VALUES ($1)", &[&id]).await }
    };
    insert(1).await.expect("on the primary");
    blocking({
        let a = Arc::clone(&a);
        move || a.stop(StopMode::Fast).expect("stop")
    })
    .await;
    let started = Instant::now();
    insert(2).await.expect("retried on the failover pool");
    let first = started.elapsed();
    assert!(
        !m.router().is_up(pgwarden::manager::route::PoolId::Primary),
        "the failed connect marked the primary down"
    );
    let timeouts = m.pool().counters().acquires_timed_out;
    let started = Instant::now();
    for id in 3..6 {
        insert(id).await.expect("straight to the failover pool");
    }
    let next = started.elapsed() / 3;
    println!(
        "primary down: the first write took {} ms (an acquire timeout on the primary, then the \
         failover pool), the next ones {} ms each",
        first.as_millis(),
        next.as_millis()
    );
    assert_eq!(
        m.pool().counters().acquires_timed_out,
        timeouts,
        "once known down, the primary is not tried first"
    );
    blocking({
        let a = Arc::clone(&a);
        move || a.start_again().expect("start")
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the probe finds the primary",
        || {
            let up = m.router().is_up(pgwarden::manager::route::PoolId::Primary);
            async move { up }
        },
    )
    .await;
    insert(6).await.expect("back on the primary");
    let sql = "SELECT count(*) FROM ledger WHERE id = ANY($1)";
    assert_eq!(count_on(&a, &db_a, sql, &[1, 6]).await, 2);
    assert_eq!(count_on(&b, &db_b, sql, &[2, 3, 4, 5]).await, 4);
    assert_eq!(count_on(&a, &db_a, sql, &[2, 3, 4, 5]).await, 0);
    m.close(Duration::from_secs(5)).await;
}

/// `.read_only()` calls may run on a standby; an unmarked call never does. The failover
/// target is a streaming standby; the primary goes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_down_only_read_only_calls_run_on_the_standby() {
    let primary = Arc::new(PgServer::start().expect("primary"));
    let db = primary.create_database(None).expect("db");
    primary
        .psql(
            &db,
            "CREATE TABLE ledger (id bigint PRIMARY KEY); INSERT INTO ledger VALUES (1)",
        )
        .expect("table");
    let standby = Arc::new(
        blocking({
            let p = Arc::clone(&primary);
            move || p.start_replica().expect("replica")
        })
        .await,
    );
    let m = from_vars(&[
        ("DATABASE_URL", primary.url(&db)),
        ("DB_ENABLE_FAILOVER", "true".into()),
        ("DB_FAILOVER_URL", standby.url(&db)),
        ("DB_POOL_MAX", "2".into()),
        ("DB_POOL_MIN", "1".into()),
        ("DB_FAILOVER_POOL_MAX", "2".into()),
        ("DB_CONNECT_TIMEOUT", "1s".into()),
        ("DB_ACQUIRE_TIMEOUT", "1s".into()),
        ("DB_RETRY_BUDGET", "2s".into()),
        ("DB_APPLICATION_NAME", app_name("ro-standby")),
    ])
    .await;
    use pgwarden::manager::route::PoolId;
    assert_eq!(
        m.router().writable(PoolId::Failover),
        Some(false),
        "a standby"
    );
    blocking({
        let p = Arc::clone(&primary);
        move || p.stop(StopMode::Fast).expect("stop")
    })
    .await;
    let n: i64 = m
        .query_one("SELECT count(*) FROM ledger", &[])
        .read_only()
        .await
        .expect("a read on the standby")
        .get(0);
    assert_eq!(n, 1);
    let e = m
        .execute("INSERT INTO ledger VALUES (2)", &[])
        .await
        .expect_err("no read-write server");
    assert_ne!(
        e.code(),
        Some("25006"),
        "the write was never sent to the standby: {e}"
    );
    let e = m
        .query_one("SELECT count(*) FROM ledger", &[])
        .idempotent()
        .await
        .expect_err("idempotent is not read-only");
    assert_ne!(e.code(), Some("25006"), "{e}");
    assert_eq!(
        m.failover_pool().unwrap().counters().acquired(),
        1,
        "only the read-only call used the standby"
    );
    m.close(Duration::from_secs(5)).await;
}
