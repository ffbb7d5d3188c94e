//! Connections are always clean: never handed out inside a transaction or with a statement in
//! flight, also after dropped guards and dropped futures (FAULTS rows 8, 9, 10).

use std::time::Duration;

use pgwarden::PooledConnection;
use tokio::time::Instant;

use crate::common::*;

/// Checks out a connection and proves it is outside any transaction block (SAVEPOINT fails
/// with 25P01 outside one); returns its backend pid. (Orphaned statements on other sessions
/// are what `assert_invariants` looks for.)
pub(crate) async fn assert_clean_checkout(pool: &pgwarden::PgPool) -> i32 {
    let conn = pool.get().await.unwrap();
    let err = conn
        .client_marking_raw()
        .batch_execute("SAVEPOINT probe")
        .await
        .expect_err("handed out inside a transaction block");
    assert_eq!(err.code().map(|c| c.code()), Some("25P01"), "{err}");
    conn.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
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
        c.client_marking_raw()
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

/// A confirmed cancel lands on the statement running now or on nothing: sent to an idle
/// connection right before the next statement, it never cancels that statement.
/// (tokio-postgres's own `cancel_query` returns before the server has acted, which lets a late
/// cancel hit the next statement.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_cancel_never_hits_the_next_statement() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "cancelrace", test_opts(1, 0));
    let c = pool.get().await.unwrap();
    for i in 0..100 {
        c.cancel_confirmed().await.unwrap();
        let r = c.query_one("SELECT pg_sleep(0.002), 1", &[]).await;
        assert!(
            r.is_ok(),
            "round {i}: a cancel hit the next statement: {r:?}"
        );
    }
    // And it does stop a running statement.
    let slow = c.query("SELECT pg_sleep(30)", &[]);
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.cancel_confirmed().await.unwrap();
    };
    let (r, ()) = tokio::join!(slow, cancel);
    assert_eq!(r.unwrap_err().code().map(|c| c.code()), Some("57014"));
    drop(c);
    assert_invariants(&server, &pool, &app).await;
}

/// Session state: kept by default (documented), discarded with `ResetPolicy::DiscardAll`
/// after raw use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_policy_discard_all_clears_session_state_after_raw_use() {
    let (server, db) = shared_db();
    for (policy, survives) in [
        (pgwarden::ResetPolicy::Rollback, true),
        (pgwarden::ResetPolicy::DiscardAll, false),
    ] {
        let app = app_name("resetpolicy");
        let mut co = pgwarden::ConnectOptions::default();
        co.application_name = Some(app.clone());
        co.reset_policy = policy;
        let connector = pgwarden::PgConnector::new(
            &server.pg_config(&db),
            pgwarden::config::SslMode::Disable,
            None,
            co,
        )
        .unwrap();
        let pool = pgwarden::Pool::new(connector, test_opts(1, 0));
        {
            let c = pool.get().await.unwrap();
            c.client_marking_raw()
                .batch_execute(
                    "SET statement_timeout = '12345ms'; CREATE TEMP TABLE scratch (x int)",
                )
                .await
                .unwrap();
        }
        let c = pool.get().await.unwrap();
        let v: String = c
            .query_one("SELECT current_setting('statement_timeout')", &[])
            .await
            .unwrap()
            .get(0);
        let temp = c
            .query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'scratch'", &[])
            .await
            .unwrap()
            .is_some();
        assert_eq!(
            v == "12345ms",
            survives,
            "{policy:?}: statement_timeout {v}"
        );
        assert_eq!(temp, survives, "{policy:?}: temp table");
        drop(c);
        assert_invariants(&server, &pool, &app).await;
    }
}
