//! The syntax of connection strings: URLs and libpq key=value pairs, split into parts before
//! anything reaches tokio-postgres. Errors describe the problem without echoing the input;
//! [`redact_unparsed`] masks whatever could be a password.

use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{SslMode, TargetError};

/// Parameters handed to tokio-postgres unchanged.
const PASSTHROUGH: &[&str] = &[
    "hostaddr",
    "options",
    "application_name",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "channel_binding",
    "load_balance_hosts",
];
/// Parameters pgwarden handles itself.
const OWN: &[&str] = &[
    "user",
    "password",
    "dbname",
    "host",
    "port",
    "sslmode",
    "sslrootcert",
    "target_session_attrs",
];
/// libpq TLS parameters pgwarden does not support (yet): rejected, never silently ignored,
/// since ignoring a client certificate or a CRL changes security.
const UNSUPPORTED_TLS: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslcompression",
    "sslsni",
    "sslnegotiation",
    "sslcertmode",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requiressl",
];

pub(crate) const URL_FIX: &str = "write postgres://user:password@host:port/dbname?sslmode=... (percent-encode @ : / ? # in the password) or key=value pairs (host=... user=... dbname=...)";

#[derive(Default)]
pub(crate) struct Raw {
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) dbname: Option<String>,
    pub(crate) hosts: Vec<String>,
    pub(crate) ports: Vec<u16>,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) ssl_mode: Option<SslMode>,
    pub(crate) ssl_root_cert: Option<PathBuf>,
}

/// Everything but URL-unreserved characters is encoded in rendered URL parts.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(crate) fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

pub(crate) fn strip_scheme(s: &str) -> Option<&str> {
    s.strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"))
}

fn decode(s: &str, part: &str) -> Result<String, TargetError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            TargetError::new(
                format!("the {part} is not valid UTF-8 after percent-decoding"),
                format!("fix the percent-encoding of the {part}"),
            )
        })
}

pub(crate) fn parse_url(rest: &str, raw: &mut Raw) -> Result<(), TargetError> {
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
        None => (before_query, None),
    };
    if path.is_some_and(|p| p.contains('@')) {
        return Err(TargetError::new(
            "the URL has an `@` after the first `/`: the password probably contains a `/`",
            "percent-encode the password: / as %2F, @ as %40, : as %3A, ? as %3F, # as %23",
        ));
    }
    // The last `@` ends the credentials, so an unencoded `@` in a password still works.
    let hostlist = match authority.rfind('@') {
        Some(i) => {
            let creds = &authority[..i];
            let (user, password) = match creds.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (creds, None),
            };
            if !user.is_empty() {
                raw.user = Some(decode(user, "user name")?);
            }
            if let Some(p) = password {
                raw.password = Some(decode(p, "password")?);
            }
            &authority[i + 1..]
        }
        None => authority,
    };
    if !hostlist.is_empty() {
        for chunk in hostlist.split(',') {
            let (host, port) = if let Some(inner) = chunk.strip_prefix('[') {
                let Some((h, after)) = inner.split_once(']') else {
                    return Err(TargetError::new(
                        "an IPv6 host has no closing `]`",
                        "write IPv6 hosts as [::1]:5432",
                    ));
                };
                match after {
                    "" => (h, None),
                    a => match a.strip_prefix(':') {
                        Some(p) => (h, Some(p)),
                        None => {
                            return Err(TargetError::new(
                                "unexpected text after an IPv6 host",
                                "write IPv6 hosts as [::1]:5432",
                            ))
                        }
                    },
                }
            } else {
                match chunk.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (chunk, None),
                }
            };
            if host.is_empty() {
                return Err(TargetError::new("a host in the URL is empty", URL_FIX));
            }
            raw.hosts.push(decode(host, "host")?);
            raw.ports.push(match port {
                None | Some("") => 5432,
                Some(p) => parse_port(&decode(p, "port")?)?,
            });
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        raw.dbname = Some(decode(db, "database name")?);
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(TargetError::new(
                    "a URL query parameter has no `=`",
                    "write query parameters as ?key=value&key=value",
                ));
            };
            let (k, v) = (decode(k, "parameter name")?, decode(v, "parameter value")?);
            if k == "host" {
                // Query hosts are extra hosts without ports (libpq semantics).
                raw.hosts.extend(v.split(',').map(str::to_string));
            } else {
                apply(&k, v, raw)?;
            }
        }
    }
    Ok(())
}

