//! The brief's functional checks at the pool level: queries, concurrency, reuse, recovery,
//! status.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_sets_application_name() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "simple", test_opts(5, 0));
    let conn = pool.get().await.unwrap();
    let row = conn
        .query_one(
            "SELECT 1::int4 + $1::int4, current_setting('application_name')",
            &[&41i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), app);
    drop(conn);
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_50_100_200_queries_on_a_pool_of_10() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "concurrent", test_opts(10, 2));
    for n in [50usize, 100, 200] {
        let results = join_all((0..n).map(|i| {
            let pool = pool.clone();
            async move {
                let conn = pool.get().await?;
                let row = conn
                    .query_one("SELECT $1::int8 * 2", &[&(i as i64)])
                    .await
                    .expect("query");
                Ok::<i64, pgwarden::Error>(row.get(0))
            }
        }))
        .await;
        let ok: Vec<i64> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(ok, (0..n as i64).map(|i| i * 2).collect::<Vec<_>>());
        assert!(pool.status().size <= 10);
    }
    let k = pool.counters();
    assert_eq!(k.acquired(), 350);
    assert!(k.opened <= 10, "opened {}", k.opened);
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_500_and_1000_queries_reuse_one_backend() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "sequential", test_opts(5, 0));
    let mut pids = HashSet::new();
    for i in 0..1500i64 {
        let conn = pool.get().await.unwrap();
        let row = conn
            .query_one("SELECT pg_backend_pid(), $1::int8", &[&i])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(1), i);
        pids.insert(row.get::<_, i32>(0));
    }
    // One at a time: the most recently used connection serves every call.
    assert_eq!(pids.len(), 1, "pids {pids:?}");
    let k = pool.counters();
    assert_eq!(k.opened, 1);
    assert!(k.reuse_rate_pct() > 99.9);
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_pool_serving_many_queries_keeps_its_backends() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "reuse", test_opts(3, 0));
    let pids: Vec<i32> = join_all((0..300).map(|_| {
        let pool = pool.clone();
        async move {
            let conn = pool.get().await.unwrap();
            conn.query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0)
        }
    }))
    .await;
    let distinct: HashSet<_> = pids.into_iter().collect();
    assert!(distinct.len() <= 3, "{distinct:?}");
    assert!(pool.counters().reuse_rate_pct() >= 99.0);
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_statement_poisons_neither_pool_nor_connection() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "errors", test_opts(1, 0));
    let conn = pool.get().await.unwrap();
    let pid: i32 = conn
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let err = conn
        .query("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
    let err = conn.query_one("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some("22012"));
    // Same connection, still usable.
    let again: i32 = conn
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid, again);
    drop(conn);
    // And the pool hands it out again, unchanged and clean.
    assert_eq!(crate::pool_clean::assert_clean_checkout(&pool).await, pid);
    assert_eq!(pool.counters().closed.broken, 0);
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_size_idle_in_use_and_waiting() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "status", test_opts(2, 1));
    pool.prewarm().await.unwrap();
    let s = pool.status();
    assert_eq!(
        (s.max, s.size, s.idle, s.in_use, s.waiting),
        (2, 1, 1, 0, 0)
    );
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let s = pool.status();
    assert_eq!((s.size, s.in_use), (2, 2));
    assert!((s.utilization_pct() - 100.0).abs() < 1e-9);
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.get().await.map(drop) });
    eventually(Duration::from_secs(5), "one waiter", || async {
        pool.status().waiting == 1
    })
    .await;
    assert_eq!(
        pool.status().to_string(),
        "size 2/2, idle 0, in use 2, waiting 1"
    );
    drop(a);
    waiter.await.unwrap().unwrap();
    drop(b);
    assert_invariants(&server, &pool, &app).await;
}
