//! Regressions found in review of the query path: each of these failed before its fix.

use std::sync::Arc;
use std::time::Duration;

use pgwarden::{Error, ManagerOptions, PoolManager, PoolOptions};
use pgwarden_testdb::PgServer;
use tokio::time::Instant;

use crate::common::*;

fn manager(
    server: &PgServer,
    db: &str,
    tag: &str,
    po: PoolOptions,
    mo: ManagerOptions,
) -> (PoolManager, String) {
    let (pool, app) = pool(server, db, tag, po);
    (PoolManager::new(pool, mo), app)
}

/// R1a: query_one that meets a second row returns at once (tokio-postgres drops the RowStream
/// before ReadyForQuery). The write commits, yet the call reports a plain, "final" Query error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_query_one_row_count_error_on_a_write_that_committed() {
    let (server, db) = shared_db();
    let (m, _app) = manager(
        &server,
        &db,
        "rg-q1w",
        test_opts(1, 0),
        ManagerOptions::default(),
    );
    m.execute("CREATE TABLE t (id int PRIMARY KEY, n int)", &[])
        .await
        .unwrap();
    m.execute("INSERT INTO t VALUES (1, 0), (2, 0)", &[])
        .await
        .unwrap();
    let err = m
        .query_one("UPDATE t SET n = n + 1 RETURNING id", &[])
        .await
        .unwrap_err();
    let n: i64 = m
        .query_one("SELECT sum(n) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "error: {err} / outcome_unknown={} / rows updated={n}",
        err.outcome_unknown()
    );
    assert!(
        !(matches!(err, Error::Query { .. }) && n > 0),
        "reported `{err}` (a final failure, outcome known) but the UPDATE committed ({n} rows)"
    );
}

/// R1b: the same early return hands the connection back while the statement is still running:
/// in_flight was already decremented, so the pool sees a clean connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_query_one_row_count_error_returns_connection_with_statement_in_flight() {
    let (server, db) = shared_db();
    let (m, app) = manager(
        &server,
        &db,
        "rg-q1f",
        test_opts(1, 0),
        ManagerOptions::default(),
    );
    let err = m
        .query_one(
            "SELECT g, repeat('x', CASE WHEN g = 3 THEN 100000 ELSE 1 END) FROM generate_series(1, 4) g, \
             LATERAL (SELECT pg_sleep(CASE WHEN g = 4 THEN 3 ELSE 0 END)) s",
            &[],
        )
        .await
        .unwrap_err();
    eprintln!("first call: {err}");
    let st = m.pool().status();
    let (s, a) = (Arc::clone(&server), app.clone());
    let active: Vec<_> = blocking(move || s.sessions(&a).unwrap())
        .await
        .into_iter()
        .filter(|x| x.state == "active")
        .map(|x| x.query)
        .collect();
    eprintln!("pool: {st}; server sessions active: {active:?}");
    let t = Instant::now();
    let _ = m.query("SELECT 1", &[]).idempotent().await.unwrap();
    let took = t.elapsed();
    eprintln!("next caller's SELECT 1 took {took:?}");
    assert!(
        active.is_empty() && took < Duration::from_millis(500),
        "connection handed back idle while its statement still ran (active={active:?}, next SELECT 1 took {took:?})"
    );
}

/// R2: a body that abandons a statement (timeout/select inside the body) leaves it in flight;
/// it later fails and aborts the transaction; COMMIT then answers "ROLLBACK" without an error,
/// and transaction() returns Ok although nothing committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_transaction_reports_ok_after_silent_rollback() {
    let (server, db) = shared_db();
    let (m, _app) = manager(
        &server,
        &db,
        "rg-txok",
        test_opts(1, 0),
        ManagerOptions::default(),
    );
    m.execute("CREATE TABLE l (id int PRIMARY KEY)", &[])
        .await
        .unwrap();
    let r = m
        .transaction(|tx| {
            async move {
                tx.execute("INSERT INTO l VALUES (1)", &[]).await?;
                // Abandoned after 100 ms; fails with 23505 at 500 ms, aborting the transaction.
                let _ = tokio::time::timeout(
                    Duration::from_millis(100),
                    tx.execute("INSERT INTO l SELECT 1 FROM pg_sleep(0.5)", &[]),
                )
                .await;
                Ok(())
            }
        })
        .await;
    let n: i64 = m
        .query_one("SELECT count(*) FROM l", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!("transaction() -> {r:?}; rows in l: {n}");
    assert!(
        !(r.is_ok() && n == 0),
        "transaction() returned Ok but nothing was committed"
    );
}

