//! The recorder: every call, statement, acquire and retry of a manager, cheap on the hot path.
//!
//! # Shape
//! Counts and HDR histograms live in a few *stripes*, each behind its own `std::sync::Mutex`; a
//! thread records into the stripe its thread-local index picks, so runtime worker threads rarely
//! meet on a lock and there is no global lock per call. A snapshot locks the stripes one by one
//! and merges them (not atomic across stripes: a call recorded meanwhile may be missing from some
//! figures). Each stripe also keeps a ring of [`WINDOW_BUCKETS`] buckets of [`WINDOW_BUCKET`]
//! each, so the last minute can be read beside the lifetime totals: a bucket is reused (cleared)
//! when time has moved past it, without any timer.
//!
//! Time is passed in (`now`), never read here, so the windows are tested with fixed instants.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Width of one window bucket.
pub(crate) const WINDOW_BUCKET: Duration = Duration::from_secs(10);
/// Buckets in the window: the current one and the five before it, so "the last minute" covers
/// between 50 and 60 seconds.
pub(crate) const WINDOW_BUCKETS: usize = 6;
/// Longest duration a histogram tells apart (1 h); longer ones are recorded as 1 h.
const MAX_US: u64 = 3_600_000_000;

/// Why a call failed (`queries.errors.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// No connection within the acquire timeout.
    AcquireTimeout,
    /// Connecting failed for a reason waiting cannot heal.
    Connect,
    /// The statement hit the query timeout.
    QueryTimeout,
    /// The server rejected the statement (SQL error, constraint, serialization …).
    Statement,
    /// The connection was lost after a possible write was sent.
    OutcomeUnknown,
    /// A transaction body asked for a rollback.
    RolledBack,
    /// The pool or manager is closed.
    Closed,
    /// Anything else (row count, configuration, TLS …).
    Other,
}

impl ErrorClass {
    pub(crate) const COUNT: usize = 8;
    pub(crate) const ALL: [Self; Self::COUNT] = [
        Self::AcquireTimeout,
        Self::Connect,
        Self::QueryTimeout,
        Self::Statement,
        Self::OutcomeUnknown,
        Self::RolledBack,
        Self::Closed,
        Self::Other,
    ];

    /// The name in the snapshot and the Prometheus label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AcquireTimeout => "acquire_timeout",
            Self::Connect => "connect",
            Self::QueryTimeout => "query_timeout",
            Self::Statement => "statement",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::RolledBack => "rolled_back",
            Self::Closed => "closed",
            Self::Other => "other",
        }
    }
}

/// What made a call try again (`queries.retries_by_reason.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryReason {
    /// No connection within the acquire timeout.
    AcquireTimeout,
    /// Connecting failed.
    Connect,
    /// The connection was lost (before anything ran, or for an idempotent call).
    ConnectionLost,
    /// Serialization failure (40001).
    Serialization,
    /// Deadlock (40P01).
    Deadlock,
    /// Any other transient failure.
    Other,
}

impl RetryReason {
    pub(crate) const COUNT: usize = 6;
    pub(crate) const ALL: [Self; Self::COUNT] = [
        Self::AcquireTimeout,
        Self::Connect,
        Self::ConnectionLost,
        Self::Serialization,
        Self::Deadlock,
        Self::Other,
    ];

    /// The name in the snapshot and the Prometheus label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AcquireTimeout => "acquire_timeout",
            Self::Connect => "connect",
            Self::ConnectionLost => "connection_lost",
            Self::Serialization => "serialization",
            Self::Deadlock => "deadlock",
            Self::Other => "other",
        }
    }
}

/// How a call ended, counted once whatever the retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It succeeded (perhaps after retries).
    Ok,
    /// It failed; `unknown` when it may or may not have committed.
    Failed { class: ErrorClass, unknown: bool },
}

/// An HDR histogram of microseconds (2 significant figures: 1% resolution from 1 µs to 1 h)
/// with the exact sum beside it, for averages and Prometheus `_sum`.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub(crate) hist: Histogram<u64>,
    pub(crate) sum_ns: u64,
}

impl Timing {
    pub(crate) fn new() -> Self {
        Self {
            // Auto-resizing: the counts array grows to the largest value seen, so an idle
            // histogram (a window bucket, a pool nobody used) stays small.
            hist: Histogram::new(2).expect("2 significant figures are valid"),
            sum_ns: 0,
        }
    }

