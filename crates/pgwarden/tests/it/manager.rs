//! The query path against real PostgreSQL: FAULTS rows 2, 7, 14, 19 and 20, the statement
//! cache, the ledger (no write lost or run twice while backends are killed), and the brief's
//! checks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden::{Error, ManagerOptions, Pool, PoolManager, PoolOptions};
use pgwarden_testdb::PgServer;
use tokio::time::Instant;

use crate::common::*;
use crate::proxy::CountingProxy;

fn mopts() -> ManagerOptions {
    ManagerOptions::default()
}

/// A manager on one connection through a counting proxy, with the given statement cache size.
async fn proxied_manager(
    server: &PgServer,
    db: &str,
    tag: &str,
    cache_size: usize,
) -> (PoolManager, CountingProxy, String) {
    let proxy = CountingProxy::start(server.port()).await;
    let cfg: tokio_postgres::Config = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        proxy.port
    )
    .parse()
    .unwrap();
    let app = app_name(tag);
    let mut co = pgwarden::ConnectOptions::default();
    co.application_name = Some(app.clone());
    co.statement_cache_size = cache_size;
    let connector =
        pgwarden::PgConnector::new(&cfg, pgwarden::config::SslMode::Disable, None, co).unwrap();
    let m = PoolManager::new(Pool::new(connector, test_opts(1, 0)), mopts());
    (m, proxy, app)
}

