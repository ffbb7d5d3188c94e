//! The query path's side of the metrics: what an error counts as, and the slow-query log.
//! The figures themselves live in [`crate::metrics`].

use std::time::Duration;

use tokio::time::Instant;

use super::ManagerOptions;
use crate::error::Error;
use crate::metrics::{ErrorClass, Outcome, Recorder, RetryReason};
use crate::pool::AcquireError;

/// The manager's recorder, fed in the terms of the query path.
pub(crate) struct QueryStats {
    pub(crate) recorder: Recorder,
}

impl QueryStats {
    /// Stats for `pools` pools (acquire waits recorded by pool index).
    pub(crate) fn new(pools: usize) -> Self {
        Self {
            recorder: Recorder::new(pools, Instant::now()),
        }
    }

    /// One retry, caused by `e`.
    pub(crate) fn retry(&self, e: &Error) {
        self.recorder.retry(retry_reason(e));
    }

    /// One call, retries included, counted once.
    pub(crate) fn call<T>(&self, elapsed: Duration, result: &Result<T, Error>) {
        self.recorder
            .call(Instant::now(), elapsed, outcome_of(result));
    }

    /// A call that made one attempt, with that attempt's acquire from pool `pool`; `now` is a
    /// reading taken as it ended.
    pub(crate) fn one_attempt<T>(
        &self,
        now: Instant,
        elapsed: Duration,
        result: &Result<T, Error>,
        pool: usize,
        waited: Duration,
    ) {
        self.recorder
            .call_after_acquire(now, elapsed, outcome_of(result), pool, waited);
    }

    /// One acquire from pool `pool`, however it ended.
    pub(crate) fn acquire(&self, pool: usize, waited: Duration) {
        self.recorder.acquire(pool, waited);
    }

    /// One statement execution: slow ones are counted and logged with their SQL text and
    /// duration — never their parameter values.
    /// `now` is the caller's reading of when it ended.
    pub(crate) fn statement_at(
        &self,
        now: Instant,
        sql: &str,
        elapsed: Duration,
        opts: &ManagerOptions,
    ) {
        if elapsed > opts.slow_query_threshold {
            self.recorder.slow(now);
            tracing::warn!(
                sql,
                duration_ms = elapsed.as_secs_f64() * 1e3,
                threshold_ms = opts.slow_query_threshold.as_millis() as u64,
                "slow query"
            );
        }
    }
}

fn outcome_of<T>(result: &Result<T, Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(e) => Outcome::Failed {
            class: error_class(e),
            unknown: e.outcome_unknown(),
        },
    }
}

/// The class a failed call counts under: the last failure's, for exhausted retries.
pub(crate) fn error_class(e: &Error) -> ErrorClass {
    match e {
        Error::Acquire(AcquireError::TimedOut { .. }) => ErrorClass::AcquireTimeout,
        Error::Acquire(AcquireError::Connect(_)) => ErrorClass::Connect,
        Error::Acquire(AcquireError::Closed) => ErrorClass::Closed,
        Error::QueryTimeout { .. } => ErrorClass::QueryTimeout,
        Error::Query { .. } => ErrorClass::Statement,
        Error::OutcomeUnknown { .. } => ErrorClass::OutcomeUnknown,
        Error::RolledBack { .. } => ErrorClass::RolledBack,
        Error::RetriesExhausted { last, .. } => error_class(last),
        _ => ErrorClass::Other,
    }
}

/// What a retry is counted under.
pub(crate) fn retry_reason(e: &Error) -> RetryReason {
    match e {
        Error::Acquire(AcquireError::TimedOut { .. }) => RetryReason::AcquireTimeout,
        Error::Acquire(_) => RetryReason::Connect,
        _ => match e.code() {
            Some("40001") => RetryReason::Serialization,
            Some("40P01") => RetryReason::Deadlock,
            _ if e
                .pg_error()
                .is_some_and(|pg| pg.is_closed() || pg.code().is_none()) =>
            {
                RetryReason::ConnectionLost
            }
            _ => RetryReason::Other,
        },
    }
}
