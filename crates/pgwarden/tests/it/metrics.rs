//! Metrics, grades, the status block, the Prometheus text and the health checker, against
//! real PostgreSQL with known workloads: every count checked exactly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden::health::{Grade, Metric};
use pgwarden::{Error, ManagerOptions, PoolManager, PoolOptions};
use pgwarden_testdb::PgServer;

use crate::common::*;

fn manager(
    server: &PgServer,
    db: &str,
    tag: &str,
    pool_opts: PoolOptions,
    mo: ManagerOptions,
) -> (PoolManager, String) {
    let (pool, app) = pool(server, db, tag, pool_opts);
    (PoolManager::new(pool, mo), app)
}

/// 20 statements of 150 ms against a 100 ms threshold: exactly 20 slow, in the last minute
/// too; the average (over 100 ms) makes the grade critical and the slow count alone a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_statements_are_counted_exactly_and_graded() {
    let (server, db) = shared_db();
    let mut mo = ManagerOptions::default();
    mo.slow_query_threshold = Duration::from_millis(100);
    let (m, app) = manager(&server, &db, "mslow", test_opts(5, 0), mo);
    let results = futures_util::future::join_all((0..20).map(|_| {
        let m = m.clone();
        async move { m.execute("SELECT pg_sleep(0.15)", &[]).await }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let s = m.metrics();
    assert_eq!(s.queries.total, 20);
    assert_eq!(s.queries.slow, 20);
    assert_eq!(s.queries.slow_per_min, 20.0);
    assert_eq!(s.health.window.slow_per_min, 20.0);
    assert_eq!(s.health.window.calls, 20);
    assert!(s.latency_ms.p50 >= 150.0, "{:?}", s.latency_ms);
    assert_eq!(s.health.grades.slow_per_min, Grade::Warning);
    assert_eq!(s.health.grade, Grade::Critical);
    assert_eq!(s.health.driven_by, Some(Metric::AvgMs));
    let status = m.status();
    assert!(
        status.starts_with("Pool Health: CRITICAL (avg_ms: "),
        "{status}"
    );
    assert!(
        status.contains("\n   Slow: 20 queries in the last minute\n"),
        "{status}"
    );
    assert!(status.ends_with("\n   Failover: INACTIVE"), "{status}");
    assert_invariants(&server, m.pool(), &app).await;
}

/// 97 good calls and 3 divisions by zero: 3 failed, all of class "statement", 97% success
/// (a warning, driven by it); the Prometheus text parses and says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_count_exactly_in_the_snapshot_and_the_prometheus_text() {
    let (server, db) = shared_db();
    let (m, app) = manager(
        &server,
        &db,
        "mfail",
        test_opts(3, 1),
        ManagerOptions::default(),
    );
    for i in 0..100i32 {
        let r = m.query_one("SELECT 1 / $1::int4", &[&(i % 34)]).await;
        if i % 34 == 0 {
            let e = r.unwrap_err();
            assert_eq!(e.code(), Some("22012"), "{e}");
        } else {
            r.unwrap();
        }
    }
    let s = m.metrics();
    assert_eq!(s.queries.total, 100);
    assert_eq!(s.queries.succeeded, 97);
    assert_eq!(s.queries.failed, 3);
    assert_eq!(s.queries.errors.statement, 3);
    assert_eq!(s.queries.outcome_unknown, 0);
    assert_eq!(s.queries.retries, 0);
    assert_eq!(s.queries.success_rate_pct, 97.0);
    assert_eq!(s.health.window.success_rate_pct, 97.0);
    assert_eq!(s.health.grade, Grade::Warning);
    assert_eq!(s.health.driven_by, Some(Metric::SuccessRatePct));
    assert_eq!(s.latency_ms.count, 100);
    assert_eq!(
        s.acquire_wait_ms.count, 100,
        "one acquire per call, no retries"
    );
    assert_eq!(
        s.pools["primary"].acquires.direct + s.pools["primary"].acquires.waited,
        100
    );
    // One statement text: one miss per connection that ran it, hits for the rest.
    let c = &s.statement_cache;
    assert_eq!(c.hits + c.misses, 100, "{c:?}");

    let text = m.prometheus();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the text parses");
    let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let hits: Vec<_> = scrape
            .samples
            .iter()
            .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .collect();
        assert_eq!(hits.len(), 1, "{name} {labels:?} in\n{text}");
        match hits[0].value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{other:?}"),
        }
    };
    assert_eq!(get("pgwarden_queries_total", &[("outcome", "ok")]), 97.0);
    assert_eq!(get("pgwarden_queries_total", &[("outcome", "error")]), 3.0);
    assert_eq!(
        get("pgwarden_queries_total", &[("outcome", "unknown")]),
        0.0
    );
    assert_eq!(
        get("pgwarden_query_errors_total", &[("class", "statement")]),
        3.0
    );
    assert_eq!(get("pgwarden_slow_queries_total", &[]), 0.0);
    assert_eq!(get("pgwarden_health_grade", &[]), 1.0);
    assert_eq!(
        get(
            "pgwarden_statement_cache_hits_total",
            &[("pool", "primary")]
        ),
        c.hits as f64
    );
    assert_eq!(
        get("pgwarden_connections_opened_total", &[("pool", "primary")]),
        s.connections.opened as f64
    );
    let hist = scrape
        .samples
        .iter()
        .find(|x| x.metric == "pgwarden_query_duration_seconds")
        .expect("histogram");
    let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
        panic!("{:?}", hist.value)
    };
    assert_eq!(buckets.last().unwrap().count, 100.0, "{buckets:?}");
    assert!(text.contains("pgwarden_query_duration_seconds_count 100\n"));
    assert_invariants(&server, m.pool(), &app).await;
}