fn manager(
    server: &PgServer,
    db: &str,
    tag: &str,
    pool_opts: PoolOptions,
    mo: ManagerOptions,
) -> (PoolManager, String) {
    let (pool, app) = pool(server, db, tag, pool_opts);
    (PoolManager::new(pool, mo), app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameterized_and_mixed_queries_and_status() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "mixed", test_opts(5, 1), mopts());
    m.execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, ok bool)",
        &[],
    )
    .await
    .unwrap();
    for i in 0..20i32 {
        let n = m
            .execute(
                "INSERT INTO items VALUES ($1, $2, $3)",
                &[&i, &format!("item {i}"), &(i % 2 == 0)],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    let n = m
        .execute("UPDATE items SET ok = NOT ok WHERE id < $1", &[&5i32])
        .await
        .unwrap();
    assert_eq!(n, 5);
    assert_eq!(
        m.execute("DELETE FROM items WHERE id >= $1", &[&15i32])
            .await
            .unwrap(),
        5
    );
    let rows = m
        .query("SELECT id, name FROM items WHERE ok ORDER BY id", &[])
        .idempotent()
        .await
        .unwrap();
    // Even ids 0..15 started true; ids 0..5 were flipped: 1 and 3 gained, 0, 2, 4 lost.
    assert_eq!(rows.len(), 7);
    let one = m
        .query_one("SELECT name FROM items WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(one.get::<_, String>(0), "item 3");
    assert!(m
        .query_opt("SELECT 1 FROM items WHERE id = $1", &[&99i32])
        .await
        .unwrap()
        .is_none());
    // A wrong statement: a clear, final error naming the server's reason and SQLSTATE.
    let err = m.query("SELEC 1", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some("42601"));
    assert!(!err.is_retryable() && !err.outcome_unknown());
    assert!(err.to_string().contains("syntax error"), "{err}");
    let snap = m.metrics();
    assert_eq!(snap.queries.total, 27);
    assert_eq!(snap.queries.failed, 1);
    assert!(snap.statement_cache.hits > 0);
    let json = serde_json::to_value(&snap).unwrap();
    for key in ["pools", "queries", "connections", "statement_cache"] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert!(json["queries"]["success_rate_pct"].as_f64().unwrap() > 96.0);
    assert!(json["pools"]["primary"]["utilization_pct"].is_number());
    let status = m.status();
    assert!(status.starts_with("Pool Health: "), "{status}");
    assert!(status.contains("\n   Active: "), "{status}");
    assert_invariants(&server, m.pool(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_1000_calls_succeed_above_99_9_percent() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "sustained", test_opts(10, 2), mopts());
    let results = futures_util::future::join_all((0..1000i64).map(|i| {
        let m = m.clone();
        async move {
            m.query_one("SELECT $1::int8 + 1", &[&i])
                .idempotent()
                .await
                .map(|r| r.get::<_, i64>(0) == i + 1)
        }
    }))
    .await;
    let ok = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert!(ok * 1000 > 999 * 1000, "{ok}/1000");
    let q = m.metrics().queries;
    assert_eq!(q.total, 1000);
    assert!(q.success_rate_pct > 99.9);
    assert_invariants(&server, m.pool(), &app).await;
}

/// A transaction body runs as a whole; an error rolls everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_or_roll_back_as_a_whole() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "tx", test_opts(3, 0), mopts());
    m.execute(
        "CREATE TABLE acct (id int PRIMARY KEY, bal int CHECK (bal >= 0))",
        &[],
    )
    .await
    .unwrap();
    m.execute("INSERT INTO acct VALUES (1, 100), (2, 0)", &[])
        .await
        .unwrap();
    let moved = m
        .transaction(|tx| async move {
            tx.execute("UPDATE acct SET bal = bal - 30 WHERE id = 1", &[])
                .await?;
            tx.execute("UPDATE acct SET bal = bal + 30 WHERE id = 2", &[])
                .await
        })
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let err = m
        .transaction(|tx| async move {
            tx.execute("UPDATE acct SET bal = bal + 500 WHERE id = 2", &[])
                .await?;
            tx.execute("UPDATE acct SET bal = bal - 500 WHERE id = 1", &[])
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("23514"));
    // A body that swallows a failed statement does not commit half of its work.
    let err = m
        .transaction(|tx| async move {
            tx.execute("UPDATE acct SET bal = bal + 1 WHERE id = 2", &[])
                .await?;
            let _ = tx
                .execute("UPDATE acct SET bal = -1 WHERE id = 1", &[])
                .await;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RolledBack { .. }), "{err}");
    let rows = m
        .query("SELECT bal FROM acct ORDER BY id", &[])
        .await
        .unwrap();
    let bal: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(bal, vec![70, 30]);
    assert_invariants(&server, m.pool(), &app).await;
}

/// Row 2: a backend killed mid-statement. Idempotent calls are retried and succeed; other
/// calls surface "outcome unknown" and are not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_query_retries_only_idempotent_calls() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "killmid", test_opts(2, 0), mopts());
    m.execute("CREATE TABLE t (id int)", &[]).await.unwrap();
    let kill_soon = |server: Arc<PgServer>, app: String| {
        tokio::spawn(async move {
            wait_until_running(&server, &app, "pg_sleep").await;
            let (s, a) = (Arc::clone(&server), app.clone());
            blocking(move || s.terminate_backends(&a)).await.unwrap()
        })
    };
    let killer = kill_soon(Arc::clone(&server), app.clone());
    let v: i32 = m
        .query_one("SELECT 7 FROM pg_sleep(1)", &[])
        .idempotent()
        .await
        .expect("retried after the kill")
        .get(0);
    assert_eq!(v, 7);
    assert!(killer.await.unwrap() >= 1);
    assert!(m.metrics().queries.retries >= 1);

    let killer = kill_soon(Arc::clone(&server), app.clone());
    let err = m
        .execute("INSERT INTO t SELECT 1 FROM pg_sleep(1)", &[])
        .await
        .unwrap_err();
    killer.await.unwrap();
    assert!(err.outcome_unknown(), "{err}");
    assert!(
        err.to_string().contains("may or may not have committed"),
        "{err}"
    );
    assert_eq!(m.metrics().queries.outcome_unknown, 1);
    // It was not run again: the row is not there (the kill landed before the commit).
    let n: i64 = m
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert_invariants(&server, m.pool(), &app).await;
}

/// Row 7: pg_sleep(10) under a 300 ms timeout: a prompt timeout error, the statement cancelled
/// on the server, and the connection reused because the statement provably ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_on_the_server_and_reuses_the_connection() {
    let (server, db) = shared_db();
    let mut mo = mopts();
    mo.query_timeout = Duration::from_millis(300);
    let (m, app) = manager(&server, &db, "qtimeout", test_opts(1, 0), mo);
    let pid: i32 = m
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let started = Instant::now();
    let err = m.query("SELECT pg_sleep(10)", &[]).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        matches!(
            err,
            Error::QueryTimeout {
                ended: true,
                unknown: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("cancelled on the server"), "{err}");
    // The server is not still sleeping, and the same backend serves the next call at once.
    let (s, a) = (Arc::clone(&server), app.clone());
    let busy = blocking(move || s.sessions(&a).unwrap())
        .await
        .into_iter()
        .filter(|x| x.query.contains("pg_sleep(10)") && x.state == "active")
        .count();
    assert_eq!(busy, 0);
    let started = Instant::now();
    let again: i32 = m
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, pid, "connection reused after a proven cancel");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_invariants(&server, m.pool(), &app).await;
}

/// Row 14 at the query level: while `max_connections` is full the call waits and retries with
/// backoff, and succeeds inside its budget once a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_server_is_waited_out_within_the_budget() {
    let server = Arc::new(
        PgServer::builder()
            .max_connections(5)
            .setting("superuser_reserved_connections", "0")
            .start()
            .unwrap(),
    );
    let mut hogs = Vec::new();
    while let Ok((client, conn)) = server
        .pg_config("postgres")
        .connect(tokio_postgres::NoTls)
        .await
    {
        tokio::spawn(conn);
        hogs.push(client);
        assert!(hogs.len() <= 5);
    }
    let mut po = test_opts(2, 0);
    po.acquire_timeout = Duration::from_secs(1);
    let (m, app) = manager(&server, "postgres", "full53300", po, mopts());
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(hogs.pop());
        hogs
    });
    let started = Instant::now();
    let v: i32 = m
        .query_one("SELECT 1", &[])
        .await
        .expect("succeeds once a slot frees")
        .get(0);
    assert_eq!(v, 1);
    assert!(started.elapsed() < Duration::from_secs(7));
    assert!(
        m.metrics().queries.retries >= 1,
        "acquire timeouts were retried"
    );
    drop(releaser.await.unwrap());
    assert_invariants(&server, m.pool(), &app).await;
}

