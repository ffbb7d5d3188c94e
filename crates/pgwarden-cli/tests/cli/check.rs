//! `pgwarden check`: roles, capacity, and exit codes 0 / 4 / 5.

use pgwarden_testdb::{PgBouncer, PgServer};

use crate::common::{own_database, pgwarden, text, SECRET};

#[test]
fn check_starts_a_throwaway_server_when_no_url_is_set() {
    let o = pgwarden(&["check", "--json"], &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    // With --json, stdout is the document; the progress lines go to stderr.
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(doc["verdict"], "ok", "{out}");
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(doc["targets"][0]["name"], "primary");
    assert_eq!(doc["targets"][0]["role"], "primary");
    assert_eq!(doc["queries"]["ok"], 100);
    assert_eq!(doc["failover"]["enabled"], false);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("starting a throwaway PostgreSQL server"),
        "{out}"
    );
}

/// A password-protected user on the shared server, and its URL to a database of its own.
fn password_user() -> (std::sync::Arc<PgServer>, String, String) {
    let (server, db, _) = own_database();
    let user = format!("cli{}", std::process::id());
    // Several tests may ask; the role exists once per server.
    let _ = server.create_user(&user, SECRET);
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
    (server, user, url)
}

#[test]
fn check_a_password_server_reports_its_role_without_the_password() {
    let (_server, user, url) = password_user();
    let o = pgwarden(&["check"], &[("DATABASE_URL", &url)]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains(&format!("postgres://{user}:***@127.0.0.1")),
        "{out}"
    );
    assert!(out.contains("primary, read-write"), "{out}");
    assert!(out.contains("100/100"), "{out}");
    assert!(out.contains("failover    off"), "{out}");
    assert!(out.contains("verdict     ok"), "{out}");
    assert!(!out.contains(SECRET), "password leaked: {out}");

    // Failover on, to a target of its own: its role is reported too.
    let o = pgwarden(
        &["check", "--json"],
        &[
            ("DATABASE_URL", &url),
            ("DB_ENABLE_FAILOVER", "true"),
            ("DB_FAILOVER_URL", &url),
        ],
    );
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(doc["failover"]["enabled"], true);
    assert_eq!(doc["failover"]["role"], "primary");
    assert_eq!(doc["targets"][1]["name"], "failover");
    assert!(!text(&o).contains(SECRET), "password leaked: {}", text(&o));
}

#[test]
fn check_with_a_wrong_password_is_critical_and_exits_5() {
    let (_server, _user, url) = password_user();
    let wrong = url.replace(SECRET, "Not-The-Pa55word");
    let o = pgwarden(&["check"], &[("DATABASE_URL", &wrong)]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(5), "{out}");
    assert!(out.contains("password authentication failed"), "{out}");
    assert!(out.contains("verdict     critical"), "{out}");
    assert!(
        !out.contains("Not-The-Pa55word") && !out.contains(SECRET),
        "{out}"
    );
}

#[test]
fn check_warns_with_4_when_the_pools_could_exhaust_max_connections() {
    let (_server, _db, url) = own_database();
    // The harness's servers allow 200 connections.
    let o = pgwarden(
        &["check"],
        &[("DATABASE_URL", &url), ("DB_POOL_MAX", "500")],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(out.contains("TOO MANY"), "{out}");
    assert!(out.contains("lower DB_POOL_MAX"), "{out}");
    assert!(out.contains("verdict     warning"), "{out}");
}

#[test]
fn check_an_unreachable_server_is_critical_and_exits_5() {
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
    assert_eq!(o.status.code(), Some(5), "{out}");
    assert!(out.to_lowercase().contains("refused"), "{out}");
    // Quiet: the pool's connect warnings are summed up in one line, not printed one by one.
    assert!(!out.contains("WARN"), "{out}");
    assert!(out.contains("run with -v to see them"), "{out}");
    assert!(!out.contains(SECRET), "{out}");
}

/// Behind PgBouncer in transaction mode the backend changes between transactions: with the
/// statement cache on that is a warning (exit 4) naming the fix; with it off, fine. A server
/// reached directly is no pooler.
#[test]
fn check_warns_when_a_transaction_pooler_meets_the_statement_cache() {
    let (server, db, direct) = own_database();
    let bouncer = PgBouncer::builder(server)
        .pool_size(2)
        .start()
        .expect("PgBouncer (install it with: apt-get install -y pgbouncer)");
    let url = bouncer.url(&db);
    let o = pgwarden(&["check"], &[("DATABASE_URL", &url)]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(out.contains("pooler      transaction-mode pooler"), "{out}");
    assert!(
        out.contains("problem     the target behaves like a transaction-mode pooler"),
        "{out}"
    );
    assert!(out.contains("set DB_STATEMENT_CACHE_SIZE=0"), "{out}");
    assert!(out.contains("verdict     warning"), "{out}");

    let o = pgwarden(
        &["check", "--json"],
        &[("DATABASE_URL", &url), ("DB_STATEMENT_CACHE_SIZE", "0")],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(doc["targets"][0]["transaction_pooler"], true, "{out}");
    assert_eq!(doc["queries"]["ok"], 100, "{out}");

    let o = pgwarden(&["check", "--json"], &[("DATABASE_URL", &direct)]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(doc["targets"][0]["transaction_pooler"], false, "{out}");
}
