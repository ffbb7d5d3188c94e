//! The pipelined lane against real PostgreSQL: each hazard of sharing a connection between
//! callers (cancel, dropped futures, a lost connection, head-of-line blocking, errors, the
//! statement cache) and what takes the exclusive path.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwarden::{Error, ManagerOptions, PoolManager};
use pgwarden_testdb::PgServer;

use crate::common::*;

/// A manager whose lane has `lane` connections (the pool two more), each bounded at
/// `max_in_flight`, under `query_timeout`; the lane's connections are open on return.
async fn lane_manager(
    server: &PgServer,
    db: &str,
    tag: &str,
    lane: u32,
    max_in_flight: u32,
    query_timeout: Duration,
) -> (PoolManager, String) {
    let mut mo = ManagerOptions::default();
    mo.pipeline_connections = lane;
    mo.pipeline_max_in_flight = max_in_flight;
    mo.query_timeout = query_timeout;
    mo.cancel_grace = Duration::from_millis(100);
    mo.health_check_interval = None;
    let (pool, app) = pool(server, db, tag, test_opts(lane + 2, 0));
    let m = PoolManager::new(pool, mo);
    m.prewarm_lane().await;
    assert_eq!(m.lane_stats().connections, lane, "lane open");
    (m, app)
}

/// A caller whose deadline passes abandons only its own response: no CancelRequest reaches the
/// shared backend, so the statement ahead of it (another caller's) completes, and its own
/// statement runs to its end on the server (pg_stat_activity shows it still running). The
/// server's statement_timeout (set when the connection joined the lane) is the lane's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_timing_out_never_cancels_another_callers_statement() {
    let (server, db) = shared_db();
    let (m, app) = lane_manager(&server, &db, "lanecancel", 1, 16, Duration::from_secs(3)).await;
    let setting: String = m
        .query_one("SELECT current_setting('statement_timeout')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "3s", "statement_timeout set at connect");

    let m2 = m.clone();
    let first = tokio::spawn(async move {
        m2.query_one("SELECT 1 FROM pg_sleep(2)", &[])
            .idempotent()
            .await
    });
    wait_until_running(&server, &app, "SELECT 1 FROM pg_sleep").await;
    // Queued behind the first on the one lane connection: its 3.1 s deadline passes while its
    // statement (2.9 s, started ~2 s late, under the 3 s statement_timeout) still runs.
    let err = m
        .query_one("SELECT 2 FROM pg_sleep(2.9)", &[])
        .idempotent()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::QueryTimeout {
                ended: false,
                unknown: false,
                ..
            }
        ),
        "{err:?}"
    );
    let v: i32 = first
        .await
        .unwrap()
        .expect("the other caller's statement")
        .get(0);
    assert_eq!(v, 1);
    // Not cancelled: the abandoned statement is still running on the same backend.
    wait_until_running(&server, &app, "SELECT 2 FROM pg_sleep").await;
    let v: i32 = m.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(v, 3);

    // Past the query timeout, the server ends the statement (57014): a timeout that provably
    // ended, and the connection stays in the lane.
    let err = m
        .execute("SELECT pg_sleep(10)", &[])
        .await
        .expect_err("statement_timeout");
    assert!(
        matches!(err, Error::QueryTimeout { ended: true, .. }),
        "{err:?}"
    );
    let st = m.lane_stats();
    assert_eq!((st.opened, st.lost, st.connections), (1, 0, 1), "{st:?}");
    let sessions = blocking({
        let (s, a) = (Arc::clone(&server), app.clone());
        move || s.sessions(&a).unwrap()
    })
    .await;
    assert_eq!(sessions.len(), 1, "only the lane connection: {sessions:?}");
    m.close(Duration::from_secs(1)).await;
}

/// Callers that go away mid-statement leave every other caller's response intact: each of
/// many concurrent calls gets its own value back while others are dropped around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_futures_leave_the_others_responses_intact() {
    let (server, db) = shared_db();
    let (m, _app) = lane_manager(&server, &db, "lanedrop", 1, 256, Duration::from_secs(10)).await;
    let mut tasks = Vec::new();
    for i in 0..200i32 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let call = async {
                let sql = if i % 10 == 0 {
                    "SELECT $1::int + 0 FROM pg_sleep(0.05)"
                } else {
                    "SELECT $1::int + 0"
                };
                m.query_one(sql, &[&i]).await
            };
            if i % 3 == 0 {
                // Dropped at once, soon, or not at all, depending on timing.
                match tokio::time::timeout(Duration::from_micros(200 * (i as u64 % 7)), call).await
                {
                    Ok(r) => Some(r.map(|row| row.get::<_, i32>(0))),
                    Err(_) => None,
                }
            } else {
                Some(call.await.map(|row| row.get::<_, i32>(0)))
            }
        }));
    }
    let (mut kept, mut dropped) = (0, 0);
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Some(r) => {
                assert_eq!(r.expect("a kept call succeeds"), i as i32);
                kept += 1;
            }
            None => dropped += 1,
        }
    }
    assert!(kept >= 133, "kept {kept}");
    assert!(dropped > 0, "some calls were dropped mid-flight");
    // A call dropped while its slow statement runs; the next call's answer is its own.
    let slow = tokio::time::timeout(
        Duration::from_millis(100),
        m.execute("SELECT pg_sleep(0.5)", &[]).into_future(),
    )
    .await;
    assert!(slow.is_err());
    let v: i32 = m.query_one("SELECT 42", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
    let st = m.lane_stats();
    assert_eq!((st.lost, st.connections, st.in_flight), (0, 1, 0), "{st:?}");
    m.close(Duration::from_secs(1)).await;
}

