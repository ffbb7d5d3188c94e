//! ../shared/FAULTS.md rows 1, 3, 4, 5, 6, 11–15, 21 and 22 at the pool level.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden::config::SslMode;
use pgwarden::{AcquireError, Error, Pool};
use pgwarden_testdb::{PgServer, StopMode};
use tokio::time::Instant;

use crate::common::*;

/// Row 1: every idle backend terminated; the next checkouts get live connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_killed_are_replaced_without_errors() {
    let (server, db) = shared_db();
    let mut o = test_opts(4, 4);
    // Ping every reuse: the dead connections are caught even before is_closed() turns.
    o.validation_window = Duration::ZERO;
    let (pool, app) = pool(&server, &db, "idlekill", o);
    pool.prewarm().await.unwrap();
    let (srv, a) = (Arc::clone(&server), app.clone());
    let killed = blocking(move || srv.terminate_backends(&a)).await.unwrap();
    assert_eq!(killed, 4);
    for _ in 0..20 {
        let c = pool.get().await.expect("a live connection");
        c.query_one("SELECT 1", &[])
            .await
            .expect("query on a live connection");
    }
    let k = pool.counters();
    assert!(k.closed.broken + k.closed.failed_validation >= 4, "{k:?}");
    assert_invariants(&server, &pool, &app).await;
}

/// Row 1 without pings: is_closed() catches connections the server closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_killed_are_noticed_by_is_closed() {
    let (server, db) = shared_db();
    let mut o = test_opts(2, 2);
    o.validation_window = Duration::from_secs(3600);
    let (pool, app) = pool(&server, &db, "idlekill2", o);
    pool.prewarm().await.unwrap();
    let (srv, a) = (Arc::clone(&server), app.clone());
    blocking(move || srv.terminate_backends(&a)).await.unwrap();
    // The client notices the closed socket shortly after; wait for it, bounded.
    eventually(Duration::from_secs(5), "sessions gone", || {
        let (srv, a) = (Arc::clone(&server), app.clone());
        async move { blocking(move || srv.sessions(&a).unwrap().is_empty()).await }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let c = pool.get().await.unwrap();
        c.query_one("SELECT 1", &[]).await.expect("live");
    }
    assert_invariants(&server, &pool, &app).await;
}

