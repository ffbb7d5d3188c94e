//! Retry safety: the backoff schedule, the budget, and which failures may be retried.
//!
//! The rule is simple and strict: a call is retried only when it provably did not commit, or
//! when the caller marked it idempotent (it may run twice). The library never guesses from SQL
//! text whether a statement writes.

use std::time::Duration;

use tokio::time::Instant;

use crate::pool::AcquireError;
use crate::sqlstate::Failure;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing committed (or the call may run twice): another attempt is safe.
    Retry,
    /// Final: retrying cannot help or is not safe, and the outcome is known (nothing committed,
    /// or the error is the answer).
    Fail,
    /// The connection was lost after a statement that may write was sent: it may or may not
    /// have committed. Never retried.
    OutcomeUnknown,
}

/// Classifies a statement's failure (see [`crate::sqlstate`] for the table).
///
/// - `idempotent`: the caller said the call may run twice;
/// - `in_transaction`: the statement ran inside an explicit transaction (whose body the
///   transaction API reruns as a whole; a single statement of it is never retried alone);
/// - `was_commit`: the statement was a COMMIT (a lost COMMIT is always "outcome unknown"
///   unless idempotent).
pub(crate) fn classify(
    err: &tokio_postgres::Error,
    idempotent: bool,
    in_transaction: bool,
    was_commit: bool,
) -> Verdict {
    classify_failure(&Failure::of(err), idempotent, in_transaction, was_commit)
}

fn classify_failure(
    f: &Failure<'_>,
    idempotent: bool,
    in_transaction: bool,
    was_commit: bool,
) -> Verdict {
    if f.not_connected() || (f.transient_statement() && !in_transaction) {
        Verdict::Retry
    } else if f.session_lost() {
        lost(idempotent, in_transaction, was_commit)
    } else {
        Verdict::Fail
    }
}

/// The verdict on a failed acquire, for the attempt loop (and, later, a router choosing the
/// pool of the next attempt).
///
/// Policy:
/// - a timeout while the pool was **exhausted** (every connection checked out by others, no
///   connect failing) is not retried on the same pool: waiting longer for a full pool adds
///   load where it hurts most, and the caller learns at once that the pool is too small. When
///   `other_pool` is true (there is a failover pool to move the attempt to), it is retried
///   there;
/// - a timeout while connects were failing or slow (a server restarting, a network blip) is
///   retried: the next attempt may find the server back;
/// - a permanent connect failure and a closed pool are final.
pub(crate) fn acquire_verdict(e: &AcquireError, other_pool: bool) -> Verdict {
    if e.is_retryable() || (other_pool && e.pool_exhausted()) {
        Verdict::Retry
    } else {
        Verdict::Fail
    }
}

fn lost(idempotent: bool, in_transaction: bool, was_commit: bool) -> Verdict {
    if idempotent {
        Verdict::Retry
    } else if in_transaction && !was_commit {
        // The transaction was not committed: the server rolls it back when the session dies.
        // The transaction API reruns the body only for idempotent bodies; otherwise the caller
        // learns that nothing committed.
        Verdict::Fail
    } else {
        Verdict::OutcomeUnknown
    }
}

/// Tracks one call's retries against the schedule and the budget.
#[derive(Debug, Clone)]
pub(crate) struct RetryClock<'a> {
    delays: &'a [Duration],
    max_retries: u32,
    budget: Duration,
    retries: u32,
    /// Set when the first attempt ends: the budget counts from there.
    budget_end: Option<Instant>,
}

impl<'a> RetryClock<'a> {
    /// `max_retries` retries after the first attempt, within `budget`, waiting `delays[i]`
    /// before retry `i + 1` (the last delay repeats; none means no wait).
    pub(crate) fn new(delays: &'a [Duration], max_retries: u32, budget: Duration) -> Self {
        Self {
            delays,
            max_retries,
            budget,
            retries: 0,
            budget_end: None,
        }
    }

    /// Retries done so far.
    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }

    /// The end of the budget, once the first attempt has failed.
    pub(crate) fn budget_end(&self) -> Option<Instant> {
        self.budget_end
    }

    /// After a failed attempt: the delay before the next one, or `None` when no retry is left
    /// or the next attempt would start after the budget is spent.
    pub(crate) fn next_delay(&mut self, now: Instant) -> Option<Duration> {
        let end = *self.budget_end.get_or_insert(now + self.budget);
        if self.retries >= self.max_retries {
            return None;
        }
        // The schedule (by default 100 ms, 500 ms, 2 s, then 2 s again), each ±20%.
        let i = (self.retries as usize).min(self.delays.len().saturating_sub(1));
        let delay = jitter(self.delays.get(i).copied().unwrap_or_default());
        if now + delay >= end {
            return None;
        }
        self.retries += 1;
        Some(delay)
    }
}

