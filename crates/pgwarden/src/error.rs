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

    /// The pool was closed: no new connections are handed out.
    #[error("pool closed: the pool was shut down and hands out no more connections")]
    Closed,
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
            Error::Closed => false,
        }
    }
}
