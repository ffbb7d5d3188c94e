//! `pgwarden bench`: short runs (seconds of load, never the 10 s default).

use std::time::Duration;

use serde_json::Value;

use crate::common::{bench_tables, own_database, pgwarden, text, Running};

/// DESIGN.md's snapshot names: the floor the CLI and dashboards rely on, never renamed.
const DESIGN_KEYS: [&str; 42] = [
    "/pools/primary/max",
    "/pools/primary/total",
    "/pools/primary/active",
    "/pools/primary/idle",
    "/pools/primary/waiting",
    "/pools/primary/utilization_pct",
    "/queries/total",
    "/queries/succeeded",
    "/queries/failed",
    "/queries/success_rate_pct",
    "/queries/retries",
    "/queries/outcome_unknown",
    "/queries/slow",
    "/queries/slow_per_min",
    "/latency_ms/avg",
    "/latency_ms/p50",
    "/latency_ms/p95",
    "/latency_ms/p99",
    "/latency_ms/p999",
    "/latency_ms/max",
    "/acquire_wait_ms/avg",
    "/acquire_wait_ms/p50",
    "/acquire_wait_ms/p95",
    "/acquire_wait_ms/p99",
    "/acquire_wait_ms/p999",
    "/acquire_wait_ms/max",
    "/connections/opened",
    "/connections/closed",
    "/connections/reuse_rate_pct",
    "/statement_cache/hits",
    "/statement_cache/misses",
    "/statement_cache/evictions",
    "/failover/active",
    "/failover/activations",
    "/failover/active_ms",
    "/health/grade",
    "/health/driven_by",
    "/health/window/utilization_pct",
    "/health/window/avg_ms",
    "/health/window/p95_ms",
    "/health/window/success_rate_pct",
    "/health/window/slow_per_min",
];

fn json_of(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}):\n{}", text(o)))
}

