//! The routing decision, as pure functions: which pool serves a checkout, and when the overflow
//! pool engages. No I/O and no clock of its own, so every rule is a table row in the tests.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Points below the threshold at which an engaged overflow is released (hysteresis).
pub const RELEASE_GAP_PCT: u8 = 10;

/// One of the manager's pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolId {
    /// The primary pool (`DATABASE_URL`, `DB_POOL_MAX`).
    Primary,
    /// The failover pool (`DB_FAILOVER_URL` or the primary's target, `DB_FAILOVER_POOL_MAX`).
    Failover,
    /// The read pool (`DB_READ_URL`): `.read_only()` calls only, see [`route_read`].
    Read,
}

impl PoolId {
    /// Its index in the metrics' per-pool figures (primary 0, failover 1, read 2).
    pub(crate) fn index(self) -> usize {
        match self {
            PoolId::Primary => 0,
            PoolId::Failover => 1,
            PoolId::Read => 2,
        }
    }

    /// The pool's name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            PoolId::Primary => "primary",
            PoolId::Failover => "failover",
            PoolId::Read => "read",
        }
    }

    fn other(self) -> PoolId {
        match self {
            PoolId::Primary => PoolId::Failover,
            PoolId::Failover | PoolId::Read => PoolId::Primary,
        }
    }
}

/// What the caller said about a call: the router never guesses from the SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marking {
    /// Unmarked: a possible write. Runs only on a read-write server.
    Write,
    /// `.idempotent()`: may run twice, still only on a read-write server.
    Idempotent,
    /// `.read_only()`: may be served by a standby (and is idempotent).
    ReadOnly,
}

impl Marking {
    /// Whether running the call twice is harmless.
    pub fn idempotent(self) -> bool {
        !matches!(self, Marking::Write)
    }
}

/// What the router knows about one pool when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolView {
    /// Connections checked out.
    pub in_use: u32,
    /// The pool's maximum.
    pub max: u32,
    /// Its target answered the last probe or connect (true until shown otherwise).
    pub up: bool,
    /// Its target accepts writes: `Some(false)` once a probe or a 25006 showed it read-only;
    /// `None` before the first probe (treated as writable: a 25006 corrects it).
    pub writable: Option<bool>,
}

impl PoolView {
    /// In use / max, in percent.
    pub fn utilization_pct(&self) -> f64 {
        if self.max == 0 {
            100.0
        } else {
            f64::from(self.in_use) * 100.0 / f64::from(self.max)
        }
    }

    fn full(&self) -> bool {
        self.in_use >= self.max
    }

    /// Whether it can serve a call marked `marking`.
    pub fn serves(&self, marking: Marking) -> bool {
        self.up && (marking == Marking::ReadOnly || self.writable != Some(false))
    }
}

/// Everything one routing decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput {
    /// 1 for the first attempt, 2 for the first retry, …
    pub attempt: u32,
    /// The call's marking.
    pub marking: Marking,
    /// Whether overflow is engaged (see [`Overflow`]).
    pub overflow: bool,
    /// `DB_FAILOVER_THRESHOLD` in percent.
    pub threshold_pct: u8,
    /// The primary pool.
    pub primary: PoolView,
    /// The failover pool, when failover is enabled.
    pub failover: Option<PoolView>,
}

