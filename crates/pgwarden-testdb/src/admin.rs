//! Admin SQL through `psql` over the Unix socket: databases, users, sessions, settings.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sys;
use crate::{HarnessError, PgServer};

/// `application_name` of the harness's own admin sessions.
pub const ADMIN_APPLICATION_NAME: &str = "pgwarden-testdb-admin";
/// Bound on one admin psql call.
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);

/// One row of `pg_stat_activity`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// Backend pid.
    pub pid: i32,
    /// Database, empty for background processes.
    pub datname: String,
    /// Role, empty for background processes.
    pub usename: String,
    /// `application_name`.
    pub application_name: String,
    /// `active`, `idle`, `idle in transaction`, ... (empty for background processes).
    pub state: String,
    /// Last (or current) query text.
    pub query: String,
    /// `client backend`, `walsender`, ...
    pub backend_type: String,
    /// True when a transaction is open (`xact_start` is set).
    pub in_transaction: bool,
}

/// `'text'` as an SQL literal (standard_conforming_strings is on).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A libpq key=value value: single quotes, backslash escapes.
fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `"name"` as an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn check_name(what: &'static str, name: &str, allow_dot: bool) -> Result<(), HarnessError> {
    let ok = !name.is_empty()
        && name.len() < 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || (allow_dot && c == '.'));
    if ok {
        Ok(())
    } else {
        Err(HarnessError::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

impl PgServer {
    fn psql_raw(&self, dbname: &str, sql: &str, extra: &[&str]) -> Result<Output, HarnessError> {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(extra)
            .arg("-d")
            .arg(format!(
                "host={} port={} user=postgres dbname={} application_name={ADMIN_APPLICATION_NAME}",
                self.dir.display(),
                self.port,
                quote_conninfo(dbname)
            ))
            .args(["-f", "-"])
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .current_dir("/");
        // SQL goes through stdin so passwords never show up in `ps`.
        sys::run_unchecked(&mut cmd, "psql", PSQL_TIMEOUT, Some(sql))
    }

    fn psql_checked(
        &self,
        dbname: &str,
        sql: &str,
        what: &str,
        extra: &[&str],
    ) -> Result<Vec<u8>, HarnessError> {
        let out = self.psql_raw(dbname, sql, extra)?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(HarnessError::Sql {
                dbname: dbname.to_string(),
                what: what.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Runs SQL as the superuser through the Unix socket (`psql -X -At`) and returns its
    /// output without the trailing newline. Several statements may be given.
    ///
    /// # Errors
    /// [`HarnessError::Sql`] with psql's error text.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, HarnessError> {
        let what: String = sql.chars().take(60).collect();
        let out = self.psql_checked(dbname, sql, &what, &[])?;
        Ok(String::from_utf8_lossy(&out)
            .trim_end_matches('\n')
            .to_string())
    }

    /// Creates a database owned by the superuser; `None` generates a unique name.
    /// Returns the name.
    ///
    /// # Errors
    /// Invalid name, or the SQL error (e.g. it exists).
    pub fn create_database(&self, name: Option<&str>) -> Result<String, HarnessError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = match name {
            Some(n) => n.to_string(),
            None => format!(
                "db_{}_{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ),
        };
        check_name("database name", &name, false)?;
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(&name)),
        )?;
        Ok(name)
    }

    /// Creates a `LOGIN` role with a scram-sha-256 password; it may connect over TCP to
    /// 127.0.0.1 with that password (the superuser needs none).
    ///
    /// # Errors
    /// Invalid name, or the SQL error (e.g. it exists). The password never appears in errors.
    pub fn create_user(&self, name: &str, password: &str) -> Result<(), HarnessError> {
        check_name("user name", name, false)?;
        // Keep the password out of the server log should the statement fail.
        let sql = format!(
            "SET log_min_error_statement = panic;\nSET log_statement = none;\nCREATE ROLE {} LOGIN PASSWORD {};",
            quote_ident(name),
            quote_literal(password)
        );
        self.psql_checked(
            "postgres",
            &sql,
            &format!("CREATE ROLE {name} LOGIN PASSWORD ..."),
            &[],
        )?;
        Ok(())
    }

    /// Sessions of `pg_stat_activity` with this `application_name` (the admin session
    /// itself excluded).
    ///
    /// # Errors
    /// [`HarnessError::Sql`].
    pub fn sessions(&self, application_name: &str) -> Result<Vec<Session>, HarnessError> {
        let sql = format!(
            "SELECT pid, coalesce(datname, ''), coalesce(usename, ''), application_name, \
             coalesce(state, ''), coalesce(query, ''), coalesce(backend_type, ''), \
             xact_start IS NOT NULL \
             FROM pg_stat_activity WHERE application_name = {} AND pid <> pg_backend_pid() \
             ORDER BY pid",
            quote_literal(application_name)
        );
        // NUL separators: query texts may hold newlines and any printable character.
        let out = self.psql_checked(
            "postgres",
            &sql,
            "SELECT ... FROM pg_stat_activity",
            &["-z", "-0"],
        )?;
        let text = String::from_utf8_lossy(&out);
        let fields: Vec<&str> = text.split('\0').collect();
        let mut sessions = Vec::new();
        for row in fields.chunks(8) {
            if row.len() < 8 {
                break;
            }
            let pid = row[0].trim().parse().map_err(|_| HarnessError::Sql {
                dbname: "postgres".into(),
                what: "parsing pg_stat_activity".into(),
                stderr: format!("unexpected pid field {:?}", row[0]),
            })?;
            sessions.push(Session {
                pid,
                datname: row[1].to_string(),
                usename: row[2].to_string(),
                application_name: row[3].to_string(),
                state: row[4].to_string(),
                query: row[5].to_string(),
                backend_type: row[6].to_string(),
                in_transaction: row[7].trim() == "t",
            });
        }
        Ok(sessions)
    }

    /// `pg_terminate_backend` on every session with this `application_name`, waiting up to
    /// 5 s for each to exit. Returns how many were terminated.
    ///
    /// # Errors
    /// [`HarnessError::Sql`].
    pub fn terminate_backends(&self, application_name: &str) -> Result<u64, HarnessError> {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity \
             WHERE application_name = {} AND pid <> pg_backend_pid()",
            quote_literal(application_name)
        );
        let out = self.psql("postgres", &sql)?;
        out.trim().parse().map_err(|_| HarnessError::Sql {
            dbname: "postgres".into(),
            what: "pg_terminate_backend".into(),
            stderr: format!("unexpected output {out:?}"),
        })
    }

    /// `ALTER SYSTEM SET name = 'value'` and `pg_reload_conf()`; returns once new sessions
    /// see the reloaded configuration.
    ///
    /// # Errors
    /// [`HarnessError::NeedsRestart`] for settings that only a restart applies (the value is
    /// written: call `restart`), or the SQL error (unknown setting, bad value).
    pub fn set_setting(&self, name: &str, value: &str) -> Result<(), HarnessError> {
        check_name("setting name", name, true)?;
        let before = self.psql("postgres", "SELECT pg_conf_load_time()")?;
        self.psql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET {name} = {};\nSELECT pg_reload_conf();",
                quote_literal(value)
            ),
        )?;
        // A session forked before the postmaster handled SIGHUP would still see the old value.
        let check = format!(
            "SELECT pg_conf_load_time() <> {}::timestamptz",
            quote_literal(&before)
        );
        let mut last = Ok(String::new());
        let reloaded = sys::wait_until(Duration::from_secs(10), || {
            last = self.psql("postgres", &check);
            matches!(&last, Ok(s) if s == "t")
        });
        if !reloaded {
            last?;
            return Err(HarnessError::Timeout {
                what: "the server to reload its configuration".into(),
                waited: Duration::from_secs(10),
            });
        }
        let pending = self.psql(
            "postgres",
            &format!(
                "SELECT pending_restart FROM pg_settings WHERE name = {}",
                quote_literal(name)
            ),
        )?;
        if pending == "t" {
            return Err(HarnessError::NeedsRestart {
                name: name.to_string(),
            });
        }
        Ok(())
    }
}
