//! The `pgwarden` binary, run as a user would, against real PostgreSQL.

use std::process::{Command, Output};

use pgwarden_testdb::PgServer;

const SECRET: &str = "Cli-S3cret-Pa55word";

/// Runs the binary with exactly these environment variables (plus PATH and the harness's).
fn pgwarden(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwarden"));
    cmd.args(args).env_clear();
    for keep in ["PATH", "HOME", "PGWARDEN_PG_BIN", "TMPDIR"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run pgwarden")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn config_prints_every_variable_with_its_source() {
    let url = format!("postgres://app:{SECRET}@db.internal:5432/app");
    let o = pgwarden(
        &["config"],
        &[
            ("DATABASE_URL", &url),
            ("DB_POOL_MAX", "42"),
            ("DB_PROFILE", "prod"),
        ],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("DB_POOL_MAX=42  # environment (DB_POOL_MAX)"),
        "{out}"
    );
    assert!(
        out.contains("DB_POOL_MIN=25  # production profile default"),
        "{out}"
    );
    assert!(
        out.contains("DATABASE_URL=postgres://app:***@db.internal:5432/app"),
        "{out}"
    );
    for var in [
        "DB_QUERY_TIMEOUT",
        "DB_ENABLE_FAILOVER",
        "DB_STATEMENT_CACHE_SIZE",
    ] {
        assert!(out.contains(&format!("{var}=")), "{var} in {out}");
    }
    assert!(!out.contains(SECRET), "password leaked: {out}");
    // The --profile flag wins over DB_PROFILE.
    let o = pgwarden(
        &["--profile", "staging", "config"],
        &[("DB_PROFILE", "prod")],
    );
    assert!(
        text(&o).contains("DB_POOL_MAX=50  # staging profile default"),
        "{}",
        text(&o)
    );
}

#[test]
fn config_with_a_bad_environment_lists_every_problem_and_fails() {
    let url = format!("postgres://app:{SECRET}@db.internal:5432/app?sslmode=sometimes");
    let o = pgwarden(
        &["config"],
        &[
            ("DATABASE_URL", &url),
            ("DB_POOL_MAX", "ten"),
            ("DB_POOL_IDLE_TIMEOUT", "soon"),
            ("DB_ENABLE_FAILOVER", "maybe"),
            ("DB_FAILOVER_THRESHOLD", "0.8"),
            ("DB_PROFILE", "qa"),
        ],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("  ")).collect();
    for var in [
        "DATABASE_URL",
        "DB_POOL_MAX",
        "DB_POOL_IDLE_TIMEOUT",
        "DB_ENABLE_FAILOVER",
        "DB_FAILOVER_THRESHOLD",
        "DB_PROFILE",
    ] {
        assert!(
            problems.iter().any(|l| l.trim_start().starts_with(var)),
            "no line for {var}: {out}"
        );
    }
    assert_eq!(problems.len(), 6, "{out}");
    assert!(out.contains("write 80 for 80%"), "{out}");
    assert!(!out.contains(SECRET), "password leaked: {out}");
}

#[test]
fn check_starts_a_throwaway_server_when_no_url_is_set() {
    let o = pgwarden(&["check"], &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("starting a throwaway PostgreSQL server"),
        "{out}"
    );
    assert!(out.contains("server      PostgreSQL"), "{out}");
    assert!(out.contains("100/100"), "{out}");
}

#[test]
fn check_a_password_server_without_showing_the_password() {
    let server = PgServer::shared().unwrap();
    let db = server.create_database(None).unwrap();
    let user = format!("cli{}", std::process::id());
    server.create_user(&user, SECRET).unwrap();
    server
        .psql(
            "postgres",
            &format!("GRANT ALL ON DATABASE \"{db}\" TO \"{user}\""),
        )
        .unwrap();
    let url = format!(
        "postgres://{user}:{SECRET}@127.0.0.1:{}/{db}?sslmode=disable",
        server.port()
    );
    let o = pgwarden(&["check"], &[("DATABASE_URL", &url)]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!("postgres://{user}:***@127.0.0.1")),
        "{out}"
    );
    assert!(!out.contains(SECRET), "password leaked: {out}");

    // A wrong password: a clear failure, fast, still no secret.
    let wrong = url.replace(SECRET, "Not-The-Pa55word");
    let o = pgwarden(&["check"], &[("DATABASE_URL", &wrong)]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("password authentication failed"), "{out}");
    assert!(
        !out.contains("Not-The-Pa55word") && !out.contains(SECRET),
        "{out}"
    );
}

#[test]
fn check_an_unreachable_server_fails_with_the_cause() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:{SECRET}@127.0.0.1:{port}/app?sslmode=disable");
    let o = pgwarden(
        &["check"],
        &[
            ("DATABASE_URL", &url),
            ("DB_ACQUIRE_TIMEOUT", "1s"),
            ("DB_CONNECT_TIMEOUT", "500ms"),
        ],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.to_lowercase().contains("refused"), "{out}");
    assert!(!out.contains(SECRET), "{out}");
}
