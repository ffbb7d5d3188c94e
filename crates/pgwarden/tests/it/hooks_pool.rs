//! The before-acquire check and the after-release decision against real PostgreSQL: an error,
//! a panic or a hang closes the connection (never handed out, never leaked), and the pool's
//! size matches the server's sessions afterwards.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwarden::{AfterRelease, BeforeAcquire, ConnectOptions, PgConnector, PgPool, Pool, Release};
use pgwarden_testdb::PgServer;

use crate::common::*;

#[derive(Clone, Copy, Debug)]
enum Mode {
    Error,
    Panic,
    Hang,
}

const MODES: [Mode; 3] = [Mode::Error, Mode::Panic, Mode::Hang];

fn hooked_pool(
    server: &PgServer,
    db: &str,
    tag: &str,
    max: u32,
    edit: impl FnOnce(&mut ConnectOptions),
) -> (PgPool, String) {
    let app = app_name(tag);
    let mut co = ConnectOptions::default();
    co.application_name = Some(app.clone());
    edit(&mut co);
    let cfg = server.pg_config(db);
    let connector = PgConnector::new(&cfg, pgwarden::SslMode::Disable, None, co).unwrap();
    let mut opts = test_opts(max, 0);
    opts.acquire_timeout = Duration::from_millis(800);
    opts.reset_timeout = Duration::from_millis(800);
    (Pool::new(connector, opts), app)
}

/// A hook failing as `mode` says.
async fn misbehave(
    conn: &pgwarden::PgConn,
    mode: Mode,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match mode {
        Mode::Error => Err("no".into()),
        Mode::Panic => panic!("hook bug"),
        Mode::Hang => {
            // Hangs on the server, too: the statement must be cancelled when the connection
            // is closed, or its session would outlive the pool's count.
            conn.execute("SELECT pg_sleep(60)", &[]).await?;
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_acquire_error_panic_or_hang_closes_the_connection_and_leaks_nothing() {
    let (server, db) = shared_db();
    for mode in MODES {
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        let (pool, app) = hooked_pool(&server, &db, "before-acq", 2, move |co| {
            co.before_acquire = Some(BeforeAcquire::new(move |conn| {
                let first = r.fetch_add(1, Ordering::Relaxed) == 0;
                Box::pin(async move {
                    if first {
                        misbehave(conn, mode).await?;
                    }
                    Ok(true)
                })
            }));
        });
        // The first check misbehaves: that connection is closed and the acquire (within its
        // deadline, except for a hang that uses it up) gets another.
        let got = pool.get().await;
        match mode {
            Mode::Hang => assert!(got.is_err(), "{mode:?}: the hang used the deadline"),
            _ => {
                let conn = got.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
                conn.query_one("SELECT 1", &[]).await.unwrap();
            }
        }
        let conn = pool.get().await.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        drop(conn);
        assert!(runs.load(Ordering::Relaxed) >= 2, "{mode:?}");
        assert!(
            pool.counters().closed.failed_validation >= 1,
            "{mode:?}: {:?}",
            pool.counters()
        );
        assert_invariants(&server, &pool, &app).await;
        pool.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_release_error_panic_or_hang_closes_the_connection_and_leaks_nothing() {
    let (server, db) = shared_db();
    for mode in MODES {
        let (pool, app) = hooked_pool(&server, &db, "after-rel", 2, move |co| {
            co.after_release = Some(AfterRelease::new(move |conn| {
                Box::pin(async move {
                    misbehave(conn, mode).await?;
                    Ok(Release::Keep)
                })
            }));
        });
        let conn = pool.get().await.unwrap();
        let first = pgwarden::PooledConnection::id(&conn);
        drop(conn);
        eventually(Duration::from_secs(5), "the connection closed", || async {
            pool.counters().closed.dirty >= 1
        })
        .await;
        let conn = pool.get().await.unwrap();
        assert_ne!(
            pgwarden::PooledConnection::id(&conn),
            first,
            "{mode:?}: a new connection"
        );
        drop(conn);
        assert_invariants(&server, &pool, &app).await;
        pool.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_release_keeps_resets_or_closes_as_decided() {
    let (server, db) = shared_db();
    let (pool, app) = hooked_pool(&server, &db, "after-rel-ok", 1, |co| {
        co.after_release = Some(AfterRelease::new(|conn| {
            Box::pin(async move {
                let row = conn
                    .query_one("SELECT current_setting('work_mem')", &[])
                    .await?;
                Ok(match row.get::<_, String>(0).as_str() {
                    "5MB" => Release::Reset,
                    "6MB" => Release::Close,
                    _ => Release::Keep,
                })
            })
        }));
    });
    let setting = |pool: &PgPool| {
        let pool = pool.clone();
        async move {
            let c = pool.get().await.unwrap();
            let id = pgwarden::PooledConnection::id(&c);
            let v: String = c
                .query_one("SELECT current_setting('work_mem')", &[])
                .await
                .unwrap()
                .get(0);
            (id, v)
        }
    };
    // Keep: a setting made with a tracked statement stays.
    let c = pool.get().await.unwrap();
    let id = pgwarden::PooledConnection::id(&c);
    c.execute("SELECT set_config('work_mem', '7MB', false)", &[])
        .await
        .unwrap();
    drop(c);
    eventually(Duration::from_secs(5), "kept", || async {
        pool.status().idle == 1
    })
    .await;
    assert_eq!(setting(&pool).await, (id, "7MB".into()));
    // Reset: DISCARD ALL drops the setting, the connection stays.
    let c = pool.get().await.unwrap();
    c.execute("SELECT set_config('work_mem', '5MB', false)", &[])
        .await
        .unwrap();
    drop(c);
    eventually(Duration::from_secs(5), "reset", || async {
        pool.status().idle == 1
    })
    .await;
    assert_eq!(setting(&pool).await, (id, "4MB".into()));
    // Close: the next checkout gets a new connection.
    let c = pool.get().await.unwrap();
    c.execute("SELECT set_config('work_mem', '6MB', false)", &[])
        .await
        .unwrap();
    drop(c);
    eventually(Duration::from_secs(5), "closed", || async {
        pool.counters().closed.dirty == 1
    })
    .await;
    let (id2, v) = setting(&pool).await;
    assert_ne!(id2, id);
    assert_eq!(v, "4MB");
    assert_invariants(&server, &pool, &app).await;
}
