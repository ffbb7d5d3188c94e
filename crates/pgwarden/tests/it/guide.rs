//! docs/GUIDE.md and the Grafana dashboard against the code and a running manager, so neither
//! can drift: the variable table is the configuration's, the grade table the thresholds', every
//! Prometheus name in the guide and every metric a dashboard query uses is in the real
//! `/metrics`, the status block and the JSON snapshot shown are the real ones' shape, and every
//! quoted error message is still printed by the code. (The guide's Rust blocks are doc tests;
//! its `$ pgwarden` commands are run by the CLI's tests.)

mod examples;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use pgwarden::config::{Config, HealthThresholds, Profile};
use pgwarden::PoolManager;

use crate::common::*;

const GUIDE: &str = include_str!("../../../../docs/GUIDE.md");
const DASHBOARD: &str = include_str!("../../../../docs/grafana/pgwarden-dashboard.json");

/// The lines of the section whose heading is `heading`, up to the next heading of its level or
/// above.
fn section(heading: &str) -> Vec<&'static str> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut lines = GUIDE.lines().skip_while(|l| *l != heading);
    assert!(
        lines.next().is_some(),
        "no section {heading:?} in the guide"
    );
    let mut fenced = false;
    lines
        .take_while(|l| {
            fenced ^= l.starts_with("```");
            let n = l.chars().take_while(|c| *c == '#').count();
            fenced || !(n > 0 && n <= level && l.chars().nth(n) == Some(' '))
        })
        .collect()
}

/// The cells of a Markdown table row, backticks removed.
fn cells(row: &str) -> Vec<String> {
    row.trim()
        .trim_matches('|')
        .split(" | ")
        .map(|c| c.trim().trim_matches('`').to_owned())
        .collect()
}

/// The blocks fenced with ```` ```lang ````.
fn blocks(lang: &str) -> Vec<String> {
    let open = format!("```{lang}");
    let mut out = Vec::new();
    let mut cur: Option<Vec<&str>> = None;
    for l in GUIDE.lines() {
        match &mut cur {
            None if l.trim_end() == open => cur = Some(Vec::new()),
            Some(b) if l.trim_end() == "```" => {
                out.push(b.join("\n"));
                cur = None;
            }
            Some(b) => b.push(l),
            None => {}
        }
    }
    out
}

#[test]
fn guide_variable_table_is_the_configuration_s_every_variable_and_default() {
    let rows: BTreeMap<String, Vec<String>> = section("### Every variable")
        .into_iter()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let c = cells(l);
            assert_eq!(c.len(), 5, "a row of five cells: {l}");
            (c[0].clone(), c[2..].to_vec())
        })
        .collect();
    for (i, profile) in Profile::ALL.into_iter().enumerate() {
        let config = Config::for_profile(profile);
        let known: BTreeSet<&str> = config.effective().iter().map(|s| s.variable).collect();
        let documented: BTreeSet<&str> = rows.keys().map(String::as_str).collect();
        assert_eq!(
            known.difference(&documented).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "variables the configuration reads but the guide's table lacks"
        );
        assert_eq!(
            documented.difference(&known).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "variables in the guide's table the configuration does not read"
        );
        for s in config.effective() {
            assert_eq!(
                rows[s.variable][i], s.value,
                "{}'s {profile} default in the guide",
                s.variable
            );
        }
    }
}

#[test]
fn guide_dependency_line_asks_for_features_the_crate_has() {
    let manifest = include_str!("../../Cargo.toml");
    let toml = blocks("toml").join("\n");
    let line = toml
        .lines()
        .find(|l| l.starts_with("pgwarden = "))
        .expect("the guide's dependency line");
    let features = line
        .split_once("features = [")
        .and_then(|(_, r)| r.split_once(']'))
        .map_or("", |(f, _)| f);
    for f in features.split(',').map(|f| f.trim().trim_matches('"')) {
        assert!(
            manifest.contains(&format!("\n{f} = [")),
            "the guide asks for feature {f:?}, which crates/pgwarden does not have"
        );
    }
}