/// Which pool serves a checkout (DESIGN.md "Retry schedule"):
/// attempt 1 on the primary, or on the failover pool while overflow is engaged; attempt 2 on
/// the primary, or on the failover pool when the primary is at or past its threshold or down;
/// attempt 3 on the failover pool; later attempts on the primary unless it is busy or cannot
/// serve the call.
///
/// The preference yields when its pool cannot serve the call (down, or read-only for a call
/// that may write) and the other can, or when its pool is full and the other has room. When no
/// pool can serve the call, the preference stands: the attempt then fails with the real cause.
pub fn route(i: &RouteInput) -> PoolId {
    let Some(failover) = i.failover else {
        return PoolId::Primary;
    };
    let p = i.primary;
    let busy = p.utilization_pct() >= f64::from(i.threshold_pct) || p.full();
    let preferred = match i.attempt {
        0 | 1 if i.overflow => PoolId::Failover,
        0 | 1 => PoolId::Primary,
        2 if busy || !p.up => PoolId::Failover,
        2 => PoolId::Primary,
        3 => PoolId::Failover,
        _ if p.serves(i.marking) && !busy => PoolId::Primary,
        _ => PoolId::Failover,
    };
    let view = |id| match id {
        PoolId::Failover => failover,
        PoolId::Primary | PoolId::Read => p,
    };
    let (pref, other) = (view(preferred), view(preferred.other()));
    let other_ok = other.serves(i.marking);
    if !pref.serves(i.marking) {
        // Nothing serves the call: a write still goes where it is not known to be refused.
        let refused = |v: PoolView| i.marking != Marking::ReadOnly && v.writable == Some(false);
        return if other_ok || (refused(pref) && !refused(other)) {
            preferred.other()
        } else {
            preferred
        };
    }
    if pref.full() && other_ok && !other.full() {
        return preferred.other();
    }
    preferred
}

/// Why a `.read_only()` checkout went to the primary instead of the read pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadFallback {
    /// The standby did not answer its last probe, or a connect to it failed.
    Down,
    /// Its lag is not known yet (start-up): a standby is never used blindly.
    Unmeasured,
    /// It is not in recovery: not a standby (any more).
    NotStandby,
    /// Its last measured lag is over `DB_READ_MAX_LAG`.
    Lagging,
    /// The read pool is full and the primary has room.
    Busy,
    /// A retry: later attempts of a read run where writes do.
    Retry,
}

impl ReadFallback {
    /// How many reasons there are.
    pub const COUNT: usize = 6;
    /// Every reason, in [`ReadFallback::index`] order.
    pub const ALL: [ReadFallback; Self::COUNT] = [
        ReadFallback::Down,
        ReadFallback::Unmeasured,
        ReadFallback::NotStandby,
        ReadFallback::Lagging,
        ReadFallback::Busy,
        ReadFallback::Retry,
    ];

    /// Its index in [`ReadFallback::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its name in metrics (`snake_case`).
    pub fn name(self) -> &'static str {
        match self {
            ReadFallback::Down => "down",
            ReadFallback::Unmeasured => "unmeasured",
            ReadFallback::NotStandby => "not_standby",
            ReadFallback::Lagging => "lagging",
            ReadFallback::Busy => "busy",
            ReadFallback::Retry => "retry",
        }
    }
}

/// What the router knows about the read pool's standby when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadView {
    /// The read pool; `up` is its standby's last probe or connect.
    pub pool: PoolView,
    /// The last probe's `pg_is_in_recovery()`; `None` before the first answer.
    pub in_recovery: Option<bool>,
    /// The last measured lag in bytes of WAL; `None` when not measured yet.
    pub lag_bytes: Option<u64>,
    /// `DB_READ_MAX_LAG` in bytes; 0 = no limit.
    pub max_lag_bytes: u64,
}

/// Where a `.read_only()` checkout goes when a read pool exists: the read pool on the first
/// attempt when its standby is up, in recovery, measured and within the lag limit, and the
/// pool is not full while the primary has room; otherwise the primary side (see [`route`]),
/// for the reason returned. Retries of a read always go to the primary side: the failure may
/// have been the standby's (a recovery conflict, a lost connection).
pub fn route_read(attempt: u32, read: &ReadView, primary: &PoolView) -> Result<(), ReadFallback> {
    let r = read;
    if attempt > 1 {
        return Err(ReadFallback::Retry);
    }
    if !r.pool.up {
        return Err(ReadFallback::Down);
    }
    match (r.in_recovery, r.lag_bytes) {
        (Some(false), _) => return Err(ReadFallback::NotStandby),
        (None, _) | (_, None) => return Err(ReadFallback::Unmeasured),
        (Some(true), Some(lag)) if r.max_lag_bytes != 0 && lag > r.max_lag_bytes => {
            return Err(ReadFallback::Lagging)
        }
        (Some(true), Some(_)) => {}
    }
    if r.pool.full() && !primary.full() {
        return Err(ReadFallback::Busy);
    }
    Ok(())
}

