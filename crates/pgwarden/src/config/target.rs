//! Database targets: `DATABASE_URL` / `DB_FAILOVER_URL` parsed into a [`DbTarget`].
//!
//! tokio-postgres's parser knows only `sslmode=disable|prefer|require` and no `sslrootcert`, so
//! the TLS parameters are parsed here (see `syntax.rs`) and everything else is handed to
//! [`tokio_postgres::Config`]. Nothing in this file ever prints a password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::syntax::{
    enc, parse_kv, parse_url, quote, secret_candidates, strip_scheme, Raw, URL_FIX,
};
use super::{Secret, SessionAttrs, SslMode};

/// Why a target string could not be parsed. `Display` gives the problem, [`TargetError::fix`]
/// the fix; neither ever contains the password or echoes the raw input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError {
    message: String,
    fix: String,
}

impl TargetError {
    pub(crate) fn new(message: impl Into<String>, fix: impl Into<String>) -> TargetError {
        TargetError {
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// What to change.
    pub fn fix(&self) -> &str {
        &self.fix
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn scrub(mut self, secrets: &[String]) -> TargetError {
        for s in secrets.iter().filter(|s| s.len() >= 3) {
            self.message = self.message.replace(s.as_str(), "***");
            self.fix = self.fix.replace(s.as_str(), "***");
        }
        self
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TargetError {}

/// A parsed `DATABASE_URL` / `DB_FAILOVER_URL`: hosts, credentials, database, TLS mode.
#[derive(Clone)]
pub struct DbTarget {
    pg: tokio_postgres::Config,
    user: Option<String>,
    password: Option<Secret>,
    dbname: Option<String>,
    hosts: Vec<String>,
    ports: Vec<u16>,
    params: Vec<(String, String)>,
    ssl_mode: SslMode,
    ssl_root_cert: Option<PathBuf>,
    session_attrs: SessionAttrs,
}

impl DbTarget {
    /// Parses a URL (`postgres://` or `postgresql://`, percent-encoded) or a libpq key=value
    /// string. Several hosts are allowed (`host=a,b port=5432,5433` or
    /// `postgres://u@a:5432,b:5433/db`); a host starting with `/` is a Unix socket directory.
    ///
    /// # Errors
    /// A [`TargetError`] naming the problem and the fix, never the password.
    pub fn parse(s: &str) -> Result<DbTarget, TargetError> {
        let s = s.trim();
        Self::parse_inner(s).map_err(|e| e.scrub(&secret_candidates(s)))
    }

    fn parse_inner(s: &str) -> Result<DbTarget, TargetError> {
        if s.is_empty() {
            return Err(TargetError::new("the connection string is empty", URL_FIX));
        }
        let mut raw = Raw::default();
        match strip_scheme(s) {
            Some(rest) => parse_url(rest, &mut raw)?,
            None if s.contains("://") => {
                return Err(TargetError::new(
                    "the URL scheme is not postgres:// or postgresql://",
                    URL_FIX,
                ))
            }
            None => parse_kv(s, &mut raw)?,
        }
        Self::build(raw)
    }

    fn build(raw: Raw) -> Result<DbTarget, TargetError> {
        let mut kv = String::new();
        let mut session_attrs = SessionAttrs::Any;
        for (k, v) in &raw.params {
            // tokio-postgres knows only three of libpq's six values: pgwarden checks roles.
            if k == "target_session_attrs" {
                session_attrs = v.parse().map_err(|e: super::UnknownSessionAttrs| {
                    TargetError::new(
                        "target_session_attrs has a value libpq does not know",
                        e.to_string(),
                    )
                })?;
                continue;
            }
            kv.push_str(&format!("{k}={} ", quote(v)));
        }
        let mut pg = tokio_postgres::Config::from_str(&kv)
            .map_err(|_| TargetError::new("the connection parameters are invalid", URL_FIX))?;
        if raw.hosts.is_empty() && pg.get_hostaddrs().is_empty() {
            return Err(TargetError::new(
                "no host is given",
                "add a host: postgres://user@localhost:5432/dbname, or host=/var/run/postgresql for a Unix socket",
            ));
        }
        if !raw.hosts.is_empty()
            && !pg.get_hostaddrs().is_empty()
            && raw.hosts.len() != pg.get_hostaddrs().len()
        {
            return Err(TargetError::new(
                format!(
                    "{} hosts but {} hostaddrs are given",
                    raw.hosts.len(),
                    pg.get_hostaddrs().len()
                ),
                "give one hostaddr per host, or none",
            ));
        }
        let n_hosts = raw.hosts.len().max(pg.get_hostaddrs().len());
        if raw.ports.len() > 1 && raw.ports.len() != n_hosts {
            return Err(TargetError::new(
                format!("{n_hosts} hosts but {} ports are given", raw.ports.len()),
                "give one port for all hosts, or one port per host",
            ));
        }
        for h in &raw.hosts {
            pg.host(h.as_str());
        }
        for p in &raw.ports {
            pg.port(*p);
        }
        if let Some(u) = &raw.user {
            pg.user(u.as_str());
        }
        if let Some(p) = &raw.password {
            pg.password(p.as_str());
        }
        if let Some(d) = &raw.dbname {
            pg.dbname(d.as_str());
        }
        // Carried for callers that hand pg_config() to a connector of their own; pgwarden's
        // connector checks the role itself from `session_attrs`.
        if let Some(t) = session_attrs.to_pg() {
            pg.target_session_attrs(t);
        }
        // TLS is negotiated by pgwarden's connector, never by tokio-postgres.
        pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
        Ok(DbTarget {
            pg,
            user: raw.user,
            password: raw.password.map(Secret::new),
            dbname: raw.dbname,
            hosts: raw.hosts,
            ports: raw.ports,
            params: raw.params,
            ssl_mode: raw.ssl_mode.unwrap_or_default(),
            ssl_root_cert: raw.ssl_root_cert,
            session_attrs,
        })
    }

    /// The tokio-postgres configuration: everything except the TLS parameters; its own
    /// `ssl_mode` is `Disable` because pgwarden's connector does TLS.
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// The `sslmode` of the URL; [`SslMode::Prefer`] when absent.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The `sslrootcert` of the URL, if any.
    pub fn ssl_root_cert(&self) -> Option<&Path> {
        self.ssl_root_cert.as_deref()
    }

    /// `target_session_attrs`: which hosts a connection may use; [`SessionAttrs::Any`] when
    /// absent.
    pub fn session_attrs(&self) -> SessionAttrs {
        self.session_attrs
    }

    /// The user name, if given.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password, if given.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The database name, if given.
    pub fn dbname(&self) -> Option<&str> {
        self.dbname.as_deref()
    }

    /// The hosts, in order (Unix socket directories start with `/`).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The ports as given: none (5432), one for all hosts, or one per host.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The target as a URL with the password replaced by `***`:
    /// `postgres://user:***@host:port/db?sslmode=...`.
    pub fn redacted(&self) -> String {
        let mut out = String::from("postgres://");
        if let Some(u) = &self.user {
            out.push_str(&enc(u));
        }
        if self.password.is_some() {
            out.push_str(":***");
        }
        if self.user.is_some() || self.password.is_some() {
            out.push('@');
        }
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = if h.contains(':') && !h.starts_with('/') {
                    format!("[{h}]")
                } else {
                    enc(h)
                };
                match self.ports.get(i).or(self.ports.first()) {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                }
            })
            .collect();
        out.push_str(&hosts.join(","));
        out.push('/');
        if let Some(d) = &self.dbname {
            out.push_str(&enc(d));
        }
        out.push_str("?sslmode=");
        out.push_str(self.ssl_mode.as_str());
        if let Some(c) = &self.ssl_root_cert {
            out.push_str("&sslrootcert=");
            out.push_str(&enc(&c.to_string_lossy()));
        }
        for (k, v) in &self.params {
            out.push_str(&format!("&{k}={}", enc(v)));
        }
        out
    }
}

impl fmt::Display for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbTarget")
            .field("hosts", &self.hosts)
            .field("ports", &self.ports)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("dbname", &self.dbname)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("session_attrs", &self.session_attrs)
            .field("params", &self.params)
            .finish()
    }
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
