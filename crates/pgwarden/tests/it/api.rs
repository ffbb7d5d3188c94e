//! What users of deadpool, sqlx and pgx expect: one client trait for the manager, a
//! checked-out connection and a transaction; row streams; per-call options.

use std::time::Duration;

use futures_util::TryStreamExt;
use pgwarden::{Error, GenericClient, ManagerOptions, PoolManager, PooledConnection};
use tokio::time::Instant;

use crate::common::*;

fn manager(
    server: &pgwarden_testdb::PgServer,
    db: &str,
    tag: &str,
    max: u32,
    mo: ManagerOptions,
) -> (PoolManager, String) {
    let (pool, app) = pool(server, db, tag, test_opts(max, 0));
    (PoolManager::new(pool, mo), app)
}

/// A repository function written once against the trait.
async fn add_and_count(
    c: &impl GenericClient,
    id: i64,
) -> Result<(i64, Option<i64>, usize), Error> {
    let n = c.execute("INSERT INTO repo_t VALUES ($1)", &[&id]).await?;
    assert_eq!(n, 1);
    let count: i64 = c
        .query_one("SELECT count(*) FROM repo_t", &[])
        .await?
        .get(0);
    let found = c
        .query_opt("SELECT id FROM repo_t WHERE id = $1", &[&id])
        .await?
        .map(|r| r.get::<_, i64>(0));
    let all = c.query("SELECT id FROM repo_t", &[]).await?.len();
    let streamed: Vec<i64> = c
        .query_stream("SELECT id FROM repo_t ORDER BY id", &[])
        .await?
        .map_ok(|r| r.get::<_, i64>(0))
        .try_collect()
        .await?;
    assert_eq!(streamed.len(), all);
    Ok((count, found, all))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_function_runs_on_the_manager_a_connection_and_a_transaction() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "trait", 3, ManagerOptions::default());
    m.execute("CREATE TABLE repo_t (id int8 PRIMARY KEY)", &[])
        .await
        .unwrap();

    assert_eq!(add_and_count(&m, 1).await.unwrap(), (1, Some(1), 1));

    let conn = m.get().await.unwrap();
    assert_eq!(add_and_count(&conn, 2).await.unwrap(), (2, Some(2), 2));
    // Through the guard's target too.
    let pg: &pgwarden::PgConn = &conn;
    assert_eq!(add_and_count(pg, 3).await.unwrap(), (3, Some(3), 3));
    drop(conn);

    let out = m
        .transaction(|tx| async move { add_and_count(&tx, 4).await })
        .await
        .unwrap();
    assert_eq!(out, (4, Some(4), 4));
    // A transaction rolled back leaves nothing behind.
    let err = m
        .transaction(|tx| async move {
            add_and_count(&tx, 5).await?;
            tx.execute("SELECT 1/0", &[]).await
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("22012"), "{err}");
    let count: i64 = m
        .query_one("SELECT count(*) FROM repo_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 4);
    assert_invariants(&server, m.pool(), &app).await;
}

/// The server's view of one backend: its state and query.
async fn backend(
    server: &std::sync::Arc<pgwarden_testdb::PgServer>,
    app: &str,
) -> Vec<(String, String)> {
    let (s, a) = (std::sync::Arc::clone(server), app.to_owned());
    blocking(move || s.sessions(&a).unwrap())
        .await
        .into_iter()
        .map(|x| (x.state, x.query))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_dropped_after_10_of_1_000_000_rows_leaves_the_connection_clean_and_the_server_idle()
{
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "stream", 1, ManagerOptions::default());
    let sql = "SELECT g FROM generate_series(1, 1000000) AS g";
    let mut rows = m.query_stream(sql, &[]).await.unwrap();
    for want in 1..=10 {
        let row = rows.try_next().await.unwrap().expect("a row");
        assert_eq!(row.get::<_, i32>(0), want);
    }
    // The stream holds the pool's only connection.
    assert_eq!(m.pool().status().in_use, 1);
    let started = Instant::now();
    drop(rows);

    // The connection comes back reset (statement cancelled), not busy: the next call on the
    // one-connection pool gets it and sees a clean session.
    let row = m
        .query_one(
            "SELECT pg_backend_pid(), txid_current_if_assigned() IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(1));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the rest of the rows was cancelled, not read: {:?}",
        started.elapsed()
    );
    eventually(Duration::from_secs(10), "the server idle", || async {
        let b = backend(&server, &app).await;
        b.len() == 1 && b[0].0 == "idle"
    })
    .await;
    let counters = m.pool().counters();
    assert_eq!(
        counters.opened, 1,
        "the same connection served again: {counters:?}"
    );
    assert_invariants(&server, m.pool(), &app).await;

    // A stream read to its end returns its connection clean at once.
    let n = m
        .query_stream("SELECT generate_series(1, 1000)", &[])
        .await
        .unwrap()
        .try_fold(0u32, |n, _| async move { Ok(n + 1) })
        .await
        .unwrap();
    assert_eq!(n, 1000);
    let conn = m.get().await.unwrap();
    assert!(!conn.needs_reset());
    assert!(PooledConnection::was_reused(&conn));
    drop(conn);
    assert_invariants(&server, m.pool(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_dropped_inside_a_transaction_rolls_it_back_and_says_so() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "stream-tx", 1, ManagerOptions::default());
    m.execute("CREATE TABLE st_t (id int8)", &[]).await.unwrap();
    let err = m
        .transaction(|tx| async move {
            tx.execute("INSERT INTO st_t VALUES (1)", &[]).await?;
            let mut rows = tx
                .query_stream("SELECT generate_series(1, 1000000)", &[])
                .await?;
            rows.try_next().await?;
            drop(rows);
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RolledBack { .. }), "{err}");
    let count: i64 = m
        .query_one("SELECT count(*) FROM st_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
    assert_invariants(&server, m.pool(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_timeout_shorter_and_longer_than_the_default() {
    let (server, db) = shared_db();
    let mut mo = ManagerOptions::default();
    mo.query_timeout = Duration::from_millis(600);
    let (m, app) = manager(&server, &db, "per-call", 2, mo);

    // Shorter: cancelled on the server after its own limit, not the default's.
    let started = Instant::now();
    let err = m
        .execute("SELECT pg_sleep(5)", &[])
        .timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        matches!(err, Error::QueryTimeout { after, ended: true, .. } if after == Duration::from_millis(100)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );

    // The default still applies to an unmarked call.
    let err = m.execute("SELECT pg_sleep(5)", &[]).await.unwrap_err();
    assert!(
        matches!(err, Error::QueryTimeout { after, .. } if after == Duration::from_millis(600)),
        "{err:?}"
    );

    // Longer: a statement past the default finishes under its own limit.
    let row = m
        .query_one("SELECT pg_sleep(1.0)::text, 7::int4", &[])
        .timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(1), 7);
    assert_invariants(&server, m.pool(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_retries_bound_the_attempts() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "retries", 2, ManagerOptions::default());
    // A serialization failure (40001) of an idempotent call is retried: each attempt takes
    // one value of a sequence, so the sequence counts the attempts.
    m.execute("CREATE SEQUENCE per_call_seq", &[])
        .await
        .unwrap();
    m.execute(
        "CREATE FUNCTION per_call_fail() RETURNS int LANGUAGE plpgsql AS $$
         BEGIN PERFORM nextval('per_call_seq'); RAISE EXCEPTION 'busy' USING ERRCODE = '40001'; END $$",
        &[],
    )
    .await
    .unwrap();
    let attempts = |m: &PoolManager| {
        let m = m.clone();
        async move {
            let v: i64 = m
                .query_one(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM per_call_seq",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            v
        }
    };
    let before = attempts(&m).await;
    let err = m
        .query_one("SELECT per_call_fail()", &[])
        .idempotent()
        .retries(0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("40001"), "{err}");
    let after_zero = attempts(&m).await;
    let err = m
        .query_one("SELECT per_call_fail()", &[])
        .idempotent()
        .retries(1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: 2, .. }),
        "{err:?}"
    );
    let after_one = attempts(&m).await;
    assert_eq!((after_zero - before, after_one - after_zero), (1, 2));
    assert_invariants(&server, m.pool(), &app).await;
}
