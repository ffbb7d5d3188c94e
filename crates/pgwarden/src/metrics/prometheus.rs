//! The Prometheus text exposition (format 0.0.4) of a snapshot, with the names fixed in
//! DESIGN.md ("Prometheus names"): prefix `pgwarden_`, seconds, a `pool` label on everything
//! per pool.

use super::exposition::Out;
use super::recorder::Figures;
use super::snapshot::Snapshot;

/// The `Content-Type` of the text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The text. `pool_names[i]` is the pool whose acquires the recorder holds under index `i`.
pub(crate) fn render(s: &Snapshot, fig: &Figures, pool_names: &[&str]) -> String {
    let mut o = Out(String::with_capacity(8 * 1024));
    let pools = || s.pools.iter().map(|(n, p)| (n.as_str(), p));

    o.head(
        "pgwarden_pool_connections",
        "gauge",
        "Connections of the pool, by state.",
    );
    for (n, p) in pools() {
        o.sample(
            "pgwarden_pool_connections",
            &[("pool", n), ("state", "active")],
            p.active.into(),
        );
        o.sample(
            "pgwarden_pool_connections",
            &[("pool", n), ("state", "idle")],
            p.idle.into(),
        );
    }
    o.head(
        "pgwarden_pool_max_connections",
        "gauge",
        "Maximum connections of the pool.",
    );
    for (n, p) in pools() {
        o.sample(
            "pgwarden_pool_max_connections",
            &[("pool", n)],
            p.max.into(),
        );
    }
    o.head(
        "pgwarden_pool_waiting",
        "gauge",
        "Acquires waiting for a connection.",
    );
    for (n, p) in pools() {
        o.sample("pgwarden_pool_waiting", &[("pool", n)], p.waiting.into());
    }
    o.head(
        "pgwarden_pool_acquires_total",
        "counter",
        "Acquires, by how they ended.",
    );
    for (n, p) in pools() {
        let a = &p.acquires;
        for (result, v) in [
            ("direct", a.direct),
            ("waited", a.waited),
            ("timed_out", a.timed_out),
            ("cancelled", a.cancelled),
            ("failed", a.failed),
        ] {
            o.sample(
                "pgwarden_pool_acquires_total",
                &[("pool", n), ("result", result)],
                v as f64,
            );
        }
    }
    o.head(
        "pgwarden_acquire_wait_seconds",
        "histogram",
        "Time an acquire took, timeouts included.",
    );
    for (i, t) in fig.waits.iter().enumerate() {
        if let Some(n) = pool_names.get(i) {
            o.histogram("pgwarden_acquire_wait_seconds", &[("pool", n)], t);
        }
    }
    o.head(
        "pgwarden_connections_opened_total",
        "counter",
        "Connections opened.",
    );
    for (n, p) in pools() {
        o.sample(
            "pgwarden_connections_opened_total",
            &[("pool", n)],
            p.connections.opened as f64,
        );
    }
    o.head(
        "pgwarden_leaks_total",
        "counter",
        "Checkouts held longer than DB_LEAK_DETECTION_THRESHOLD.",
    );
    for (n, p) in pools() {
        o.sample(
            "pgwarden_leaks_total",
            &[("pool", n)],
            p.connections.leaks as f64,
        );
    }
    o.head(
        "pgwarden_connections_closed_total",
        "counter",
        "Connections closed, by reason.",
    );
    for (n, p) in pools() {
        let c = &p.connections.closed;
        for (reason, v) in [
            ("idle", c.idle),
            ("lifetime", c.lifetime),
            ("broken", c.broken),
            ("failed_validation", c.failed_validation),
            ("dirty", c.dirty),
            ("shutdown", c.shutdown),
        ] {
            o.sample(
                "pgwarden_connections_closed_total",
                &[("pool", n), ("reason", reason)],
                v as f64,
            );
        }
    }
    for (what, help) in [
        ("hits", "Statement cache lookups served from the cache."),
        ("misses", "Statement cache lookups that had to prepare."),
        ("evictions", "Statements evicted from the cache."),
    ] {
        let name = format!("pgwarden_statement_cache_{what}_total");
        o.head(&name, "counter", help);
        for (n, p) in pools() {
            let c = &p.statement_cache;
            let v = match what {
                "hits" => c.hits,
                "misses" => c.misses,
                _ => c.evictions,
            };
            o.sample(&name, &[("pool", n)], v as f64);
        }
    }

    let q = &s.queries;
    o.head(
        "pgwarden_queries_total",
        "counter",
        "Calls, by outcome (retries counted once).",
    );
    for (outcome, v) in [
        ("ok", q.succeeded),
        ("error", q.failed - q.outcome_unknown),
        ("unknown", q.outcome_unknown),
    ] {
        o.sample("pgwarden_queries_total", &[("outcome", outcome)], v as f64);
    }
    o.head(
        "pgwarden_query_errors_total",
        "counter",
        "Failed calls, by class.",
    );
    for class in super::recorder::ErrorClass::ALL {
        o.sample(
            "pgwarden_query_errors_total",
            &[("class", class.name())],
            fig.counts.errors[class as usize] as f64,
        );
    }
    o.head(
        "pgwarden_retries_total",
        "counter",
        "Retries (extra attempts), by reason.",
    );
    for reason in super::recorder::RetryReason::ALL {
        o.sample(
            "pgwarden_retries_total",
            &[("reason", reason.name())],
            fig.retries[reason as usize] as f64,
        );
    }
    o.head(
        "pgwarden_slow_queries_total",
        "counter",
        "Statements slower than the slow-query threshold.",
    );
    o.sample("pgwarden_slow_queries_total", &[], q.slow as f64);
    o.head(
        "pgwarden_query_duration_seconds",
        "histogram",
        "Time a call took, retries and backoff included.",
    );
    o.histogram("pgwarden_query_duration_seconds", &[], &fig.latency);

    o.head(
        "pgwarden_health_grade",
        "gauge",
        "Health grade of the last minute: 0 good, 1 warning, 2 critical.",
    );
    o.sample(
        "pgwarden_health_grade",
        &[],
        s.health.grade.as_gauge().into(),
    );
    o.head(
        "pgwarden_failover_active",
        "gauge",
        "1 while the failover pool serves checkouts.",
    );
    o.sample(
        "pgwarden_failover_active",
        &[],
        u8::from(s.failover.active).into(),
    );
    o.head(
        "pgwarden_failover_activations_total",
        "counter",
        "Times the failover pool became active.",
    );
    o.sample(
        "pgwarden_failover_activations_total",
        &[],
        s.failover.activations as f64,
    );
    super::read::prometheus(&mut o, &s.read);
    let lane = &s.lane;
    for (name, kind, help, v) in [
        (
            "pgwarden_lane_connections",
            "gauge",
            "Open connections of the pipelined lane (DB_PIPELINE_CONNECTIONS).",
            f64::from(lane.connections),
        ),
        (
            "pgwarden_lane_in_flight",
            "gauge",
            "Statements in flight on the pipelined lane.",
            f64::from(lane.in_flight),
        ),
        (
            "pgwarden_lane_statements_total",
            "counter",
            "Statements the pipelined lane served.",
            lane.served as f64,
        ),
        (
            "pgwarden_lane_stalls_total",
            "counter",
            "Calls that waited for room on a full pipelined lane.",
            lane.stalls as f64,
        ),
        (
            "pgwarden_lane_connections_lost_total",
            "counter",
            "Pipelined lane connections lost under their statements.",
            lane.lost as f64,
        ),
    ] {
        o.head(name, kind, help);
        o.sample(name, &[], v);
    }
    o.0
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use prometheus_parse::{Scrape, Value};
    use tokio::time::Instant;

    use super::*;
    use crate::health::HealthThresholds;
    use crate::metrics::recorder::{ErrorClass, Outcome, Recorder, RetryReason};
    use crate::metrics::snapshot::{build, tests::pool, FailoverSnapshot};

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition")
    }

    fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = s
            .samples
            .iter()
            .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        match &found[0].value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn the_text_parses_and_its_counters_equal_the_snapshot() {
        let t0 = Instant::now();
        let r = Recorder::new(2, t0);
        for i in 0..50u64 {
            r.call(t0, Duration::from_micros(300 + i * 100), Outcome::Ok);
        }
        r.call(
            t0,
            Duration::from_secs(3),
            Outcome::Failed {
                class: ErrorClass::QueryTimeout,
                unknown: true,
            },
        );
        r.call(
            t0,
            Duration::from_millis(2),
            Outcome::Failed {
                class: ErrorClass::Statement,
                unknown: false,
            },
        );
        r.retry(RetryReason::ConnectionLost);
        r.slow(t0);
        r.slow(t0);
        r.acquire(0, Duration::from_micros(150));
        r.acquire(1, Duration::from_millis(7));
        let fig = r.figures(t0);
        let pools = [pool("primary", 10, 4, true), pool("failover", 5, 0, false)];
        let s = build(
            &pools,
            &fig,
            FailoverSnapshot::default(),
            &HealthThresholds::default(),
        );
        let text = render(&s, &fig, &["primary", "failover"]);
        let scrape = parse(&text);

        let q = &s.queries;
        let outcome = |o| value(&scrape, "pgwarden_queries_total", &[("outcome", o)]);
        assert_eq!(outcome("ok"), q.succeeded as f64);
        assert_eq!(outcome("unknown"), q.outcome_unknown as f64);
        assert_eq!(outcome("ok") + outcome("error") + outcome("unknown"), 52.0);
        assert_eq!(
            value(&scrape, "pgwarden_slow_queries_total", &[]),
            q.slow as f64
        );
        assert_eq!(
            value(
                &scrape,
                "pgwarden_retries_total",
                &[("reason", "connection_lost")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &scrape,
                "pgwarden_pool_connections",
                &[("pool", "primary"), ("state", "active")]
            ),
            4.0
        );
        assert_eq!(
            value(
                &scrape,
                "pgwarden_statement_cache_hits_total",
                &[("pool", "failover")]
            ),
            80.0
        );
        assert_eq!(
            value(
                &scrape,
                "pgwarden_pool_acquires_total",
                &[("pool", "failover"), ("result", "timed_out")]
            ),
            3.0
        );
        assert_eq!(
            value(&scrape, "pgwarden_health_grade", &[]),
            1.0,
            "96% success: warning"
        );
        assert_eq!(value(&scrape, "pgwarden_failover_active", &[]), 0.0);

        // Histograms: sub-millisecond and multi-second calls land in different buckets.
        let h = scrape
            .samples
            .iter()
            .find(|x| x.metric == "pgwarden_query_duration_seconds")
            .expect("query histogram");
        let Value::Histogram(buckets) = &h.value else {
            panic!("{:?}", h.value)
        };
        let le = |b: f64| {
            buckets
                .iter()
                .find(|c| (c.less_than - b).abs() < 1e-12)
                .unwrap()
                .count
        };
        assert_eq!(le(0.0005), 3.0, "300, 400, 500 µs");
        assert_eq!(le(0.0025), 24.0, "300 µs to 2.5 ms, and the 2 ms failure");
        assert_eq!(le(2.5), 51.0);
        assert_eq!(le(5.0), 52.0);
        let waits: HashMap<_, _> = scrape
            .samples
            .iter()
            .filter(|x| x.metric == "pgwarden_acquire_wait_seconds")
            .map(|x| (x.labels.get("pool").unwrap().to_owned(), x.value.clone()))
            .collect();
        assert_eq!(waits.len(), 2);
        assert!(
            text.contains("pgwarden_query_duration_seconds_count 52\n"),
            "{text}"
        );
        assert!(text.contains("pgwarden_acquire_wait_seconds_sum{pool=\"failover\"} 0.007\n"));
    }
}