/// A pool of one held by `get()`: three calls (no retries) time out acquiring; each is counted
/// as a timed-out acquire and an acquire_timeout error, and its wait is in the histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_timeouts_count_exactly() {
    let (server, db) = shared_db();
    let mut po = test_opts(1, 0);
    po.acquire_timeout = Duration::from_millis(200);
    let mut mo = ManagerOptions::default();
    mo.retry_attempts = 0;
    let (m, app) = manager(&server, &db, "mtimeout", po, mo);
    let held = m.get().await.unwrap();
    for _ in 0..3 {
        let e = m.query_one("SELECT 1", &[]).await.unwrap_err();
        assert!(
            matches!(e, Error::Acquire(pgwarden::AcquireError::TimedOut { .. })),
            "{e}"
        );
    }
    let s = m.metrics();
    let p = &s.pools["primary"];
    assert_eq!(p.acquires.timed_out, 3);
    assert_eq!(p.active, 1);
    assert_eq!(p.utilization_pct, 100.0);
    assert_eq!(s.queries.errors.acquire_timeout, 3);
    assert_eq!(s.queries.failed, 3);
    assert_eq!(s.acquire_wait_ms.count, 4, "the get() and three timeouts");
    assert!(s.acquire_wait_ms.max >= 199.0, "{:?}", s.acquire_wait_ms);
    assert_eq!(s.health.grade, Grade::Critical);
    assert_eq!(s.health.driven_by, Some(Metric::UtilizationPct));
    drop(held);
    // The peak stays in the window after the connection came back.
    eventually(Duration::from_secs(5), "connection back", || async {
        m.pool().status().in_use == 0
    })
    .await;
    assert_eq!(m.metrics().health.window.utilization_pct, 100.0);
    assert_invariants(&server, m.pool(), &app).await;
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
    fn checks(&self) -> usize {
        self.text().matches("health check").count()
    }
}

/// The checker pings and logs the status block every interval, at INFO while good; it stops
/// when the manager is closed, and when it is dropped.
#[tokio::test(flavor = "current_thread")]
async fn the_health_checker_logs_the_block_and_stops_with_the_manager() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // current_thread: the checker task runs on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let (server, db) = shared_db();
    let mut mo = ManagerOptions::default();
    mo.health_check_interval = Some(Duration::from_secs(1));
    // This test is about logging and stopping, at a good grade: latency thresholds out of
    // reach, since on a loaded machine the first call (which opens the connection) can take
    // longer than the default 50 ms average / 80 ms p95 and grade the pool warning.
    let t = &mut mo.health_thresholds;
    (t.avg_query_warning, t.avg_query_critical) =
        (Duration::from_secs(60), Duration::from_secs(120));
    (t.p95_warning, t.p95_critical) = (Duration::from_secs(60), Duration::from_secs(120));
    let (m, _app) = manager(&server, &db, "mcheck", test_opts(2, 0), mo.clone());
    m.query_one("SELECT 1", &[]).await.unwrap();

    let check = m.check_health().await;
    assert_eq!(check.grade, Grade::Good);
    assert_eq!(check.pings.len(), 1);
    assert!(check.pings[0].result.is_ok(), "{:?}", check.pings);

    eventually(Duration::from_secs(5), "two ticks logged", || async {
        log.checks() >= 3
    })
    .await;
    let text = log.text();
    assert!(text.contains(" INFO "), "{text}");
    assert!(
        text.contains("Pool Health: GOOD\n   Active: 0/2 (0%)\n   Idle: "),
        "{text}"
    );
    assert!(text.contains("\n   Failover: INACTIVE"), "{text}");

    m.close(Duration::from_secs(1)).await;
    let after_close = log.checks();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(log.checks(), after_close, "a check ran after close()");

    let (m2, _app) = manager(&server, &db, "mcheck2", test_opts(2, 0), mo);
    eventually(
        Duration::from_secs(5),
        "the second manager's tick",
        || async { log.checks() > after_close },
    )
    .await;
    let before_drop = log.checks();
    drop(m2);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(log.checks(), before_drop, "a check ran after drop");
}

/// A critical grade is logged at ERROR with what drove it.
#[tokio::test(flavor = "current_thread")]
async fn a_critical_check_is_logged_at_error() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (server, db) = shared_db();
    let mut mo = ManagerOptions::default();
    mo.health_check_interval = None;
    let mut po = test_opts(1, 0);
    po.acquire_timeout = Duration::from_millis(300);
    let (m, app) = manager(&server, &db, "mcrit", po, mo);
    let held = m.get().await.unwrap();
    let check = m.check_health().await;
    assert_eq!(check.grade, Grade::Critical);
    assert!(
        check.pings[0].result.is_err(),
        "the only connection is held"
    );
    let text = log.text();
    assert!(text.contains(" ERROR "), "{text}");
    assert!(text.contains("driven_by=\"utilization_pct\""), "{text}");
    assert!(
        text.contains("Pool Health: CRITICAL (utilization_pct: 100%)"),
        "{text}"
    );
    drop(held);
    assert_invariants(&server, m.pool(), &app).await;
}
