//! Exit codes, and the one or two lines every failure prints: what happened, what to do.

use pgwarden::config::ConfigError;
use pgwarden::{AcquireError, BuildError};
use pgwarden_testdb::HarnessError;

/// Done.
pub(crate) const OK: u8 = 0;
/// The run failed (an unreachable server, statements that all failed …).
pub(crate) const RUNTIME: u8 = 1;
/// A bad flag or argument (clap exits with it itself for what it parses).
pub(crate) const USAGE: u8 = 2;
/// The configuration is wrong: a variable, a URL, the credentials, missing server binaries.
pub(crate) const CONFIG: u8 = 3;
/// `check`: a warning (for example pools that could exhaust `max_connections`).
pub(crate) const WARNING: u8 = 4;
/// `check`: critical, unreachable or refused.
pub(crate) const CRITICAL: u8 = 5;

/// How a subcommand failed: its exit code and the lines to print on stderr.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    lines: Vec<String>,
}

impl Failure {
    pub(crate) fn new(code: u8, what: impl Into<String>, todo: Option<String>) -> Self {
        let mut lines = vec![what.into()];
        lines.extend(todo);
        Self { code, lines }
    }

    pub(crate) fn runtime(what: impl Into<String>, todo: Option<String>) -> Self {
        Self::new(RUNTIME, what, todo)
    }

    /// Every configuration problem, each with its variable and fix (the library's wording).
    pub(crate) fn config_problems(e: &ConfigError) -> Self {
        let mut lines = vec![format!(
            "the configuration has {} problem(s):",
            e.problems.len()
        )];
        lines.extend(e.problems.iter().map(|p| format!("  {p}")));
        Self {
            code: CONFIG,
            lines,
        }
    }

    /// The throwaway server could not start: missing binaries are a configuration problem
    /// (install them, point PGWARDEN_PG_BIN at them, or use DATABASE_URL), the rest a runtime one.
    pub(crate) fn harness(e: &HarnessError) -> Self {
        match e {
            HarnessError::PgBinNotFound { .. } | HarnessError::NoServerUser { .. } => Self::new(
                CONFIG,
                format!("cannot start a throwaway PostgreSQL server: {e}"),
                Some("Or set DATABASE_URL to use a server of your own.".into()),
            ),
            _ => Self::new(
                RUNTIME,
                format!("cannot start a throwaway PostgreSQL server: {e}"),
                Some("Or set DATABASE_URL to use a server of your own.".into()),
            ),
        }
    }

    /// A library error met while building the manager (validating, connecting, prewarming):
    /// wrong credentials are configuration (3), an unreachable server a runtime failure (1).
    pub(crate) fn connecting(e: &BuildError) -> Self {
        if let BuildError::Config(ce) = e {
            return Self::config_problems(ce);
        }
        let kind = Kind::of_build(e);
        let (code, todo) = match kind {
            Kind::Refused => (
                CONFIG,
                "Fix the user, password or database name in DATABASE_URL.",
            ),
            Kind::Config => (
                CONFIG,
                "Fix the TLS settings (sslmode, sslrootcert, DB_SSL_ROOT_CERT).",
            ),
            Kind::Unreachable => (
                RUNTIME,
                "Check that the server is up and that DATABASE_URL's host and port are right.",
            ),
            Kind::Other => (RUNTIME, "Run again with -v to see the library's log."),
        };
        Self::new(code, e.to_string(), Some(todo.into()))
    }

    pub(crate) fn print(&self) {
        for (i, line) in self.lines.iter().enumerate() {
            if i == 0 {
                eprintln!("pgwarden: {line}");
            } else {
                eprintln!("{line}");
            }
        }
    }
}

/// What a connect-time error means for the person running the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The settings are wrong (configuration, TLS).
    Config,
    /// The server answered and refused: wrong password, unknown user or database.
    Refused,
    /// Nothing answered in time, or the connection was refused at the TCP level.
    Unreachable,
    /// Anything else.
    Other,
}

impl Kind {
    pub(crate) fn of_build(e: &BuildError) -> Self {
        match e {
            BuildError::Config(_) | BuildError::Tls(_) => Kind::Config,
            BuildError::Prewarm(a) => Kind::of_acquire(a),
            _ => Kind::Other,
        }
    }

    pub(crate) fn of_acquire(e: &AcquireError) -> Self {
        match e {
            // The server answered with an SQLSTATE: it refused the credentials or database.
            AcquireError::Connect(c) if c.code().is_some() => Kind::Refused,
            // Permanent without an answer: TLS or connection settings.
            AcquireError::Connect(_) => Kind::Config,
            AcquireError::TimedOut { .. } => Kind::Unreachable,
            _ => Kind::Other,
        }
    }
}
