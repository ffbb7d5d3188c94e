//! The library's error type.
//!
//! Every variant says what happened and what to do. `Display` never repeats the source error's
//! text when the source is also returned by `source()`, except where the cause *is* the message
//! (a connect failure carries the server's reason as text, so it is not chained twice).

use std::fmt;
use std::time::Duration;

use crate::pool::Status;

/// Why a connection could not be opened, reduced to what an operator needs: the target (never a
/// password), the server's reason and its SQLSTATE, and whether waiting can heal it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectError {
    target: String,
    message: String,
    code: Option<String>,
    permanent: bool,
}

impl ConnectError {
    /// A connect failure that may heal by waiting (refused, timed out, server starting up, full).
    pub fn transient(target: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            message: message.into(),
            code: None,
            permanent: false,
        }
    }

    /// A connect failure that waiting cannot heal (wrong password, unknown database, no permission).
    pub fn permanent(target: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            message: message.into(),
            code: None,
            permanent: true,
        }
    }

    /// Attaches the server's SQLSTATE.
    #[must_use]
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Builds a connect error from a tokio-postgres error, classifying it by SQLSTATE.
    ///
    /// Permanent: invalid password / authorization (28P01, 28000), unknown database (3D000),
    /// insufficient privilege (42501), invalid catalog or role, and TLS/configuration errors.
    /// Everything else — refused, reset, timed out, 57P03 (starting up / recovering), 53300 (too many
    /// connections) — is transient.
    pub fn from_pg(target: impl Into<String>, err: &tokio_postgres::Error) -> Self {
        let target = target.into();
        if let Some(db) = err.as_db_error() {
            let code = db.code().code().to_owned();
            let permanent = matches!(code.as_str(), "28P01" | "28000" | "3D000" | "42501")
                || code.starts_with("28");
            let mut message = db.message().to_owned();
            if let Some(hint) = db.hint() {
                message.push_str(" (hint: ");
                message.push_str(hint);
                message.push(')');
            }
            return Self {
                target,
                message,
                code: Some(code),
                permanent,
            };
        }
        // Not a server error: I/O, TLS handshake, or configuration. Render the whole chain once.
        let mut message = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        let lower = message.to_ascii_lowercase();
        let permanent = lower.contains("certificate")
            || lower.contains("invalid configuration")
            || lower.contains("server does not support tls")
            || lower.contains("tls");
        Self {
            target,
            message,
            code: None,
            permanent,
        }
    }

    /// The server's SQLSTATE, when the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// True when waiting cannot heal this error, so acquires fail at once instead of spinning.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The server's (or the socket's) reason, without the target.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The target that was tried, password-free (for example `127.0.0.1:5432`).
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting to {}: {}", self.target, self.message)?;
        if let Some(code) = &self.code {
            write!(f, " [SQLSTATE {code}]")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for ConnectError {}

/// Errors of the pool and the query path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection could be had before the acquire deadline.
    #[error(
        "timed out after {}ms waiting for a connection ({status}){}; {}",
        waited.as_millis(),
        last_connect_error.as_ref().map(|e| format!("; last connect error: {e}")).unwrap_or_default(),
        advice(last_connect_error.as_ref())
    )]
    AcquireTimeout {
        /// How long the acquire waited.
        waited: Duration,
        /// The most recent connect failure, when connects were failing: the real cause.
        last_connect_error: Option<ConnectError>,
        /// The pool at the moment of the timeout.
        status: Status,
    },

    /// A connection could not be opened and waiting will not help (wrong password, unknown
    /// database, bad certificate …).
    #[error("{0}; fix the connection settings (DATABASE_URL) — retrying will not help")]
    Connect(ConnectError),

    /// The configuration is invalid: every problem, each with its variable and fix.
    #[error("invalid configuration:\n{0}")]
    Config(crate::config::ConfigError),

    /// The TLS settings cannot be honoured.
    #[error(transparent)]
    Tls(crate::tls::TlsError),

    /// The pool was closed: no new connections are handed out.
    #[error("pool closed: the pool was shut down and hands out no more connections")]
    Closed,

    /// The statement failed: the server's error (constraint, syntax, permission …) or a broken
    /// connection when nothing could have committed. Final.
    #[error("query failed: {}{}", describe(.0), retried_note(*.1))]
    Query(tokio_postgres::Error, u32),

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
    #[error("outcome unknown: the connection was lost after the statement was sent, so it may or may not have committed ({}); it was not retried", describe(.0))]
    OutcomeUnknown(tokio_postgres::Error),

    /// A statement in a transaction failed, the body returned `Ok` anyway, and the transaction
    /// was rolled back: nothing was committed.
    #[error("transaction rolled back: a statement in it failed ({0}) and the body still returned Ok; nothing was committed")]
    RolledBack(String),

    /// Retries ran out (attempts or budget) on a transient failure; the last failure is inside.
    #[error("gave up after {attempts} attempts ({}ms): {last}", elapsed.as_millis())]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: Box<Error>,
    },
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

fn advice(last: Option<&ConnectError>) -> &'static str {
    match last {
        Some(_) => "check that the server is up and reachable",
        None => "the pool is exhausted: raise DB_POOL_MAX, return connections sooner, or look for a connection held across a slow operation",
    }
}

impl Error {
    /// True when trying again later may succeed (the pool was busy or the server was unreachable).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::AcquireTimeout { .. } => true,
            Error::Connect(e) => !e.is_permanent(),
            Error::Closed
            | Error::Config(_)
            | Error::Tls(_)
            | Error::OutcomeUnknown(_)
            | Error::QueryTimeout { .. }
            | Error::RolledBack(_)
            | Error::RowCount { .. } => false,
            Error::Query(e, _) => e.code().is_some_and(|c| {
                matches!(c.code(), "40001" | "40P01" | "55P03" | "53300" | "57P03")
            }),
            Error::RetriesExhausted { last, .. } => last.is_transient(),
        }
    }

    /// True when a write may or may not have committed: the caller must check before running
    /// it again.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Error::OutcomeUnknown(_) => true,
            Error::QueryTimeout { unknown, .. } => *unknown,
            Error::RetriesExhausted { last, .. } => last.outcome_unknown(),
            _ => false,
        }
    }

    /// The server's SQLSTATE, when the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Query(e, _) | Error::OutcomeUnknown(e) => e.code().map(|c| c.code()),
            Error::Connect(e) => e.code(),
            Error::QueryTimeout { .. } => Some("57014"),
            Error::RetriesExhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// The underlying tokio-postgres error, when there is one.
    pub fn pg_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Error::Query(e, _) | Error::OutcomeUnknown(e) => Some(e),
            Error::RetriesExhausted { last, .. } => last.pg_error(),
            _ => None,
        }
    }
}