/// The overflow switch with hysteresis: engages when the primary's utilization reaches the
/// threshold, releases when it falls [`RELEASE_GAP_PCT`] points below, so it does not flap.
/// Counts activations and the time engaged.
#[derive(Debug, Clone)]
pub struct Overflow {
    threshold_pct: u8,
    engaged_since: Option<Instant>,
    activations: u64,
    active_before: Duration,
}

impl Overflow {
    /// Released, with the given threshold.
    pub fn new(threshold_pct: u8) -> Self {
        Self {
            threshold_pct,
            engaged_since: None,
            activations: 0,
            active_before: Duration::ZERO,
        }
    }

    /// The threshold in percent.
    pub fn threshold_pct(&self) -> u8 {
        self.threshold_pct
    }

    /// Utilization below which an engaged overflow is released.
    pub fn release_pct(&self) -> u8 {
        self.threshold_pct.saturating_sub(RELEASE_GAP_PCT)
    }

    /// Feeds the primary's utilization at `now`; returns whether overflow is engaged.
    pub fn observe(&mut self, utilization_pct: f64, now: Instant) -> bool {
        match self.engaged_since {
            None if utilization_pct >= f64::from(self.threshold_pct) => {
                self.engaged_since = Some(now);
                self.activations += 1;
                tracing::info!(
                    utilization_pct,
                    threshold_pct = self.threshold_pct,
                    "failover pool engaged"
                );
            }
            // At a threshold under 10 points the release point is 0: released when idle.
            Some(since)
                if utilization_pct < f64::from(self.release_pct()) || utilization_pct <= 0.0 =>
            {
                self.active_before += now.saturating_duration_since(since);
                self.engaged_since = None;
                tracing::info!(utilization_pct, "failover pool released");
            }
            _ => {}
        }
        self.engaged_since.is_some()
    }

    /// Whether overflow is engaged.
    pub fn engaged(&self) -> bool {
        self.engaged_since.is_some()
    }

    /// The counters at `now`.
    pub fn stats(&self, now: Instant) -> FailoverStats {
        let current = self
            .engaged_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        FailoverStats {
            active: self.engaged(),
            activations: self.activations,
            active_ms: (self.active_before + current).as_secs_f64() * 1000.0,
        }
    }
}

