//! Health grades: each figure of the last minute against its thresholds, the overall grade the
//! worst of them.

pub(crate) mod checker;

pub use checker::{HealthCheck, Ping};

use serde::Serialize;

pub use crate::config::HealthThresholds;

/// A health grade. Ordered: `Good < Warning < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    /// Every figure within its good range.
    Good,
    /// At least one figure in its warning range, none critical.
    Warning,
    /// At least one figure critical.
    Critical,
}

impl Grade {
    /// `GOOD`, `WARNING` or `CRITICAL`, as the status block prints it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Good => "GOOD",
            Self::Warning => "WARNING",
            Self::Critical => "CRITICAL",
        }
    }

    /// The value of the `pgwarden_health_grade` gauge: 0 good, 1 warning, 2 critical.
    pub fn as_gauge(self) -> u8 {
        self as u8
    }
}

/// A graded figure; serialized as the name of its field in `health.window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `utilization_pct`: in use over the capacity of every pool that can serve a checkout.
    UtilizationPct,
    /// `avg_ms`: average call time.
    AvgMs,
    /// `p95_ms`: 95th percentile of call time.
    P95Ms,
    /// `success_rate_pct`: calls that succeeded.
    SuccessRatePct,
    /// `slow_per_min`: slow statements in the last minute.
    SlowPerMin,
}

impl Metric {
    /// The field name (`p95_ms` …).
    pub fn name(self) -> &'static str {
        match self {
            Self::UtilizationPct => "utilization_pct",
            Self::AvgMs => "avg_ms",
            Self::P95Ms => "p95_ms",
            Self::SuccessRatePct => "success_rate_pct",
            Self::SlowPerMin => "slow_per_min",
        }
    }
}

/// The figures of the last minute that the grade uses (`health.window.*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthWindow {
    /// Length of the window, in seconds (between 50 and 60: six 10-second buckets, the
    /// current one partly elapsed).
    pub seconds: f64,
    /// Calls completed in the window.
    pub calls: u64,
    /// Highest in-use share of the capacity of every pool that can serve a checkout, sampled
    /// now and by snapshots and health checks in the window, in percent.
    pub utilization_pct: f64,
    /// Average call time, in milliseconds (0 without calls).
    pub avg_ms: f64,
    /// 95th percentile of call time, in milliseconds (0 without calls).
    pub p95_ms: f64,
    /// 99th percentile of call time, in milliseconds (0 without calls).
    pub p99_ms: f64,
    /// Succeeded share of the calls, in percent (100 without calls).
    pub success_rate_pct: f64,
    /// Slow statements in the window.
    pub slow_per_min: f64,
}

/// The grade of each figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MetricGrades {
    /// Grade of `utilization_pct`.
    pub utilization_pct: Grade,
    /// Grade of `avg_ms`.
    pub avg_ms: Grade,
    /// Grade of `p95_ms`.
    pub p95_ms: Grade,
    /// Grade of `success_rate_pct`.
    pub success_rate_pct: Grade,
    /// Grade of `slow_per_min`.
    pub slow_per_min: Grade,
}

/// Health in the snapshot (`health.*`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthSnapshot {
    /// The worst grade of the figures.
    pub grade: Grade,
    /// The figure that set the grade (the first in `grades` order among the worst); `null`
    /// when every figure is good.
    pub driven_by: Option<Metric>,
    /// The figures graded.
    pub window: HealthWindow,
    /// Each figure's grade.
    pub grades: MetricGrades,
}

