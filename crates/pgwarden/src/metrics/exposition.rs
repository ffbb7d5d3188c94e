//! The Prometheus text format's writer: `# HELP`/`# TYPE` heads and samples with escaped label
//! values. Shared by the exposition of a snapshot ([`super::prometheus`]) and of its read
//! routing ([`super::read`]).

use std::fmt::Write;

use super::recorder::Timing;

/// Histogram bucket bounds, in seconds: from 100 µs (a `SELECT 1` on a Unix socket) to a
/// minute, about three per decade.
const BOUNDS_S: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text being written.
pub(crate) struct Out(pub(crate) String);

impl Out {
    pub(crate) fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` are `(name, value)` pairs, values escaped here.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }

    /// A histogram's series (cumulative buckets, `+Inf`, sum and count) from an HDR
    /// histogram of microseconds. A bucket counts the values whose 1%-wide HDR range reaches
    /// down to its bound, so a value within 1% above a bound may count in it.
    pub(crate) fn histogram(&mut self, name: &str, labels: &[(&str, &str)], t: &Timing) {
        let bucket = format!("{name}_bucket");
        for b in BOUNDS_S {
            let le = b.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            let us = (b * 1e6).round() as u64;
            let n = if t.count() == 0 {
                0
            } else {
                t.hist.count_between(0, us)
            };
            self.sample(&bucket, &l, n as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, t.count() as f64);
        self.sample(&format!("{name}_sum"), labels, t.sum_ns as f64 / 1e9);
        self.sample(&format!("{name}_count"), labels, t.count() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