/// Row 19: serialization failure (write skew) and deadlock: the whole body reruns, never only
/// the last statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_failures_and_deadlocks_rerun_the_whole_body() {
    let (server, db) = shared_db();
    server
        .psql(
            "postgres",
            &format!("ALTER DATABASE \"{db}\" SET deadlock_timeout = '100ms'"),
        )
        .unwrap();
    let (m, app) = manager(&server, &db, "rerun", test_opts(4, 0), mopts());
    m.execute(
        "CREATE TABLE oncall (id int PRIMARY KEY, on_call bool)",
        &[],
    )
    .await
    .unwrap();
    m.execute("INSERT INTO oncall VALUES (1, true), (2, true)", &[])
        .await
        .unwrap();
    // Write skew: each doctor goes off call if the other is still on call.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let runs = Arc::new(AtomicU32::new(0));
    let doctor = |id: i32| {
        let (m, barrier, runs) = (m.clone(), Arc::clone(&barrier), Arc::clone(&runs));
        tokio::spawn(async move {
            let first = Arc::new(AtomicBool::new(true));
            m.transaction(move |tx| {
                let (barrier, runs, first) =
                    (Arc::clone(&barrier), Arc::clone(&runs), Arc::clone(&first));
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tx.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &[])
                        .await?;
                    let n: i64 = tx
                        .query_one("SELECT count(*) FROM oncall WHERE on_call", &[])
                        .await?
                        .get(0);
                    if first.swap(false, Ordering::SeqCst) {
                        barrier.wait().await;
                    }
                    if n >= 2 {
                        tx.execute("UPDATE oncall SET on_call = false WHERE id = $1", &[&id])
                            .await?;
                    }
                    Ok(n)
                }
            })
            .await
        })
    };
    let (a, b) = (doctor(1), doctor(2));
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert!(runs.load(Ordering::SeqCst) >= 3, "one body reran whole");
    assert_eq!(
        (a.min(b), a.max(b)),
        (1, 2),
        "the rerun saw the other's commit"
    );
    let on: i64 = m
        .query_one("SELECT count(*) FROM oncall WHERE on_call", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on, 1, "never both off call");

    // Deadlock: opposite lock order; one is chosen as victim and its body reruns.
    m.execute("CREATE TABLE pair (id int PRIMARY KEY, v int)", &[])
        .await
        .unwrap();
    m.execute("INSERT INTO pair VALUES (1, 0), (2, 0)", &[])
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let runs = Arc::new(AtomicU32::new(0));
    let locker = |first_id: i32, second_id: i32| {
        let (m, barrier, runs) = (m.clone(), Arc::clone(&barrier), Arc::clone(&runs));
        tokio::spawn(async move {
            let first = Arc::new(AtomicBool::new(true));
            m.transaction(move |tx| {
                let (barrier, runs, first) =
                    (Arc::clone(&barrier), Arc::clone(&runs), Arc::clone(&first));
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tx.execute("UPDATE pair SET v = v + 1 WHERE id = $1", &[&first_id])
                        .await?;
                    if first.swap(false, Ordering::SeqCst) {
                        barrier.wait().await;
                    }
                    tx.execute("UPDATE pair SET v = v + 1 WHERE id = $1", &[&second_id])
                        .await
                }
            })
            .await
        })
    };
    let (a, b) = (locker(1, 2), locker(2, 1));
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert!(runs.load(Ordering::SeqCst) >= 3);
    let total: i64 = m
        .query_one("SELECT sum(v)::int8 FROM pair", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 4, "each body's two updates committed exactly once");
    assert_invariants(&server, m.pool(), &app).await;
}

