//! The examples' own code (included from `examples/`) against throwaway servers: the web
//! service answers on its routes and pgwarden's, and the worker applies every transfer exactly
//! once, also while its sessions are being terminated.

use std::future::IntoFuture;
use std::time::Duration;

use pgwarden::{Config, PoolManager};

use crate::common::*;
use crate::http::http_get;

#[allow(dead_code)] // its `main`
#[path = "../../../examples/worker.rs"]
mod worker;

#[allow(dead_code)] // its `main`
#[path = "../../../examples/web_service.rs"]
mod web_service;

async fn manager(server: &pgwarden_testdb::PgServer, db: &str, app: &str) -> PoolManager {
    let url = server.url(db);
    let config = Config::from_vars([
        ("DATABASE_URL", url.as_str()),
        ("DB_POOL_MAX", "4"),
        ("DB_POOL_MIN", "0"),
        ("DB_APPLICATION_NAME", app),
    ])
    .expect("config");
    PoolManager::from_config(&config).await.expect("manager")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_service_example_serves_its_routes_and_the_endpoints() {
    let (server, db) = shared_db();
    let m = manager(&server, &db, &app_name("web")).await;
    web_service::setup(&m).await.expect("setup");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(axum::serve(listener, web_service::app(m.clone())).into_future());

    let post = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /visits HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
            .await
            .unwrap();
        let mut raw = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut raw)
            .await
            .unwrap();
        raw
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), post)
        .await
        .expect("POST answered");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("visit 1\n"), "{resp}");
    assert_eq!(http_get(addr, "/visits").await, (200, "1 visits\n".into()));
    let (code, body) = http_get(addr, "/status").await;
    assert_eq!(code, 200);
    assert!(body.starts_with("Pool Health: "), "{body}");
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("pgwarden_queries_total{outcome=\"ok\"} 3\n"),
        "{body}"
    );
    assert_eq!(http_get(addr, "/health").await.0, 200);
    task.abort();
    m.close(Duration::from_secs(1)).await;
}

/// Each account's balance is its opening balance plus what the recorded transfers moved:
/// nothing applied twice, nothing applied without its record.
/// Returns the number of transfers recorded.
async fn assert_ledger(m: &PoolManager) -> u64 {
    let row = m
        .query_one(
            "SELECT (SELECT count(*) FROM worker_transfers), \
             (SELECT count(*) FROM worker_accounts a WHERE a.balance <> 1000 \
                - coalesce((SELECT sum(amount) FROM worker_transfers WHERE from_id = a.id), 0) \
                + coalesce((SELECT sum(amount) FROM worker_transfers WHERE to_id = a.id), 0))::int8",
            &[],
        )
        .idempotent()
        .await
        .expect("ledger");
    assert_eq!(row.get::<_, i64>(1), 0, "accounts off their ledger");
    u64::try_from(row.get::<_, i64>(0)).expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_example_applies_each_transfer_once_and_a_rerun_changes_nothing() {
    let (server, db) = shared_db();
    let m = manager(&server, &db, &app_name("worker")).await;
    let s = worker::run(&m, 1, 40, 4).await;
    assert_eq!(
        s,
        worker::Summary {
            applied: 40,
            ..worker::Summary::default()
        }
    );
    let s = worker::run(&m, 1, 40, 4).await;
    assert_eq!(
        s,
        worker::Summary {
            already_applied: 40,
            ..worker::Summary::default()
        }
    );
    assert_eq!(assert_ledger(&m).await, 40);
    m.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_example_keeps_its_ledger_while_sessions_are_terminated() {
    let (server, db) = shared_db();
    let app = app_name("workerkill");
    let m = manager(&server, &db, &app).await;
    worker::setup(&m, 10).await.expect("setup");
    let run = tokio::spawn({
        let m = m.clone();
        async move { worker::run(&m, 1, 200, 4).await }
    });
    // A few kills, spaced, while the transfers run (bounded: 8 rounds).
    let mut killed = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (server, app) = (server.clone(), app.clone());
        killed += blocking(move || server.terminate_backends(&app).expect("terminate")).await;
        if run.is_finished() {
            break;
        }
    }
    assert!(killed > 0, "no session was terminated while the worker ran");
    let s = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the worker ends")
        .expect("the worker does not panic");
    assert_eq!(
        s.applied + s.already_applied + s.resolved_unknown + s.failed,
        200,
        "{s:?}"
    );
    // Every transfer applied or resolved is recorded once; one given up on may be (its last
    // outcome unknown) or not.
    assert_eq!(s.already_applied, 0, "{s:?}");
    assert!(
        s.failed <= killed,
        "{s:?} with {killed} sessions terminated"
    );
    let recorded = assert_ledger(&m).await;
    let known = s.applied + s.resolved_unknown;
    assert!(
        (known..=known + s.failed).contains(&recorded),
        "{recorded} recorded, {s:?}"
    );
    m.close(Duration::from_secs(1)).await;
}
