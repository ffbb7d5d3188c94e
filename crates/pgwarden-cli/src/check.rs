//! `pgwarden check`: connect to every configured target through a pool and report its role
//! (primary or standby), version, TLS and capacity, whether it behaves like a transaction-mode
//! pooler (a warning with the statement cache on), plus the failover target. Exit 0 when all
//! is well, 4 on a warning, 5 when a target is unreachable, refuses us or is in the wrong role.

use std::time::{Duration, Instant};

use clap::Args;
use pgwarden::config::{Config, DbTarget};
use pgwarden::{ManagerOptions, PgConnector, Pool, PoolManager, PoolOptions};
use serde_json::{json, Value};

use crate::check_pooler::{self, Pooler};
use crate::fail::{self, Failure, Kind};
use crate::throwaway;
use crate::ui::Ui;

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// Print JSON: {"profile", "targets": [...], "failover", "queries", "verdict", "problems", "exit_code"}.
    #[arg(long)]
    json: bool,
}

/// What one target said.
struct Probe {
    connect_ms: f64,
    version: String,
    version_full: String,
    max_connections: i32,
    reserved: i32,
    tls: bool,
    standby: bool,
    pooler: Pooler,
}

#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Level {
    Ok,
    Warning,
    Critical,
}

pub(crate) async fn run(mut config: Config, args: CheckArgs, ui: &Ui) -> Result<u8, Failure> {
    // With --json, stdout carries the document only.
    let say = |line: &str| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let server = if config.database_url.is_none() {
        Some(throwaway::start(&mut config, say).await?)
    } else {
        None
    };
    let result = check(&config, &say, ui).await;
    if let Some(server) = server {
        throwaway::stop(server).await;
    }
    let (level, doc, config_failure) = result;
    if let Some(f) = config_failure {
        return Err(f);
    }
    let code = match level {
        Level::Ok => fail::OK,
        Level::Warning => fail::WARNING,
        Level::Critical => fail::CRITICAL,
    };
    if args.json {
        let mut doc = doc;
        doc["exit_code"] = json!(code);
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    Ok(code)
}

async fn check(config: &Config, say: &impl Fn(&str), ui: &Ui) -> (Level, Value, Option<Failure>) {
    let mut level = Level::Ok;
    let mut problems: Vec<String> = Vec::new();
    let mut targets = Vec::new();
    let primary = config.database_url.clone().expect("set by the caller");
    say(&format!("profile     {}", config.profile));
    say(&format!("target      primary  {}", primary.redacted()));
    let (info, queries) = match probe(&primary, config, 100).await {
        Ok(p) => p,
        Err((Kind::Config, message)) => {
            return (
                Level::Critical,
                Value::Null,
                Some(Failure::new(
                    fail::CONFIG,
                    message,
                    Some("Fix the TLS settings (sslmode, sslrootcert, DB_SSL_ROOT_CERT).".into()),
                )),
            );
        }
        Err((_, message)) => {
            say(&format!("connect     FAILED: {message}"));
            problems.push(format!("primary: {message}"));
            let doc = json!({
                "profile": config.profile.to_string(),
                "targets": [{"name": "primary", "url": primary.redacted(), "reachable": false, "error": message}],
                "verdict": "critical",
                "problems": problems,
            });
            say(&format!("verdict     {}", ui.verdict("critical")));
            return (Level::Critical, doc, None);
        }
    };
    print_probe(&info, say);
    targets.push(target_json("primary", &primary, &info));
    if info.standby {
        level = level.max(Level::Critical);
        problems.push(
            "DATABASE_URL points at a standby (read-only): every write would fail; point it at the primary"
                .into(),
        );
    }
    if let Some(p) = pooler_line(&info, config, say) {
        level = level.max(Level::Warning);
        problems.push(p);
    }
    let wanted = throwaway::pools_on_primary(config);
    if let Some(p) = capacity(&info, wanted, "DB_POOL_MAX (or DB_FAILOVER_POOL_MAX)", say) {
        level = level.max(Level::Warning);
        problems.push(p);
    }
    let (ok, took) = queries;
    say(&format!(
        "queries     {ok}/100 SELECT 1 through the pool in {:.1} ms",
        took.as_secs_f64() * 1e3
    ));
    if ok < 100 {
        level = level.max(Level::Critical);
        problems.push(format!(
            "only {ok} of 100 queries through the pool succeeded"
        ));
    }

    let failover = if !config.failover.enabled {
        say("failover    off (DB_ENABLE_FAILOVER=false)");
        json!({"enabled": false})
    } else if let Some(target) = config.failover_url.clone() {
        say(&format!(
            "failover    on: a pool of {} on {}",
            config.failover.pool_max,
            target.redacted()
        ));
        match probe(&target, config, 0).await {
            Ok((p, _)) => {
                print_probe(&p, say);
                if let Some(w) = capacity(&p, config.failover.pool_max, "DB_FAILOVER_POOL_MAX", say)
                {
                    level = level.max(Level::Warning);
                    problems.push(w);
                }
                targets.push(target_json("failover", &target, &p));
                json!({"enabled": true, "target": target.redacted(), "pool_max": config.failover.pool_max,
                       "role": role(&p)})
            }
            Err((_, message)) => {
                say(&format!("connect     FAILED: {message}"));
                level = level.max(Level::Critical);
                problems.push(format!("failover: {message}"));
                targets.push(json!({"name": "failover", "url": target.redacted(), "reachable": false, "error": message}));
                json!({"enabled": true, "target": target.redacted(), "pool_max": config.failover.pool_max})
            }
        }
    } else {
        say(&format!(
            "failover    on: a pool of {} on the primary's server (set DB_FAILOVER_URL for another)",
            config.failover.pool_max
        ));
        json!({"enabled": true, "target": "primary", "pool_max": config.failover.pool_max, "role": role(&info)})
    };

    let verdict = match level {
        Level::Ok => "ok",
        Level::Warning => "warning",
        Level::Critical => "critical",
    };
    for p in &problems {
        say(&format!("problem     {p}"));
    }
    say(&format!("verdict     {}", ui.verdict(verdict)));
    let doc = json!({
        "profile": config.profile.to_string(),
        "targets": targets,
        "failover": failover,
        "queries": {"ok": ok, "of": 100, "ms": took.as_secs_f64() * 1e3},
        "verdict": verdict,
        "problems": problems,
    });
    (level, doc, None)
}

fn role(p: &Probe) -> &'static str {
    if p.standby {
        "standby"
    } else {
        "primary"
    }
}