/// Row 20: a schema change under a cached statement: 0A000 drops that statement and the call
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_change_under_a_cached_statement_is_healed() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "schema", test_opts(1, 0), mopts());
    m.execute("CREATE TABLE s (a int)", &[]).await.unwrap();
    m.execute("INSERT INTO s VALUES (1)", &[]).await.unwrap();
    assert_eq!(m.query("SELECT * FROM s", &[]).await.unwrap()[0].len(), 1);
    m.execute("ALTER TABLE s ADD COLUMN b int DEFAULT 2", &[])
        .await
        .unwrap();
    let rows = m.query("SELECT * FROM s", &[]).await.expect("re-prepared");
    assert_eq!(rows[0].len(), 2);
    assert_eq!(rows[0].get::<_, i32>(1), 2);
    assert_eq!(m.metrics().queries.failed, 0);
    assert_invariants(&server, m.pool(), &app).await;
}

/// The statement cache stays bounded under 5,000 distinct statements and the server agrees;
/// a cached call makes a single round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_cache_is_bounded_and_saves_a_round_trip() {
    let (server, db) = shared_db();
    let (m, proxy, app) = proxied_manager(&server, &db, "cache", 100).await;
    m.query_one("SELECT 1", &[]).await.unwrap();
    for i in 0..5000 {
        let sql = format!("SELECT $1::int4 + {i}");
        let v: i32 = m.query_one(&sql, &[&1i32]).await.unwrap().get(0);
        assert_eq!(v, i + 1);
    }
    let conn = m.get().await.unwrap();
    assert!(conn.cached_statements() <= 100);
    let on_server: i64 = conn
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_server as usize, conn.cached_statements());
    drop(conn);
    let cache = m.metrics().statement_cache;
    assert!(cache.evictions >= 4900, "{cache:?}");

    // Round trips: a new statement prepares, then executes (2 ReadyForQuery) — plus, the cache
    // being full, the evicted statement's Close (its own Sync, pipelined: nobody waits for
    // it). A cached statement only executes (1).
    let before = proxy.round_trips();
    m.query_one("SELECT 42 + $1::int4", &[&0i32]).await.unwrap();
    let uncached = proxy.round_trips() - before;
    let before = proxy.round_trips();
    m.query_one("SELECT 42 + $1::int4", &[&0i32]).await.unwrap();
    let cached = proxy.round_trips() - before;
    assert_eq!((uncached, cached), (3, 1));
    let (s, a) = (Arc::clone(&server), app.clone());
    drop(m);
    // The pool's sessions go away with it (no leak through the proxy).
    eventually(Duration::from_secs(5), "sessions closed", || {
        let (s, a) = (Arc::clone(&s), a.clone());
        async move { blocking(move || s.sessions(&a).unwrap().is_empty()).await }
    })
    .await;
}

