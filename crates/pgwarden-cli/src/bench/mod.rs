//! `pgwarden bench`: load a server through the pool and show what the pool does.
//!
//! Without `DATABASE_URL` a throwaway server is started (its `max_connections` fitted to the
//! pools) and removed at the end; with it, the built-in workloads use only tables of their
//! own, named per run and dropped at the end. Ctrl-C stops the load and still reports, drops
//! and removes.

mod load;
mod report;
mod workload;

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use pgwarden::config::Config;
use pgwarden::PoolManager;
use serde_json::Value;
use tokio::sync::watch;

use crate::fail::{self, Failure};
use crate::throwaway;
use crate::ui::{self, Ui};
use workload::{Job, Tables, Workload};

/// The run length when neither `-d` nor `-n` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// The workload.
    #[arg(value_enum, default_value_t = Workload::Select1, conflicts_with = "sql")]
    workload: Workload,
    /// Load a statement of your own instead (as pgbench's -f); treated as a write (never
    /// retried once sent) unless --idempotent.
    #[arg(long, value_name = "STATEMENT")]
    sql: Option<String>,
    /// With --sql: the statement is safe to run twice, so it is retried after a lost connection.
    #[arg(long, requires = "sql")]
    idempotent: bool,
    /// Tasks calling at once (the development pool holds 30; go past it to see saturation).
    #[arg(short, long, default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// How long to load: a plain number is seconds (as pgbench's -T); 500ms, 30s, 2m also work.
    /// Default: 10 s, or no limit with -n alone.
    #[arg(short, long, value_name = "D", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Total calls across all tasks; with -d too, whichever ends first.
    #[arg(short = 'n', long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Print the status block every few seconds instead of a progress bar (the default when
    /// stdout is not a terminal).
    #[arg(long)]
    watch: bool,
    /// Write the report as JSON to FILE (`-` for stdout; the text then goes to stderr).
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// Share N server connections (4 when N is left out) among every task's statements: the
    /// pipelined lane (DB_PIPELINE_CONNECTIONS=N). 0 turns it off.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "4")]
    pipeline: Option<u32>,
    /// Serve /metrics (Prometheus), /health and /status on HOST:PORT while the load runs.
    #[arg(long, value_name = "HOST:PORT")]
    serve: Option<std::net::SocketAddr>,
}

