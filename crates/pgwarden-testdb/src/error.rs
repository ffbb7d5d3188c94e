//! The one error type of the harness.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while starting or driving a throwaway server.
///
/// Each message says what happened and what to do about it. `Display` never repeats the
/// `source()`; print the chain (or `{:?}`) to see the underlying cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// No folder holding `initdb` was found.
    #[error("{detail}PostgreSQL server binaries (initdb) not found. Install them with: apt-get install -y postgresql (as root), or set PGWARDEN_PG_BIN to the folder holding initdb.")]
    PgBinNotFound {
        /// Extra context (e.g. the bad `PGWARDEN_PG_BIN` value), empty or ending in a space.
        detail: String,
    },

    /// The `pgbouncer` program was not found.
    #[error("{detail}PgBouncer not found. Install it with: apt-get install -y pgbouncer (as root; then stop the package's own instance: systemctl disable --now pgbouncer), or set PGWARDEN_PGBOUNCER to the pgbouncer program.")]
    PgBouncerNotFound {
        /// Extra context (e.g. the bad `PGWARDEN_PGBOUNCER` value), empty or ending in a space.
        detail: String,
    },

    /// PgBouncer did not start.
    #[error("PgBouncer did not start: {reason}. Last lines of its log {log_path}:\n{log_tail}")]
    BouncerStartFailed {
        /// What went wrong.
        reason: String,
        /// PgBouncer's log file.
        log_path: PathBuf,
        /// Its last lines.
        log_tail: String,
    },

    /// The process runs as root but the unprivileged server user does not exist.
    #[error("running as root, but the system user `{user}` to run PostgreSQL as does not exist; install the postgresql package (it creates the user) or run the tests as a normal user")]
    NoServerUser {
        /// The user looked up.
        user: String,
    },

    /// A file-system or process operation failed.
    #[error("{context}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A system call wrapped by `nix` failed.
    #[error("{context}")]
    Sys {
        /// What the harness was doing.
        context: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },

    /// A PostgreSQL program exited unsuccessfully.
    #[error("`{program}` failed ({status}): {output}")]
    Command {
        /// The program and the interesting arguments.
        program: String,
        /// Exit status as text.
        status: String,
        /// The tail of its stderr/stdout.
        output: String,
    },

    /// The server did not start (or did not become ready).
    #[error("PostgreSQL at {data_dir} did not start: {reason}. Last lines of the server log {log_path}:\n{log_tail}")]
    StartFailed {
        /// The data directory.
        data_dir: PathBuf,
        /// What went wrong.
        reason: String,
        /// Server log file.
        log_path: PathBuf,
        /// Its last lines.
        log_tail: String,
    },

    /// A bounded wait ran out.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was awaited, with a hint.
        what: String,
        /// How long the harness waited.
        waited: Duration,
    },

    /// Every server slot stayed busy for the whole wait.
    #[error("no server slot free after {waited:?}: at most {max} throwaway servers run at once (PGWARDEN_TEST_MAX_SERVERS) and other tests or test processes hold them all. Wait for them to finish, raise PGWARDEN_TEST_MAX_SERVERS, or look for stuck processes holding {dir}/slot-*.lock")]
    SlotTimeout {
        /// Time spent waiting.
        waited: Duration,
        /// Slots in the group.
        max: usize,
        /// Folder of the lock files.
        dir: PathBuf,
    },

    /// An SQL command run through psql failed.
    #[error("SQL failed on database `{dbname}` ({what}): {stderr}")]
    Sql {
        /// Database used.
        dbname: String,
        /// A short, secret-free description of the statement.
        what: String,
        /// psql's error output.
        stderr: String,
    },

    /// A name given to the harness cannot be used safely.
    #[error("invalid {what} `{name}`: use letters, digits and underscores only (setting names may contain dots)")]
    InvalidName {
        /// Kind of name.
        what: &'static str,
        /// The name.
        name: String,
    },

    /// `set_setting` wrote a value that needs a restart.
    #[error("setting `{name}` was written with ALTER SYSTEM but takes effect only after a restart: call restart(StopMode::Fast)")]
    NeedsRestart {
        /// The setting.
        name: String,
    },

    /// The operation needs a running server.
    #[error("the server is not running: call start_again() first")]
    NotRunning,

    /// Generating the throwaway TLS certificates failed.
    #[error("could not generate TLS certificates with rcgen")]
    Tls(#[source] rcgen::Error),
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Self::Sys {
            context: context.into(),
            source,
        }
    }
}

/// Extension to attach context to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, HarnessError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, HarnessError> {
        self.map_err(|e| HarnessError::io(context(), e))
    }
}
