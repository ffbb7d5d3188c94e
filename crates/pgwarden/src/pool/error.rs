//! The pool's errors: why a connection could not be opened ([`ConnectError`], from a
//! [`super::Connector`]) and why an acquire failed ([`AcquireError`]). The manager's error wraps
//! them; the pool knows nothing of it.

use std::fmt;
use std::time::Duration;

use super::Status;
use crate::sqlstate;

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
    /// Permanent: invalid password / authorization (class 28), unknown database (3D000),
    /// insufficient privilege (42501), certificate and configuration errors (see
    /// the SQLSTATE table). Everything else — refused, reset (also during the TLS
    /// handshake), timed out, 57P03 (starting up / recovering), 53300 (too many connections) — is
    /// transient.
    pub fn from_pg(target: impl Into<String>, err: &tokio_postgres::Error) -> Self {
        let target = target.into();
        if let Some(db) = err.as_db_error() {
            let code = db.code().code().to_owned();
            let permanent = sqlstate::connect_permanent_code(&code);
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
        // Only a certificate or configuration problem is permanent: a reset, an EOF or a missing
        // close_notify during the TLS handshake is a server restarting, and heals.
        let permanent = sqlstate::connect_permanent_transport(&message);
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

/// Why [`super::Pool::get`] handed out no connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireError {
    /// No connection could be had before the acquire deadline.
    #[error(
        "timed out after {}ms (DB_ACQUIRE_TIMEOUT) waiting for a connection from pool {pool} ({status}){}",
        waited.as_millis(),
        timeout_cause(last_connect_error.as_ref(), status)
    )]
    TimedOut {
        /// The pool's name (`primary`, `failover`).
        pool: String,
        /// How long the acquire waited.
        waited: Duration,
        /// The pool at the moment of the timeout.
        status: Status,
        /// The most recent connect failure, when connects were failing: the real cause.
        last_connect_error: Option<ConnectError>,
    },

    /// A connection could not be opened and waiting will not help (wrong password, unknown
    /// database, bad certificate …).
    #[error("{0}; fix the connection settings (DATABASE_URL) — retrying will not help")]
    Connect(ConnectError),

    /// The pool was closed: no new connections are handed out.
    #[error("pool closed: the pool was shut down and hands out no more connections")]
    Closed,
}

impl AcquireError {
    /// True for a timeout while every connection was checked out by others and no connect was
    /// failing: the pool is too small for the load (or a connection is held too long), and
    /// waiting longer on the same pool only adds to the queue.
    pub fn pool_exhausted(&self) -> bool {
        matches!(self, AcquireError::TimedOut { status, last_connect_error: None, .. }
            if status.in_use >= status.max)
    }

    /// True when another attempt on the same pool may succeed: after a timeout while connects
    /// were failing or slow, or a transient connect failure — not after a timeout on an
    /// exhausted pool (waiting longer for a full pool adds load where it hurts most), nor after
    /// a permanent connect failure or a close. The retry module's `acquire_verdict` builds on it.
    pub fn is_retryable(&self) -> bool {
        match self {
            AcquireError::TimedOut { .. } => !self.pool_exhausted(),
            AcquireError::Connect(c) => !c.is_permanent(),
            _ => false,
        }
    }

    /// True for a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, AcquireError::TimedOut { .. })
    }

    /// The connect failure behind this error: the permanent one, or the last one before a
    /// timeout.
    pub fn connect_error(&self) -> Option<&ConnectError> {
        match self {
            AcquireError::TimedOut {
                last_connect_error, ..
            } => last_connect_error.as_ref(),
            AcquireError::Connect(e) => Some(e),
            AcquireError::Closed => None,
        }
    }
}

fn timeout_cause(last: Option<&ConnectError>, status: &Status) -> String {
    match last {
        Some(e) => format!(
            "; last connect error: {e}; check that the server is up and reachable"
        ),
        None if status.in_use >= status.max => "; the pool is exhausted (every connection is checked out): raise DB_POOL_MAX, return connections sooner, or look for a connection held across a slow operation".to_owned(),
        None => "; connections are still being opened: check DB_CONNECT_TIMEOUT and the server's load".to_owned(),
    }
}
