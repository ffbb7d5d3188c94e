//! The one SQLSTATE table: which failures may be retried, which connect failures are permanent,
//! which codes mean the session was lost, and which make a transaction worth rerunning whole.
//!
//! Classification works on [`Failure`], a small summary of an error, so it is tested without a
//! server (and without building a `tokio_postgres::Error`, which has no public constructor).

/// A statement may fail with these before anything committed, and a later attempt may not meet
/// them: serialization failure, deadlock, lock not available.
pub(crate) const TRANSIENT_STATEMENT: &[&str] = &["40001", "40P01", "55P03"];

/// No session was established, so nothing ran: too many connections, cannot connect now
/// (starting up, recovering), connection rejected.
pub(crate) const NOT_CONNECTED: &[&str] = &["53300", "57P03", "08001", "08004"];

/// The session ended under the statement (when the response is FATAL): admin shutdown, crash
/// shutdown, connection failure / does not exist / protocol trouble.
pub(crate) const SESSION_LOST: &[&str] = &[
    "57P01", "57P02", "08006", "08003", "08000", "08007", "08P01",
];

/// The transaction rolled back and running the whole body again may succeed: serialization
/// failure, deadlock.
pub(crate) const TRANSACTION_RERUN: &[&str] = &["40001", "40P01"];

/// Connect failures that waiting cannot heal: insufficient privilege, unknown database (and
/// every class 28 code: invalid authorization / password).
const CONNECT_PERMANENT: &[&str] = &["3D000", "42501"];

/// Query canceled: after our own cancel, proof that the statement ended.
pub(crate) const QUERY_CANCELED: &str = "57014";

/// Words in a transport (non-server) connect failure that mark a certificate or configuration
/// problem. Anything else — a reset, an EOF, a missing close_notify during the TLS handshake, a
/// refused or timed-out socket — is a hiccup that may heal (a server restarting under
/// `sslmode=require` produces all of those).
const TRANSPORT_PERMANENT: &[&str] = &[
    "certificate",
    "unknownissuer",
    "unknownca",
    "notvalidforname",
    "invalid dns name",
    "invalid server name",
    "invalid configuration",
    "server does not support tls",
    "peer is incompatible",
    "protocolversion",
    "handshakefailure",
];

/// What classification needs to know about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Failure<'a> {
    /// The server's SQLSTATE, when the server answered with an error.
    pub(crate) code: Option<&'a str>,
    /// The server's response was FATAL or PANIC (it ends the session), or has no severity.
    pub(crate) fatal: bool,
    /// No server error: the connection is closed, or an I/O error broke it.
    pub(crate) broken: bool,
}

impl<'a> Failure<'a> {
    /// The summary of a tokio-postgres error.
    pub(crate) fn of(err: &'a tokio_postgres::Error) -> Self {
        use tokio_postgres::error::Severity;
        let db = err.as_db_error();
        Self {
            code: err.code().map(|c| c.code()),
            fatal: db
                .and_then(|db| db.parsed_severity())
                .is_none_or(|s| matches!(s, Severity::Fatal | Severity::Panic)),
            broken: db.is_none() && (err.is_closed() || has_io_source(err)),
        }
    }

    /// Nothing ran: no session was established.
    pub(crate) fn not_connected(&self) -> bool {
        self.code.is_some_and(|c| NOT_CONNECTED.contains(&c))
    }

    /// A statement failure a later attempt may not meet (nothing committed).
    pub(crate) fn transient_statement(&self) -> bool {
        self.code.is_some_and(|c| TRANSIENT_STATEMENT.contains(&c))
    }

    /// The session ended under the statement: whatever was sent may or may not have run. An
    /// ERROR with a connection-class code (a foreign server's, say) ended only the statement.
    pub(crate) fn session_lost(&self) -> bool {
        match self.code {
            Some(c) => SESSION_LOST.contains(&c) && self.fatal,
            None => self.broken,
        }
    }
}

