//! Read routing's figures (`read.*` in the snapshot): reads sent to the standby, reads that fell
//! back to the primary and why, the standby's last measured lag; with their status line and
//! Prometheus series.

use serde::Serialize;

use super::exposition::Out;
use crate::manager::route::ReadFallback;

/// Read routing (`read.*`): all zero and false without `DB_READ_URL`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ReadSnapshot {
    /// `DB_READ_URL` is set: a read pool exists (its row is `pools.read`).
    pub enabled: bool,
    /// Reads would go to the standby now (up, in recovery, within the lag limit).
    pub serving: bool,
    /// Checkouts of `.read_only()` calls served by the read pool.
    pub routed: u64,
    /// Checkouts of `.read_only()` calls sent to the primary instead.
    pub fallbacks: u64,
    /// `fallbacks` by reason.
    pub fallbacks_by_reason: ReadFallbackCounts,
    /// The standby's lag at the last probe, in bytes of WAL; `None` when not known (not
    /// measured yet, or the standby is down or not a standby).
    pub lag_bytes: Option<u64>,
    /// `DB_READ_MAX_LAG` in bytes; 0 = no limit.
    pub max_lag_bytes: u64,
}

/// Read fallbacks by reason (see [`ReadFallback`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReadFallbackCounts {
    /// The standby did not answer its last probe, or a connect to it failed.
    pub down: u64,
    /// Its lag was not measured yet.
    pub unmeasured: u64,
    /// It is not in recovery.
    pub not_standby: u64,
    /// Its lag was over the limit.
    pub lagging: u64,
    /// The read pool was full and the primary had room.
    pub busy: u64,
    /// Retries of a read.
    pub retry: u64,
}

impl ReadFallbackCounts {
    /// From counts indexed by [`ReadFallback::index`].
    pub(crate) fn of(c: &[u64; ReadFallback::COUNT]) -> Self {
        let at = |r: ReadFallback| c[r.index()];
        Self {
            down: at(ReadFallback::Down),
            unmeasured: at(ReadFallback::Unmeasured),
            not_standby: at(ReadFallback::NotStandby),
            lagging: at(ReadFallback::Lagging),
            busy: at(ReadFallback::Busy),
            retry: at(ReadFallback::Retry),
        }
    }

    /// The count for `r`.
    pub fn get(&self, r: ReadFallback) -> u64 {
        match r {
            ReadFallback::Down => self.down,
            ReadFallback::Unmeasured => self.unmeasured,
            ReadFallback::NotStandby => self.not_standby,
            ReadFallback::Lagging => self.lagging,
            ReadFallback::Busy => self.busy,
            ReadFallback::Retry => self.retry,
        }
    }
}

/// The status block's line, when read routing is on:
/// `Reads: STANDBY (lag 12kB, limit 16MB; 120 routed, 3 to the primary)`.
pub(crate) fn status_line(r: &ReadSnapshot) -> Option<String> {
    if !r.enabled {
        return None;
    }
    let lag = r
        .lag_bytes
        .map_or_else(|| "unknown".to_owned(), crate::config::format_bytes);
    let limit = match r.max_lag_bytes {
        0 => "none".to_owned(),
        b => crate::config::format_bytes(b),
    };
    Some(format!(
        "   Reads: {} (lag {lag}, limit {limit}; {} routed, {} to the primary)",
        if r.serving { "STANDBY" } else { "PRIMARY" },
        r.routed,
        r.fallbacks,
    ))
}

/// The Prometheus series, when read routing is on: `pgwarden_reads_routed_total`,
/// `pgwarden_read_fallbacks_total{reason}`, `pgwarden_read_lag_bytes` (absent while unknown),
/// `pgwarden_read_max_lag_bytes`, `pgwarden_read_serving`.
pub(crate) fn prometheus(o: &mut Out, r: &ReadSnapshot) {
    if !r.enabled {
        return;
    }
    o.head(
        "pgwarden_reads_routed_total",
        "counter",
        "Checkouts of read-only calls served by the read pool (DB_READ_URL).",
    );
    o.sample("pgwarden_reads_routed_total", &[], r.routed as f64);
    o.head(
        "pgwarden_read_fallbacks_total",
        "counter",
        "Checkouts of read-only calls sent to the primary instead of the read pool, by reason.",
    );
    for why in ReadFallback::ALL {
        o.sample(
            "pgwarden_read_fallbacks_total",
            &[("reason", why.name())],
            r.fallbacks_by_reason.get(why) as f64,
        );
    }
    o.head(
        "pgwarden_read_serving",
        "gauge",
        "1 while read-only calls go to the read pool's standby.",
    );
    o.sample("pgwarden_read_serving", &[], u8::from(r.serving).into());
    o.head(
        "pgwarden_read_max_lag_bytes",
        "gauge",
        "DB_READ_MAX_LAG in bytes of WAL (0 = no limit).",
    );
    o.sample("pgwarden_read_max_lag_bytes", &[], r.max_lag_bytes as f64);
    if let Some(lag) = r.lag_bytes {
        o.head(
            "pgwarden_read_lag_bytes",
            "gauge",
            "The standby's replay lag behind the primary at the last probe, in bytes of WAL.",
        );
        o.sample("pgwarden_read_lag_bytes", &[], lag as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(serving: bool, lag: Option<u64>) -> ReadSnapshot {
        let mut c = [0; ReadFallback::COUNT];
        c[ReadFallback::Lagging.index()] = 2;
        c[ReadFallback::Down.index()] = 1;
        ReadSnapshot {
            enabled: true,
            serving,
            routed: 120,
            fallbacks: 3,
            fallbacks_by_reason: ReadFallbackCounts::of(&c),
            lag_bytes: lag,
            max_lag_bytes: 16 << 20,
        }
    }

    #[test]
    fn status_line_only_when_enabled() {
        assert_eq!(status_line(&ReadSnapshot::default()), None);
        assert_eq!(
            status_line(&snap(true, Some(12 << 10))).unwrap(),
            "   Reads: STANDBY (lag 12kB, limit 16MB; 120 routed, 3 to the primary)"
        );
        let mut s = snap(false, None);
        s.max_lag_bytes = 0;
        assert_eq!(
            status_line(&s).unwrap(),
            "   Reads: PRIMARY (lag unknown, limit none; 120 routed, 3 to the primary)"
        );
    }

    #[test]
    fn prometheus_series() {
        let mut o = Out(String::new());
        prometheus(&mut o, &ReadSnapshot::default());
        assert!(o.0.is_empty());
        prometheus(&mut o, &snap(true, Some(4096)));
        for line in [
            "pgwarden_reads_routed_total 120\n",
            "pgwarden_read_fallbacks_total{reason=\"lagging\"} 2\n",
            "pgwarden_read_fallbacks_total{reason=\"down\"} 1\n",
            "pgwarden_read_fallbacks_total{reason=\"retry\"} 0\n",
            "pgwarden_read_serving 1\n",
            "pgwarden_read_lag_bytes 4096\n",
            "pgwarden_read_max_lag_bytes 16777216\n",
        ] {
            assert!(o.0.contains(line), "{line} in {}", o.0);
        }
        let mut o = Out(String::new());
        prometheus(&mut o, &snap(false, None));
        assert!(!o.0.contains("pgwarden_read_lag_bytes"), "{}", o.0);
    }
}
