//! The library's errors: [`BuildError`] when a manager cannot be built (configuration, TLS
//! files, prewarming), [`Error`] for everything at run time.
//!
//! Every variant says what happened and what to do, and callers ask one question each:
//! [`Error::is_timeout`] (and [`Error::timeout_phase`]), [`Error::outcome_unknown`],
//! [`Error::is_retryable`], [`Error::code`] and [`Error::db_error`] (the server's message, detail
//! and hint). `Display` never repeats what `source()` returns; where the cause *is* the message
//! (the server's error text, a connect failure's reason) it is shown once and not chained.

use std::time::Duration;

use tokio_postgres::error::DbError;

pub use crate::pool::{AcquireError, ConnectError};

/// Why a [`crate::PoolManager`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is invalid: every problem, each with its variable and fix.
    #[error("invalid configuration:\n{0}")]
    Config(crate::config::ConfigError),

    /// The TLS settings cannot be honoured (a missing or unreadable root certificate …).
    #[error(transparent)]
    Tls(crate::tls::TlsError),

    /// The pool could not open its `DB_POOL_MIN` connections at startup.
    #[error("prewarming the pool (DB_POOL_MIN connections) failed: {0}")]
    Prewarm(AcquireError),
}

impl BuildError {
    /// The connect failure behind a failed prewarm.
    pub fn connect_error(&self) -> Option<&ConnectError> {
        match self {
            BuildError::Prewarm(e) => e.connect_error(),
            _ => None,
        }
    }
}

/// Which limit a timeout hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// Getting a connection (`DB_ACQUIRE_TIMEOUT`).
    Acquire,
    /// Running a statement (`DB_QUERY_TIMEOUT`).
    Query,
}

/// Errors of the query path at run time.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection could be had: the pool timed out, could not connect, or was closed.
    #[error(transparent)]
    Acquire(AcquireError),

    /// The statement failed: the server's error (constraint, syntax, permission …) or a broken
    /// connection when nothing could have committed.
    #[error("query failed: {}{}{}", describe(error), retried_note(*retries), not_retried.map(|n| format!("; not retried: {n}")).unwrap_or_default())]
    Query {
        /// The driver's error (the server's, when it answered).
        error: tokio_postgres::Error,
        /// Retries made before this failure.
        retries: u32,
        /// The manager's verdict: another attempt may succeed.
        retryable: bool,
        /// Why a failure that is usually transient was not retried (a `CALL` may have
        /// committed part of its work, …).
        not_retried: Option<&'static str>,
    },

    /// The statement ran to its end but returned the wrong number of rows (a write in it has
    /// committed). Final.
    #[error("expected {expected} row, the statement returned {got} (it ran to its end: a write in it has committed)")]
    RowCount {
        /// "exactly one" or "at most one".
        expected: &'static str,
        /// Rows returned.
        got: usize,
    },

    /// The statement ran longer than the query timeout. It was cancelled on the server;
    /// `ended` says whether it provably stopped (the connection was then reused) or the
    /// connection was closed to make sure.
    #[error(
        "query timed out after {}ms (DB_QUERY_TIMEOUT) and was cancelled on the server{}",
        after.as_millis(),
        if *ended { "" } else { "; it did not confirm the cancel in time, so its connection was closed" }
    )]
    QueryTimeout {
        /// The timeout that fired.
        after: Duration,
        /// The statement provably ended (57014 after the cancel).
        ended: bool,
        /// The statement may have written and did not provably end: its outcome is unknown.
        unknown: bool,
    },

    /// The connection was lost after a statement that may write (or a COMMIT) was sent: it may
    /// or may not have committed. It was not retried. Check whether it took effect before
    /// running it again, or mark the call idempotent if running it twice is harmless.
    #[error("outcome unknown: the connection was lost after the statement was sent, so it may or may not have committed ({}); it was not retried", describe(error))]
    OutcomeUnknown {
        /// The driver's error.
        error: tokio_postgres::Error,
    },

    /// A statement in a transaction failed, the body returned `Ok` anyway, and the transaction
    /// was rolled back: nothing was committed.
    #[error("transaction rolled back: a statement in it failed ({reason}) and the body still returned Ok; nothing was committed")]
    RolledBack {
        /// The first failure in the transaction.
        reason: String,
        /// Its SQLSTATE, when the server answered with an error.
        code: Option<String>,
    },

    /// Retries ran out (attempts or budget) on a transient failure; the last failure is the
    /// source.
    #[error("gave up after {attempts} attempts ({}ms)", elapsed.as_millis())]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        #[source]
        last: Box<Error>,
    },
}

