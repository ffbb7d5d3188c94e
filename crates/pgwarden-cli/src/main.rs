//! `pgwarden`: load a PostgreSQL server through the pool and show what the pool does (`bench`),
//! check a configuration against its servers (`check`), print the effective configuration
//! (`config`). The CLI parses arguments, drives the library and prints; everything a service
//! could want lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgwarden::config::{Config, Profile};

mod bench;
mod check;
mod check_pooler;
mod config_cmd;
mod fail;
mod logs;
mod throwaway;
mod ui;

use fail::Failure;

const EXIT_CODES: &str =
    "Exit codes: 0 done, 1 runtime failure, 2 usage error, 3 configuration error \
(a bad variable or URL, wrong credentials, no PostgreSQL binaries for the throwaway server); \
`check` also 4 for a warning and 5 for critical, unreachable or refused.";

#[derive(Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "PostgreSQL connection pool manager: load a server through the pool, check a configuration.",
    long_about = "PostgreSQL connection pool manager.\n\nConfiguration comes from the environment \
                  (DATABASE_URL, DB_POOL_MAX, DB_POOL_MIN, …) over the profile's defaults. \
                  Without DATABASE_URL, `bench` and `check` start a throwaway local PostgreSQL \
                  server and remove it when they end.",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Configuration profile: development, staging or production (overrides DB_PROFILE and APP_ENV).
    #[arg(long, global = true, value_parser = parse_profile)]
    profile: Option<Profile>,
    /// Show the library's log lines (-v: info, -vv: debug); by default they are summarised.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a server through the pool and report what the pool did (a throwaway local server
    /// when DATABASE_URL is unset).
    Bench(bench::BenchArgs),
    /// Connect to every configured target and report its role, version and capacity (a
    /// throwaway local server when DATABASE_URL is unset).
    Check(check::CheckArgs),
    /// Print the effective configuration: every variable, its value (passwords redacted) and
    /// where it came from.
    Config(config_cmd::ConfigArgs),
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    s.parse::<Profile>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // A bad flag: clap prints what is wrong and the usage, and exits with 2.
    let cli = Cli::parse();
    let summary = logs::init(cli.verbose);
    let ui = ui::Ui::new(std::io::stdout().is_terminal(), cli.verbose > 0);
    let code = match run(cli, &ui) {
        Ok(code) => code,
        Err(failure) => {
            failure.print();
            failure.code
        }
    };
    summary.print_if_any();
    ExitCode::from(code)
}

fn run(cli: Cli, ui: &ui::Ui) -> Result<u8, Failure> {
    let config = load(cli.profile)?;
    match cli.command {
        Command::Config(args) => config_cmd::run(&config, &args).map(|()| fail::OK),
        Command::Check(args) => runtime()?.block_on(check::run(config, args, ui)),
        Command::Bench(args) => runtime()?
            .block_on(bench::run(config, args, ui))
            .map(|()| fail::OK),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}"), None))
}

fn load(profile: Option<Profile>) -> Result<Config, Failure> {
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
        Err(e) => Err(Failure::config_problems(&e)),
    }
}