/// True when the whole transaction may be rerun after this SQLSTATE.
pub(crate) fn transaction_rerun(code: Option<&str>) -> bool {
    code.is_some_and(|c| TRANSACTION_RERUN.contains(&c))
}

/// True when a statement failed with this SQLSTATE may succeed on another attempt, judged by
/// the code alone (the manager refines it with what it knows of the call).
pub(crate) fn retryable_code(code: Option<&str>) -> bool {
    code.is_some_and(|c| NOT_CONNECTED.contains(&c) || TRANSIENT_STATEMENT.contains(&c))
}

/// True when a connect failure with this SQLSTATE cannot heal by waiting.
pub(crate) fn connect_permanent_code(code: &str) -> bool {
    code.starts_with("28") || CONNECT_PERMANENT.contains(&code)
}

/// True when a transport connect failure (no SQLSTATE) is a certificate or configuration
/// problem, given its whole rendered chain.
pub(crate) fn connect_permanent_transport(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    TRANSPORT_PERMANENT.iter().any(|w| lower.contains(w))
}

fn has_io_source(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, fatal: bool) -> Failure<'_> {
        Failure {
            code: Some(code),
            fatal,
            broken: false,
        }
    }

    #[test]
    fn the_table_classifies_every_family() {
        // (failure, not connected, transient statement, session lost, rerun, retryable code)
        let broken = Failure {
            code: None,
            fatal: true,
            broken: true,
        };
        let other = Failure {
            code: None,
            fatal: true,
            broken: false,
        };
        let table = [
            (server("40001", false), false, true, false, true, true),
            (server("40P01", false), false, true, false, true, true),
            (server("55P03", false), false, true, false, false, true),
            (server("53300", true), true, false, false, false, true),
            (server("57P03", true), true, false, false, false, true),
            (server("08001", true), true, false, false, false, true),
            (server("57P01", true), false, false, true, false, false),
            (server("08006", true), false, false, true, false, false),
            // A foreign server's connection error, as an ERROR: only the statement ended.
            (server("08006", false), false, false, false, false, false),
            (server("23505", false), false, false, false, false, false),
            (server("42601", false), false, false, false, false, false),
            (broken, false, false, true, false, false),
            (other, false, false, false, false, false),
        ];
        for (f, nc, ts, lost, rerun, retry) in table {
            assert_eq!(f.not_connected(), nc, "{f:?}");
            assert_eq!(f.transient_statement(), ts, "{f:?}");
            assert_eq!(f.session_lost(), lost, "{f:?}");
            assert_eq!(transaction_rerun(f.code), rerun, "{f:?}");
            assert_eq!(retryable_code(f.code), retry, "{f:?}");
        }
    }

    #[test]
    fn connect_permanence_by_code() {
        for (code, permanent) in [
            ("28P01", true),
            ("28000", true),
            ("3D000", true),
            ("42501", true),
            ("53300", false),
            ("57P03", false),
            ("08006", false),
        ] {
            assert_eq!(connect_permanent_code(code), permanent, "{code}");
        }
    }

    #[test]
    fn tls_hiccups_are_transient_and_certificate_problems_permanent() {
        let transient = [
            "error performing TLS handshake: Connection reset by peer (os error 104)",
            "error performing TLS handshake: tls handshake eof",
            "error performing TLS handshake: peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
            "error connecting to server: Connection refused (os error 111)",
            "timed out after 200ms",
            "error communicating with the server: Broken pipe (os error 32)",
        ];
        for m in transient {
            assert!(!connect_permanent_transport(m), "{m}");
        }
        let permanent = [
            "error performing TLS handshake: invalid peer certificate: UnknownIssuer",
            "error performing TLS handshake: invalid peer certificate: NotValidForName",
            "error performing TLS handshake: received fatal alert: UnknownCA",
            "server does not support TLS",
            "invalid configuration: host missing",
        ];
        for m in permanent {
            assert!(connect_permanent_transport(m), "{m}");
        }
    }
}