fn print_probe(p: &Probe, say: &impl Fn(&str)) {
    say(&format!(
        "connect     ok in {:.1} ms (TLS: {})",
        p.connect_ms,
        if p.tls { "yes" } else { "no" }
    ));
    say(&format!(
        "server      PostgreSQL {} ({})",
        p.version,
        if p.standby {
            "standby, read-only"
        } else {
            "primary, read-write"
        }
    ));
    say(&format!("            {}", p.version_full));
}

/// Says whether the target behaves like a transaction-mode pooler; a warning when it does and
/// the statement cache is on.
fn pooler_line(p: &Probe, config: &Config, say: &impl Fn(&str)) -> Option<String> {
    let cache = config.query.statement_cache_size;
    match p.pooler {
        Pooler::None => {
            say("pooler      none seen (one backend per connection)");
            None
        }
        Pooler::Unknown => {
            say("pooler      not checked (it needs two connections: DB_POOL_MAX is below 2)");
            None
        }
        Pooler::Transaction if cache == 0 => {
            say("pooler      transaction-mode pooler: the backend changes between transactions; statement cache off (DB_STATEMENT_CACHE_SIZE=0): fine");
            None
        }
        Pooler::Transaction => {
            say(&format!("pooler      transaction-mode pooler: the backend changes between transactions; statement cache ON (DB_STATEMENT_CACHE_SIZE={cache})"));
            Some(format!(
                "the target behaves like a transaction-mode pooler (PgBouncer or similar: the backend pid changed between two transactions on one connection) and the statement cache is on (DB_STATEMENT_CACHE_SIZE={cache}): a cached prepared statement can land on a server connection that lacks it (\"prepared statement ... does not exist\"); set DB_STATEMENT_CACHE_SIZE=0"
            ))
        }
    }
}

