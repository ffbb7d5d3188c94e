//! Connection hooks against real PostgreSQL: the after-connect hook and
//! `DB_CONNECT_INIT_SQL` failing (error, panic, hang) never leak a connection, and a hook that
//! succeeds shapes every session.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwarden::{AfterConnect, Config, ConnectOptions, PgConnector, PgPool, Pool, PoolManager};
use pgwarden_testdb::PgServer;
use tokio::time::Instant;

use crate::common::*;

/// A pool of at most 2 on `db` whose connector runs `edit`'s hooks; short timeouts.
fn hooked_pool(
    server: &PgServer,
    db: &str,
    tag: &str,
    edit: impl FnOnce(&mut ConnectOptions),
) -> (PgPool, String) {
    let app = app_name(tag);
    let mut co = ConnectOptions::default();
    co.application_name = Some(app.clone());
    co.connect_timeout = Duration::from_millis(500);
    edit(&mut co);
    let connector = PgConnector::new(
        &server.pg_config(db),
        pgwarden::config::SslMode::Disable,
        None,
        co,
    )
    .unwrap();
    let mut opts = test_opts(2, 0);
    opts.connect_timeout = Duration::from_millis(500);
    opts.acquire_timeout = Duration::from_millis(1500);
    (Pool::new(connector, opts), app)
}

/// The acquire fails naming `what`, the pool holds nothing, and the server has no session left
/// for the pool's application_name.
async fn fails_without_leaking(server: &Arc<PgServer>, pool: &PgPool, app: &str, what: &str) {
    for _ in 0..2 {
        let started = Instant::now();
        let err = pool.get().await.expect_err("the hook fails every connect");
        let text = format!("{err} / {err:?}");
        assert!(text.contains(what), "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded: {:?}",
            started.elapsed()
        );
    }
    eventually(Duration::from_secs(10), "no connection held", || async {
        let s = pool.status();
        s.size == 0 && s.in_use == 0 && s.opening == 0
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "no session left on the server",
        || {
            let (s, a) = (Arc::clone(server), app.to_owned());
            async move { blocking(move || s.sessions(&a).unwrap().is_empty()).await }
        },
    )
    .await;
    assert!(
        pool.counters().opened == 0,
        "no connection counted as opened: {:?}",
        pool.counters()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_connect_hook_error_is_a_connect_failure_and_leaks_nothing() {
    let (server, db) = shared_db();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let (pool, app) = hooked_pool(&server, &db, "hook-err", move |co| {
        co.after_connect = Some(AfterConnect::new(move |conn| {
            c.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                // The hook ran on a live session before failing.
                conn.execute("SELECT 1", &[]).await?;
                Err("not today".into())
            })
        }));
    });
    fails_without_leaking(
        &server,
        &pool,
        &app,
        "the after-connect hook failed: not today",
    )
    .await;
    assert!(calls.load(Ordering::Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_connect_hook_panic_is_a_connect_failure_and_leaks_nothing() {
    let (server, db) = shared_db();
    let (pool, app) = hooked_pool(&server, &db, "hook-panic", |co| {
        co.after_connect = Some(AfterConnect::new(|conn| {
            Box::pin(async move {
                conn.execute("SELECT 1", &[]).await?;
                panic!("hook bug");
            })
        }));
    });
    fails_without_leaking(&server, &pool, &app, "the after-connect hook panicked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_connect_hook_that_hangs_is_cut_by_the_connect_timeout_and_leaks_nothing() {
    let (server, db) = shared_db();
    let (pool, app) = hooked_pool(&server, &db, "hook-hang", |co| {
        co.after_connect = Some(AfterConnect::new(|conn| {
            Box::pin(async move {
                // A statement left running on the server as well as a hang in the client.
                conn.execute("SELECT pg_sleep(60)", &[]).await?;
                Ok(())
            })
        }));
    });
    fails_without_leaking(&server, &pool, &app, "DB_CONNECT_TIMEOUT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_init_sql_failure_is_a_connect_failure_and_leaks_nothing() {
    let (server, db) = shared_db();
    let (pool, app) = hooked_pool(&server, &db, "init-sql", |co| {
        co.init_sql = Some("SELEC 1".into());
    });
    fails_without_leaking(&server, &pool, &app, "DB_CONNECT_INIT_SQL failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_left_open_by_a_hook_never_reaches_the_application() {
    let (server, db) = shared_db();
    let (pool, app) = hooked_pool(&server, &db, "hook-tx", |co| {
        co.after_connect = Some(AfterConnect::new(|conn| {
            Box::pin(async move {
                // A setting made on its own stays; the transaction opened after it does not.
                conn.batch_execute("SET work_mem = '9MB'").await?;
                conn.batch_execute("BEGIN; SET LOCAL lock_timeout = '1s'")
                    .await?;
                Ok(())
            })
        }));
    });
    let conn = pool.get().await.unwrap();
    assert!(!conn.needs_reset(), "the hook's raw use was settled");
    let row = conn
        .query_one(
            "SELECT current_setting('work_mem'), current_setting('lock_timeout')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "9MB");
    assert_eq!(row.get::<_, String>(1), "0");
    // SAVEPOINT is refused outside a transaction block (25P01).
    let err = conn.batch_execute("SAVEPOINT s").await.unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("25P01"),
        "handed out inside the hook's transaction: {err}"
    );
    let _ = conn.batch_execute("ROLLBACK").await;
    drop(conn);
    assert_invariants(&server, &pool, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_sql_and_hook_shape_every_session_from_the_environment() {
    let (server, db) = shared_db();
    let url = server.url(&db);
    let app = app_name("hook-ok");
    let config = Config::from_vars([
        ("DATABASE_URL", url.as_str()),
        ("DB_POOL_MIN", "2"),
        ("DB_APPLICATION_NAME", app.as_str()),
        (
            "DB_CONNECT_INIT_SQL",
            "SET TIME ZONE 'Pacific/Chatham'; SET work_mem = '7MB'",
        ),
    ])
    .unwrap();
    assert!(config
        .effective()
        .iter()
        .any(|s| s.variable == "DB_CONNECT_INIT_SQL" && s.to_string().contains("Pacific/Chatham")));
    let db_ = PoolManager::from_config(&config).await.unwrap();
    for _ in 0..4 {
        let row = db_
            .query_one(
                "SELECT current_setting('TimeZone'), current_setting('work_mem')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "Pacific/Chatham");
        assert_eq!(row.get::<_, String>(1), "7MB");
    }
    assert_invariants(&server, db_.pool(), &app).await;
    db_.close(Duration::from_secs(1)).await;
}
