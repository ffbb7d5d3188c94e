//! Reading SQL text: what a statement is, without parsing it.

use tokio_postgres::{Statement, ToStatement};

/// SQL the connection can run: text (checked for transaction control) or a prepared statement.
pub trait Sql: ToStatement + Sync {
    /// The SQL text, when known.
    fn text(&self) -> Option<&str>;
    /// The prepared statement, when this is one.
    fn prepared(&self) -> Option<&Statement> {
        None
    }
}

impl Sql for str {
    fn text(&self) -> Option<&str> {
        Some(self)
    }
}

impl Sql for String {
    fn text(&self) -> Option<&str> {
        Some(self)
    }
}

impl Sql for Statement {
    fn text(&self) -> Option<&str> {
        None
    }
    fn prepared(&self) -> Option<&Statement> {
        Some(self)
    }
}

/// The first word of `sql`, after blanks and comments.
pub(crate) fn first_keyword(sql: &str) -> &str {
    let mut s = sql.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    &s[..s.bytes().take_while(u8::is_ascii_alphabetic).count()]
}

/// True when `sql` starts with a transaction-control keyword (after blanks and comments).
pub(super) fn is_transaction_control(sql: &str) -> bool {
    let word = first_keyword(sql);
    [
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
        "PREPARE",
    ]
    .iter()
    .any(|k| word.eq_ignore_ascii_case(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_recognised_past_blanks_and_comments() {
        for sql in [
            "BEGIN",
            "  begin;",
            "start transaction isolation level serializable",
            "-- comment\nCOMMIT",
            "/* x */ rollback",
            "/* a */ -- b\n  SAVEPOINT s1",
            "END",
            "abort",
            "release savepoint s",
            "PREPARE TRANSACTION 'x'",
        ] {
            assert!(is_transaction_control(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "insert into begin_log values (1)",
            "beginning",
            "",
            "-- BEGIN",
            "/* BEGIN */ SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert!(!is_transaction_control(sql), "{sql}");
        }
    }
}
