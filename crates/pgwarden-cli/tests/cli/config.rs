//! `pgwarden config`.

use crate::common::{pgwarden, text, SECRET};

/// The table row of `variable`, split into its columns.
fn row<'a>(out: &'a str, variable: &str) -> Vec<&'a str> {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(variable))
        .unwrap_or_else(|| panic!("no row for {variable}: {out}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn config_prints_a_table_of_every_variable_its_value_and_source() {
    let url = format!("postgres://app:{SECRET}@db.internal:5432/app");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("DB_POOL_MAX", "42"),
        ("DB_PROFILE", "prod"),
    ];
    let o = pgwarden(&["config"], &env);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.starts_with("VARIABLE"), "{out}");
    assert_eq!(
        row(&out, "DB_POOL_MAX"),
        ["DB_POOL_MAX", "42", "environment (DB_POOL_MAX)"]
    );
    assert_eq!(
        row(&out, "DB_POOL_MIN"),
        ["DB_POOL_MIN", "25", "production profile default"]
    );
    assert_eq!(
        row(&out, "DB_READ_MAX_LAG"),
        ["DB_READ_MAX_LAG", "16MB", "production profile default"]
    );
    assert_eq!(row(&out, "DB_READ_URL")[1], "(none)", "{out}");
    assert!(
        row(&out, "DATABASE_URL")[1].starts_with("postgres://app:***@db.internal:5432/app"),
        "{out}"
    );
    for var in [
        "DB_QUERY_TIMEOUT",
        "DB_ENABLE_FAILOVER",
        "DB_STATEMENT_CACHE_SIZE",
    ] {
        assert_eq!(row(&out, var).len(), 3, "{var} in {out}");
    }
    assert!(!out.contains(SECRET), "password leaked: {out}");

    // --json: the same rows for machines, still redacted.
    let o = pgwarden(&["config", "--json"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(doc["profile"], "production");
    let settings = doc["settings"].as_array().expect("settings");
    let url_row = settings
        .iter()
        .find(|s| s["variable"] == "DATABASE_URL")
        .expect("DATABASE_URL row");
    assert!(
        url_row["value"]
            .as_str()
            .unwrap()
            .starts_with("postgres://app:***@db.internal:5432/app"),
        "{url_row}"
    );
    assert_eq!(url_row["source"], "environment (DATABASE_URL)");
    assert!(!text(&o).contains(SECRET), "password leaked: {}", text(&o));

    // The --profile flag wins over DB_PROFILE.
    let o = pgwarden(
        &["--profile", "staging", "config"],
        &[("DB_PROFILE", "prod")],
    );
    assert_eq!(
        row(&text(&o), "DB_POOL_MAX"),
        ["DB_POOL_MAX", "50", "staging profile default"]
    );
}

#[test]
fn config_with_a_bad_environment_lists_every_problem_and_exits_3() {
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
    assert_eq!(o.status.code(), Some(3), "{out}");
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