/// R3: statements inside transaction() run without the query timeout (no cancel, no bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_transaction_statements_ignore_query_timeout() {
    let (server, db) = shared_db();
    let mut mo = ManagerOptions::default();
    mo.query_timeout = Duration::from_millis(300);
    let (m, _app) = manager(&server, &db, "rg-txto", test_opts(1, 0), mo);
    let t = Instant::now();
    let r = m
        .transaction(|tx| async move { tx.query("SELECT pg_sleep(3)", &[]).await.map(|_| ()) })
        .await;
    let took = t.elapsed();
    eprintln!("transaction with pg_sleep(3) under a 300 ms query timeout: {r:?} after {took:?}");
    assert!(
        took < Duration::from_millis(2500),
        "no query timeout inside transactions: took {took:?}"
    );
}

/// R4: a Parse (prepare) that never executed was classified "outcome unknown" when the session
/// was lost, though the write never ran. Now it is retried, and runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_session_lost_during_prepare_is_reported_outcome_unknown() {
    let (server, db) = shared_db();
    let (m, app) = manager(
        &server,
        &db,
        "rg-prep",
        test_opts(1, 0),
        ManagerOptions::default(),
    );
    m.execute("CREATE TABLE t (id int)", &[]).await.unwrap();
    let (locker, _lapp) = pool(&server, &db, "rg-locker", test_opts(1, 0));
    let lk = locker.get().await.unwrap();
    lk.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let killer = {
        let (server, app) = (Arc::clone(&server), app.clone());
        tokio::spawn(async move {
            let lk = lk;
            // The INSERT's Parse waits on the lock.
            wait_until_running(&server, &app, "INSERT INTO t").await;
            let (s, a) = (Arc::clone(&server), app.clone());
            let killed = blocking(move || s.terminate_backends(&a)).await.unwrap();
            // Release the lock: the retried INSERT can then run.
            lk.batch_execute("ROLLBACK").await.unwrap();
            killed
        })
    };
    let r = m.execute("INSERT INTO t VALUES (1)", &[]).await;
    assert!(killer.await.unwrap() >= 1);
    let n: i64 = m
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!("execute -> {r:?}; rows: {n}");
    let unknown = r.as_ref().err().is_some_and(|e| e.outcome_unknown());
    assert!(
        !unknown,
        "a statement lost during Parse (never executed) was reported outcome unknown: {r:?}"
    );
    assert_eq!(r.unwrap(), 1, "retried after the lost Parse");
    assert_eq!(n, 1, "ran exactly once");
    assert!(m.metrics().queries.retries >= 1);
}

/// R5: DISCARD ALL / DEALLOCATE ALL through the tracked batch_execute under the default
/// ResetPolicy::Rollback leaves the statement cache pointing at statements the server dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_discard_all_desyncs_statement_cache() {
    let (server, db) = shared_db();
    let (m, _app) = manager(
        &server,
        &db,
        "rg-disc",
        test_opts(1, 0),
        ManagerOptions::default(),
    );
    m.query("SELECT 1", &[]).idempotent().await.unwrap();
    {
        let c = m.get().await.unwrap();
        c.batch_execute("DISCARD ALL").await.unwrap();
    }
    let mut errs = vec![];
    for _ in 0..3 {
        if let Err(e) = m.query("SELECT 1", &[]).idempotent().await {
            errs.push(e.to_string());
        }
    }
    assert!(
        errs.is_empty(),
        "cache out of sync with the server after DISCARD ALL: {errs:?}"
    );
}
