//! The status block of the brief, from a snapshot.

use std::fmt::Write;

use super::snapshot::Snapshot;
use crate::health::Grade;

/// Milliseconds as the block prints them: whole above 10 ms, one decimal below.
fn ms(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}ms")
    } else {
        format!("{v:.1}ms")
    }
}

/// The status block:
///
/// ```text
/// Pool Health: GOOD
///    Active: 8/100 (8%)
///    Idle: 92
///    Query Time: 45ms avg (p95 80ms, p99 120ms)
///    Slow: 0 queries in the last minute
///    Failover: INACTIVE
/// ```
///
/// Active and Idle count the pools that can serve a checkout; the query time and slow count
/// are the last minute's, the figures the grade used. A grade other than GOOD names the figure
/// that set it: `Pool Health: WARNING (p95_ms: 120ms)`. With a read pool (`DB_READ_URL`) a last
/// line tells where reads go: `   Reads: STANDBY (lag 12kB, limit 16MB; 120 routed, 3 to the
/// primary)`.
pub(crate) fn render(s: &Snapshot) -> String {
    let h = &s.health;
    let w = &h.window;
    let serving = s.pools.values().filter(|p| p.serves_checkouts);
    let (active, max, idle) = serving.fold((0u64, 0u64, 0u64), |(a, m, i), p| {
        (
            a + u64::from(p.active),
            m + u64::from(p.max),
            i + u64::from(p.idle),
        )
    });
    let pct = if max == 0 {
        0.0
    } else {
        active as f64 * 100.0 / max as f64
    };
    let mut out = format!("Pool Health: {}", h.grade.label());
    if let (Some(m), true) = (h.driven_by, h.grade != Grade::Good) {
        let value = match m {
            crate::health::Metric::UtilizationPct => format!("{:.0}%", w.utilization_pct),
            crate::health::Metric::AvgMs => ms(w.avg_ms),
            crate::health::Metric::P95Ms => ms(w.p95_ms),
            crate::health::Metric::SuccessRatePct => format!("{:.2}%", w.success_rate_pct),
            crate::health::Metric::SlowPerMin => format!("{:.0}/min", w.slow_per_min),
        };
        let _ = write!(out, " ({}: {value})", m.name());
    }
    let slow = w.slow_per_min as u64;
    let _ = write!(
        out,
        "\n   Active: {active}/{max} ({pct:.0}%)\n   Idle: {idle}\n   Query Time: {} avg (p95 {}, p99 {})\n   Slow: {slow} {} in the last minute\n   Failover: {}",
        ms(w.avg_ms),
        ms(w.p95_ms),
        ms(w.p99_ms),
        if slow == 1 { "query" } else { "queries" },
        if s.failover.active { "ACTIVE" } else { "INACTIVE" },
    );
    if let Some(line) = super::read::status_line(&s.read) {
        let _ = write!(out, "\n{line}");
    }
    let lane = &s.lane;
    if lane.configured > 0 {
        let _ = write!(
            out,
            "\n   Lane: {}/{} connections, {} in flight, {} served, {} stalls",
            lane.connections, lane.configured, lane.in_flight, lane.served, lane.stalls
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::health::HealthThresholds;
    use crate::metrics::recorder::{Outcome, Recorder};
    use crate::metrics::snapshot::{build, tests::pool, FailoverSnapshot};

    #[test]
    fn the_brief_s_block() {
        let t0 = Instant::now();
        let r = Recorder::new(1, t0);
        // 100 calls: 45 ms average, p95 80 ms, p99 120 ms.
        for i in 0..100u64 {
            let d = match i {
                0..=93 => 40,
                94..=97 => 80,
                _ => 120,
            };
            r.call(t0, Duration::from_millis(d), Outcome::Ok);
        }
        let mut p = pool("primary", 100, 8, true);
        p.idle = 92;
        let s = build(
            &[p],
            &r.figures(t0),
            FailoverSnapshot::default(),
            &HealthThresholds::default(),
        );
        // 94 × 40 + 4 × 80 + 2 × 120 = 4320 → 43.2 ms.
        assert_eq!(
            render(&s),
            "Pool Health: WARNING (p95_ms: 80ms)\n   Active: 8/100 (8%)\n   Idle: 92\n   Query Time: 43ms avg (p95 80ms, p99 120ms)\n   Slow: 0 queries in the last minute\n   Failover: INACTIVE"
        );
    }

    #[test]
    fn good_prints_the_grade_alone_and_counts_only_serving_pools() {
        let t0 = Instant::now();
        let r = Recorder::new(2, t0);
        r.call(t0, Duration::from_micros(600), Outcome::Ok);
        r.slow(t0);
        let s = build(
            &[pool("primary", 30, 3, true), pool("failover", 10, 0, false)],
            &r.figures(t0),
            FailoverSnapshot {
                enabled: false,
                active: false,
                ..FailoverSnapshot::default()
            },
            &HealthThresholds::default(),
        );
        assert_eq!(
            render(&s),
            "Pool Health: GOOD\n   Active: 3/30 (10%)\n   Idle: 2\n   Query Time: 0.6ms avg (p95 0.6ms, p99 0.6ms)\n   Slow: 1 query in the last minute\n   Failover: INACTIVE"
        );
    }

    #[test]
    fn active_failover_is_shown() {
        let s = build(
            &[pool("primary", 10, 10, true), pool("failover", 10, 3, true)],
            &crate::metrics::recorder::Figures::empty(2),
            FailoverSnapshot {
                enabled: true,
                active: true,
                activations: 1,
                active_ms: 10.0,
            },
            &HealthThresholds::default(),
        );
        let text = render(&s);
        assert!(
            text.starts_with("Pool Health: WARNING (utilization_pct: 65%)"),
            "{text}"
        );
        assert!(text.contains("   Active: 13/20 (65%)\n"), "{text}");
        assert!(text.ends_with("   Failover: ACTIVE"), "{text}");
    }
}
