//! libpq's `target_session_attrs`: which hosts of a multi-host target a connection may use.
//!
//! tokio-postgres 0.7 knows only `any`, `read-write` and `read-only`, so pgwarden parses the
//! parameter itself and checks each host's role after connecting (see the connector).

use std::fmt;
use std::str::FromStr;

/// The session a connection must get, with libpq's meaning for each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAttrs {
    /// Any host that accepts the connection. Default.
    #[default]
    Any,
    /// A host whose sessions accept writes (`transaction_read_only` is off).
    ReadWrite,
    /// A host whose sessions are read-only: a standby, or a primary with
    /// `default_transaction_read_only=on`.
    ReadOnly,
    /// A host that is not in recovery (`pg_is_in_recovery()` is false).
    Primary,
    /// A host in recovery.
    Standby,
    /// A standby when one of the hosts is; otherwise any host (a second pass over all hosts).
    PreferStandby,
}

impl SessionAttrs {
    /// Every value, in libpq's order.
    pub const ALL: [SessionAttrs; 6] = [
        SessionAttrs::Any,
        SessionAttrs::ReadWrite,
        SessionAttrs::ReadOnly,
        SessionAttrs::Primary,
        SessionAttrs::Standby,
        SessionAttrs::PreferStandby,
    ];

    /// The value as written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// The requirement of each pass over the hosts: `prefer-standby` first looks for a
    /// standby, then takes any host; the others make one pass.
    pub fn passes(self) -> &'static [SessionAttrs] {
        match self {
            SessionAttrs::PreferStandby => &[SessionAttrs::Standby, SessionAttrs::Any],
            SessionAttrs::Any => &[SessionAttrs::Any],
            SessionAttrs::ReadWrite => &[SessionAttrs::ReadWrite],
            SessionAttrs::ReadOnly => &[SessionAttrs::ReadOnly],
            SessionAttrs::Primary => &[SessionAttrs::Primary],
            SessionAttrs::Standby => &[SessionAttrs::Standby],
        }
    }

    /// Whether one pass of this requirement accepts a host with this recovery state and
    /// `transaction_read_only`. `prefer-standby` accepts what its first pass does.
    pub fn accepts(self, in_recovery: bool, read_only: bool) -> bool {
        match self {
            SessionAttrs::Any => true,
            SessionAttrs::ReadWrite => !read_only,
            SessionAttrs::ReadOnly => read_only,
            SessionAttrs::Primary => !in_recovery,
            SessionAttrs::Standby | SessionAttrs::PreferStandby => in_recovery,
        }
    }

    /// Whether accepting a host needs its role (one query after connecting).
    pub fn checks_role(self) -> bool {
        self != SessionAttrs::Any
    }

    /// The value tokio-postgres can carry itself, for the three it knows.
    pub(crate) fn to_pg(self) -> Option<tokio_postgres::config::TargetSessionAttrs> {
        use tokio_postgres::config::TargetSessionAttrs as T;
        match self {
            SessionAttrs::Any => Some(T::Any),
            SessionAttrs::ReadWrite => Some(T::ReadWrite),
            SessionAttrs::ReadOnly => Some(T::ReadOnly),
            _ => None,
        }
    }

    /// The value of a tokio-postgres configuration (which knows only three).
    pub(crate) fn from_pg(t: tokio_postgres::config::TargetSessionAttrs) -> SessionAttrs {
        use tokio_postgres::config::TargetSessionAttrs as T;
        match t {
            T::ReadWrite => SessionAttrs::ReadWrite,
            T::ReadOnly => SessionAttrs::ReadOnly,
            _ => SessionAttrs::Any,
        }
    }
}

impl fmt::Display for SessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value libpq does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSessionAttrs;

impl fmt::Display for UnknownSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "target_session_attrs must be one of any, read-write, read-only, primary, standby, prefer-standby",
        )
    }
}

impl std::error::Error for UnknownSessionAttrs {}

impl FromStr for SessionAttrs {
    type Err = UnknownSessionAttrs;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionAttrs::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(UnknownSessionAttrs)
    }
}

#[cfg(test)]
mod tests {
    use super::SessionAttrs as S;

    #[test]
    fn every_libpq_value_parses_and_prints_back() {
        for a in S::ALL {
            assert_eq!(a.as_str().parse::<S>(), Ok(a));
        }
        for bad in ["", "ANY", "readwrite", "sometimes", "prefer_standby"] {
            assert!(bad.parse::<S>().is_err(), "{bad}");
        }
    }

    #[test]
    fn acceptance_follows_libpq() {
        // (in_recovery, read_only): primary, read-only primary, standby.
        let hosts = [(false, false), (false, true), (true, true)];
        let table = [
            (S::Any, [true, true, true]),
            (S::ReadWrite, [true, false, false]),
            (S::ReadOnly, [false, true, true]),
            (S::Primary, [true, true, false]),
            (S::Standby, [false, false, true]),
            (S::PreferStandby, [false, false, true]),
        ];
        for (attrs, want) in table {
            for ((rec, ro), w) in hosts.into_iter().zip(want) {
                assert_eq!(attrs.accepts(rec, ro), w, "{attrs} on ({rec}, {ro})");
            }
        }
        assert_eq!(S::PreferStandby.passes(), [S::Standby, S::Any]);
        assert_eq!(S::Primary.passes(), [S::Primary]);
        assert!(!S::Any.checks_role());
    }
}
