//! COPY through the pool: 100,000 rows in and out byte for byte, a COPY cut by the query
//! timeout leaving nothing running on the server, and COPYs dropped half-way never handing
//! out a dirty connection.

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use pgwarden::{Error, ManagerOptions, PoolManager};
use pgwarden_testdb::PgServer;

use crate::common::*;

/// A manager on one connection (so every COPY and the statements after it share it).
fn manager(
    server: &PgServer,
    db: &str,
    tag: &str,
    query_timeout: Duration,
) -> (PoolManager, String) {
    let (pool, app) = pool(server, db, tag, test_opts(1, 0));
    let mut mo = ManagerOptions::default();
    mo.query_timeout = query_timeout;
    (PoolManager::new(pool, mo), app)
}

/// No session of `app` runs a COPY (or anything else) any more.
async fn no_copy_running(server: &Arc<PgServer>, app: &str) {
    eventually(Duration::from_secs(10), "no active COPY", || {
        let (s, a) = (Arc::clone(server), app.to_owned());
        async move {
            blocking(move || {
                !s.sessions(&a)
                    .unwrap()
                    .iter()
                    .any(|x| x.state == "active" && x.query.contains("COPY"))
            })
            .await
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_100k_rows_in_and_out_matches_byte_for_byte() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "copy-100k", Duration::from_secs(60));
    m.execute("CREATE TABLE items (id int8 PRIMARY KEY, name text)", &[])
        .await
        .unwrap();
    let rows = 100_000u64;
    let sent: Vec<u8> = (0..rows)
        .flat_map(|i| format!("{i}\titem {} é\n", i * 7).into_bytes())
        .collect();
    let mut sink = m.copy_in("COPY items (id, name) FROM STDIN").await.unwrap();
    // Pieces that split rows: the server reassembles them.
    for piece in sent.chunks(8191) {
        sink.send(piece.to_vec()).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), rows);

    let row = m
        .query_one("SELECT count(*), sum(id)::int8 FROM items", &[])
        .await
        .unwrap();
    let expect_sum = (rows * (rows - 1) / 2) as i64;
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (rows as i64, expect_sum)
    );

    let out: Vec<u8> = m
        .copy_out("COPY (SELECT id, name FROM items ORDER BY id) TO STDOUT")
        .await
        .unwrap()
        .try_fold(Vec::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await
        .unwrap();
    assert_eq!(out.len(), sent.len());
    assert!(out == sent, "the data out is the data in");
    assert_invariants(&server, m.pool(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_cut_by_the_query_timeout_leaves_no_server_activity() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "copy-timeout", Duration::from_millis(600));
    let sql = "COPY (SELECT g, pg_sleep(0.05) FROM generate_series(1, 10000) g) TO STDOUT";
    let mut out = m.copy_out(sql).await.unwrap();
    let mut chunks = 0u32;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), out.try_next()).await {
            Ok(Ok(Some(_))) => chunks += 1,
            Ok(Ok(None)) => panic!("the slow COPY finished within the timeout"),
            Ok(Err(e)) => break e,
            Err(_) => panic!("the COPY was not cut within 10 s"),
        }
        assert!(chunks < 10_000);
    };
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
    assert!(chunks > 0, "rows before the timeout were delivered");
    assert!(out.try_next().await.unwrap().is_none(), "the stream ended");
    drop(out);
    no_copy_running(&server, &app).await;
    // The same (only) connection is clean and serves the next statement.
    let one: i32 = m.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert_invariants(&server, m.pool(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_stalled_past_the_query_timeout_is_aborted_and_commits_nothing() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "copy-stall", Duration::from_millis(500));
    m.execute("CREATE TABLE stalled (id int8)", &[])
        .await
        .unwrap();
    let mut sink = m.copy_in("COPY stalled FROM STDIN").await.unwrap();
    sink.send("1\n2\n").await.unwrap();
    wait_until_running(&server, &app, "COPY stalled").await;
    // The producer stalls past the timeout (the scenario, not a wait for a condition).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let err = sink.send("3\n").await.unwrap_err();
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
    assert!(matches!(
        sink.finish().await,
        Err(Error::QueryTimeout { .. })
    ));
    no_copy_running(&server, &app).await;
    let n: i64 = m
        .query_one("SELECT count(*) FROM stalled", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing of an aborted COPY commits");
    assert_invariants(&server, m.pool(), &app).await;
}

/// A COPY that would run for hours.
const ENDLESS: &str = "COPY (SELECT generate_series(1, 1000000000000)) TO STDOUT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_copy_mid_way_never_returns_a_dirty_connection() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "copy-drop", Duration::from_secs(30));
    m.execute("CREATE TABLE dropped (id int8)", &[])
        .await
        .unwrap();

    // COPY out: a result that would run for hours, read one chunk, then dropped. Unless the
    // pool cancels it, the next statement on the (only) connection waits behind it.
    let mut out = m.copy_out(ENDLESS).await.unwrap();
    assert!(out.try_next().await.unwrap().is_some());
    drop(out);
    let next = tokio::time::timeout(Duration::from_secs(30), m.query_one("SELECT 1", &[]));
    let one: i32 = next.await.expect("the COPY was cancelled").unwrap().get(0);
    assert_eq!(one, 1);
    no_copy_running(&server, &app).await;

    // COPY in: rows sent, the sink dropped before finish.
    let mut sink = m.copy_in("COPY dropped FROM STDIN").await.unwrap();
    sink.send("1\n2\n3\n").await.unwrap();
    drop(sink);
    let n: i64 = m
        .query_one("SELECT count(*) FROM dropped", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a COPY dropped before finish commits nothing");

    // A dropped COPY future (before the COPY started streaming) is as safe.
    let start = m.copy_out(ENDLESS);
    let _ = tokio::time::timeout(Duration::from_micros(1), start).await;
    let next = tokio::time::timeout(Duration::from_secs(30), m.query_one("SELECT 1", &[]));
    let one: i32 = next.await.expect("the COPY was cancelled").unwrap().get(0);
    assert_eq!(one, 1);
    no_copy_running(&server, &app).await;
    assert_invariants(&server, m.pool(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_whose_finish_outlasts_the_query_timeout_is_cancelled_and_commits_nothing() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "copy-finish", Duration::from_millis(700));
    // Every row takes 100 ms on the server: 100 rows cannot finish within the timeout.
    m.execute("CREATE TABLE slow_rows (id int8)", &[])
        .await
        .unwrap();
    m.execute(
        "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.1); RETURN NEW; END $$",
        &[],
    )
    .await
    .unwrap();
    m.execute(
        "CREATE TRIGGER slow BEFORE INSERT ON slow_rows FOR EACH ROW EXECUTE FUNCTION slow_row()",
        &[],
    )
    .await
    .unwrap();
    let mut sink = m.copy_in("COPY slow_rows FROM STDIN").await.unwrap();
    let data: String = (0..100).map(|i| format!("{i}\n")).collect();
    sink.send(data).await.unwrap();
    let err = sink.finish().await.unwrap_err();
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
    no_copy_running(&server, &app).await;
    let n: i64 = m
        .query_one("SELECT count(*) FROM slow_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a cancelled COPY commits nothing");
    assert_invariants(&server, m.pool(), &app).await;
}