fn higher_is_worse(v: f64, warning: f64, critical: f64, critical_inclusive: bool) -> Grade {
    let critical = if critical_inclusive {
        v >= critical
    } else {
        v > critical
    };
    if critical {
        Grade::Critical
    } else if v >= warning {
        Grade::Warning
    } else {
        Grade::Good
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Grades `w` against `t` (the configuration's thresholds, DESIGN.md's table by default):
/// the overall grade is the worst figure's.
pub fn grade(w: &HealthWindow, t: &HealthThresholds) -> HealthSnapshot {
    let grades = MetricGrades {
        utilization_pct: higher_is_worse(
            w.utilization_pct,
            t.utilization_warning_pct,
            t.utilization_critical_pct,
            true,
        ),
        avg_ms: higher_is_worse(
            w.avg_ms,
            ms(t.avg_query_warning),
            ms(t.avg_query_critical),
            false,
        ),
        p95_ms: higher_is_worse(w.p95_ms, ms(t.p95_warning), ms(t.p95_critical), false),
        success_rate_pct: if w.success_rate_pct < t.success_rate_critical_pct {
            Grade::Critical
        } else if w.success_rate_pct <= t.success_rate_warning_pct {
            Grade::Warning
        } else {
            Grade::Good
        },
        slow_per_min: higher_is_worse(
            w.slow_per_min,
            t.slow_per_min_warning,
            t.slow_per_min_critical,
            false,
        ),
    };
    let all = [
        (Metric::UtilizationPct, grades.utilization_pct),
        (Metric::AvgMs, grades.avg_ms),
        (Metric::P95Ms, grades.p95_ms),
        (Metric::SuccessRatePct, grades.success_rate_pct),
        (Metric::SlowPerMin, grades.slow_per_min),
    ];
    let grade = all.iter().map(|(_, g)| *g).max().unwrap_or(Grade::Good);
    let driven_by = (grade != Grade::Good)
        .then(|| all.iter().find(|(_, g)| *g == grade).map(|(m, _)| *m))
        .flatten();
    HealthSnapshot {
        grade,
        driven_by,
        window: w.clone(),
        grades,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> HealthWindow {
        HealthWindow {
            seconds: 60.0,
            calls: 100,
            utilization_pct: 8.0,
            avg_ms: 45.0,
            p95_ms: 79.0,
            p99_ms: 120.0,
            success_rate_pct: 100.0,
            slow_per_min: 4.0,
        }
    }

    #[test]
    fn all_good_is_good_and_driven_by_nothing() {
        let h = grade(&quiet(), &HealthThresholds::default());
        assert_eq!(h.grade, Grade::Good);
        assert_eq!(h.driven_by, None);
    }

    #[test]
    fn each_boundary_of_the_brief_s_table() {
        let t = HealthThresholds::default();
        let g = |f: &dyn Fn(&mut HealthWindow)| {
            let mut w = quiet();
            f(&mut w);
            let h = grade(&w, &t);
            (h.grade, h.driven_by)
        };
        use Grade::*;
        use Metric::*;
        assert_eq!(g(&|w| w.utilization_pct = 59.9), (Good, None));
        assert_eq!(
            g(&|w| w.utilization_pct = 60.0),
            (Warning, Some(UtilizationPct))
        );
        assert_eq!(
            g(&|w| w.utilization_pct = 80.0),
            (Critical, Some(UtilizationPct))
        );
        assert_eq!(g(&|w| w.avg_ms = 50.0), (Warning, Some(AvgMs)));
        assert_eq!(g(&|w| w.avg_ms = 100.0), (Warning, Some(AvgMs)));
        assert_eq!(g(&|w| w.avg_ms = 100.5), (Critical, Some(AvgMs)));
        assert_eq!(g(&|w| w.p95_ms = 80.0), (Warning, Some(P95Ms)));
        assert_eq!(g(&|w| w.p95_ms = 150.0), (Warning, Some(P95Ms)));
        assert_eq!(g(&|w| w.p95_ms = 151.0), (Critical, Some(P95Ms)));
        assert_eq!(g(&|w| w.success_rate_pct = 99.5), (Good, None));
        assert_eq!(
            g(&|w| w.success_rate_pct = 99.0),
            (Warning, Some(SuccessRatePct))
        );
        assert_eq!(
            g(&|w| w.success_rate_pct = 95.0),
            (Warning, Some(SuccessRatePct))
        );
        assert_eq!(
            g(&|w| w.success_rate_pct = 94.9),
            (Critical, Some(SuccessRatePct))
        );
        assert_eq!(g(&|w| w.slow_per_min = 5.0), (Warning, Some(SlowPerMin)));
        assert_eq!(g(&|w| w.slow_per_min = 20.0), (Warning, Some(SlowPerMin)));
        assert_eq!(g(&|w| w.slow_per_min = 21.0), (Critical, Some(SlowPerMin)));
    }

    #[test]
    fn the_worst_figure_sets_the_grade() {
        let mut w = quiet();
        w.utilization_pct = 70.0; // warning
        w.slow_per_min = 30.0; // critical
        let h = grade(&w, &HealthThresholds::default());
        assert_eq!(h.grade, Grade::Critical);
        assert_eq!(h.driven_by, Some(Metric::SlowPerMin));
        assert_eq!(h.grades.utilization_pct, Grade::Warning);
    }

    #[test]
    fn thresholds_can_be_overridden() {
        let t = HealthThresholds {
            p95_warning: std::time::Duration::from_millis(500),
            p95_critical: std::time::Duration::from_secs(1),
            ..HealthThresholds::default()
        };
        let mut w = quiet();
        w.p95_ms = 200.0;
        assert_eq!(grade(&w, &t).grade, Grade::Good);
        assert_eq!(
            grade(&w, &HealthThresholds::default()).grade,
            Grade::Critical
        );
    }

    #[test]
    fn the_snapshot_serializes_lowercase_grades_and_field_names() {
        let mut w = quiet();
        w.p95_ms = 100.0;
        let h = grade(&w, &HealthThresholds::default());
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["grade"], "warning");
        assert_eq!(v["driven_by"], "p95_ms");
        assert_eq!(v["window"]["p95_ms"], 100.0);
    }
}