#[test]
fn a_short_bench_on_a_throwaway_server_reports_and_writes_json() {
    let o = pgwarden(
        &[
            "bench",
            "point-select",
            "-d",
            "1.5",
            "-c",
            "4",
            "--json",
            "-",
        ],
        &[],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let doc = json_of(&o);
    assert_eq!(doc["workload"], "point-select");
    assert_eq!(doc["concurrency"], 4);
    let calls = doc["calls"].as_u64().expect("calls");
    assert!(calls > 0, "{doc}");
    assert_eq!(doc["failed"], 0, "{doc}");
    let secs = doc["duration_s"].as_f64().expect("duration_s");
    assert!((1.4..10.0).contains(&secs), "{secs}");
    assert!(doc["throughput_per_sec"].as_f64().unwrap() > 0.0);
    let snap = &doc["snapshot"];
    assert_eq!(snap["queries"]["total"].as_u64(), Some(calls), "{snap}");
    assert_eq!(snap["queries"]["succeeded"].as_u64(), Some(calls), "{snap}");
    let missing: Vec<&str> = DESIGN_KEYS
        .iter()
        .copied()
        .filter(|k| snap.pointer(k).is_none())
        .collect();
    assert!(missing.is_empty(), "missing {missing:?} in {snap}");
    assert!(
        ["good", "warning", "critical"].contains(&snap["health"]["grade"].as_str().unwrap_or("")),
        "{snap}"
    );
    // The text report went to stderr, with its histogram.
    let report = String::from_utf8_lossy(&o.stderr);
    for part in [
        "pgwarden bench · point-select · 4 tasks",
        "throughput",
        "latency",
        "latency per call",
        "dropped pgwarden_bench_",
        "throwaway server stopped and removed",
    ] {
        assert!(report.contains(part), "{part} in {report}");
    }
}

#[test]
fn bench_with_database_url_writes_only_its_own_tables_and_drops_them() {
    let (server, db, url) = own_database();
    let o = pgwarden(
        &["bench", "mixed", "-n", "400", "-c", "4"],
        &[("DATABASE_URL", &url)],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("calls         400 (400 ok"), "{out}");
    assert!(!out.contains("throwaway"), "{out}");
    assert_eq!(bench_tables(&server, &db), "", "tables left behind: {out}");
}

#[test]
fn n_alone_runs_exactly_that_many_calls_with_no_time_limit() {
    let (server, db, url) = own_database();
    server
        .psql(
            &db,
            "CREATE TABLE hits (id int8 GENERATED ALWAYS AS IDENTITY)",
        )
        .unwrap();
    // A write of the user's own: exactly one row per call, never more (no silent rerun).
    let o = pgwarden(
        &[
            "bench",
            "--sql",
            "INSERT INTO hits DEFAULT VALUES",
            "-n",
            "250",
            "-c",
            "8",
            "--json",
            "-",
        ],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let doc = json_of(&o);
    assert_eq!(doc["workload"], "sql");
    assert_eq!(doc["calls"], 250, "{doc}");
    assert_eq!(
        server.psql(&db, "SELECT count(*) FROM hits").unwrap(),
        "250"
    );

    // --idempotent: a read the pool may retry; -n and -d together end at whichever is first.
    let o = pgwarden(
        &[
            "bench",
            "--sql",
            "SELECT count(*) FROM hits",
            "--idempotent",
            "-n",
            "100",
            "-d",
            "30",
            "-c",
            "2",
            "--json",
            "-",
        ],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let doc = json_of(&o);
    assert_eq!(doc["calls"], 100, "{doc}");
    assert!(doc["duration_s"].as_f64().unwrap() < 30.0);
    assert_eq!(doc["snapshot"]["queries"]["succeeded"], 100, "{doc}");
}

#[test]
fn json_file_holds_the_document() {
    let (_server, _db, url) = own_database();
    let dir = std::env::temp_dir().join(format!("pgwarden-cli-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.json");
    let o = pgwarden(
        &[
            "bench",
            "-n",
            "50",
            "-c",
            "2",
            "--json",
            file.to_str().unwrap(),
        ],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // stdout has the text report; the file has the JSON.
    assert!(
        text(&o).contains("pgwarden bench · select1"),
        "{}",
        text(&o)
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(doc["calls"], 50);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sends SIGINT once the load has run for a moment; returns the exit code and the output.
fn interrupt_mid_run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut run = Running::spawn(args, env);
    // The throwaway server may wait for a machine-wide slot (up to the harness's 10 minutes).
    run.wait_for("running ", Duration::from_secs(660));
    // stdout is not a terminal: the live view is the status block every 2 s.
    let first = run.wait_for("[", Duration::from_secs(30));
    assert!(
        first.contains(" s] ") && first.contains(" calls · "),
        "{first}"
    );
    let block = run.wait_for("          ", Duration::from_secs(5));
    assert!(!block.trim().is_empty());
    let pid = nix::unistd::Pid::from_raw(run.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    run.finish(Duration::from_secs(60))
}

#[test]
fn ctrl_c_mid_run_reports_and_leaves_no_server_behind() {
    let (code, out) = interrupt_mid_run(&["bench", "mixed", "-d", "60", "-c", "4"], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("interrupted (Ctrl-C)"), "{out}");
    assert!(out.contains("latency per call"), "{out}");
    assert!(out.contains("dropped pgwarden_bench_"), "{out}");
    assert!(
        out.contains("throwaway server stopped and removed"),
        "{out}"
    );
    // Nothing listens on the throwaway server's port any more.
    let port: u16 = out
        .split("on 127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {out}"));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a server still listens on {port}:\n{out}"
    );
}

#[test]
fn ctrl_c_mid_run_on_your_own_server_leaves_no_table_behind() {
    let (server, db, url) = own_database();
    let (code, out) = interrupt_mid_run(
        &["bench", "point-select", "-d", "60", "-c", "4"],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("interrupted (Ctrl-C)"), "{out}");
    assert_eq!(bench_tables(&server, &db), "", "tables left behind: {out}");
}

#[test]
fn a_statement_that_fails_on_some_calls_is_reported_with_its_first_error() {
    let (server, db, url) = own_database();
    server
        .psql(&db, "CREATE TABLE once (id int4 PRIMARY KEY)")
        .unwrap();
    // The first call inserts the row; every later one hits the primary key.
    let o = pgwarden(
        &[
            "bench",
            "--sql",
            "INSERT INTO once VALUES (1)",
            "-n",
            "40",
            "-c",
            "1",
        ],
        &[("DATABASE_URL", &url)],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("calls         40 (1 ok, 39 failed: 2.50% success)"),
        "{out}"
    );
    assert!(out.contains("first error"), "{out}");
    assert!(out.contains("duplicate key"), "{out}");
    assert_eq!(server.psql(&db, "SELECT count(*) FROM once").unwrap(), "1");
}

/// A plain HTTP/1.0 GET over loopback: the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the endpoints");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (code, body)
}

#[test]
fn serve_exposes_metrics_health_and_status_while_the_load_runs() {
    let (_server, _db, url) = own_database();
    let mut run = Running::spawn(
        &["bench", "-d", "30", "-c", "2", "--serve", "127.0.0.1:0"],
        &[("DATABASE_URL", &url)],
    );
    let line = run.wait_for("serving /metrics", Duration::from_secs(60));
    let addr = line
        .rsplit("http://")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    run.wait_for("running ", Duration::from_secs(30));
    run.wait_for("[", Duration::from_secs(30));
    let (code, metrics) = http_get(&addr, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("pgwarden_queries_total"), "{metrics}");
    let (code, health) = http_get(&addr, "/health");
    assert!(code == 200 || code == 503, "{code} {health}");
    assert!(health.contains("\"grade\""), "{health}");
    let (code, status) = http_get(&addr, "/status");
    assert_eq!(code, 200);
    assert!(status.contains("Pool Health:"), "{status}");
    let pid = nix::unistd::Pid::from_raw(run.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let (code, out) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the endpoints still answer on {addr} after the run"
    );
}

#[test]
fn pipeline_runs_the_load_on_the_shared_lane_and_reports_it() {
    let (_server, _db, url) = own_database();
    let o = pgwarden(
        &[
            "bench",
            "select1",
            "-n",
            "3000",
            "-c",
            "64",
            "--pipeline",
            "2",
            "--json",
            "-",
        ],
        &[("DATABASE_URL", &url)],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let doc = json_of(&o);
    assert_eq!(doc["calls"], 3000, "{doc}");
    assert_eq!(doc["failed"], 0, "{doc}");
    let lane = &doc["snapshot"]["lane"];
    assert_eq!(lane["configured"], 2, "{lane}");
    assert_eq!(lane["connections"], 2, "{lane}");
    // Opened before the load: every call of it went on the lane.
    assert!(lane["served"].as_u64().unwrap_or(0) >= 3000, "{lane}");
    let report = String::from_utf8_lossy(&o.stderr);
    assert!(report.contains("lane          2/2 connections"), "{report}");
}
