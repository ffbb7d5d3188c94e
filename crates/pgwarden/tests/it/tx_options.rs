//! Transaction options (isolation level, read only) carried by BEGIN on every rerun, and
//! savepoints: nested transactions rolled back without ending the outer one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwarden::{Error, IsolationLevel, ManagerOptions, PoolManager, TxOptions};
use tokio::sync::{Barrier, Notify};

use crate::common::*;

fn manager(
    server: &pgwarden_testdb::PgServer,
    db: &str,
    tag: &str,
    max: u32,
) -> (PoolManager, String) {
    let (pool, app) = pool(server, db, tag, test_opts(max, 0));
    (PoolManager::new(pool, ManagerOptions::default()), app)
}

/// The ids in `t`, in order.
async fn ids(m: &PoolManager, table: &str) -> Vec<i32> {
    m.query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_conflict_with_options_reruns_the_loser_and_both_commit() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "tx-ser", 4);
    m.execute(
        "CREATE TABLE oncall (id int PRIMARY KEY, on_call bool)",
        &[],
    )
    .await
    .unwrap();
    m.execute("INSERT INTO oncall VALUES (1, true), (2, true)", &[])
        .await
        .unwrap();
    const SERIALIZABLE: TxOptions = TxOptions::new().isolation(IsolationLevel::Serializable);
    // Write skew: each doctor goes off call if the other is still on call. Under READ
    // COMMITTED both would; only SERIALIZABLE (set by the options alone) makes one rerun.
    let barrier = Arc::new(Barrier::new(2));
    let doctor = |id: i32| {
        let (m, barrier) = (m.clone(), Arc::clone(&barrier));
        tokio::spawn(async move {
            let attempts = AtomicU32::new(0);
            let (attempts_ref, barrier) = (&attempts, &barrier);
            let n = m
                .transaction(|tx| async move {
                    let attempt = attempts_ref.fetch_add(1, Ordering::SeqCst) + 1;
                    let level: String = tx
                        .query_one("SHOW transaction_isolation", &[])
                        .await?
                        .get(0);
                    assert_eq!(level, "serializable", "attempt {attempt}");
                    let n: i64 = tx
                        .query_one("SELECT count(*) FROM oncall WHERE on_call", &[])
                        .await?
                        .get(0);
                    if attempt == 1 {
                        // Both have read before either writes.
                        barrier.wait().await;
                    }
                    if n >= 2 {
                        tx.execute("UPDATE oncall SET on_call = false WHERE id = $1", &[&id])
                            .await?;
                    }
                    Ok(n)
                })
                .options(SERIALIZABLE)
                .await;
            (n, attempts.load(Ordering::SeqCst))
        })
    };
    let (a, b) = (doctor(1), doctor(2));
    let ((na, ra), (nb, rb)) = (a.await.unwrap(), b.await.unwrap());
    let (na, nb) = (
        na.expect("doctor 1 committed"),
        nb.expect("doctor 2 committed"),
    );
    let mut attempts = [ra, rb];
    attempts.sort_unstable();
    assert_eq!(
        attempts,
        [1, 2],
        "the loser's body ran twice, the winner's once"
    );
    assert_eq!(
        (na.min(nb), na.max(nb)),
        (1, 2),
        "the rerun saw the other's commit"
    );
    let on: i64 = m
        .query_one("SELECT count(*) FROM oncall WHERE on_call", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on, 1, "never both off call");
    assert!(
        m.metrics().queries.retries >= 1,
        "{:?}",
        m.metrics().queries
    );
    assert_invariants(&server, m.pool(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transaction_refuses_a_write_and_leaves_the_connection_clean() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "tx-ro", 1);
    m.execute("CREATE TABLE ro_t (id int PRIMARY KEY)", &[])
        .await
        .unwrap();
    let pid: i32 = m
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let runs = AtomicU32::new(0);
    let runs_ref = &runs;
    let err = m
        .transaction(|tx| async move {
            runs_ref.fetch_add(1, Ordering::SeqCst);
            let ro: String = tx
                .query_one("SHOW transaction_read_only", &[])
                .await?
                .get(0);
            assert_eq!(ro, "on");
            tx.execute("INSERT INTO ro_t VALUES (1)", &[]).await
        })
        .options(TxOptions::new().read_only(true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("25006"), "{err}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a read-only refusal is not rerun"
    );

    // The same connection (not evicted as if its server were a standby), outside any
    // transaction, read-write again.
    let row = m
        .query_one(
            "SELECT pg_backend_pid(), current_setting('transaction_read_only'), \
             txid_current_if_assigned() IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), pid);
    assert_eq!(row.get::<_, String>(1), "off");
    assert!(row.get::<_, bool>(2));
    assert_eq!(
        m.execute("INSERT INTO ro_t VALUES (2)", &[]).await.unwrap(),
        1
    );
    assert_eq!(ids(&m, "ro_t").await, [2]);
    assert_eq!(m.pool().counters().opened, 1, "{:?}", m.pool().counters());
    assert_invariants(&server, m.pool(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_rolled_back_inside_a_committed_transaction_keeps_the_outer_work() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "tx-sp", 1);
    m.execute("CREATE TABLE sp_t (id int PRIMARY KEY)", &[])
        .await
        .unwrap();
    m.transaction(|mut tx| async move {
        tx.execute("INSERT INTO sp_t VALUES (1)", &[]).await?;
        // Rolled back: its write is gone.
        let sp = tx.savepoint().await?;
        sp.execute("INSERT INTO sp_t VALUES (2)", &[]).await?;
        sp.rollback().await?;
        // A statement failing inside a savepoint that is rolled back does not stop the commit.
        let sp = tx.savepoint().await?;
        let dup = sp
            .execute("INSERT INTO sp_t VALUES (1)", &[])
            .await
            .unwrap_err();
        assert_eq!(dup.code(), Some("23505"), "{dup}");
        sp.rollback().await?;
        // Committed (released): its write stays; a nested one rolled back with its parent.
        let mut sp = tx.savepoint().await?;
        sp.execute("INSERT INTO sp_t VALUES (3)", &[]).await?;
        let mut inner = sp.savepoint().await?;
        inner.execute("INSERT INTO sp_t VALUES (4)", &[]).await?;
        let innermost = inner.savepoint().await?;
        innermost
            .execute("INSERT INTO sp_t VALUES (5)", &[])
            .await?;
        innermost.commit().await?;
        inner.rollback().await?;
        sp.commit().await?;
        tx.execute("INSERT INTO sp_t VALUES (6)", &[]).await
    })
    .await
    .unwrap();
    assert_eq!(ids(&m, "sp_t").await, [1, 3, 6]);

    // Committing a savepoint whose statement failed rolls it back instead and says so; the
    // outer transaction still commits.
    m.transaction(|mut tx| async move {
        let sp = tx.savepoint().await?;
        sp.execute("INSERT INTO sp_t VALUES (7)", &[]).await?;
        let _ = sp.execute("INSERT INTO sp_t VALUES (1)", &[]).await;
        let err = sp.commit().await.unwrap_err();
        assert!(
            matches!(&err, Error::RolledBack { code: Some(c), .. } if c == "23505"),
            "{err}"
        );
        tx.execute("INSERT INTO sp_t VALUES (8)", &[]).await
    })
    .await
    .unwrap();
    assert_eq!(ids(&m, "sp_t").await, [1, 3, 6, 8]);

    // A failure outside any savepoint still rolls the whole transaction back.
    let err = m
        .transaction(|mut tx| async move {
            let _ = tx.execute("INSERT INTO sp_t VALUES (1)", &[]).await;
            let sp = tx.savepoint().await;
            assert!(sp.is_err(), "an aborted transaction takes no savepoint");
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::RolledBack { code: Some(c), .. } if c == "23505"),
        "{err}"
    );
    assert_eq!(ids(&m, "sp_t").await, [1, 3, 6, 8]);
    let c = m.get().await.unwrap();
    assert!(!c.needs_reset(), "savepoints never mark the connection raw");
    drop(c);
    assert_eq!(m.pool().counters().opened, 1, "{:?}", m.pool().counters());
    assert_invariants(&server, m.pool(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_savepoint_handle_rolls_back_to_the_savepoint() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "tx-spdrop", 1);
    m.execute("CREATE TABLE spd_t (id int PRIMARY KEY)", &[])
        .await
        .unwrap();
    m.transaction(|mut tx| async move {
        tx.execute("INSERT INTO spd_t VALUES (1)", &[]).await?;
        {
            let sp = tx.savepoint().await?;
            sp.execute("INSERT INTO spd_t VALUES (2)", &[]).await?;
            // A failure inside it is undone with it.
            let _ = sp.execute("INSERT INTO spd_t VALUES (1)", &[]).await;
        }
        tx.execute("INSERT INTO spd_t VALUES (3)", &[]).await?;
        {
            let mut sp = tx.savepoint().await?;
            sp.execute("INSERT INTO spd_t VALUES (4)", &[]).await?;
            let inner = sp.savepoint().await?;
            inner.execute("INSERT INTO spd_t VALUES (5)", &[]).await?;
            // Both dropped just before the body returns: rolled back before COMMIT.
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(ids(&m, "spd_t").await, [1, 3]);
    assert_invariants(&server, m.pool(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_kept_past_the_body_rolls_back_and_runs_nothing_after() {
    let (server, db) = shared_db();
    let (m, app) = manager(&server, &db, "tx-kept", 1);
    m.execute("CREATE TABLE kept_t (id int PRIMARY KEY)", &[])
        .await
        .unwrap();
    let go = Arc::new(Notify::new());
    let (tasks, go_ref) = (std::sync::Mutex::new(Vec::new()), &go);
    let tasks_ref = &tasks;
    let err = m
        .transaction(|tx| async move {
            tx.execute("INSERT INTO kept_t VALUES (1)", &[]).await?;
            let go = Arc::clone(go_ref);
            // The handle moved into a task that outlives the body.
            tasks_ref.lock().unwrap().push(tokio::spawn(async move {
                go.notified().await;
                tx.execute("INSERT INTO kept_t VALUES (2)", &[]).await
            }));
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RolledBack { .. }), "{err}");
    go.notify_one();
    let task = tasks.lock().unwrap().pop().unwrap();
    let late = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the kept handle's statement returns")
        .unwrap()
        .unwrap_err();
    assert!(matches!(late, Error::RolledBack { .. }), "{late}");
    assert_eq!(ids(&m, "kept_t").await, Vec::<i32>::new());
    assert_invariants(&server, m.pool(), &app).await;
}