/// The ledger: client-keyed inserts through the lane while its backends are killed. Every
/// acknowledged write is there exactly once; an "outcome unknown" one at most once; a failed
/// one not at all. Idempotent inserts are retried on another lane connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_lane_backends_lose_no_acknowledged_write_and_run_none_twice() {
    let (server, db) = shared_db();
    let (m, app) = lane_manager(&server, &db, "laneledger", 2, 64, Duration::from_secs(10)).await;
    m.execute("CREATE TABLE ledger (k int NOT NULL)", &[])
        .exclusive()
        .await
        .unwrap();
    let killer = {
        let (server, app) = (Arc::clone(&server), app.clone());
        tokio::spawn(async move {
            let mut killed = 0;
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let (s, a) = (Arc::clone(&server), app.clone());
                killed += blocking(move || s.terminate_backends(&a)).await.unwrap();
            }
            killed
        })
    };
    let mut workers = Vec::new();
    for w in 0..8i32 {
        let m = m.clone();
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for j in 0..60i32 {
                let k = w * 1000 + j;
                let r = if w % 2 == 0 {
                    m.execute("INSERT INTO ledger SELECT $1 FROM pg_sleep(0.005)", &[&k])
                        .await
                } else {
                    m.execute(
                        "INSERT INTO ledger SELECT $1 FROM pg_sleep(0.005) \
                         WHERE NOT EXISTS (SELECT 1 FROM ledger WHERE k = $1)",
                        &[&k],
                    )
                    .idempotent()
                    .await
                };
                out.push((k, r));
            }
            out
        }));
    }
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await.unwrap());
    }
    assert!(killer.await.unwrap() >= 1, "a backend was killed");
    let rows = m
        .query("SELECT k, count(*)::int FROM ledger GROUP BY k", &[])
        .exclusive()
        .await
        .unwrap();
    let counts: std::collections::HashMap<i32, i32> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let (mut ok, mut unknown, mut failed) = (0, 0, 0);
    for (k, r) in &results {
        let n = counts.get(k).copied().unwrap_or(0);
        match r {
            Ok(_) => {
                ok += 1;
                assert_eq!(n, 1, "acknowledged write {k} present once");
            }
            Err(e) if e.outcome_unknown() => {
                unknown += 1;
                assert!(n <= 1, "write {k} of unknown outcome ran at most once");
                assert!(
                    k / 1000 % 2 == 0,
                    "only non-idempotent writes are unknown: {e}"
                );
            }
            Err(e) => {
                failed += 1;
                assert!(n <= 1, "write {k} ran at most once: {e}");
            }
        }
    }
    assert!(counts.values().all(|&n| n == 1), "no duplicate anywhere");
    let st = m.lane_stats();
    assert!(st.lost >= 1, "a lane connection was lost: {st:?}");
    let retries = m.metrics().queries.retries;
    assert!(
        unknown + retries > 0,
        "the kills met statements in flight: ok {ok}, unknown {unknown}, retries {retries}"
    );
    assert!(ok > 0, "ok {ok}, unknown {unknown}, failed {failed}");
    // The lane healed: every connection back, and it serves.
    eventually(Duration::from_secs(5), "lane reconnected", || async {
        m.query_one("SELECT 1", &[]).await.is_ok() && m.lane_stats().connections == 2
    })
    .await;
    assert!(m.lane_stats().opened >= 3);
    assert!(m.pool().status().size <= m.pool().status().max);
    m.close(Duration::from_secs(1)).await;
}