#[test]
fn guide_grade_table_is_the_default_thresholds() {
    let t = HealthThresholds::default();
    let n = |v: f64| format!("{v}");
    let ms = |d: std::time::Duration| format!("{} ms", d.as_millis());
    let rows = [
        format!(
            "| `utilization_pct` | < {}% | {}% to < {}% | ≥ {}% |",
            n(t.utilization_warning_pct),
            n(t.utilization_warning_pct),
            n(t.utilization_critical_pct),
            n(t.utilization_critical_pct)
        ),
        format!(
            "| `avg_ms` | < {} | {} to {} | > {} |",
            ms(t.avg_query_warning),
            ms(t.avg_query_warning),
            ms(t.avg_query_critical),
            ms(t.avg_query_critical)
        ),
        format!(
            "| `p95_ms` | < {} | {} to {} | > {} |",
            ms(t.p95_warning),
            ms(t.p95_warning),
            ms(t.p95_critical),
            ms(t.p95_critical)
        ),
        format!(
            "| `success_rate_pct` | > {}% | {}% to {}% | < {}% |",
            n(t.success_rate_warning_pct),
            n(t.success_rate_critical_pct),
            n(t.success_rate_warning_pct),
            n(t.success_rate_critical_pct)
        ),
        format!(
            "| `slow_per_min` | < {} | {} to {} | > {} |",
            n(t.slow_per_min_warning),
            n(t.slow_per_min_warning),
            n(t.slow_per_min_critical),
            n(t.slow_per_min_critical)
        ),
    ];
    let table = section("### Grades and their thresholds");
    for row in rows {
        assert!(
            table.contains(&row.as_str()),
            "the guide lacks the row {row}"
        );
    }
}

/// Every `.rs` file under `dir`, concatenated.
fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).expect("read source"));
        }
    }
}

#[test]
fn every_message_the_guide_quotes_is_still_printed_by_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut code = String::new();
    sources(&root.join("src"), &mut code);
    sources(&root.join("../pgwarden-cli/src"), &mut code);
    sources(&root.join("../pgwarden-testdb/src"), &mut code);
    let text = section("### Messages, their causes and fixes").join("\n");
    let quoted: Vec<&str> = text
        .split("**`")
        .skip(1)
        .filter_map(|s| s.split_once("`**").map(|(q, _)| q))
        .collect();
    assert!(quoted.len() >= 25, "{} messages quoted", quoted.len());
    for q in quoted {
        let q = q.replace('\n', " ");
        for fragment in q.split('…').map(str::trim).filter(|f| f.len() >= 4) {
            assert!(
                code.contains(fragment),
                "the guide quotes {fragment:?} (in {q:?}), which the code no longer prints"
            );
        }
    }
}

/// A manager with failover on the same server (so both pools show), read routing to a real
/// streaming standby and the pipelined lane (so their figures show), some traffic (one failure
/// in three, reads routed to the standby), and its `/metrics` text as served over HTTP. The
/// servers are returned so they outlive the manager.
async fn busy_manager() -> (
    PoolManager,
    String,
    [std::sync::Arc<pgwarden_testdb::PgServer>; 2],
) {
    let (primary, standby, db) = primary_with_standby().await;
    let app = app_name("guide");
    let (url, read_url) = (primary.url(&db), standby.url(&db));
    let config = Config::from_vars([
        ("DATABASE_URL", url.as_str()),
        ("DB_READ_URL", read_url.as_str()),
        ("DB_ENABLE_FAILOVER", "true"),
        ("DB_POOL_MAX", "4"),
        ("DB_POOL_MIN", "1"),
        ("DB_FAILOVER_POOL_MAX", "2"),
        ("DB_PIPELINE_CONNECTIONS", "1"),
        ("DB_APPLICATION_NAME", app.as_str()),
    ])
    .expect("config");
    let m = PoolManager::from_config(&config).await.expect("manager");
    for i in 0..6i32 {
        let r = m.query_one("SELECT 10 / $1::int4", &[&(i % 3)]).await;
        assert_eq!(r.is_err(), i % 3 == 0, "{r:?}");
    }
    for _ in 0..3 {
        let in_recovery: bool = m
            .query_one("SELECT pg_is_in_recovery()", &[])
            .read_only()
            .await
            .expect("read")
            .get(0);
        assert!(in_recovery, "a read on a caught-up standby is served there");
    }
    let srv = pgwarden::http::serve(m.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("serve");
    let (code, body) = crate::http::http_get(srv.local_addr(), "/metrics").await;
    assert_eq!(code, 200, "{body}");
    srv.stop().await.expect("stop");
    (m, body, [primary, standby])
}

/// Sample names of a Prometheus text, with every label pair seen on each.
fn samples(text: &str) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut out: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).expect("a sample line");
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if let Some(inner) = line[name_end..]
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
        {
            for pair in inner.0.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                labels.insert((k.to_owned(), v.trim_end_matches('"').to_owned()));
            }
        }
    }
    out
}