/// `-d`: a plain number is seconds; `ms`, `s`, `m` suffixes accepted.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write 10 (seconds), 500ms, 30s or 2m"))?;
    let secs = match unit.trim() {
        "ms" => v / 1e3,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}`: use ms, s, m or h"
            ))
        }
    };
    if !(secs > 0.0 && secs < 1e7) {
        return Err(format!("`{s}` is not a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where human-readable lines go: stdout, or stderr when stdout carries the JSON.
pub(crate) struct Say {
    pub(crate) to_stderr: bool,
}

impl Say {
    pub(crate) fn line(&self, text: &str) {
        if self.to_stderr {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}

pub(crate) async fn run(mut config: Config, args: BenchArgs, ui: &Ui) -> Result<(), Failure> {
    let say = Say {
        to_stderr: args.json.as_deref() == Some("-"),
    };
    // A bad --json path fails before anything starts.
    let json_file = match args.json.as_deref() {
        Some("-") | None => None,
        Some(path) => Some(File::create(path).map_err(|e| {
            Failure::new(
                fail::USAGE,
                format!("cannot write --json {path}: {e}"),
                Some("Give a writable path, or - for stdout.".into()),
            )
        })?),
    };
    if let Some(n) = args.pipeline {
        // Validated with the rest of the configuration when the manager is built.
        config.pool.pipeline_connections = n;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = if config.database_url.is_none() {
        Some(throwaway::start(&mut config, |l| say.line(l)).await?)
    } else {
        None
    };
    // From here on a Ctrl-C ends the load and the cleanup below still runs; a second one
    // leaves at once (the throwaway server's watchdog still removes it).
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        let _ = stop_tx.send(true);
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "pgwarden: interrupted twice: leaving without cleaning up; a throwaway server is removed by its watchdog, tables named pgwarden_bench_* on your own server may remain"
            );
            std::process::exit(130);
        }
    });
    let result = bench(&config, &args, ui, &say, server.is_some(), stop_rx).await;
    if let Some(server) = server {
        throwaway::stop(server).await;
        say.line("throwaway server stopped and removed");
    }
    let (report, doc) = result?;
    say.line("");
    say.line(&report);
    if let Some(doc) = doc {
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        match json_file {
            Some(mut f) => writeln!(f, "{text}")
                .map_err(|e| Failure::runtime(format!("writing the JSON report: {e}"), None))?,
            None => println!("{text}"),
        }
    }
    Ok(())
}

/// Connects, seeds, loads, cleans up; returns the report text and, with --json, the document.
async fn bench(
    config: &Config,
    args: &BenchArgs,
    ui: &Ui,
    say: &Say,
    throwaway: bool,
    stop: watch::Receiver<bool>,
) -> Result<(String, Option<Value>), Failure> {
    let db = PoolManager::from_config(config)
        .await
        .map_err(|e| Failure::connecting(&e))?;
    let endpoints = match args.serve {
        Some(addr) => match pgwarden::http::serve(db.clone(), addr).await {
            Ok(s) => {
                say.line(&format!(
                    "serving /metrics, /health and /status on http://{}",
                    s.local_addr()
                ));
                Some(s)
            }
            Err(e) => {
                db.close(Duration::from_secs(2)).await;
                return Err(Failure::runtime(
                    format!("cannot serve on {addr}: {e}"),
                    Some(
                        "Choose a free port (or port 0 for any), e.g. --serve 127.0.0.1:9187."
                            .into(),
                    ),
                ));
            }
        },
        None => None,
    };
    let version = server_version(&db).await;
    let server = format!(
        "PostgreSQL {version}{}",
        if throwaway { " (throwaway)" } else { "" }
    );
    let tables = match (&args.sql, args.workload) {
        (None, w) if Job::needs_tables(w) => Some(Tables::for_this_run()),
        _ => None,
    };
    let result = async {
        if let Some(t) = &tables {
            seed(&db, t, say).await?;
        }
        let job = Arc::new(match &args.sql {
            Some(sql) => Job::Sql {
                sql: sql.clone(),
                idempotent: args.idempotent,
            },
            None => Job::builtin(args.workload, tables.as_ref()),
        });
        let plan = load::Plan {
            concurrency: args.concurrency,
            duration: match (args.duration, args.count) {
                (None, None) => Some(DEFAULT_DURATION),
                (d, _) => d,
            },
            count: args.count,
            watch: args.watch,
        };
        say.line(&format!(
            "running {} with {} tasks {} on {server} (Ctrl-C stops it and reports)",
            job.name(),
            plan.concurrency,
            match (plan.duration, plan.count) {
                (Some(d), Some(n)) =>
                    format!("for {:.1} s or {} calls", d.as_secs_f64(), ui::thousands(n)),
                (Some(d), None) => format!("for {:.1} s", d.as_secs_f64()),
                (None, n) => format!("for {} calls", ui::thousands(n.unwrap_or(0))),
            }
        ));
        let outcome = load::run(&db, job.clone(), &plan, ui, say, stop).await;
        let snapshot = serde_json::to_value(db.metrics()).unwrap_or(Value::Null);
        Ok::<_, Failure>((job, outcome, snapshot))
    }
    .await;
    if let Some(t) = &tables {
        unseed(&db, t, say).await;
    }
    if let Some(s) = endpoints {
        let _ = s.stop().await;
    }
    db.close(Duration::from_secs(2)).await;
    let (job, outcome, snapshot) = result?;
    if outcome.ok == 0 && outcome.failed > 0 {
        let what = format!(
            "every call failed ({} of {}{}): {}",
            ui::thousands(outcome.failed),
            ui::thousands(outcome.calls()),
            if outcome.gave_up {
                ", so the run stopped early"
            } else {
                ""
            },
            outcome.first_error.as_deref().unwrap_or("no error text")
        );
        let todo = if args.sql.is_some() {
            "Check the statement with psql against the same server, then run again."
        } else {
            "Check the server and the role's permissions, or run with -v to see the library's log."
        };
        return Err(Failure::runtime(what, Some(todo.into())));
    }
    let header = report::Header {
        workload: job.name(),
        concurrency: args.concurrency,
        server: &server,
    };
    let text = report::text(&header, &outcome, &snapshot, ui);
    let doc = args
        .json
        .is_some()
        .then(|| report::json(&header, &outcome, snapshot));
    Ok((text, doc))
}

/// The server's version number, through an exclusive checkout (not counted as load).
async fn server_version(db: &PoolManager) -> String {
    let version = match db.get().await {
        Ok(conn) => conn
            .query_one("SHOW server_version", &[])
            .await
            .map(|row| row.get::<_, String>(0))
            .ok(),
        Err(_) => None,
    };
    // "15.18 (Debian 15.18-0+deb12u1)": the number is what a reader wants.
    version
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "(version unknown)".into())
}

/// Creates and fills the run's tables through an exclusive checkout (not counted as load).
async fn seed(db: &PoolManager, t: &Tables, say: &Say) -> Result<(), Failure> {
    let cannot = |e: String| {
        Failure::runtime(
            format!("cannot create the benchmark's tables: {e}"),
            Some(
                "Grant the role CREATE on the schema, or use the select1 workload or --sql.".into(),
            ),
        )
    };
    let conn = db.get().await.map_err(|e| cannot(e.to_string()))?;
    conn.batch_execute(&t.create_sql())
        .await
        .map_err(|e| cannot(pg_text(&e)))?;
    say.line(&format!(
        "created {} ({} rows) and {} for this run; dropped at the end",
        t.accounts,
        ui::thousands(workload::ROWS as u64),
        t.history
    ));
    Ok(())
}

async fn unseed(db: &PoolManager, t: &Tables, say: &Say) {
    let sql = t.drop_sql();
    let dropped = match db.get().await {
        Ok(conn) => conn.batch_execute(&sql).await.map_err(|e| pg_text(&e)),
        Err(e) => Err(e.to_string()),
    };
    match dropped {
        Ok(()) => say.line(&format!("dropped {} and {}", t.accounts, t.history)),
        Err(e) => eprintln!("pgwarden: could not drop the benchmark's tables ({e}); run: {sql};"),
    }
}

/// The server's message of a tokio-postgres error (its Display says only "db error").
fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} [SQLSTATE {}]", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn a_plain_duration_is_seconds_as_in_pgbench() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("ten").unwrap_err().contains("500ms"));
        assert!(parse_duration("5 days")
            .unwrap_err()
            .contains("unknown unit"));
    }
}