/// Row 3: `pg_ctl restart -m fast` with 50 tasks running: only in-flight work fails, and the
/// service resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_load_fails_only_in_flight_work() {
    let server = Arc::new(PgServer::start().unwrap());
    let (pool, app) = pool(&server, "postgres", "restart", test_opts(10, 2));
    pool.prewarm().await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok_after = Arc::new(AtomicU32::new(0));
    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (pool, stop, ok_after, restarted) = (
            pool.clone(),
            Arc::clone(&stop),
            Arc::clone(&ok_after),
            Arc::clone(&restarted),
        );
        tasks.push(tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                if let Ok(c) = pool.get().await {
                    if c.query_one("SELECT 1", &[]).await.is_ok()
                        && restarted.load(Ordering::Relaxed)
                    {
                        ok_after.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let srv = Arc::clone(&server);
    blocking(move || srv.restart(StopMode::Fast)).await.unwrap();
    restarted.store(true, Ordering::Relaxed);
    eventually(Duration::from_secs(15), "service resumes", || async {
        ok_after.load(Ordering::Relaxed) >= 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_invariants(&server, &pool, &app).await;
}

/// Rows 4 and 5: crash (immediate stop), a few seconds down, then recovery. Acquires fail
/// within their deadline with the real cause; connects are rate-limited; the pool recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_and_crash_recovery_back_off_and_heal() {
    let server = Arc::new(PgServer::start().unwrap());
    let mut o = test_opts(5, 2);
    o.acquire_timeout = Duration::from_millis(1500);
    let (pool, app) = pool(&server, "postgres", "outage", o);
    pool.prewarm().await.unwrap();
    let srv = Arc::clone(&server);
    blocking(move || srv.stop(StopMode::Immediate))
        .await
        .unwrap();
    let failures_before = pool.counters().connect_failures;
    let started = Instant::now();
    let err = loop {
        // Idle connections are dead; the pool finds out and then cannot connect.
        match pool.get().await {
            Ok(c) => {
                let _ = c.query_one("SELECT 1", &[]).await;
            }
            Err(e) => break e,
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    };
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(matches!(err, AcquireError::TimedOut { .. }), "{text}");
    assert!(text.contains("last connect error"), "{text}");
    assert!(
        text.to_lowercase().contains("refused") || text.contains("No such file"),
        "{text}"
    );
    // Stay down 3 s with callers pushing: connects stay rate-limited.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let _ = pool.get().await;
    }
    let attempts = pool.counters().connect_failures - failures_before;
    assert!(
        attempts <= 30,
        "{attempts} connect attempts in ~4.5 s of outage"
    );
    // Crash recovery: up again (possibly 57P03 while recovering); the pool heals by itself.
    let srv = Arc::clone(&server);
    blocking(move || srv.start_again()).await.unwrap();
    eventually(Duration::from_secs(15), "pool recovers", || async {
        match pool.get().await {
            Ok(c) => c.query_one("SELECT 1", &[]).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert_invariants(&server, &pool, &app).await;
}

/// Row 6: a slow login (`pre_auth_delay`) on the first host: the connect timeout applies per
/// host, then the next host is tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_login_times_out_per_host_then_next_host_serves() {
    let slow = Arc::new(
        PgServer::builder()
            .setting("pre_auth_delay", "3")
            .start()
            .unwrap(),
    );
    let (good, db) = shared_db();
    let cfg: tokio_postgres::Config = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname={db}",
        slow.port(),
        good.port()
    )
    .parse()
    .unwrap();
    let app = app_name("slowlogin");
    let mut co = pgwarden::ConnectOptions::default();
    co.application_name = Some(app.clone());
    co.connect_timeout = Duration::from_millis(500);
    let connector = pgwarden::PgConnector::new(&cfg, SslMode::Disable, None, co).unwrap();
    let mut o = test_opts(2, 0);
    o.connect_timeout = Duration::from_millis(500);
    let pool = Pool::new(connector, o);
    let started = Instant::now();
    let c = pool.get().await.expect("second host serves");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    let port: i32 = c
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, i32::from(good.port()));
    drop(c);
    assert_invariants(&good, &pool, &app).await;
}

/// Row 11: 200 tasks on a pool of 1, plus 50 acquires polled once and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_cancel_storm_has_no_lost_wakeup() {
    let (server, db) = shared_db();
    let mut o = test_opts(1, 0);
    o.acquire_timeout = Duration::from_secs(60);
    let (pool, app) = pool(&server, &db, "storm", o);
    let served = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (pool, served) = (pool.clone(), Arc::clone(&served));
        tasks.push(tokio::spawn(async move {
            let c = pool.get().await.unwrap();
            c.query_one("SELECT 1", &[]).await.unwrap();
            served.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for _ in 0..50 {
        let _ = futures_util::FutureExt::now_or_never(pool.get());
        tokio::task::yield_now().await;
    }
    let all = futures_util::future::join_all(tasks);
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("no deadlock");
    assert_eq!(served.load(Ordering::Relaxed), 200);
    assert_invariants(&server, &pool, &app).await;
    tokio::time::timeout(Duration::from_secs(5), pool.close(Duration::from_secs(2)))
        .await
        .expect("close completes");
}

/// Row 12: hold 1, ask for a second with max 1: an acquire-timeout error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_acquire_times_out() {
    let (server, db) = shared_db();
    let mut o = test_opts(1, 0);
    o.acquire_timeout = Duration::from_millis(300);
    let (pool, app) = pool(&server, &db, "nested", o);
    let held = pool.get().await.unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(err, AcquireError::TimedOut { .. }));
    assert!(err.to_string().contains("in use 1"), "{err}");
    drop(held);
    assert_invariants(&server, &pool, &app).await;
}

/// Row 13: 100 tasks, max 5, 200 ms holds: served in arrival order, bounded wait. (One
/// runtime thread, so the order tasks record is the order the pool handed out connections.)
#[tokio::test(flavor = "current_thread")]
async fn waiters_are_served_fairly_in_order() {
    let (server, db) = shared_db();
    let mut o = test_opts(5, 5);
    o.acquire_timeout = Duration::from_secs(30);
    let (pool, app) = pool(&server, &db, "fair", o);
    pool.prewarm().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let asked_count = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..100usize {
        let (pool, order, count) = (pool.clone(), Arc::clone(&order), Arc::clone(&asked_count));
        tasks.push(tokio::spawn(async move {
            let asked = Instant::now();
            // The count and the place in the queue are taken in the same poll.
            count.fetch_add(1, Ordering::SeqCst);
            let c = pool.get().await.unwrap();
            order.lock().unwrap().push(i);
            let waited = asked.elapsed();
            c.query_one("SELECT pg_sleep(0.2)", &[]).await.unwrap();
            waited
        }));
        // Unambiguous arrival order: the next task asks only after this one queued.
        let end = Instant::now() + Duration::from_secs(5);
        while asked_count.load(Ordering::SeqCst) as usize <= i {
            assert!(Instant::now() < end, "task {i} never asked");
            tokio::task::yield_now().await;
        }
    }
    let mut max_wait = Duration::ZERO;
    for t in tasks {
        max_wait = max_wait.max(t.await.unwrap());
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order, (0..100).collect::<Vec<_>>(), "served out of order");
    // 100 holds of 200 ms on 5 connections: the last waits ~3.8 s; bounded well below 30 s.
    assert!(max_wait < Duration::from_secs(15), "{max_wait:?}");
    assert_invariants(&server, &pool, &app).await;
}

/// Row 14: `max_connections` full: 53300 is transient, retried with backoff, and the pool
/// connects once a slot frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_max_connections_is_retried_until_a_slot_frees() {
    let server = Arc::new(
        PgServer::builder()
            .max_connections(6)
            .setting("superuser_reserved_connections", "0")
            .start()
            .unwrap(),
    );
    let mut hogs = Vec::new();
    loop {
        match server
            .pg_config("postgres")
            .connect(tokio_postgres::NoTls)
            .await
        {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                hogs.push(client);
            }
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}");
                break;
            }
        }
        assert!(hogs.len() <= 6);
    }
    let (pool, app) = pool(&server, "postgres", "full", test_opts(2, 0));
    let p = pool.clone();
    let getter = tokio::spawn(async move {
        let c = p.get().await?;
        c.query_one("SELECT 1", &[]).await.unwrap();
        Ok::<_, Error>(())
    });
    eventually(Duration::from_secs(5), "a 53300 seen", || async {
        pool.last_connect_error()
            .is_some_and(|e| e.code() == Some("53300"))
    })
    .await;
    assert!(!pool.last_connect_error().unwrap().is_permanent());
    hogs.pop();
    getter.await.unwrap().expect("connects once a slot is free");
    drop(hogs);
    assert_invariants(&server, &pool, &app).await;
}