fn parse_port(p: &str) -> Result<u16, TargetError> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        // The text is not echoed: without an `@`, "user:password" looks like "host:port".
        _ => Err(TargetError::new(
            "a port is not a number from 1 to 65535",
            "write host:port with a numeric port (e.g. localhost:5432); percent-encode : in a password as %3A",
        )),
    }
}

fn apply(key: &str, value: String, raw: &mut Raw) -> Result<(), TargetError> {
    match key {
        "user" => raw.user = Some(value),
        "password" => raw.password = Some(value),
        "dbname" => raw.dbname = Some(value),
        "host" => raw.hosts.extend(value.split(',').map(str::to_string)),
        "port" => {
            for p in value.split(',') {
                raw.ports
                    .push(if p.is_empty() { 5432 } else { parse_port(p)? });
            }
        }
        "sslmode" => raw.ssl_mode = Some(value.parse()?),
        "sslrootcert" => raw.ssl_root_cert = Some(PathBuf::from(value)),
        k if UNSUPPORTED_TLS.contains(&k) => {
            return Err(TargetError::new(
                format!("the TLS parameter `{k}` is not supported by pgwarden"),
                format!(
                    "remove {k}; pgwarden supports sslmode and sslrootcert (or DB_SSL_ROOT_CERT)"
                ),
            ))
        }
        // All six of libpq's values; tokio-postgres knows three, so checked here, not there.
        "target_session_attrs" => {
            if let Err(e) = value.parse::<super::SessionAttrs>() {
                return Err(TargetError::new(
                    "target_session_attrs has a value libpq does not know",
                    e.to_string(),
                ));
            }
            raw.params.push((key.to_string(), value));
        }
        k if PASSTHROUGH.contains(&k) => {
            if tokio_postgres::Config::from_str(&format!("{k}={}", quote(&value))).is_err() {
                return Err(TargetError::new(
                    format!("the value of `{k}` is invalid"),
                    format!("fix {k} (see libpq's connection parameters)"),
                ));
            }
            raw.params.push((k.to_string(), value));
        }
        k => {
            let known = OWN.iter().chain(PASSTHROUGH).chain(UNSUPPORTED_TLS);
            let close = known.copied().find(|c| edit_distance(c, k) <= 2);
            // Unknown keys are named only when they are a near miss of a known one: anything
            // else may be a fragment of a mistyped password.
            return Err(match close {
                Some(c) => TargetError::new(
                    format!("unknown connection parameter `{k}`; did you mean {c}?"),
                    format!("write {c}"),
                ),
                None => TargetError::new(
                    "unknown connection parameter (name not shown)",
                    "use libpq's parameter names: host, port, user, password, dbname, sslmode, sslrootcert, application_name, ...",
                ),
            });
        }
    }
    Ok(())
}

/// Quotes a libpq key=value value.
pub(crate) fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// libpq's key=value syntax: `key = value` pairs separated by whitespace; values may be
/// single-quoted; a backslash escapes the next character.
pub(crate) fn parse_kv(s: &str, raw: &mut Raw) -> Result<(), TargetError> {
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if it.peek().is_none() {
                return Ok(());
            }
            return Err(TargetError::new(
                "a `=` has no parameter name before it",
                "write key=value pairs separated by spaces, e.g. host=localhost dbname=app",
            ));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(TargetError::new(
                "a parameter has no `=value` (a value with spaces must be single-quoted)",
                "write key=value pairs separated by spaces; quote values with spaces: password='a b'",
            ));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(it.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(TargetError::new(
                            "a quoted value has no closing `'`",
                            "close the quote; write a ' inside a value as \\'",
                        ))
                    }
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(TargetError::new(
                    "a parameter has an empty value",
                    "give a value, or write '' for an empty one",
                ));
            }
        }
        apply(&key, value, raw)?;
    }
}

