//! Connections are always clean: never handed out inside a transaction or with a statement in
//! flight, also after dropped guards and dropped futures (FAULTS rows 8, 9, 10).

use std::time::Duration;

use pgwarden::PooledConnection;
use tokio::time::Instant;

use crate::common::*;

/// Checks out a connection and proves it is outside any transaction block (SAVEPOINT fails
/// with 25P01 outside one) and that no sibling session of the pool is busy.
pub(crate) async fn assert_clean_checkout(pool: &pgwarden::PgPool) -> i32 {
    let conn = pool.get().await.unwrap();
    let err = conn
        .client()
        .batch_execute("SAVEPOINT probe")
        .await
        .expect_err("handed out inside a transaction block");
    assert_eq!(err.code().map(|c| c.code()), Some("25P01"), "{err}");
    let row = conn
        .query_one(
            "SELECT pg_backend_pid(), \
             (SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
              AND application_name = current_setting('application_name') AND state <> 'idle')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(1), 0, "a sibling session is busy");
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_dropped_inside_transaction_is_rolled_back() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "droptx", test_opts(1, 0));
    {
        let c = pool.get().await.unwrap();
        c.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    }
    let pid = {
        let mut c = pool.get().await.unwrap();
        let tx = c.transaction().await.unwrap();
        tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
        let pid: i32 = tx
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        std::mem::forget(tx); // not even tokio-postgres's own drop-rollback runs
        pid
    };
    // Same backend (reset, not replaced), outside any transaction, and the insert is gone.
    assert_eq!(assert_clean_checkout(&pool).await, pid);
    let c = pool.get().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    drop(c);
    assert!(pool.counters().resets >= 1);
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_begin_through_the_client_is_rolled_back() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "rawbegin", test_opts(1, 0));
    pool.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    {
        let c = pool.get().await.unwrap();
        c.client()
            .simple_query("BEGIN; INSERT INTO t VALUES (1)")
            .await
            .unwrap();
    }
    assert_clean_checkout(&pool).await;
    {
        // BEGIN as an extended-protocol statement through the tracked methods.
        let c = pool.get().await.unwrap();
        c.execute("BEGIN", &[]).await.unwrap();
        c.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    }
    assert_clean_checkout(&pool).await;
    let n: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_future_mid_query_never_returns_dirty_connection() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "dropmid", test_opts(1, 0));
    let c = pool.get().await.unwrap();
    let slow = c.query("SELECT pg_sleep(30)", &[]);
    // Poll it long enough for the statement to be running on the server.
    assert!(tokio::time::timeout(Duration::from_millis(300), slow)
        .await
        .is_err());
    drop(c);
    // The next user is not stuck behind the abandoned sleep: it was cancelled.
    let started = Instant::now();
    assert_clean_checkout(&pool).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?} behind an abandoned statement",
        started.elapsed()
    );
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_dropped_at_random_await_points_keep_every_invariant() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "randomdrop", test_opts(3, 1));
    pool.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE ledger (id int PRIMARY KEY)")
        .await
        .unwrap();
    // Deterministic pseudo-random cancellation points: 120 operations, each cut off after
    // 0–40 ms, across acquire, query, transaction and commit.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut handles = Vec::new();
    for i in 0..120i32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let cut = Duration::from_micros(seed % 40_000);
        let kind = seed % 4;
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            let op = async {
                let mut c = pool.get().await?;
                match kind {
                    0 => {
                        c.query("SELECT pg_sleep(0.01)", &[]).await.ok();
                    }
                    1 => {
                        let tx = c.transaction().await.expect("begin");
                        tx.execute("INSERT INTO ledger VALUES ($1)", &[&i])
                            .await
                            .ok();
                        tx.query("SELECT pg_sleep(0.005)", &[]).await.ok();
                        tx.commit().await.ok();
                    }
                    2 => {
                        c.execute(
                            "INSERT INTO ledger VALUES ($1) ON CONFLICT DO NOTHING",
                            &[&(i + 1000)],
                        )
                        .await
                        .ok();
                    }
                    _ => {
                        PooledConnection::discard(c);
                    }
                }
                Ok::<_, pgwarden::Error>(())
            };
            let _ = tokio::time::timeout(cut, op).await;
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    // Everything heals: five clean checkouts in a row.
    for _ in 0..5 {
        assert_clean_checkout(&pool).await;
    }
    assert_invariants(&server, &pool, &app).await;
}