    pub(crate) fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(MAX_US).min(MAX_US);
        // `record`, not `saturating_record`: the latter clamps to the current (auto-resized)
        // range instead of growing it. `us` is capped above, so growing cannot fail.
        let _ = self.hist.record(us);
        self.sum_ns = self
            .sum_ns
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub(crate) fn add(&mut self, other: &Timing) {
        // Both auto-resize, so adding cannot fail for lack of range.
        let _ = self.hist.add(&other.hist);
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    fn reset(&mut self) {
        self.hist.reset();
        self.sum_ns = 0;
    }

    /// Values recorded.
    pub(crate) fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Exact average in milliseconds (0 when empty).
    pub(crate) fn avg_ms(&self) -> f64 {
        match self.count() {
            0 => 0.0,
            n => self.sum_ns as f64 / n as f64 / 1e6,
        }
    }

    /// The value at quantile `q` (0–1) in milliseconds (0 when empty).
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.count() == 0 {
            0.0
        } else {
            self.hist.value_at_quantile(q) as f64 / 1e3
        }
    }

    /// The largest value in milliseconds (0 when empty).
    pub(crate) fn max_ms(&self) -> f64 {
        self.hist.max() as f64 / 1e3
    }
}

/// Lifetime counts of calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CallCounts {
    pub(crate) total: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) outcome_unknown: u64,
    pub(crate) errors: [u64; ErrorClass::COUNT],
    pub(crate) slow: u64,
}

impl CallCounts {
    fn add(&mut self, o: &CallCounts) {
        self.total += o.total;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.outcome_unknown += o.outcome_unknown;
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        self.slow += o.slow;
    }
}

/// One window bucket.
struct Bucket {
    /// Which [`WINDOW_BUCKET`]-wide slice of time since the recorder's origin it holds.
    epoch: u64,
    calls: u64,
    succeeded: u64,
    slow: u64,
    latency: Timing,
}

impl Bucket {
    /// The bucket for `epoch`, cleared first when it still holds an older slice; the latencies
    /// it held are folded into `lifetime` then.
    fn at<'a>(
        ring: &'a mut [Bucket; WINDOW_BUCKETS],
        lifetime: &mut Timing,
        epoch: u64,
    ) -> &'a mut Bucket {
        let b = &mut ring[(epoch % WINDOW_BUCKETS as u64) as usize];
        if b.epoch != epoch {
            if b.latency.count() > 0 {
                lifetime.add(&b.latency);
            }
            b.epoch = epoch;
            b.calls = 0;
            b.succeeded = 0;
            b.slow = 0;
            b.latency.reset();
        }
        b
    }
}

struct Stripe {
    counts: CallCounts,
    /// Call latencies of the buckets already recycled: the lifetime histogram is this plus
    /// every bucket of the ring. (A call's latency is recorded once, in its bucket, instead of
    /// twice: one histogram record fewer per call.)
    latency: Timing,
    /// Acquire wait by pool index, timeouts included.
    waits: Vec<Timing>,
    ring: [Bucket; WINDOW_BUCKETS],
    /// The epoch last computed here and the instants it spans, `[start, end)`.
    span: (Instant, Instant, u64),
}

impl Stripe {
    fn new(pools: usize, origin: Instant) -> Self {
        Self {
            // An empty span: the first call computes its epoch.
            span: (origin, origin, 0),
            counts: CallCounts::default(),
            latency: Timing::new(),
            waits: (0..pools).map(|_| Timing::new()).collect(),
            ring: std::array::from_fn(|_| Bucket {
                // Never a real epoch: the first use clears it.
                epoch: u64::MAX,
                calls: 0,
                succeeded: 0,
                slow: 0,
                latency: Timing::new(),
            }),
        }
    }
}

/// The last minute, merged.
#[derive(Debug, Clone)]
pub(crate) struct WindowFigures {
    pub(crate) calls: u64,
    pub(crate) succeeded: u64,
    pub(crate) slow: u64,
    pub(crate) latency: Timing,
    /// Highest utilization sampled in the window, if any was.
    pub(crate) peak_utilization_pct: Option<f64>,
}

/// Everything recorded, merged: what a snapshot and the Prometheus text are built from.
#[derive(Debug, Clone)]
pub(crate) struct Figures {
    pub(crate) counts: CallCounts,
    pub(crate) retries: [u64; RetryReason::COUNT],
    pub(crate) latency: Timing,
    /// Acquire wait by pool index.
    pub(crate) waits: Vec<Timing>,
    pub(crate) window: WindowFigures,
}

impl Figures {
    /// No recording at all, for `pools` pools.
    #[cfg(test)]
    pub(crate) fn empty(pools: usize) -> Self {
        Recorder::new(pools, Instant::now()).figures(Instant::now())
    }
}