/// Every `pgwarden_…` name in `text` (the harness crate's name aside).
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("pgwarden_") && *w != "pgwarden_testdb")
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_prometheus_names_status_block_and_snapshot_are_the_real_ones() {
    let (m, metrics, _servers) = busy_manager().await;
    let seen = samples(&metrics);
    let families: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    // Every name the guide uses exists; every family served is in the guide's table.
    for name in metric_names(GUIDE) {
        assert!(
            families.contains(&name) || seen.contains_key(&name),
            "the guide names {name}, which /metrics does not serve"
        );
    }
    let table: BTreeSet<String> = section("### Prometheus")
        .into_iter()
        .filter(|l| l.starts_with("| `pgwarden_"))
        .map(|l| cells(l)[0].clone())
        .collect();
    assert_eq!(table, families, "the guide's table of Prometheus names");

    // The status block shown has the real block's lines, in order.
    let real = m.status();
    let label = |l: &str| l.split(':').next().unwrap_or_default().trim().to_owned();
    let shown = blocks("text")
        .into_iter()
        .find(|b| b.starts_with("Pool Health: "))
        .expect("a status block in the guide");
    assert_eq!(
        shown.lines().map(label).collect::<Vec<_>>(),
        real.lines().map(label).collect::<Vec<_>>(),
        "the guide's status block:\n{shown}\nthe real one:\n{real}"
    );

    // Every key of the JSON shown is in the real snapshot, at the same place.
    let real = serde_json::to_value(m.metrics()).expect("snapshot serializes");
    let shown: serde_json::Value =
        serde_json::from_str(&blocks("json")[0]).expect("the guide's JSON parses");
    fn keys_exist(shown: &serde_json::Value, real: &serde_json::Value, path: &str) {
        if let Some(obj) = shown.as_object() {
            for (k, v) in obj {
                let p = format!("{path}.{k}");
                let r = real
                    .get(k)
                    .unwrap_or_else(|| panic!("{p} is not in the snapshot"));
                keys_exist(v, r, &p);
            }
        }
    }
    keys_exist(&shown, &real, "");
    m.close(std::time::Duration::from_secs(1)).await;
}

/// `name{k="v",…}` selectors of a PromQL expression: the name and its `=` matchers (regex and
/// template matchers are left out).
fn selectors(expr: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("pgwarden_") {
        rest = &rest[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = rest[..end].to_owned();
        rest = &rest[end..];
        let mut matchers = Vec::new();
        if let Some(inner) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) {
            for m in inner.0.split(',') {
                if let Some((k, v)) = m.split_once("=\"") {
                    let v = v.trim_end_matches('"');
                    if !k.ends_with(['~', '!']) && !v.contains('$') {
                        matchers.push((k.trim().to_owned(), v.to_owned()));
                    }
                }
            }
        }
        out.push((name, matchers));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_parses_and_queries_only_real_metrics() {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON parses");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 30),
        "schemaVersion"
    );
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains(&"datasource"), "{vars:?}");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut cells_taken = BTreeMap::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id at {title}"
        );
        let g = |k: &str| {
            p["gridPos"][k]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        };
        assert!(g("x") + g("w") <= 24, "{title}: wider than the grid");
        for x in g("x")..g("x") + g("w") {
            for y in g("y")..g("y") + g("h") {
                if let Some(other) = cells_taken.insert((x, y), title) {
                    panic!("{title} overlaps {other}");
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(
            ["timeseries", "stat"].contains(&p["type"].as_str().unwrap_or_default()),
            "{title}: type"
        );
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(t["refId"].is_string(), "{title}: refId");
            assert!(expr.contains("pgwarden_"), "{title}: {expr}");
            exprs.push((title.to_owned(), expr.to_owned()));
        }
    }

    // What the brief asks the dashboard to show.
    let all: String = exprs.iter().map(|(_, e)| e.as_str()).collect();
    for want in [
        "pgwarden_pool_connections{state=\"active\"",
        "pgwarden_pool_waiting",
        "pgwarden_acquire_wait_seconds_bucket",
        "pgwarden_query_duration_seconds_bucket",
        "pgwarden_queries_total{outcome=\"ok\"",
        "pgwarden_retries_total",
        "pgwarden_queries_total{outcome=\"unknown\"",
        "pgwarden_failover_active",
        "pgwarden_failover_activations_total",
        "pgwarden_slow_queries_total",
        "pgwarden_health_grade",
    ] {
        assert!(all.contains(want), "no panel queries {want}");
    }

    // Every metric and label value the queries use is in real /metrics output.
    let (m, metrics, _servers) = busy_manager().await;
    let seen = samples(&metrics);
    for (title, expr) in &exprs {
        for (name, matchers) in selectors(expr) {
            let labels = seen
                .get(&name)
                .unwrap_or_else(|| panic!("{title}: {name} is not in /metrics:\n{metrics}"));
            for (k, v) in matchers {
                assert!(
                    labels.contains(&(k.clone(), v.clone())),
                    "{title}: no {name} sample has {k}=\"{v}\""
                );
            }
        }
    }
    m.close(std::time::Duration::from_secs(1)).await;
}