/// Row 15: wrong password and unknown database fail fast with a clear message and no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_database_fail_fast_without_secrets() {
    let (server, db) = shared_db();
    let user = format!("u{}", std::process::id());
    server.create_user(&user, "right-pass-1").unwrap();
    let secret = "Wr0ng-S3cret-Pa55";
    for (password, dbname, expect) in [
        (secret, db.as_str(), "password authentication failed"),
        ("right-pass-1", "no_such_db_here", "does not exist"),
    ] {
        let cfg: tokio_postgres::Config = format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={dbname}",
            server.port()
        )
        .parse()
        .unwrap();
        let app = app_name("badauth");
        let pool = Pool::new(
            connector_for(&cfg, SslMode::Disable, None, &app),
            test_opts(5, 0),
        );
        let started = Instant::now();
        let err = pool.get().await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, AcquireError::Connect(_)), "{err}");
        assert!(!err.is_retryable());
        for text in [err.to_string(), format!("{err:?}"), format!("{pool:?}")] {
            assert!(text.contains(expect) || text.contains("Pool"), "{text}");
            assert!(!text.contains(secret), "secret leaked: {text}");
            assert!(!text.contains("right-pass-1"), "secret leaked: {text}");
        }
        // A second wave fails fast too, without hammering the server.
        let started = Instant::now();
        for _ in 0..10 {
            assert!(pool.get().await.is_err());
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(pool.counters().connect_failures <= 3);
    }
}

/// Row 21: `close()` under load: waiters get "pool closed", no session remains by the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_under_load_leaves_no_session() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "close", test_opts(3, 3));
    pool.prewarm().await.unwrap();
    let mut busy = Vec::new();
    for _ in 0..3 {
        let p = pool.clone();
        busy.push(tokio::spawn(async move {
            let c = p.get().await.unwrap();
            let _ = c.query("SELECT pg_sleep(10)", &[]).await;
            std::future::pending::<()>().await;
        }));
    }
    eventually(Duration::from_secs(5), "all busy", || async {
        pool.status().in_use == 3
    })
    .await;
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let p = pool.clone();
            tokio::spawn(async move { p.get().await.map(drop) })
        })
        .collect();
    eventually(Duration::from_secs(5), "waiters queued", || async {
        pool.status().waiting == 5
    })
    .await;
    let started = Instant::now();
    pool.close(Duration::from_millis(500)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    for w in waiters {
        assert!(matches!(w.await.unwrap(), Err(AcquireError::Closed)));
    }
    assert!(matches!(pool.get().await, Err(AcquireError::Closed)));
    eventually(Duration::from_secs(5), "no session left", || {
        let (srv, a) = (Arc::clone(&server), app.clone());
        async move { blocking(move || srv.sessions(&a).unwrap().is_empty()).await }
    })
    .await;
    for b in busy {
        b.abort();
    }
}

/// Row 22: a short max lifetime with jitter: connections are replaced spread out, and no caller
/// sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_reaping_replaces_connections_without_errors() {
    let (server, db) = shared_db();
    let mut o = test_opts(4, 4);
    o.max_lifetime = Duration::from_secs(2);
    let (pool, app) = pool(&server, &db, "lifetime", o);
    pool.prewarm().await.unwrap();
    let end = Instant::now() + Duration::from_millis(4500);
    let mut n = 0;
    while Instant::now() < end {
        let c = pool.get().await.expect("no caller error");
        c.query_one("SELECT 1", &[]).await.expect("no query error");
        drop(c);
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(n > 100);
    let k = pool.counters();
    assert!(k.closed.lifetime >= 4, "{k:?}");
    assert_eq!(k.closed.broken + k.closed.failed_validation, 0);
    assert_invariants(&server, &pool, &app).await;
}