/// Head-of-line blocking and backpressure: calls go to the connection with the fewest
/// statements in flight, so fast calls pass a slow one on the other connection; past the
/// in-flight bound they wait (stalls, counted) instead of queueing without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_spread_by_in_flight_and_wait_at_the_bound() {
    let (server, db) = shared_db();
    let (m, _app) = lane_manager(&server, &db, "lanehol", 2, 4, Duration::from_secs(10)).await;
    let order = Arc::new(AtomicU32::new(0));
    let slow = {
        let (m, order) = (m.clone(), Arc::clone(&order));
        tokio::spawn(async move {
            m.execute("SELECT pg_sleep(1)", &[]).await.unwrap();
            order.fetch_add(1, Ordering::SeqCst)
        })
    };
    eventually(Duration::from_secs(5), "slow call in flight", || async {
        m.lane_stats().in_flight == 1
    })
    .await;
    let mut fast = Vec::new();
    for i in 0..40i32 {
        let (m, order) = (m.clone(), Arc::clone(&order));
        fast.push(tokio::spawn(async move {
            let v: i32 = m
                .query_one("SELECT $1::int + 0 FROM pg_sleep(0.01)", &[&i])
                .await
                .unwrap()
                .get(0);
            assert_eq!(v, i);
            order.fetch_add(1, Ordering::SeqCst)
        }));
    }
    let mut fast_done = Vec::new();
    for f in fast {
        fast_done.push(f.await.unwrap());
    }
    let slow_done = slow.await.unwrap();
    assert!(
        fast_done.iter().any(|&n| n < slow_done),
        "fast calls passed the slow one on the other connection"
    );
    let st = m.lane_stats();
    assert!(st.stalls >= 1, "40 calls on 2 x 4 slots stall: {st:?}");
    assert_eq!(st.max_in_flight_per_connection, 4);
    assert_eq!((st.in_flight, st.lost), (0, 0), "{st:?}");
    assert!(st.served >= 41);
    m.close(Duration::from_secs(1)).await;
}

/// One caller's failing statement fails only that caller: each statement has its own Sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_callers_error_affects_no_other_caller() {
    let (server, db) = shared_db();
    let (m, _app) = lane_manager(&server, &db, "laneerr", 1, 256, Duration::from_secs(10)).await;
    m.execute("CREATE TABLE u (id int PRIMARY KEY)", &[])
        .exclusive()
        .await
        .unwrap();
    m.execute("INSERT INTO u VALUES (1)", &[]).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..60i32 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                0 => m
                    .query_one("SELECT 1 / ($1::int - $1::int)", &[&i])
                    .await
                    .map(|_| -1),
                1 => m.execute("INSERT INTO u VALUES (1)", &[]).await.map(|_| -1),
                _ => m
                    .query_one("SELECT $1::int + 0", &[&i])
                    .await
                    .map(|r| r.get::<_, i32>(0)),
            }
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        match i % 4 {
            0 => assert_eq!(r.unwrap_err().code(), Some("22012"), "division by zero"),
            1 => assert_eq!(r.unwrap_err().code(), Some("23505"), "unique violation"),
            _ => assert_eq!(r.unwrap(), i as i32),
        }
    }
    let st = m.lane_stats();
    assert_eq!((st.lost, st.connections, st.opened), (0, 1, 1), "{st:?}");
    assert!(st.served >= 61, "{st:?}");
    // The lane's figures in the snapshot, the Prometheus text and the status block.
    let snap = m.metrics();
    assert_eq!(snap.lane, st);
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["lane"]["connections"], 1);
    assert_eq!(json["lane"]["served"], st.served);
    let prom = m.prometheus();
    assert!(prom.contains("pgwarden_lane_connections 1"), "{prom}");
    assert!(
        prom.contains(&format!("pgwarden_lane_statements_total {}", st.served)),
        "{prom}"
    );
    assert!(prom.contains("pgwarden_lane_stalls_total 0"), "{prom}");
    assert!(prom.contains("pgwarden_lane_in_flight 0"), "{prom}");
    let status = m.status();
    assert!(
        status.contains(&format!(
            "Lane: 1/1 connections, 0 in flight, {} served, 0 stalls",
            st.served
        )),
        "{status}"
    );
    m.close(Duration::from_secs(1)).await;
}

/// What the lane does not serve: sniffed session state, `.exclusive()`, a per-call timeout,
/// transactions and `get()`. `.pipelined()` overrides the sniffing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_and_per_call_options_take_the_exclusive_path() {
    let (server, db) = shared_db();
    let (m, _app) = lane_manager(&server, &db, "lanepath", 1, 256, Duration::from_secs(10)).await;
    let served = || m.lane_stats().served;
    let before = served();
    m.execute("SET search_path TO public", &[]).await.unwrap();
    m.execute("CREATE TEMP TABLE tt (x int)", &[])
        .await
        .unwrap();
    m.execute("SELECT 1", &[]).exclusive().await.unwrap();
    m.execute("SELECT 1", &[])
        .timeout(Duration::from_secs(5))
        .await
        .unwrap();
    let conn = m.get().await.unwrap();
    conn.query_one("SELECT 1", &[]).await.unwrap();
    drop(conn);
    assert_eq!(served(), before, "none of these went on the lane");
    m.execute("SELECT 1", &[]).await.unwrap();
    assert_eq!(served(), before + 1);
    // Forced onto the lane: a harmless SET LOCAL outside a transaction (a warning only).
    m.execute("SET LOCAL work_mem = '8MB'", &[])
        .pipelined()
        .await
        .unwrap();
    assert_eq!(served(), before + 2);
    m.close(Duration::from_secs(1)).await;
}

