//! `PgConn::transaction()`: its statements are tracked and bounded like every other, and its
//! commit never reports a transaction done that the server rolled back.

use std::sync::Arc;
use std::time::Duration;

use pgwarden::config::SslMode;
use pgwarden::{Config, ConnectOptions, Error, PgConnector, PgPool, Pool};
use pgwarden_testdb::PgServer;
use tokio::time::Instant;

use crate::common::*;
use crate::pool_clean::assert_clean_checkout;

/// A pool of one whose connections bound transaction statements by `query_timeout`.
fn pool_with_query_timeout(server: &PgServer, db: &str, tag: &str, qt: &str) -> (PgPool, String) {
    let app = app_name(tag);
    // Through the configuration, as `PoolManager::from_config` builds it.
    let config = Config::from_vars([("DB_QUERY_TIMEOUT", qt)]).expect("config");
    let mut co = ConnectOptions::from_config(&config);
    co.application_name = Some(app.clone());
    co.connect_timeout = Duration::from_secs(3);
    let connector = PgConnector::new(&server.pg_config(db), SslMode::Disable, None, co).unwrap();
    (Pool::new(connector, test_opts(1, 0)), app)
}

/// Sessions of `app` that are not idle, as "state: query".
async fn busy_sessions(server: &Arc<PgServer>, app: &str) -> Vec<String> {
    let (s, a) = (Arc::clone(server), app.to_owned());
    blocking(move || s.sessions(&a).unwrap())
        .await
        .into_iter()
        .filter(|x| x.state != "idle")
        .map(|x| format!("{}: {}", x.state, x.query))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_abandoned_inside_a_transaction_is_cancelled_and_the_connection_reused() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "txabandon", test_opts(1, 0));
    let pid: i32 = {
        let mut c = pool.get().await.unwrap();
        let tx = c.transaction().await.unwrap();
        let pid = tx
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let slow = tx.query("SELECT pg_sleep(5)", &[]);
        assert!(tokio::time::timeout(Duration::from_millis(100), slow)
            .await
            .is_err());
        pid
    };
    // The next user gets the same backend (cancelled and rolled back, not killed and
    // replaced), outside any transaction, without waiting behind the sleep.
    let started = Instant::now();
    let next = assert_clean_checkout(&pool).await;
    let took = started.elapsed();
    assert_eq!(next, pid, "the connection was replaced instead of reused");
    assert!(took < Duration::from_secs(1), "next checkout took {took:?}");
    let busy = busy_sessions(&server, &app).await;
    assert!(busy.is_empty(), "the abandoned sleep still runs: {busy:?}");
    assert_eq!(pool.counters().opened, 1, "{:?}", pool.counters());
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_in_a_transaction_past_the_query_timeout_is_cancelled_with_a_timeout_error() {
    let (server, db) = shared_db();
    let (pool, app) = pool_with_query_timeout(&server, &db, "txtimeout", "300ms");
    let mut c = pool.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    let started = Instant::now();
    let r = tx.query("SELECT pg_sleep(5)", &[]).await;
    let took = started.elapsed();
    assert!(
        matches!(
            r,
            Err(Error::QueryTimeout {
                ended: true,
                unknown: false,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the timeout fired after {took:?}"
    );
    // The timeout aborted the transaction: the commit says so.
    let r = tx.commit().await;
    assert!(matches!(r, Err(Error::RolledBack { .. })), "{r:?}");
    drop(c);
    assert!(busy_sessions(&server, &app).await.is_empty());
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_after_an_abandoned_statement_rolls_back_and_says_so() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "txcommitab", test_opts(1, 0));
    let mut c = pool.get().await.unwrap();
    c.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let slow = tx.execute("SELECT pg_sleep(0.5)", &[]);
    assert!(tokio::time::timeout(Duration::from_millis(100), slow)
        .await
        .is_err());
    let r = tx.commit().await;
    assert!(matches!(r, Err(Error::RolledBack { .. })), "{r:?}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the insert before the abandoned statement committed");
    drop(c);
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_after_a_failed_statement_rolls_back_and_says_so() {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, "txcommitfail", test_opts(1, 0));
    let mut c = pool.get().await.unwrap();
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    // Swallowed: 23505 aborts the transaction, and COMMIT would quietly roll back.
    let dup = tx.execute("INSERT INTO t VALUES (1)", &[]).await;
    assert_eq!(dup.unwrap_err().code(), Some("23505"));
    let r = tx.commit().await;
    assert!(matches!(r, Err(Error::RolledBack { .. })), "{r:?}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    drop(c);
    assert_invariants(&server, &pool, &app).await;
}
