//! Transaction options: the isolation level and access mode its `BEGIN` carries.

/// A transaction's isolation level (PostgreSQL's `READ UNCOMMITTED` behaves as
/// `READ COMMITTED`, so it is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IsolationLevel {
    /// Each statement sees what committed before it started (PostgreSQL's default).
    ReadCommitted,
    /// Every statement sees one snapshot, taken at the first statement; a write that conflicts
    /// with a concurrent commit fails with 40001.
    RepeatableRead,
    /// As if the transactions ran one at a time; any anomaly fails one of them with 40001,
    /// and the manager reruns its body.
    Serializable,
}

impl IsolationLevel {
    fn sql(self) -> &'static str {
        match self {
            IsolationLevel::ReadCommitted => "READ COMMITTED",
            IsolationLevel::RepeatableRead => "REPEATABLE READ",
            IsolationLevel::Serializable => "SERIALIZABLE",
        }
    }
}

/// How a transaction of [`crate::PoolManager::transaction`] begins: isolation level, read
/// only, deferrable. Each option left unset keeps the server's default (the
/// `default_transaction_*` settings). Plain data: build it once, in a `const` if you like.
///
/// ```
/// use pgwarden::{IsolationLevel, TxOptions};
///
/// const REPORT: TxOptions = TxOptions::new()
///     .isolation(IsolationLevel::Serializable)
///     .read_only(true)
///     .deferrable(true);
/// assert_eq!(REPORT.begin_sql(), "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE");
/// assert_eq!(TxOptions::new().begin_sql(), "BEGIN");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TxOptions {
    isolation: Option<IsolationLevel>,
    read_only: Option<bool>,
    deferrable: Option<bool>,
}

impl TxOptions {
    /// No option set: `BEGIN` alone.
    pub const fn new() -> Self {
        Self {
            isolation: None,
            read_only: None,
            deferrable: None,
        }
    }

    /// The isolation level. Default: the server's (`default_transaction_isolation`).
    pub const fn isolation(mut self, level: IsolationLevel) -> Self {
        self.isolation = Some(level);
        self
    }

    /// `true`: `READ ONLY` — a write in it fails with 25006, and the transaction is not rerun
    /// for it. `false`: `READ WRITE`. Default: the server's
    /// (`default_transaction_read_only`). The transaction still runs on the read-write server.
    pub const fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = Some(read_only);
        self
    }

    /// `true`: `DEFERRABLE` — with `SERIALIZABLE` and `READ ONLY`, its first statement may wait
    /// for a snapshot that cannot conflict, after which it never fails with 40001 (PostgreSQL
    /// ignores it otherwise). `false`: `NOT DEFERRABLE`. Default: the server's
    /// (`default_transaction_deferrable`).
    pub const fn deferrable(mut self, deferrable: bool) -> Self {
        self.deferrable = Some(deferrable);
        self
    }

    /// True when the transaction was asked to be `READ ONLY`.
    pub(super) fn is_read_only(&self) -> bool {
        self.read_only == Some(true)
    }

    /// The `BEGIN` statement carrying these options.
    pub fn begin_sql(&self) -> String {
        let mut modes: Vec<&str> = Vec::with_capacity(3);
        let isolation;
        if let Some(level) = self.isolation {
            isolation = format!("ISOLATION LEVEL {}", level.sql());
            modes.push(&isolation);
        }
        match self.read_only {
            Some(true) => modes.push("READ ONLY"),
            Some(false) => modes.push("READ WRITE"),
            None => {}
        }
        match self.deferrable {
            Some(true) => modes.push("DEFERRABLE"),
            Some(false) => modes.push("NOT DEFERRABLE"),
            None => {}
        }
        if modes.is_empty() {
            "BEGIN".to_owned()
        } else {
            format!("BEGIN {}", modes.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{IsolationLevel, TxOptions};

    #[test]
    fn begin_carries_each_option_set_and_nothing_else() {
        let cases = [
            (TxOptions::new(), "BEGIN"),
            (
                TxOptions::new().isolation(IsolationLevel::ReadCommitted),
                "BEGIN ISOLATION LEVEL READ COMMITTED",
            ),
            (
                TxOptions::new().isolation(IsolationLevel::RepeatableRead),
                "BEGIN ISOLATION LEVEL REPEATABLE READ",
            ),
            (TxOptions::new().read_only(true), "BEGIN READ ONLY"),
            (TxOptions::new().read_only(false), "BEGIN READ WRITE"),
            (TxOptions::new().deferrable(false), "BEGIN NOT DEFERRABLE"),
            (
                TxOptions::new()
                    .deferrable(true)
                    .isolation(IsolationLevel::Serializable),
                "BEGIN ISOLATION LEVEL SERIALIZABLE, DEFERRABLE",
            ),
        ];
        for (opts, sql) in cases {
            assert_eq!(opts.begin_sql(), sql, "{opts:?}");
        }
        assert!(TxOptions::new().read_only(true).is_read_only());
        assert!(!TxOptions::new().read_only(false).is_read_only());
        assert!(!TxOptions::new().is_read_only());
    }
}
