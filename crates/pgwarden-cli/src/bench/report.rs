//! The final report (text a person reads at a glance) and the JSON document.
//!
//! Figures the library keeps are read from its serialized snapshot by DESIGN.md's names, so
//! the report shows more as the snapshot grows and "–" for what this build does not report.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::load::Outcome;
use crate::ui::{self, Ui};

/// Bucket bounds of the terminal histogram, in microseconds (1-2-5 steps).
const BOUNDS_US: [u64; 20] = [
    20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
/// Width of the longest histogram bar, in characters.
const BAR_WIDTH: usize = 32;

/// What the report describes besides the outcome.
pub(crate) struct Header<'a> {
    pub(crate) workload: &'a str,
    pub(crate) concurrency: u32,
    pub(crate) server: &'a str,
}

fn at<'v>(snapshot: &'v Value, path: &str) -> Option<&'v Value> {
    snapshot.pointer(path).filter(|v| !v.is_null())
}

fn num(snapshot: &Value, path: &str) -> Option<f64> {
    at(snapshot, path)?.as_f64()
}

fn count(snapshot: &Value, path: &str) -> String {
    num(snapshot, path).map_or_else(|| "–".into(), |v| ui::thousands(v as u64))
}

fn throughput(o: &Outcome) -> f64 {
    o.calls() as f64 / o.elapsed.as_secs_f64().max(1e-9)
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

pub(crate) fn text(h: &Header<'_>, o: &Outcome, snapshot: &Value, ui: &Ui) -> String {
    let mut out = String::new();
    // A row whose figures this build's snapshot lacks is left out.
    let mut line = |label: &str, value: Option<String>| {
        if let Some(value) = value {
            out.push_str(&format!("  {label:<14}{value}\n"));
        }
    };
    let calls = o.calls();
    let success = if calls == 0 {
        100.0
    } else {
        o.ok as f64 * 100.0 / calls as f64
    };
    line(
        "calls",
        Some(format!(
            "{} ({} ok, {} failed: {success:.2}% success)",
            ui::thousands(calls),
            ui::thousands(o.ok),
            ui::thousands(o.failed)
        )),
    );
    line(
        "first error",
        o.first_error
            .as_ref()
            .filter(|_| o.failed > 0)
            .map(|e| e.chars().take(200).collect()),
    );
    line(
        "throughput",
        Some(format!(
            "{} calls/s",
            ui::thousands(throughput(o).round() as u64)
        )),
    );
    let l = &o.latency_us;
    line(
        "latency",
        (!l.is_empty()).then(|| {
            format!(
                "avg {} · p50 {} · p95 {} · p99 {} · p99.9 {} · max {}",
                ui::ms(l.mean() / 1e3),
                ui::ms(quantile_ms(l, 0.50)),
                ui::ms(quantile_ms(l, 0.95)),
                ui::ms(quantile_ms(l, 0.99)),
                ui::ms(quantile_ms(l, 0.999)),
                ui::ms(l.max() as f64 / 1e3)
            )
        }),
    );
    line(
        "acquire wait",
        at(snapshot, "/acquire_wait_ms").map(|w| {
            ["avg", "p50", "p95", "p99", "max"]
                .iter()
                .filter_map(|k| Some(format!("{k} {}", ui::ms(w.get(*k)?.as_f64()?))))
                .collect::<Vec<_>>()
                .join(" · ")
        }),
    );
    line(
        "retries",
        Some(format!(
            "{} · outcome unknown {}",
            count(snapshot, "/queries/retries"),
            count(snapshot, "/queries/outcome_unknown")
        )),
    );
    line(
        "slow queries",
        Some(format!(
            "{} ({}/min)",
            count(snapshot, "/queries/slow"),
            num(snapshot, "/queries/slow_per_min")
                .map_or_else(|| "–".into(), |v| format!("{v:.1}"))
        )),
    );
    line(
        "connections",
        Some(format!(
            "{} opened · reuse {}",
            count(snapshot, "/connections/opened"),
            num(snapshot, "/connections/reuse_rate_pct")
                .map_or_else(|| "–".into(), |v| format!("{v:.2}%"))
        )),
    );
    line(
        "statements",
        Some(format!(
            "cache {} hits · {} misses · {} evictions",
            count(snapshot, "/statement_cache/hits"),
            count(snapshot, "/statement_cache/misses"),
            count(snapshot, "/statement_cache/evictions")
        )),
    );
    line(
        "failover",
        at(snapshot, "/failover").map(|f| {
            format!(
                "{} · {} activation(s) · active {}",
                if f.get("active").and_then(Value::as_bool) == Some(true) {
                    "ACTIVE"
                } else {
                    "inactive"
                },
                f.get("activations").and_then(Value::as_u64).unwrap_or(0),
                ui::ms(f.get("active_ms").and_then(Value::as_f64).unwrap_or(0.0))
            )
        }),
    );
    line(
        "lane",
        at(snapshot, "/lane")
            .filter(|l| l.get("configured").and_then(Value::as_u64).unwrap_or(0) > 0)
            .map(|l| {
                let n = |k: &str| l.get(k).and_then(Value::as_u64).unwrap_or(0);
                format!(
                    "{}/{} connections · {} statements · {} stalls · {} lost",
                    n("connections"),
                    n("configured"),
                    ui::thousands(n("served")),
                    ui::thousands(n("stalls")),
                    n("lost")
                )
            }),
    );
    line(
        "health",
        at(snapshot, "/health/grade")
            .and_then(Value::as_str)
            .map(|g| {
                let by = at(snapshot, "/health/driven_by")
                    .map(|d| match d {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .filter(|d| !d.is_empty() && d != "[]")
                    .map(|d| format!(" (driven by {d})"))
                    .unwrap_or_default();
                format!("{}{by}", ui.grade(g))
            }),
    );
    if let Some(Value::Object(pools)) = at(snapshot, "/pools") {
        for (name, p) in pools {
            let f = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
            line(
                &format!("pool {name}"),
                Some(format!(
                    "max {} · open {} · active {} · idle {} · waiting {}",
                    f("max"),
                    f("total"),
                    f("active"),
                    f("idle"),
                    f("waiting")
                )),
            );
        }
    }
    let mut head = format!(
        "{} · {} · {} tasks · {:.1} s · {}",
        ui.bold("pgwarden bench"),
        h.workload,
        h.concurrency,
        o.elapsed.as_secs_f64(),
        h.server
    );
    if o.interrupted {
        head.push_str(" · interrupted (Ctrl-C)");
    }
    let hist = histogram_text(&o.latency_us);
    format!("{head}\n{out}{hist}")
}

/// A bucket's bounds: milliseconds below half a second, seconds from there.
fn span_label(lo: Option<u64>, hi: Option<u64>) -> String {
    let ms = |us: u64| format!("{}", us as f64 / 1e3);
    let s = |us: u64| format!("{}", us as f64 / 1e6);
    match (lo, hi) {
        (None, Some(hi)) => format!("< {} ms", ms(hi)),
        (Some(lo), None) => format!("≥ {} s", s(lo)),
        (Some(lo), Some(hi)) if lo >= 500_000 => format!("{}–{} s", s(lo), s(hi)),
        (Some(lo), Some(hi)) => format!("{}–{} ms", ms(lo), ms(hi)),
        (None, None) => String::new(),
    }
}

/// Calls per latency bucket (1-2-5 steps, empty ends trimmed) as horizontal bars.
pub(crate) fn histogram_text(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return String::new();
    }
    // Buckets: [0, B0), [B0, B1), …, [Blast, ∞).
    let mut counts = vec![0u64; BOUNDS_US.len() + 1];
    for v in h.iter_recorded() {
        let us = v.value_iterated_to();
        let i = BOUNDS_US.partition_point(|&b| b <= us);
        counts[i] += v.count_at_value();
    }
    let first = counts.iter().position(|&c| c > 0).unwrap_or(0);
    let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
    let total: u64 = counts.iter().sum();
    let peak = counts.iter().copied().max().unwrap_or(1).max(1);
    let label = |i: usize| {
        span_label(
            i.checked_sub(1).map(|j| BOUNDS_US[j]),
            BOUNDS_US.get(i).copied(),
        )
    };
    let rows: Vec<(String, u64)> = (first..=last).map(|i| (label(i), counts[i])).collect();
    let w = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let cw = ui::thousands(peak).len();
    let mut out = String::from("\n  latency per call\n");
    for (label, c) in rows {
        // Eighths of a character: a bucket with any calls shows at least a sliver.
        let eighths = if c == 0 {
            0
        } else {
            ((c as f64 / peak as f64 * (BAR_WIDTH * 8) as f64).round() as usize).max(1)
        };
        let mut bar = "█".repeat(eighths / 8);
        if eighths % 8 > 0 {
            bar.push(['▏', '▎', '▍', '▌', '▋', '▊', '▉'][eighths % 8 - 1]);
        }
        out.push_str(&format!(
            "  {label:>w$}  {bar:<BAR_WIDTH$} {:>5.1}%  {:>cw$}\n",
            c as f64 * 100.0 / total as f64,
            ui::thousands(c)
        ));
    }
    out
}

pub(crate) fn json(h: &Header<'_>, o: &Outcome, snapshot: Value) -> Value {
    let l = &o.latency_us;
    json!({
        "workload": h.workload,
        "concurrency": h.concurrency,
        "duration_s": o.elapsed.as_secs_f64(),
        "calls": o.calls(),
        "succeeded": o.ok,
        "failed": o.failed,
        "throughput_per_sec": throughput(o),
        "interrupted": o.interrupted,
        "client_latency_ms": {
            "avg": l.mean() / 1e3,
            "p50": quantile_ms(l, 0.50),
            "p95": quantile_ms(l, 0.95),
            "p99": quantile_ms(l, 0.99),
            "p999": quantile_ms(l, 0.999),
            "max": l.max() as f64 / 1e3,
        },
        "snapshot": snapshot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_every_call_and_trims_empty_ends() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for _ in 0..90 {
            h.record(300).unwrap(); // 0.2–0.5 ms
        }
        for _ in 0..10 {
            h.record(150_000).unwrap(); // 100–200 ms
        }
        let text = histogram_text(&h);
        let rows: Vec<&str> = text.lines().skip(2).collect();
        assert!(
            rows[0].contains("0.2–0.5 ms") && rows[0].contains("90.0%"),
            "{text}"
        );
        assert!(rows.last().unwrap().contains("100–200 ms"), "{text}");
        assert!(rows.last().unwrap().contains("10.0%"), "{text}");
        // Empty buckets between are kept, so the shape reads right.
        assert_eq!(rows.len(), 9, "{text}");
        let total: u64 = rows
            .iter()
            .map(|r| {
                r.split_whitespace()
                    .last()
                    .unwrap()
                    .replace(',', "")
                    .parse::<u64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(total, 100);
    }
}
