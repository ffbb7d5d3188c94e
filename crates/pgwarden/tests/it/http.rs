//! The `/metrics`, `/health` and `/status` endpoints over loopback, with a tiny HTTP/1.1
//! client on a raw TcpStream.

use std::net::SocketAddr;
use std::time::Duration;

use pgwarden::{ManagerOptions, PoolManager};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// `GET path`: the status code and the body (the server closes after one request).
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        String::from_utf8(raw).expect("utf-8 response")
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("response within 10 s");
    let (head, body) = resp.split_once("\r\n\r\n").expect("head and body");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_owned())
}

fn manager(
    max: u32,
    tag: &str,
) -> (
    PoolManager,
    std::sync::Arc<pgwarden_testdb::PgServer>,
    String,
) {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, tag, test_opts(max, 0));
    let mut mo = ManagerOptions::default();
    mo.health_check_interval = None;
    (PoolManager::new(pool, mo), server, app)
}

/// A known workload, then each endpoint: 200 while good; 503 with the grade and its driver
/// once the only connection is checked out (utilization 100%, critical); 200 again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_with_the_grade_and_503_when_critical() {
    let (m, server, app) = manager(1, "http");
    for i in 0..10i32 {
        let r = m.query_one("SELECT 10 / $1::int4", &[&(i % 5)]).await;
        assert_eq!(r.is_err(), i % 5 == 0, "{r:?}");
    }
    let srv = pgwarden::http::serve(m.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = srv.local_addr();

    let (code, body) = http_get(addr, "/status").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("Pool Health: "), "{body}");

    // /metrics parses, and its counters are the snapshot's.
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text parses");
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} {label:?} in\n{body}"))
    };
    let s = m.metrics();
    assert_eq!(s.queries.total, 10);
    assert_eq!(s.queries.succeeded, 8);
    let ok = value("pgwarden_queries_total", Some(("outcome", "ok")));
    let err = value("pgwarden_queries_total", Some(("outcome", "error")));
    assert_eq!(ok, s.queries.succeeded as f64);
    assert_eq!(err, (s.queries.failed - s.queries.outcome_unknown) as f64);
    assert_eq!(ok + err, 10.0);
    assert_eq!(
        value(
            "pgwarden_connections_opened_total",
            Some(("pool", "primary"))
        ),
        s.connections.opened as f64
    );
    assert_eq!(
        value("pgwarden_leaks_total", Some(("pool", "primary"))),
        0.0
    );

    // The only connection checked out: utilization 100%, critical.
    let held = m.get().await.unwrap();
    let (code, body) = http_get(addr, "/health").await;
    assert_eq!(code, 503, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(h["grade"], "critical", "{body}");
    assert_eq!(h["driven_by"], "utilization_pct", "{body}");
    assert_eq!(h["window"]["utilization_pct"], 100.0, "{body}");
    let (code, body) = http_get(addr, "/status").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("Pool Health: CRITICAL"), "{body}");
    drop(held);

    srv.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "stopped server still accepts"
    );
    assert_invariants(&server, m.pool(), &app).await;
}

/// The router mounted in an application's own server, beside its own routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_mounts_in_an_application_server() {
    let (m, _server, _app) = manager(2, "httpr");
    m.execute("SELECT 1", &[]).await.unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "the application" }))
        .merge(pgwarden::http::router(m.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await });

    assert_eq!(http_get(addr, "/").await, (200, "the application".into()));
    let (code, body) = http_get(addr, "/health").await;
    assert_eq!(code, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(h["grade"], "good", "{body}");
    assert!(h["driven_by"].is_null(), "{body}");
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("\npgwarden_queries_total{outcome=\"ok\"} 1\n"),
        "{body}"
    );
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    task.abort();
}
