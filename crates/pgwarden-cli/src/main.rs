//! `pgwarden`: check a configuration and a server. The CLI only parses arguments and prints;
//! everything it does is the library's.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use pgwarden::config::{Config, DbTarget, Profile, Source};
use pgwarden::{PgConnector, Pool, PoolManager, PoolOptions};
use pgwarden_testdb::PgServer;

#[derive(Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "PostgreSQL connection pool manager: check a configuration and a server.",
    long_about = "PostgreSQL connection pool manager.\n\nConfiguration comes from the environment \
                  (DATABASE_URL, DB_POOL_MAX, DB_POOL_MIN, …) over the profile's defaults. \
                  Without DATABASE_URL, `check` starts a throwaway local PostgreSQL server."
)]
struct Cli {
    /// Configuration profile: development, staging or production (overrides DB_PROFILE and APP_ENV).
    #[arg(long, global = true, value_parser = parse_profile)]
    profile: Option<Profile>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the effective configuration: every variable, its value (passwords redacted) and where it came from.
    Config,
    /// Connect through the pool and report the server (a throwaway local server when DATABASE_URL is unset).
    Check,
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    s.parse::<Profile>().map_err(|e| e.to_string())
}

/// Exit codes: 0 fine, 1 the check failed, 2 the configuration is invalid.
fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGWARDEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match load(cli.profile) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::Config => print_config(&config),
        Command::Check => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(check(config))
        }
    }
}

fn load(profile: Option<Profile>) -> Result<Config, ExitCode> {
    let vars = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v)));
    // Non-UTF-8 values of our variables are reported by the library; pass them lossily marked.
    let vars: Vec<(String, String)> = vars
        .map(|(k, v)| {
            let v = v
                .into_string()
                .unwrap_or_else(|_| String::from("\u{FFFD}(not UTF-8)"));
            (k, v)
        })
        .collect();
    match Config::from_vars_with_profile(vars, profile) {
        Ok(config) => {
            for w in config.warnings() {
                eprintln!("warning: {w}");
            }
            Ok(config)
        }
        Err(e) => {
            eprintln!(
                "pgwarden: the configuration has {} problem(s):",
                e.problems.len()
            );
            for p in &e.problems {
                eprintln!("  {p}");
            }
            Err(ExitCode::from(2))
        }
    }
}

fn print_config(config: &Config) -> ExitCode {
    println!(
        "# pgwarden effective configuration ({} profile)",
        config.profile
    );
    for s in config.effective() {
        println!("{s}");
    }
    if config.database_url.is_none() {
        println!("# DATABASE_URL is unset: `pgwarden check` uses a throwaway local server; the library requires it.");
    }
    ExitCode::SUCCESS
}

async fn check(mut config: Config) -> ExitCode {
    let _server = if config.database_url.is_none() {
        println!("DATABASE_URL is unset: starting a throwaway PostgreSQL server ...");
        let started = Instant::now();
        let server = match tokio::task::spawn_blocking(PgServer::start).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                eprintln!("pgwarden: cannot start a throwaway server: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("pgwarden: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "  started in {} ms on 127.0.0.1:{} (stopped and removed on exit)",
            started.elapsed().as_millis(),
            server.port()
        );
        let target = DbTarget::parse(&server.url("postgres")).expect("harness URL parses");
        config.set_database_url(target, Source::Override);
        Some(server)
    } else {
        None
    };
    let target = config.database_url.clone().expect("set above");
    println!("target      {}", target.redacted());
    println!("profile     {}", config.profile);
    let connector = match PgConnector::for_target(&target, &config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgwarden: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut opts = PoolOptions::from_config(&config.pool, "primary");
    opts.min_idle = 0;
    let pool = Pool::new(connector, opts);
    let started = Instant::now();
    let conn = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgwarden: check failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let connect_ms = started.elapsed().as_secs_f64() * 1e3;
    let row = match conn
        .query_one(
            "SELECT version(), current_setting('server_version'), \
             current_setting('max_connections')::int4, \
             current_setting('superuser_reserved_connections')::int4, \
             coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false), \
             pg_is_in_recovery()",
            &[],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgwarden: check query failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    drop(conn);
    let (version, short, max_conn, reserved, ssl, standby): (String, String, i32, i32, bool, bool) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    println!(
        "connect     ok in {connect_ms:.1} ms (TLS: {})",
        if ssl { "yes" } else { "no" }
    );
    println!(
        "server      PostgreSQL {short} ({})",
        if standby {
            "standby, read-only"
        } else {
            "primary, read-write"
        }
    );
    println!("            {version}");
    let wanted = config.pool.max_size
        + if config.failover.enabled && config.failover_url.is_none() {
            config.failover.pool_max
        } else {
            0
        };
    let available = max_conn - reserved;
    let verdict = if i64::from(wanted) > i64::from(available) {
        "TOO SMALL: lower DB_POOL_MAX (or DB_FAILOVER_POOL_MAX), or raise the server's max_connections".to_owned()
    } else {
        "fits".to_owned()
    };
    println!(
        "capacity    max_connections {max_conn} ({reserved} reserved for superusers); this process may open {wanted}: {verdict}"
    );
    let manager = PoolManager::new(pool.clone(), pgwarden::ManagerOptions::from_config(&config));
    let t = Instant::now();
    let mut ok = 0;
    for _ in 0..100 {
        if manager
            .query_one("SELECT 1", &[])
            .idempotent()
            .await
            .is_ok()
        {
            ok += 1;
        }
    }
    println!(
        "queries     {ok}/100 SELECT 1 through the pool in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    println!("pool        {}", pool.status());
    manager.close(Duration::from_secs(2)).await;
    if ok == 100 && i64::from(wanted) <= i64::from(available) {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