/// The ledger: concurrent writes keyed by client-generated ids while backends are killed.
/// Every acknowledged id is present exactly once, every id reported failed is absent, a
/// unique violation (a write attempted twice) never occurs, and "outcome unknown" is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_loses_and_duplicates_nothing_while_backends_are_killed() {
    let (server, db) = shared_db();
    let mut po = test_opts(4, 2);
    po.validation_window = Duration::from_millis(50);
    let (m, app) = manager(&server, &db, "ledger", po, mopts());
    m.execute("CREATE TABLE ledger (id int8 PRIMARY KEY)", &[])
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let (server, app, stop) = (Arc::clone(&server), app.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut kills = 0u64;
            let end = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let (s, a) = (Arc::clone(&server), app.clone());
                kills += blocking(move || s.terminate_backends(&a))
                    .await
                    .unwrap_or(0);
            }
            kills
        })
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let unknown = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..8i64 {
        let (m, acked, failed, unknown) = (
            m.clone(),
            Arc::clone(&acked),
            Arc::clone(&failed),
            Arc::clone(&unknown),
        );
        writers.push(tokio::spawn(async move {
            for i in 0..60i64 {
                let id = w * 1_000_000 + i;
                let r = m
                    .execute("INSERT INTO ledger SELECT $1 FROM pg_sleep(0.005)", &[&id])
                    .await;
                match r {
                    Ok(1) => acked.lock().unwrap().push(id),
                    Ok(n) => panic!("inserted {n} rows"),
                    Err(e) => {
                        assert_ne!(e.code(), Some("23505"), "a write was attempted twice: {e}");
                        if e.outcome_unknown() {
                            unknown.lock().unwrap().push(id);
                        } else {
                            failed.lock().unwrap().push(id);
                        }
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let kills = killer.await.unwrap();
    let present: HashSet<i64> = m
        .query("SELECT id FROM ledger", &[])
        .idempotent()
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (acked, failed, unknown) = (
        acked.lock().unwrap().clone(),
        failed.lock().unwrap().clone(),
        unknown.lock().unwrap().clone(),
    );
    for id in &acked {
        assert!(present.contains(id), "acknowledged id {id} lost");
    }
    for id in &failed {
        assert!(
            !present.contains(id),
            "id {id} reported failed but committed"
        );
    }
    assert_eq!(acked.len() + failed.len() + unknown.len(), 480);
    assert_eq!(m.metrics().queries.outcome_unknown as usize, unknown.len());
    assert!(kills > 0);
    eprintln!(
        "ledger: {} acknowledged, {} failed, {} outcome unknown, {kills} backends killed",
        acked.len(),
        failed.len(),
        unknown.len()
    );
    assert_invariants(&server, m.pool(), &app).await;
}

/// Slow statements are counted and logged at WARN with their SQL text and duration — never
/// their parameter values.
#[tokio::test(flavor = "current_thread")]
async fn slow_statements_are_logged_without_parameter_values() {
    let capture = LogCapture::start(tracing::Level::WARN);

    let (server, db) = shared_db();
    let mut mo = mopts();
    mo.slow_query_threshold = Duration::from_millis(100);
    let (m, app) = manager(&server, &db, "slow", test_opts(2, 0), mo);
    let secret_param = "card-4111-1111-1111-1111";
    m.query_one(
        "SELECT length($1::text) FROM pg_sleep(0.15)",
        &[&secret_param],
    )
    .await
    .unwrap();
    m.query_one("SELECT length($1::text)", &[&secret_param])
        .await
        .unwrap();
    let q = m.metrics().queries;
    assert_eq!(q.slow, 1);
    assert!(q.slow_per_min > 0.0);
    let log = capture.text();
    assert!(log.contains("slow query"), "{log}");
    assert!(
        log.contains("SELECT length($1::text) FROM pg_sleep(0.15)"),
        "{log}"
    );
    assert!(log.contains("duration_ms"), "{log}");
    assert!(
        !log.contains(secret_param),
        "a parameter value was logged: {log}"
    );
    assert_eq!(log.matches("slow query").count(), 1, "{log}");
    assert_invariants(&server, m.pool(), &app).await;
}

/// Statement cache size 0 (PgBouncer in transaction mode): every statement is one
/// self-contained round trip on the unnamed statement; nothing named is left on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_size_zero_uses_only_unnamed_statements_in_one_round_trip() {
    let (server, db) = shared_db();
    let (m, proxy, _app) = proxied_manager(&server, &db, "nocache", 0).await;
    m.execute(
        "CREATE TABLE typed (i int4, b int8, t text, f bool, d float8, n int4, a int4[])",
        &[],
    )
    .await
    .unwrap();
    let before = proxy.round_trips();
    let none: Option<i32> = None;
    let n = m
        .execute(
            "INSERT INTO typed VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &1i32,
                &2i64,
                &"three",
                &true,
                &4.5f64,
                &none,
                &vec![5i32, 6],
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let row = m
        .query_one(
            "SELECT i, b, t, f, d, n, a FROM typed WHERE t = $1",
            &[&"three"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(1), 2);
    assert_eq!(row.get::<_, Option<i32>>(5), None);
    assert_eq!(row.get::<_, Vec<i32>>(6), vec![5, 6]);
    assert_eq!(
        proxy.round_trips() - before,
        2,
        "one round trip per statement"
    );
    // Transactions too, and nothing named is ever left behind.
    m.transaction(|tx| async move {
        tx.execute("UPDATE typed SET b = b + $1", &[&1i64]).await?;
        tx.query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .await
    })
    .await
    .map(|r| assert_eq!(r.get::<_, i64>(0), 0))
    .unwrap();
    let c = m.get().await.unwrap();
    let named: i64 = c
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(named, 0);
    assert_eq!(m.metrics().statement_cache.hits, 0);
}

/// A serialization failure is retried for a plain statement (it rolled back whole) but not for
/// `CALL`: a procedure may have committed part of its work first. An ERROR (not FATAL) with a
/// connection-class SQLSTATE ended only the statement: a plain failure, not "outcome unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procedures_are_not_retried_and_statement_errors_are_not_lost_sessions() {
    let (server, db) = shared_db();
    let mut mo = mopts();
    mo.retry_attempts = 2;
    let (m, app) = manager(&server, &db, "proc", test_opts(2, 0), mo);
    m.execute("CREATE TABLE pc (v int)", &[]).await.unwrap();
    m.execute(
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN INSERT INTO pc VALUES (1); COMMIT; \
         RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
        &[],
    )
    .await
    .unwrap();
    m.execute(
        "CREATE FUNCTION f(code text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN \
         RAISE EXCEPTION 'raised' USING ERRCODE = code; END $$",
        &[],
    )
    .await
    .unwrap();

    let before = m.metrics().queries.retries;
    let err = m.execute("CALL p()", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some("40001"), "{err}");
    assert_eq!(m.metrics().queries.retries, before, "CALL was retried");
    // The manager's verdict travels with the error, and says why.
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("not retried: a CALL"), "{err}");
    assert_eq!(
        err.db_error().map(|db| db.message()),
        Some("conflict"),
        "{err}"
    );
    let n: i64 = m
        .query_one("SELECT count(*) FROM pc", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the procedure's committed part ran once");

    let before = m.metrics().queries.retries;
    let err = m.query_one("SELECT f('40001')", &[]).await.unwrap_err();
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: 3, .. }),
        "{err}"
    );
    // The last failure is the source; the summary does not repeat it.
    let last = std::error::Error::source(&err).expect("the last failure");
    assert!(last.to_string().contains("40001"), "{last}");
    assert!(!err.to_string().contains("40001"), "{err}");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(m.metrics().queries.retries, before + 2);

    let err = m.query_one("SELECT f('08006')", &[]).await.unwrap_err();
    assert!(matches!(err, Error::Query { .. }), "{err:?}");
    assert!(!err.outcome_unknown());
    assert_invariants(&server, m.pool(), &app).await;
}