/// Splits `scheme://` off any URL-looking string (not only postgres ones: a wrong scheme must
/// be redacted too).
fn any_scheme(s: &str) -> Option<(&str, &str)> {
    let i = s.find("://")?;
    Some((&s[..i + 3], &s[i + 3..]))
}

/// Strings of `s` that may be a password, to scrub from error messages whatever the parse
/// reached: the URL's userinfo (raw and decoded) and the value after `password`.
pub(crate) fn secret_candidates(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((_, rest)) = any_scheme(s) {
        if let Some(i) = rest.rfind('@') {
            let creds = &rest[..i];
            if let Some((_, p)) = creds.split_once(':') {
                out.push(p.to_string());
                out.push(percent_decode_str(p).decode_utf8_lossy().into_owned());
            }
        }
    }
    for (i, _) in s.match_indices("password") {
        let after = s[i + "password".len()..].trim_start();
        if let Some(v) = after.strip_prefix('=') {
            let v = v.trim_start();
            let value = match v.strip_prefix('\'') {
                Some(q) => &q[..q.find('\'').unwrap_or(q.len())],
                None => {
                    &v[..v
                        .find(|c: char| c.is_whitespace() || c == '&')
                        .unwrap_or(v.len())]
                }
            };
            out.push(value.to_string());
            out.push(percent_decode_str(value).decode_utf8_lossy().into_owned());
        }
    }
    // Very short strings would mask unrelated text; the structural masking covers them.
    out.retain(|c| c.len() >= 3);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// A best-effort redaction of a target string that did not parse, for error reports: for a
/// URL, everything before the last `@` (or the whole authority when there is no `@`, since
/// `user:password` then looks like `host:port`) becomes `***`; any `password=` value becomes
/// `***`.
pub(crate) fn redact_unparsed(s: &str) -> String {
    let s = s.trim();
    let mut out = match any_scheme(s) {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(i) => format!("{scheme}***{}", &rest[i..]),
            None => {
                let end = rest.find(['/', '?']).unwrap_or(rest.len());
                format!("{scheme}***{}", &rest[end..])
            }
        },
        // key=value form: keep `known_key=value` tokens, mask every other token (a stray
        // word may be a password written without its key).
        None => s
            .split_whitespace()
            .map(|tok| match tok.split_once('=') {
                Some((k, _))
                    if k != "password"
                        && (OWN.contains(&k)
                            || PASSTHROUGH.contains(&k)
                            || UNSUPPORTED_TLS.contains(&k)) =>
                {
                    tok.to_string()
                }
                Some(("password", _)) => "password=***".to_string(),
                _ => "***".to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    for secret in secret_candidates(s) {
        out = out.replace(&secret, "***");
    }
    // Any `password=` left (an unterminated quote, say): mask to the end of its value.
    let mut masked = String::new();
    let mut rest = out.as_str();
    while let Some(i) = rest.find("password") {
        let (head, tail) = rest.split_at(i + "password".len());
        masked.push_str(head);
        let t = tail.trim_start();
        if let Some(v) = t.strip_prefix('=') {
            masked.push_str("=***");
            let v = v.trim_start();
            let end = if v.starts_with('\'') {
                v.strip_prefix('\'')
                    .unwrap_or(v)
                    .find('\'')
                    .map(|e| e + 2)
                    .unwrap_or(v.len())
            } else {
                v.find(|c: char| c.is_whitespace() || c == '&')
                    .unwrap_or(v.len())
            };
            rest = &v[end..];
        } else {
            rest = tail;
        }
    }
    masked.push_str(rest);
    masked.replace("=******", "=***")
}

/// Levenshtein distance (ASCII case-sensitive), for "did you mean".
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
