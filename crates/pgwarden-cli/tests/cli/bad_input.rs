//! Every bad input: one or two lines saying what happened and what to do, no backtrace, and
//! its exit code (1 runtime, 2 usage, 3 configuration).

use crate::common::{own_database, pgwarden, text, SECRET};

/// Asserts the exit code and a short, backtrace-free message containing `needle`.
fn fails_clearly(args: &[&str], env: &[(&str, &str)], code: i32, needle: &str) -> String {
    let o = pgwarden(args, env);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {out}");
    assert!(out.contains(needle), "{needle:?} in {out}");
    assert!(
        !out.contains("panicked") && !out.contains("backtrace"),
        "{out}"
    );
    assert!(!out.contains(SECRET), "password leaked: {out}");
    // Clap words usage errors itself; ours are one `pgwarden:` line (plus what to do).
    if code != 2 {
        let stderr = String::from_utf8_lossy(&o.stderr);
        let errors = stderr
            .lines()
            .filter(|l| l.starts_with("pgwarden:"))
            .count();
        assert_eq!(errors, 1, "one error line: {out}");
    }
    out
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    fails_clearly(
        &["bench", "--bogus"],
        &[],
        2,
        "unexpected argument '--bogus'",
    );
    fails_clearly(
        &["bench", "-d", "soon"],
        &[],
        2,
        "write 10 (seconds), 500ms",
    );
    fails_clearly(&["bench", "--idempotent"], &[], 2, "--sql");
    fails_clearly(&["bench", "nosuch"], &[], 2, "invalid value 'nosuch'");
    fails_clearly(&["bench", "-c", "0"], &[], 2, "invalid value '0'");
}

#[test]
fn a_bad_url_is_a_configuration_error() {
    let url = format!("postgres://app:{SECRET}@db:notaport/app");
    let out = fails_clearly(&["bench"], &[("DATABASE_URL", &url)], 3, "DATABASE_URL");
    assert!(out.contains("numeric port"), "{out}");
}

#[test]
fn an_unreachable_host_is_a_runtime_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:{SECRET}@127.0.0.1:{port}/app?sslmode=disable");
    let out = fails_clearly(
        &["bench"],
        &[
            ("DATABASE_URL", &url),
            ("DB_ACQUIRE_TIMEOUT", "1s"),
            ("DB_CONNECT_TIMEOUT", "500ms"),
        ],
        1,
        "refused",
    );
    assert!(out.contains("Check that the server is up"), "{out}");
    assert!(
        !out.contains("WARN"),
        "library warnings are summarised: {out}"
    );
}

#[test]
fn a_wrong_password_is_a_configuration_error() {
    let (server, db, _) = own_database();
    let user = format!("clibad{}", std::process::id());
    server.create_user(&user, SECRET).unwrap();
    let url = format!(
        "postgres://{user}:Wrong-Pa55word@127.0.0.1:{}/{db}?sslmode=disable",
        server.port()
    );
    let out = fails_clearly(
        &["bench"],
        &[("DATABASE_URL", &url)],
        3,
        "password authentication failed",
    );
    assert!(
        out.contains("Fix the user, password or database name"),
        "{out}"
    );
    assert!(!out.contains("Wrong-Pa55word"), "{out}");
}

#[test]
fn missing_postgresql_binaries_say_what_to_install() {
    let out = fails_clearly(
        &["bench"],
        &[("PGWARDEN_PG_BIN", "/nonexistent/pgwarden-bin")],
        3,
        "apt-get install -y postgresql",
    );
    assert!(out.contains("DATABASE_URL"), "{out}");
}

#[test]
fn an_sql_that_fails_on_every_call_stops_the_run() {
    let (_server, _db, url) = own_database();
    let out = fails_clearly(
        &["bench", "--sql", "SELEC 1", "-d", "30"],
        &[("DATABASE_URL", &url)],
        1,
        "every call failed",
    );
    assert!(out.contains("syntax error"), "{out}");
    assert!(out.contains("Check the statement with psql"), "{out}");
}