/// The `failover` section of the metrics snapshot (DESIGN.md's names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FailoverStats {
    /// Overflow is engaged now: new checkouts go to the failover pool.
    pub active: bool,
    /// Times overflow engaged.
    pub activations: u64,
    /// Total time engaged, in milliseconds (the current engagement included).
    pub active_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use Marking::*;
    use PoolId::*;

    const fn v(in_use: u32, max: u32, up: bool, writable: Option<bool>) -> PoolView {
        PoolView {
            in_use,
            max,
            up,
            writable,
        }
    }
    /// Primary: idle, busy (at the 80% threshold), full, down, read-only.
    const P_IDLE: PoolView = v(2, 10, true, Some(true));
    const P_BUSY: PoolView = v(8, 10, true, Some(true));
    const P_FULL: PoolView = v(10, 10, true, Some(true));
    const P_DOWN: PoolView = v(0, 10, false, None);
    const P_RO: PoolView = v(1, 10, true, Some(false));
    /// Failover: idle, full, down, a read-only standby, not probed yet.
    const F_IDLE: PoolView = v(0, 5, true, Some(true));
    const F_FULL: PoolView = v(5, 5, true, Some(true));
    const F_DOWN: PoolView = v(0, 5, false, None);
    const F_RO: PoolView = v(0, 5, true, Some(false));
    const F_NEW: PoolView = v(0, 5, true, None);

    /// attempt, marking, overflow engaged, primary, failover → the pool, why.
    type Row = (
        u32,
        Marking,
        bool,
        PoolView,
        Option<PoolView>,
        PoolId,
        &'static str,
    );

    #[test]
    fn routing_table() {
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // attempt, marking, overflow, primary, failover → pool
            (1, Write, false, P_FULL, None, Primary, "failover off: always the primary"),
            (4, ReadOnly, true, P_DOWN, None, Primary, "failover off, primary down"),
            (1, Write, false, P_IDLE, Some(F_IDLE), Primary, "attempt 1: primary"),
            (1, Write, true, P_BUSY, Some(F_IDLE), Failover, "attempt 1: overflow engaged"),
            (1, Write, false, P_BUSY, Some(F_IDLE), Primary, "attempt 1: busy but not engaged"),
            (1, Write, true, P_BUSY, Some(F_FULL), Primary, "engaged but failover full: primary has room"),
            (1, Write, true, P_FULL, Some(F_FULL), Failover, "both full: the preference waits"),
            (1, Write, false, P_FULL, Some(F_IDLE), Failover, "primary full, failover has room"),
            (2, Write, false, P_IDLE, Some(F_IDLE), Primary, "attempt 2: primary"),
            (2, Write, false, P_BUSY, Some(F_IDLE), Failover, "attempt 2: primary at threshold"),
            (2, Idempotent, false, P_DOWN, Some(F_IDLE), Failover, "attempt 2: primary down"),
            (3, Write, false, P_IDLE, Some(F_IDLE), Failover, "attempt 3: failover"),
            (3, Write, false, P_IDLE, Some(F_DOWN), Primary, "attempt 3: failover down"),
            (3, Write, false, P_IDLE, Some(F_RO), Primary, "a write never runs on a standby"),
            (3, ReadOnly, false, P_IDLE, Some(F_RO), Failover, "a read may run on a standby"),
            (3, Write, false, P_IDLE, Some(F_NEW), Failover, "not probed yet: writable until shown otherwise"),
            (4, Write, false, P_IDLE, Some(F_IDLE), Primary, "attempt 4: primary when it can"),
            (4, Write, false, P_BUSY, Some(F_IDLE), Failover, "attempt 4: primary busy"),
            (4, Write, false, P_DOWN, Some(F_IDLE), Failover, "attempt 4: primary down"),
            (5, Idempotent, false, P_RO, Some(F_IDLE), Failover, "attempt 5: primary read-only"),
            (1, Write, false, P_RO, Some(F_IDLE), Failover, "old primary read-only: writes move"),
            (1, Write, false, P_RO, Some(F_RO), Primary, "nothing writable: the attempt fails on the primary"),
            (1, ReadOnly, false, P_RO, Some(F_IDLE), Primary, "a read stays on a read-only primary"),
            (1, Write, false, P_DOWN, Some(F_DOWN), Primary, "everything down: the preference"),
            (3, Write, false, P_DOWN, Some(F_DOWN), Failover, "everything down: the preference"),
            (1, Write, true, P_BUSY, Some(F_DOWN), Primary, "engaged but failover down"),
            (2, ReadOnly, false, P_DOWN, Some(F_RO), Failover, "read on the standby while the primary is down"),
            (2, Write, false, P_DOWN, Some(F_RO), Primary, "write, primary down, a standby: not sent to the standby"),
        ];
        for &(attempt, marking, overflow, primary, failover, want, why) in rows {
            let got = route(&RouteInput {
                attempt,
                marking,
                overflow,
                threshold_pct: 80,
                primary,
                failover,
            });
            assert_eq!(
                got, want,
                "{why}: attempt {attempt} {marking:?} overflow {overflow}"
            );
        }
    }

    /// attempt, read pool, primary → where the read goes, why.
    type ReadRow = (
        u32,
        ReadView,
        PoolView,
        Result<(), ReadFallback>,
        &'static str,
    );

    #[test]
    fn read_routing_table() {
        const MB: u64 = 1 << 20;
        let standby = |in_use, up, in_recovery, lag_bytes, max_lag_bytes| ReadView {
            pool: v(in_use, 3, up, Some(false)),
            in_recovery,
            lag_bytes,
            max_lag_bytes,
        };
        use ReadFallback::*;
        #[rustfmt::skip]
        let rows: &[ReadRow] = &[
            (1, standby(0, true, Some(true), Some(0), 16 * MB), P_IDLE, Ok(()), "caught up"),
            (1, standby(2, true, Some(true), Some(16 * MB), 16 * MB), P_IDLE, Ok(()), "exactly at the limit"),
            (1, standby(0, true, Some(true), Some(16 * MB + 1), 16 * MB), P_IDLE, Err(Lagging), "one byte over"),
            (1, standby(0, true, Some(true), Some(u64::MAX / 2), 0), P_IDLE, Ok(()), "0 = no limit"),
            (1, standby(0, false, Some(true), Some(0), 16 * MB), P_IDLE, Err(Down), "down"),
            (1, standby(0, false, None, None, 16 * MB), P_IDLE, Err(Down), "down from the start"),
            (1, standby(0, true, None, None, 16 * MB), P_IDLE, Err(Unmeasured), "not probed yet"),
            (1, standby(0, true, Some(true), None, 0), P_IDLE, Err(Unmeasured), "lag unknown, even without a limit"),
            (1, standby(0, true, Some(false), None, 16 * MB), P_IDLE, Err(NotStandby), "promoted, or a primary"),
            (1, standby(3, true, Some(true), Some(0), 16 * MB), P_IDLE, Err(Busy), "read pool full, primary has room"),
            (1, standby(3, true, Some(true), Some(0), 16 * MB), P_FULL, Ok(()), "both full: the read pool waits"),
            (1, standby(0, true, Some(true), Some(0), 16 * MB), P_DOWN, Ok(()), "primary down: reads still served"),
            (2, standby(0, true, Some(true), Some(0), 16 * MB), P_IDLE, Err(Retry), "a retry goes to the primary"),
            (4, standby(0, true, Some(true), Some(0), 16 * MB), P_DOWN, Err(Retry), "even with the primary down"),
        ];
        for &(attempt, read, primary, want, why) in rows {
            assert_eq!(route_read(attempt, &read, &primary), want, "{why}");
        }
        for (i, r) in ReadFallback::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{}", r.name());
        }
    }

    #[test]
    fn overflow_engages_at_threshold_and_releases_ten_points_below() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut o = Overflow::new(80);
        #[rustfmt::skip]
        let steps: &[(u64, f64, bool)] = &[
            (0, 50.0, false),
            (10, 79.9, false),
            (20, 80.0, true),   // engages at the threshold
            (30, 95.0, true),
            (40, 75.0, true),   // between release and threshold: stays (no flapping)
            (50, 70.0, true),   // exactly the release point: still engaged
            (60, 69.9, false),  // released: 40 ms engaged
            (70, 75.0, false),  // between: stays released
            (80, 100.0, true),  // second activation
        ];
        for &(ms, util, want) in steps {
            assert_eq!(o.observe(util, at(ms)), want, "at {ms} ms, {util}%");
        }
        let s = o.stats(at(100));
        assert!(s.active);
        assert_eq!(s.activations, 2);
        assert!((s.active_ms - 60.0).abs() < 1e-6, "{}", s.active_ms);
    }

    #[test]
    fn low_threshold_releases_when_idle() {
        let t0 = Instant::now();
        let mut o = Overflow::new(5);
        assert_eq!(o.release_pct(), 0);
        assert!(o.observe(5.0, t0));
        assert!(o.observe(1.0, t0), "above the release point");
        assert!(!o.observe(0.0, t0), "idle: released");
        assert_eq!(o.stats(t0).activations, 1);
    }
}