impl From<AcquireError> for Error {
    fn from(e: AcquireError) -> Self {
        Error::Acquire(e)
    }
}

/// The server's message and SQLSTATE, or the connection problem — once, without the
/// "db error:" prefix chain.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} [SQLSTATE {}]",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(d) = db.detail() {
            s.push_str("; detail: ");
            s.push_str(d);
        }
        if let Some(h) = db.hint() {
            s.push_str("; hint: ");
            s.push_str(h);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

fn retried_note(retries: u32) -> String {
    match retries {
        0 => String::new(),
        1 => " (after 1 retry)".to_owned(),
        n => format!(" (after {n} retries)"),
    }
}

impl Error {
    /// A statement's failure, judged by its SQLSTATE alone (the manager refines the verdict
    /// with what it knows of the call).
    pub(crate) fn query(error: tokio_postgres::Error) -> Self {
        let retryable = crate::sqlstate::retryable_code(error.code().map(|c| c.code()));
        Error::Query {
            error,
            retries: 0,
            retryable,
            not_retried: None,
        }
    }

    /// True for a timeout; [`Error::timeout_phase`] says which.
    pub fn is_timeout(&self) -> bool {
        self.timeout_phase().is_some()
    }

    /// Which limit timed out, if any.
    pub fn timeout_phase(&self) -> Option<TimeoutPhase> {
        match self {
            Error::Acquire(e) if e.is_timeout() => Some(TimeoutPhase::Acquire),
            Error::QueryTimeout { .. } => Some(TimeoutPhase::Query),
            Error::RetriesExhausted { last, .. } => last.timeout_phase(),
            _ => None,
        }
    }

    /// True when another attempt may succeed, in the manager's judgement: a busy server, a
    /// serialization failure of a statement that provably committed nothing, a server that
    /// could not be reached. False when retrying cannot help or is not safe — among them a
    /// `CALL` that failed with 40001 (it may have committed part of its work), a statement
    /// inside a transaction (the transaction reruns as a whole), and an acquire that timed out
    /// on an exhausted pool (see the retry module's `acquire_verdict`).
    ///
    /// After [`Error::RetriesExhausted`], the verdict on the last failure: a later call may
    /// succeed, the manager's budget ran out.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Acquire(e) => e.is_retryable(),
            Error::Query { retryable, .. } => *retryable,
            Error::RetriesExhausted { last, .. } => last.is_retryable(),
            Error::RowCount { .. }
            | Error::QueryTimeout { .. }
            | Error::OutcomeUnknown { .. }
            | Error::RolledBack { .. } => false,
        }
    }

    /// True when a write may or may not have committed: the caller must check before running
    /// it again.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Error::OutcomeUnknown { .. } => true,
            Error::QueryTimeout { unknown, .. } => *unknown,
            Error::RetriesExhausted { last, .. } => last.outcome_unknown(),
            _ => false,
        }
    }

    /// The SQLSTATE, when the server answered with an error (57014 for a query timeout).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Query { error, .. } | Error::OutcomeUnknown { error } => {
                error.code().map(|c| c.code())
            }
            Error::Acquire(e) => e.connect_error().and_then(ConnectError::code),
            Error::QueryTimeout { .. } => Some(crate::sqlstate::QUERY_CANCELED),
            Error::RolledBack { code, .. } => code.as_deref(),
            Error::RetriesExhausted { last, .. } => last.code(),
            Error::RowCount { .. } => None,
        }
    }

    /// The server's error — [`DbError::message`], [`DbError::detail`], [`DbError::hint`] … —
    /// when the server answered with one.
    pub fn db_error(&self) -> Option<&DbError> {
        self.pg_error().and_then(tokio_postgres::Error::as_db_error)
    }

    /// The underlying tokio-postgres error, when there is one.
    pub fn pg_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Error::Query { error, .. } | Error::OutcomeUnknown { error } => Some(error),
            Error::RetriesExhausted { last, .. } => last.pg_error(),
            _ => None,
        }
    }

    /// The acquire failure, when no connection could be had.
    pub fn acquire_error(&self) -> Option<&AcquireError> {
        match self {
            Error::Acquire(e) => Some(e),
            Error::RetriesExhausted { last, .. } => last.acquire_error(),
            _ => None,
        }
    }
}
