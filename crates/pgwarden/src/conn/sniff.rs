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
    let word = |s: &'_ str| s.bytes().take_while(u8::is_ascii_alphabetic).count();
    // Nearly every statement starts with its keyword: no blanks or comments to skip.
    if sql.as_bytes().first().is_some_and(u8::is_ascii_alphabetic) {
        return &sql[..word(sql)];
    }
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
    &s[..word(s)]
}

/// The first two letters of `sql`, upper-cased, when it starts with a letter: then it starts
/// with its keyword, and a keyword that does not begin with them is not its keyword. Statement
/// classifiers are asked of every call, so the common case (`SE` of `SELECT` against `BE`, `ST`,
/// `CO` …) is answered from two bytes, without finding the word.
fn leading_pair(sql: &str) -> Option<[u8; 2]> {
    match sql.as_bytes() {
        [a, b, ..] if a.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

/// True when `sql`'s first keyword (after blanks and comments) is one of `words`.
fn keyword_in(sql: &str, words: &[&str]) -> bool {
    let word = first_keyword(sql);
    words.iter().any(|k| word.eq_ignore_ascii_case(k))
}

/// True when `sql` starts with a transaction-control keyword (after blanks and comments).
pub(super) fn is_transaction_control(sql: &str) -> bool {
    if leading_pair(sql).is_some_and(|p| {
        !matches!(
            &p,
            b"BE" | b"ST" | b"CO" | b"EN" | b"RO" | b"AB" | b"SA" | b"RE" | b"PR"
        )
    }) {
        return false;
    }
    keyword_in(
        sql,
        &[
            "BEGIN",
            "START",
            "COMMIT",
            "END",
            "ROLLBACK",
            "ABORT",
            "SAVEPOINT",
            "RELEASE",
            "PREPARE",
        ],
    )
}

/// True when `sql` runs a procedure or an anonymous block (`CALL`, `DO`): it may COMMIT part of
/// its work before it fails.
pub(crate) fn runs_procedure(sql: &str) -> bool {
    if leading_pair(sql).is_some_and(|p| !matches!(&p, b"CA" | b"DO")) {
        return false;
    }
    keyword_in(sql, &["CALL", "DO"])
}

/// True when `sql` must run on a connection of its own: transaction control, or a statement
/// that leaves state in the session (`SET`, `RESET`, `LISTEN`, `UNLISTEN`, `PREPARE`,
/// `DEALLOCATE`, `DECLARE`, cursors, `DISCARD`, `LOAD`, `COPY`, temporary tables, `DO` and
/// `CALL` — which run arbitrary code). The pipelined lane serves everything else.
///
/// Text only: session effects hidden inside a statement (`SELECT set_config('x', 'y', false)`,
/// `pg_advisory_lock`, a function that does either) cannot be seen; such calls should be
/// marked `.exclusive()`.
pub(crate) fn pins_session(sql: &str) -> bool {
    // Runs on every call the lane may serve: one look at the first word (no allocation), and
    // the word scan for a temporary table only when the text holds `temp` at all.
    let mut buf = [0u8; 10];
    let word = first_keyword(sql);
    if let Some(upper) = buf.get_mut(..word.len()) {
        upper.copy_from_slice(word.as_bytes());
        upper.make_ascii_uppercase();
        if matches!(
            &*upper,
            // Transaction control (see `is_transaction_control`).
            b"BEGIN" | b"START" | b"COMMIT" | b"END" | b"ROLLBACK" | b"ABORT" | b"SAVEPOINT"
                | b"RELEASE" | b"PREPARE"
                // Session state, cursors, and code that may set either.
                | b"SET" | b"RESET" | b"LISTEN" | b"UNLISTEN" | b"NOTIFY" | b"DEALLOCATE"
                | b"DECLARE" | b"FETCH" | b"MOVE" | b"CLOSE" | b"DISCARD" | b"LOAD" | b"COPY"
                | b"DO" | b"CALL" | b"LOCK"
        ) {
            return true;
        }
    }
    sql.as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"TEMP"))
        && mentions_temp_table(sql)
}

/// `CREATE TEMP|TEMPORARY [UNLOGGED] TABLE …`, `CREATE LOCAL TEMP …`, or `… INTO TEMP …`
/// (`SELECT … INTO TEMPORARY t`): a table that lives as long as the session. Word-based, so a
/// column or table merely named `temp` may send a statement to the exclusive path, which is
/// always safe.
fn mentions_temp_table(sql: &str) -> bool {
    let mut prev = "";
    for w in sql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
    {
        let temp = w.eq_ignore_ascii_case("TEMP") || w.eq_ignore_ascii_case("TEMPORARY");
        if temp
            && ["CREATE", "LOCAL", "GLOBAL", "INTO"]
                .iter()
                .any(|k| prev.eq_ignore_ascii_case(k))
        {
            return true;
        }
        prev = w;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_state_pins_a_statement_to_its_own_connection() {
        for sql in [
            "BEGIN",
            "set search_path = x",
            "SET LOCAL statement_timeout = 5",
            "  reset all",
            "LISTEN chan",
            "unlisten *",
            "PREPARE p AS SELECT 1",
            "DEALLOCATE ALL",
            "declare c cursor for select 1",
            "DISCARD ALL",
            "CREATE TEMP TABLE t (x int)",
            "create temporary table t (x int)",
            "CREATE LOCAL TEMPORARY TABLE t (x int)",
            "create global temp table t (x int)",
            "SELECT 1 AS x INTO TEMP t",
            "/* c */ DO $$ BEGIN END $$",
            "CALL p()",
            "COPY t FROM STDIN",
            "Savepoint a",
            "release a",
            "-- c\n rollback",
            "commit",
            "end",
            "abort",
            "start transaction",
            "fetch 1 from c",
            "MOVE c",
            "close c",
            "load 'x'",
            "lock table t",
            "notify c",
            "(select 1 into temp t)",
        ] {
            assert!(pins_session(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "SELECT set_config('a.b', 'c', false)",
            "INSERT INTO settings (k) VALUES ('SET')",
            "UPDATE t SET x = 1",
            "SELECT temp FROM readings",
            "CREATE TABLE temp (x int)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "",
            "settings_reader()",
            "SELECT 'a temp string' AS x",
            "deallocated_items_rebuild()",
        ] {
            assert!(!pins_session(sql), "{sql}");
        }
    }

    #[test]
    fn procedures_are_told_apart_with_or_without_the_two_letter_shortcut() {
        for sql in [
            "CALL p()",
            "call p()",
            "Do $$ $$",
            "DO",
            "  call p()",
            "/* x */ DO $$ $$",
        ] {
            assert!(runs_procedure(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "CALLED",
            "called_fn()",
            "DOUBLE",
            "D",
            "C",
            "",
            " ",
            "-- DO",
            "dot",
        ] {
            assert!(!runs_procedure(sql), "{sql}");
        }
    }

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