/// With the statement cache off (PgBouncer mode) the lane is off: a session's
/// statement_timeout, its only time limit, does not hold through a transaction pooler. Calls
/// take the exclusive path and the query timeout cancels as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_cache_off_turns_the_lane_off() {
    let (server, db) = shared_db();
    let app = app_name("lanecache0");
    let mut co = pgwarden::ConnectOptions::default();
    co.application_name = Some(app.clone());
    co.statement_cache_size = 0;
    let connector = pgwarden::PgConnector::new(
        &server.pg_config(&db),
        pgwarden::config::SslMode::Disable,
        None,
        co,
    )
    .unwrap();
    let mut mo = ManagerOptions::default();
    mo.pipeline_connections = 2;
    mo.health_check_interval = None;
    let m = PoolManager::new(pgwarden::Pool::new(connector, test_opts(4, 0)), mo);
    m.prewarm_lane().await;
    let v: i32 = m
        .query_one("SELECT $1::int", &[&5i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 5);
    let st = m.lane_stats();
    assert_eq!(
        (st.configured, st.connections, st.served),
        (0, 0, 0),
        "{st:?}"
    );
    assert_invariants(&server, m.pool(), &app).await;
    m.close(Duration::from_secs(1)).await;
}

/// The lane's connections come out of the primary pool: a lane as large as the pool is cut to
/// leave the exclusive path a connection, and the pool never opens more than its maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_stays_within_the_pools_maximum() {
    let (server, db) = shared_db();
    let mut mo = ManagerOptions::default();
    mo.pipeline_connections = 4;
    mo.health_check_interval = None;
    let (pool, _app) = pool(&server, &db, "lanecut", test_opts(2, 0));
    let m = PoolManager::new(pool, mo);
    m.prewarm_lane().await;
    assert_eq!(m.lane_stats().configured, 1);
    let (a, b) = tokio::join!(
        m.query_one("SELECT 1", &[]).into_future(),
        m.transaction(|tx| Box::pin(async move { tx.query_one("SELECT 2", &[]).await }))
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap().get::<_, i32>(0), 2);
    let s = m.pool().status();
    assert_eq!((s.max, s.size), (2, 2), "{s}");
    m.close(Duration::from_secs(1)).await;
}

/// While the lane holds connections, the health checker pings the primary's server through the
/// lane: it opens no connection beyond the lane's just to ask whether the server answers. After
/// the lane's backends are killed, a health check and the next call find out, and the lane is
/// whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_ping_through_the_lane_and_open_nothing_more() {
    let (server, db) = shared_db();
    let (m, app) = lane_manager(&server, &db, "laneping", 2, 16, Duration::from_secs(5)).await;
    for _ in 0..3 {
        let check = m.check_health().await;
        assert!(
            check.pings.iter().all(|p| p.result.is_ok()),
            "{:?}",
            check.pings
        );
    }
    let s = m.pool().status();
    assert_eq!(s.size, 2, "only the lane's connections are open: {s}");
    let sessions = blocking({
        let (server, app) = (Arc::clone(&server), app.clone());
        move || server.sessions(&app).expect("sessions")
    })
    .await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");

    let killed = blocking({
        let (server, app) = (Arc::clone(&server), app.clone());
        move || server.terminate_backends(&app).expect("terminate")
    })
    .await;
    assert_eq!(killed, 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = m.check_health().await; // fails on the lane or pings through the pool: either is true
    let v: i32 = m
        .query_one("SELECT 7", &[])
        .idempotent()
        .await
        .expect("an idempotent call gets through after the kill")
        .get(0);
    assert_eq!(v, 7);
    let whole = tokio::time::timeout(Duration::from_secs(10), async {
        while m.lane_stats().connections < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(whole.is_ok(), "the lane reopened: {:?}", m.lane_stats());
    let check = m.check_health().await;
    assert!(
        check.pings.iter().all(|p| p.result.is_ok()),
        "{:?}",
        check.pings
    );
    let s = m.pool().status();
    assert!(s.size <= s.max, "{s}");
    m.close(Duration::from_secs(1)).await;
    // Nothing leaked: every server session of the manager ends with it.
    eventually(Duration::from_secs(10), "no session left", || {
        let (server, app) = (Arc::clone(&server), app.clone());
        async move {
            blocking(move || server.sessions(&app).expect("sessions"))
                .await
                .is_empty()
        }
    })
    .await;
}