/// A warning when the pools could exhaust the server's connections.
fn capacity(p: &Probe, wanted: u32, knob: &str, say: &impl Fn(&str)) -> Option<String> {
    let available = i64::from(p.max_connections) - i64::from(p.reserved);
    let fits = i64::from(wanted) <= available;
    say(&format!(
        "capacity    max_connections {} ({} reserved for superusers); this process may open {wanted}: {}",
        p.max_connections,
        p.reserved,
        if fits { "fits" } else { "TOO MANY" }
    ));
    (!fits).then(|| {
        format!(
            "the pools may open {wanted} connections but the server allows {available}: lower {knob} or raise the server's max_connections"
        )
    })
}

fn target_json(name: &str, target: &DbTarget, p: &Probe) -> Value {
    json!({
        "name": name,
        "url": target.redacted(),
        "reachable": true,
        "role": role(p),
        "connect_ms": p.connect_ms,
        "server_version": p.version,
        "tls": p.tls,
        "max_connections": p.max_connections,
        "superuser_reserved_connections": p.reserved,
        "transaction_pooler": match p.pooler {
            Pooler::Transaction => Value::Bool(true),
            Pooler::None => Value::Bool(false),
            Pooler::Unknown => Value::Null,
        },
    })
}

/// Connects through a pool built from the configuration, asks the server who it is, then runs
/// `queries` × `SELECT 1` through a manager over that pool.
async fn probe(
    target: &DbTarget,
    config: &Config,
    queries: u32,
) -> Result<(Probe, (u32, Duration)), (Kind, String)> {
    let connector =
        PgConnector::for_target(target, config).map_err(|e| (Kind::Config, e.to_string()))?;
    let mut opts = PoolOptions::from_config(&config.pool, "check");
    opts.min_idle = 0;
    let pool = Pool::new(connector, opts);
    let started = Instant::now();
    let conn = pool
        .get()
        .await
        .map_err(|e| (Kind::of_acquire(&e), e.to_string()))?;
    let connect_ms = started.elapsed().as_secs_f64() * 1e3;
    let row = conn
        .query_one(
            "SELECT version(), current_setting('server_version'), \
             current_setting('max_connections')::int4, \
             current_setting('superuser_reserved_connections')::int4, \
             coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false), \
             pg_is_in_recovery()",
            &[],
        )
        .await
        .map_err(|e| (Kind::Other, format!("the check query failed: {e}")))?;
    drop(conn);
    let pooler = check_pooler::detect(&pool).await;
    let probe = Probe {
        connect_ms,
        version_full: row.get(0),
        // "15.18 (Debian 15.18-0+deb12u1)": the number; the full text is on the next line.
        version: row
            .get::<_, String>(1)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
        max_connections: row.get(2),
        reserved: row.get(3),
        tls: row.get(4),
        standby: row.get(5),
        pooler,
    };
    let manager = PoolManager::new(pool, ManagerOptions::from_config(config));
    let t = Instant::now();
    let mut ok = 0;
    for _ in 0..queries {
        if manager
            .query_one("SELECT 1", &[])
            .idempotent()
            .await
            .is_ok()
        {
            ok += 1;
        }
    }
    let took = t.elapsed();
    manager.close(Duration::from_secs(2)).await;
    Ok((probe, (ok, took)))
}