/// ±20% uniform jitter, so retries of many callers do not arrive together.
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    let lo = ms * 8 / 10;
    let hi = ms * 12 / 10;
    Duration::from_millis(rand::random_range(lo..=hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAYS: [Duration; 3] = [
        Duration::from_millis(100),
        Duration::from_millis(500),
        Duration::from_millis(2000),
    ];

    #[test]
    fn schedule_is_100_500_2000_with_jitter_then_stops() {
        let now = Instant::now();
        let mut c = RetryClock::new(&DELAYS, 3, Duration::from_secs(5));
        let d: Vec<_> = std::iter::from_fn(|| c.next_delay(now)).collect();
        assert_eq!(d.len(), 3);
        for (got, base) in d.iter().zip([100u64, 500, 2000]) {
            let ms = got.as_millis() as u64;
            assert!(
                ms >= base * 8 / 10 && ms <= base * 12 / 10,
                "{ms} vs {base}"
            );
        }
        assert_eq!(c.retries(), 3);
        assert_eq!(c.next_delay(now), None);
    }

    #[test]
    fn budget_counts_from_the_first_failure_and_stops_new_attempts() {
        let t0 = Instant::now();
        let mut c = RetryClock::new(&DELAYS, 10, Duration::from_secs(5));
        assert!(c.next_delay(t0).is_some());
        assert_eq!(c.budget_end(), Some(t0 + Duration::from_secs(5)));
        // 4.61 s in, even the shortest 500 ms (-20%) backoff would end past the budget.
        let late = t0 + Duration::from_millis(4_610);
        assert!(c.next_delay(late).is_none());
        let mut c = RetryClock::new(&DELAYS, 10, Duration::from_secs(5));
        c.next_delay(t0);
        assert!(c.next_delay(t0 + Duration::from_millis(1000)).is_some());
    }

    #[test]
    fn more_retries_than_the_schedule_repeat_the_last_delay() {
        let now = Instant::now();
        let mut c = RetryClock::new(&DELAYS, 5, Duration::from_secs(3600));
        let d: Vec<_> = std::iter::from_fn(|| c.next_delay(now)).collect();
        assert_eq!(d.len(), 5);
        assert!(d[4] >= Duration::from_millis(1600));
    }

    #[test]
    fn classification_table() {
        let server = |code, fatal| Failure {
            code: Some(code),
            fatal,
            broken: false,
        };
        let broken = Failure {
            code: None,
            fatal: true,
            broken: true,
        };
        use Verdict::{Fail, OutcomeUnknown as Unknown, Retry};
        // (failure, idempotent, in transaction, commit) -> verdict
        let table = [
            (server("40001", false), false, false, false, Retry),
            (server("40001", false), false, true, false, Fail),
            (server("55P03", false), false, false, false, Retry),
            (server("53300", true), false, true, true, Retry),
            (server("57P01", true), false, false, false, Unknown),
            (server("57P01", true), true, false, false, Retry),
            (server("57P01", true), false, true, false, Fail),
            (server("57P01", true), false, true, true, Unknown),
            (server("08006", false), false, false, false, Fail),
            (server("23505", false), true, false, false, Fail),
            (broken, false, false, false, Unknown),
            (broken, true, false, false, Retry),
            (broken, false, true, true, Unknown),
        ];
        for (f, idem, tx, commit, want) in table {
            assert_eq!(
                classify_failure(&f, idem, tx, commit),
                want,
                "{f:?} {idem} {tx} {commit}"
            );
        }
    }

    #[test]
    fn acquire_policy_no_retry_of_an_exhausted_pool_unless_another_pool_exists() {
        use crate::pool::{ConnectError, Status};
        let timed_out = |in_use, last: Option<ConnectError>| AcquireError::TimedOut {
            pool: "primary".into(),
            waited: Duration::from_millis(200),
            status: Status {
                max: 2,
                size: 2,
                in_use,
                ..Status::default()
            },
            last_connect_error: last,
        };
        let refused = ConnectError::transient("db:5432", "connection refused");
        let denied = ConnectError::permanent("db:5432", "password authentication failed");
        let table = [
            (timed_out(2, None), false, Verdict::Fail),
            (timed_out(2, None), true, Verdict::Retry),
            (timed_out(1, None), false, Verdict::Retry),
            (timed_out(2, Some(refused.clone())), false, Verdict::Retry),
            (AcquireError::Connect(refused), false, Verdict::Retry),
            (AcquireError::Connect(denied), true, Verdict::Fail),
            (AcquireError::Closed, true, Verdict::Fail),
        ];
        for (e, other_pool, want) in table {
            assert_eq!(acquire_verdict(&e, other_pool), want, "{e}");
            if !other_pool {
                assert_eq!(e.is_retryable(), want == Verdict::Retry, "{e}");
            }
        }
        let text = timed_out(2, None).to_string();
        assert!(
            text.contains("DB_ACQUIRE_TIMEOUT") && text.contains("exhausted"),
            "{text}"
        );
    }

    #[test]
    fn zero_retries_means_one_attempt() {
        let mut c = RetryClock::new(&DELAYS, 0, Duration::from_secs(5));
        assert_eq!(c.next_delay(Instant::now()), None);
    }

    #[test]
    fn lost_sessions_retry_only_idempotent_calls() {
        assert_eq!(lost(true, false, false), Verdict::Retry);
        assert_eq!(lost(false, false, false), Verdict::OutcomeUnknown);
        assert_eq!(lost(false, true, false), Verdict::Fail);
        assert_eq!(lost(false, true, true), Verdict::OutcomeUnknown);
    }
}
