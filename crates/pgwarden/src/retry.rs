//! Retry safety: the backoff schedule, the budget, and which failures may be retried.
//!
//! The rule is simple and strict: a call is retried only when it provably did not commit, or
//! when the caller marked it idempotent (it may run twice). The library never guesses from SQL
//! text whether a statement writes.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::RetryConfig;

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

/// SQLSTATEs a statement may fail with before anything committed, that a later attempt may
/// not meet: serialization failure, deadlock, lock not available.
const TRANSIENT_STATEMENT: &[&str] = &["40001", "40P01", "55P03"];

/// SQLSTATEs that mean no session was established (nothing was run): too many connections,
/// cannot connect now (starting up, recovering), connection rejected.
const NOT_CONNECTED: &[&str] = &["53300", "57P03", "08001", "08004"];

/// SQLSTATEs that mean the session ended under the statement: admin shutdown, crash shutdown,
/// connection failure / does not exist / protocol trouble.
fn session_lost(code: &str) -> bool {
    matches!(
        code,
        "57P01" | "57P02" | "08006" | "08003" | "08000" | "08007" | "08P01"
    )
}

/// Classifies a statement's failure.
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
    let code = err.code().map(|c| c.code());
    match code {
        Some(c) if NOT_CONNECTED.contains(&c) => Verdict::Retry,
        Some(c) if TRANSIENT_STATEMENT.contains(&c) && !in_transaction => Verdict::Retry,
        Some(c) if session_lost(c) && ends_session(err) => {
            lost(idempotent, in_transaction, was_commit)
        }
        Some(_) => Verdict::Fail,
        // No server error: the connection broke (closed, reset, I/O). Anything may have run.
        None if err.is_closed() || is_io(err) => lost(idempotent, in_transaction, was_commit),
        None => Verdict::Fail,
    }
}

/// A FATAL (or PANIC) response ends the session, and with it whatever was running; an ERROR
/// with a connection-class code (a foreign server's, say) only ended this statement, which
/// rolled back.
fn ends_session(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::Severity;
    err.as_db_error()
        .and_then(|db| db.parsed_severity())
        .is_none_or(|s| matches!(s, Severity::Fatal | Severity::Panic))
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

fn is_io(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Tracks one call's retries against the schedule and the budget.
#[derive(Debug, Clone)]
pub(crate) struct RetryClock {
    max_retries: u32,
    budget: Duration,
    retries: u32,
    /// Set when the first attempt ends: the budget counts from there.
    budget_end: Option<Instant>,
}

impl RetryClock {
    /// `max_retries` retries after the first attempt, within `budget`.
    pub(crate) fn new(max_retries: u32, budget: Duration) -> Self {
        Self {
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
        // The brief's schedule (100 ms, 500 ms, 2 s, then 2 s again), each ±20%.
        let delay = jitter(RetryConfig::delay_before(self.retries + 1));
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

    #[test]
    fn schedule_is_100_500_2000_with_jitter_then_stops() {
        let now = Instant::now();
        let mut c = RetryClock::new(3, Duration::from_secs(5));
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
        let mut c = RetryClock::new(10, Duration::from_secs(5));
        assert!(c.next_delay(t0).is_some());
        assert_eq!(c.budget_end(), Some(t0 + Duration::from_secs(5)));
        // 4.61 s in, even the shortest 500 ms (-20%) backoff would end past the budget.
        let late = t0 + Duration::from_millis(4_610);
        assert!(c.next_delay(late).is_none());
        let mut c = RetryClock::new(10, Duration::from_secs(5));
        c.next_delay(t0);
        assert!(c.next_delay(t0 + Duration::from_millis(1000)).is_some());
    }

    #[test]
    fn more_retries_than_the_schedule_repeat_the_last_delay() {
        let now = Instant::now();
        let mut c = RetryClock::new(5, Duration::from_secs(3600));
        let d: Vec<_> = std::iter::from_fn(|| c.next_delay(now)).collect();
        assert_eq!(d.len(), 5);
        assert!(d[4] >= Duration::from_millis(1600));
    }

    #[test]
    fn zero_retries_means_one_attempt() {
        let mut c = RetryClock::new(0, Duration::from_secs(5));
        assert_eq!(c.next_delay(Instant::now()), None);
    }

    #[test]
    fn lost_sessions_retry_only_idempotent_calls() {
        assert_eq!(lost(true, false, false), Verdict::Retry);
        assert_eq!(lost(false, false, false), Verdict::OutcomeUnknown);
        assert_eq!(lost(false, true, false), Verdict::Fail);
        assert_eq!(lost(false, true, true), Verdict::OutcomeUnknown);
        assert!(session_lost("57P01") && session_lost("08006"));
        assert!(!session_lost("23505") && !session_lost("40001"));
    }
}