/// The recorder of one manager.
pub(crate) struct Recorder {
    origin: Instant,
    enabled: AtomicBool,
    stripes: Box<[Mutex<Stripe>]>,
    retries: [AtomicU64; RetryReason::COUNT],
    /// Peak utilization per window bucket: `(epoch, pct)`. Sampled by snapshots and the health
    /// checker, never on the call path.
    utilization: Mutex<[(u64, f64); WINDOW_BUCKETS]>,
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe (modulo the stripe count): threads take indexes in turn, so the
    /// runtime's worker threads land on different stripes.
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Relaxed);
}

impl Recorder {
    /// A recorder for `pools` pools (indexes `0..pools`), its windows counted from `origin`.
    pub(crate) fn new(pools: usize, origin: Instant) -> Self {
        // Twice the cores: the runtime's workers plus the odd blocking thread rarely share.
        let n = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 2)
            .clamp(2, 32);
        Self {
            origin,
            enabled: AtomicBool::new(true),
            stripes: (0..n)
                .map(|_| Mutex::new(Stripe::new(pools, origin)))
                .collect(),
            retries: std::array::from_fn(|_| AtomicU64::new(0)),
            utilization: Mutex::new([(u64::MAX, 0.0); WINDOW_BUCKETS]),
        }
    }

    /// Turns recording on or off (to measure what it costs); figures stop moving while off.
    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Relaxed);
    }

    fn on(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    fn epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs() / WINDOW_BUCKET.as_secs()
    }

    /// [`Recorder::epoch`], from the stripe's last answer while `now` is within its span (two
    /// comparisons instead of a clock subtraction and a division on every call).
    fn epoch_of(&self, s: &mut Stripe, now: Instant) -> u64 {
        let (start, end, epoch) = s.span;
        if start <= now && now < end {
            return epoch;
        }
        let epoch = self.epoch(now);
        let start =
            self.origin + Duration::from_secs(epoch.saturating_mul(WINDOW_BUCKET.as_secs()));
        s.span = (start, start + WINDOW_BUCKET, epoch);
        epoch
    }

    fn stripe(&self) -> MutexGuard<'_, Stripe> {
        let i = STRIPE.with(|i| *i) % self.stripes.len();
        // A panic while recording leaves consistent-enough counts: keep using them.
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One call, retries included, counted once.
    pub(crate) fn call(&self, now: Instant, elapsed: Duration, outcome: Outcome) {
        if !self.on() {
            return;
        }
        let mut s = self.stripe();
        let epoch = self.epoch_of(&mut s, now);
        Self::count_call(&mut s, epoch, elapsed, outcome);
    }

    /// [`Recorder::call`] and [`Recorder::acquire`] of its one acquire, under one lock of the
    /// stripe instead of two (a call that made one attempt).
    pub(crate) fn call_after_acquire(
        &self,
        now: Instant,
        elapsed: Duration,
        outcome: Outcome,
        pool: usize,
        wait: Duration,
    ) {
        if !self.on() {
            return;
        }
        let mut s = self.stripe();
        let epoch = self.epoch_of(&mut s, now);
        if let Some(t) = s.waits.get_mut(pool) {
            t.record(wait);
        }
        Self::count_call(&mut s, epoch, elapsed, outcome);
    }

    fn count_call(s: &mut Stripe, epoch: u64, elapsed: Duration, outcome: Outcome) {
        s.counts.total += 1;
        let b = Bucket::at(&mut s.ring, &mut s.latency, epoch);
        b.calls += 1;
        b.latency.record(elapsed);
        match outcome {
            Outcome::Ok => {
                s.counts.succeeded += 1;
                b.succeeded += 1;
            }
            Outcome::Failed { class, unknown } => {
                s.counts.failed += 1;
                s.counts.errors[class as usize] += 1;
                if unknown {
                    s.counts.outcome_unknown += 1;
                }
            }
        }
    }

    /// One slow statement (the caller decides what is slow, and logs it).
    pub(crate) fn slow(&self, now: Instant) {
        if !self.on() {
            return;
        }
        let mut guard = self.stripe();
        let epoch = self.epoch_of(&mut guard, now);
        let s = &mut *guard;
        s.counts.slow += 1;
        Bucket::at(&mut s.ring, &mut s.latency, epoch).slow += 1;
    }

    /// One acquire from pool `pool`, however it ended (timeouts included).
    pub(crate) fn acquire(&self, pool: usize, wait: Duration) {
        if !self.on() {
            return;
        }
        if let Some(t) = self.stripe().waits.get_mut(pool) {
            t.record(wait);
        }
    }

    /// One retry.
    pub(crate) fn retry(&self, reason: RetryReason) {
        if self.on() {
            self.retries[reason as usize].fetch_add(1, Relaxed);
        }
    }

    /// Utilization seen now (in use over the capacity that can serve a checkout, percent).
    pub(crate) fn sample_utilization(&self, now: Instant, pct: f64) {
        let epoch = self.epoch(now);
        let mut ring = self.utilization.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut ring[(epoch % WINDOW_BUCKETS as u64) as usize];
        if slot.0 != epoch {
            *slot = (epoch, pct);
        } else if pct > slot.1 {
            slot.1 = pct;
        }
    }

    /// Everything recorded, merged; the window is the last minute before `now`.
    pub(crate) fn figures(&self, now: Instant) -> Figures {
        let epoch = self.epoch(now);
        let in_window = |e: u64| e <= epoch && epoch - e < WINDOW_BUCKETS as u64;
        let pools = self.stripes[0]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waits
            .len();
        let mut counts = CallCounts::default();
        let mut latency = Timing::new();
        let mut waits: Vec<Timing> = (0..pools).map(|_| Timing::new()).collect();
        let mut window = WindowFigures {
            calls: 0,
            succeeded: 0,
            slow: 0,
            latency: Timing::new(),
            peak_utilization_pct: None,
        };
        for stripe in self.stripes.iter() {
            let s = stripe.lock().unwrap_or_else(|e| e.into_inner());
            counts.add(&s.counts);
            latency.add(&s.latency);
            for (w, sw) in waits.iter_mut().zip(&s.waits) {
                w.add(sw);
            }
            for b in s.ring.iter() {
                // Not yet folded into the stripe's lifetime histogram.
                latency.add(&b.latency);
                if in_window(b.epoch) {
                    window.calls += b.calls;
                    window.succeeded += b.succeeded;
                    window.slow += b.slow;
                    window.latency.add(&b.latency);
                }
            }
        }
        let ring = *self.utilization.lock().unwrap_or_else(|e| e.into_inner());
        window.peak_utilization_pct = ring
            .iter()
            .filter(|(e, _)| in_window(*e))
            .map(|(_, p)| *p)
            .reduce(f64::max);
        Figures {
            counts,
            retries: std::array::from_fn(|i| self.retries[i].load(Relaxed)),
            latency,
            waits,
            window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn calls_count_once_with_their_class_and_latency() {
        let t0 = Instant::now();
        let r = Recorder::new(2, t0);
        r.call(t0, ms(10), Outcome::Ok);
        r.call(t0, ms(30), Outcome::Ok);
        r.call(
            t0,
            ms(20),
            Outcome::Failed {
                class: ErrorClass::Statement,
                unknown: false,
            },
        );
        r.call(
            t0,
            ms(40),
            Outcome::Failed {
                class: ErrorClass::OutcomeUnknown,
                unknown: true,
            },
        );
        r.retry(RetryReason::Serialization);
        r.retry(RetryReason::Serialization);
        r.slow(t0);
        r.acquire(1, ms(5));
        r.acquire(1, ms(7));
        let f = r.figures(t0);
        assert_eq!(f.counts.total, 4);
        assert_eq!(f.counts.succeeded, 2);
        assert_eq!(f.counts.failed, 2);
        assert_eq!(f.counts.outcome_unknown, 1);
        assert_eq!(f.counts.errors[ErrorClass::Statement as usize], 1);
        assert_eq!(f.counts.errors[ErrorClass::OutcomeUnknown as usize], 1);
        assert_eq!(f.counts.slow, 1);
        assert_eq!(f.retries[RetryReason::Serialization as usize], 2);
        assert_eq!(f.latency.count(), 4);
        assert!((f.latency.avg_ms() - 25.0).abs() < 1e-9);
        assert!((f.latency.max_ms() - 40.0).abs() < 0.5);
        assert_eq!(f.waits[0].count(), 0);
        assert_eq!(f.waits[1].count(), 2);
        assert!((f.waits[1].avg_ms() - 6.0).abs() < 1e-9);
        assert_eq!(f.window.calls, 4);
        assert_eq!(f.window.succeeded, 2);
        assert_eq!(f.window.slow, 1);
    }

    #[test]
    fn the_window_forgets_what_is_older_than_a_minute() {
        let t0 = Instant::now();
        let r = Recorder::new(1, t0);
        for _ in 0..30 {
            r.slow(t0);
            r.call(t0, ms(500), Outcome::Ok);
        }
        r.sample_utilization(t0, 95.0);
        let later = t0 + Duration::from_secs(45);
        r.call(later, ms(2), Outcome::Ok);
        r.sample_utilization(later, 10.0);
        let f = r.figures(later);
        assert_eq!(f.window.slow, 30, "45 s later the incident is still in");
        assert_eq!(f.window.calls, 31);
        assert_eq!(f.window.peak_utilization_pct, Some(95.0));

        let much_later = t0 + Duration::from_secs(65);
        let f = r.figures(much_later);
        assert_eq!(f.window.slow, 0);
        assert_eq!(f.window.calls, 1, "only the call at 45 s is left");
        assert!(f.window.latency.max_ms() < 3.0);
        assert_eq!(f.window.peak_utilization_pct, Some(10.0));
        // Lifetime totals keep everything.
        assert_eq!(f.counts.slow, 30);
        assert_eq!(f.counts.total, 31);
        assert_eq!(f.latency.count(), 31);
        assert!((f.latency.max_ms() - 500.0).abs() < 5.0);

        // A bucket reused a ring-turn later holds only the new slice.
        let next_turn = t0 + Duration::from_secs(60);
        r.call(next_turn, ms(1), Outcome::Ok);
        let f = r.figures(next_turn);
        assert_eq!(f.window.calls, 2);
    }

    /// A call's latency is kept once, in its window bucket, and folded into the lifetime
    /// histogram when the bucket is reused: nothing is lost or counted twice over many turns
    /// of the ring, whatever the stripe.
    #[test]
    fn lifetime_latency_survives_every_turn_of_the_ring() {
        let t0 = Instant::now();
        let r = Recorder::new(1, t0);
        let mut sum_ms = 0;
        for i in 0..200u64 {
            // One call every 3 s for 10 minutes: the ring turns ten times.
            r.call(t0 + Duration::from_secs(3 * i), ms(i + 1), Outcome::Ok);
            sum_ms += i + 1;
            if i % 37 == 0 {
                r.slow(t0 + Duration::from_secs(3 * i));
            }
        }
        let end = t0 + Duration::from_secs(600);
        let f = r.figures(end);
        assert_eq!(f.latency.count(), 200);
        assert_eq!(f.counts.total, 200);
        assert!((f.latency.avg_ms() - sum_ms as f64 / 200.0).abs() < 1e-9);
        assert!((f.latency.max_ms() - 200.0).abs() < 2.0);
        // The window holds its buckets' calls only: at 600 s, the five buckets before the
        // current (empty) one, 550–599 s: the calls at 552, 555 … 597 s.
        assert_eq!(f.window.calls, 16);
        assert_eq!(f.window.latency.count(), f.window.calls);
    }

    /// A call recorded late (its reading older than the stripe's last) lands in its own
    /// bucket, not in the one the stripe last computed.
    #[test]
    fn a_late_recording_lands_in_its_own_bucket() {
        let t0 = Instant::now();
        let r = Recorder::new(1, t0);
        r.call(t0 + Duration::from_secs(25), ms(1), Outcome::Ok);
        r.slow(t0 + Duration::from_secs(5));
        r.call(t0 + Duration::from_secs(5), ms(1), Outcome::Ok);
        // At 65 s the window holds 20–65 s: the call at 25 s, not the two at 5 s.
        let f = r.figures(t0 + Duration::from_secs(65));
        assert_eq!(f.window.calls, 1);
        assert_eq!(f.window.slow, 0);
        assert_eq!(f.counts.total, 2);
        assert_eq!(f.latency.count(), 2);
    }

    #[test]
    fn recording_off_moves_nothing() {
        let t0 = Instant::now();
        let r = Recorder::new(1, t0);
        r.set_enabled(false);
        r.call(t0, ms(1), Outcome::Ok);
        r.slow(t0);
        r.acquire(0, ms(1));
        r.retry(RetryReason::Other);
        let f = r.figures(t0);
        assert_eq!(f.counts, CallCounts::default());
        assert_eq!(f.waits[0].count(), 0);
        assert_eq!(f.retries, [0; RetryReason::COUNT]);
    }

    #[test]
    fn stripes_merge_across_threads() {
        let t0 = Instant::now();
        let r = std::sync::Arc::new(Recorder::new(1, t0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        r.call(t0, Duration::from_micros(i), Outcome::Ok);
                        r.acquire(0, Duration::from_micros(i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let f = r.figures(t0);
        assert_eq!(f.counts.total, 4000);
        assert_eq!(f.latency.count(), 4000);
        assert_eq!(f.waits[0].count(), 4000);
        assert_eq!(f.window.calls, 4000);
    }
}
