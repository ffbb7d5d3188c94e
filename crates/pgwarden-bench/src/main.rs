//! pgwarden benchmarks: pgwarden against deadpool-postgres, bb8-postgres, sqlx's PgPool and raw
//! tokio-postgres end to end, and against deadpool and bb8 pool-only.
//!
//! ```text
//! cargo run --release -p pgwarden-bench            # regenerates docs/BENCHMARKS.md + JSON
//! cargo run --release -p pgwarden-bench -- --quick # a short run, written to target/
//! cargo run --release -p pgwarden-bench -- --count e2e-pgwarden 2000 # for callgrind (instr.rs)
//! ```
//!
//! One process, one throwaway PostgreSQL server (loopback TCP), every library measured in the
//! same run. Each round runs every scenario once, in an order shuffled per round (seeded, the
//! seed is printed); each scenario is a warm-up then a fixed measuring window, and only the
//! operations inside the window count. Every loop stops at its window's end; an outer timeout
//! bounds every scenario.
//!
//! Scenarios:
//! - `lat/*`: one task, sequential calls: pgwarden `PoolManager::query_one` with the statement
//!   cache on and off, and a raw tokio-postgres client with the statement prepared once.
//! - `tp/*`: 1,000 tasks on 10 connections: pgwarden, deadpool-postgres, bb8-postgres and sqlx
//!   (at their defaults, and bb8/sqlx also equalized: no check-out ping, cached statements), and
//!   raw tokio-postgres (10 dedicated clients, one task each); and on 4 connections, pgwarden's
//!   pipelined lane beside raw tokio-postgres with 4 clients shared by every task.
//! - `pool/*`: dummy connections, get + drop: uncontended, 256 and 1,024 tasks on 16 objects.
//!
//! End-to-end scenarios run a point select on a 100k-row table (random id) and `SELECT 1`.
//! Ratios within one run are the claim; absolute numbers drift ±10% on a shared 2-core VM.

mod conns;
mod e2e;
mod instr;
mod poolonly;
mod report;
mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgwarden::PoolManager;
use pgwarden_testdb::PgServer;
use serde_json::json;

use crate::e2e::E2e;
use crate::poolonly::PoolScenario;
use crate::report::{Machine, Report};
use crate::util::{AnyErr, Cfg, Rng, Sample, Timing};

#[derive(Clone, Copy, Debug)]
enum Scenario {
    E2e(E2e),
    Pool(PoolScenario),
}

impl Scenario {
    fn name(&self) -> String {
        match self {
            Scenario::E2e(s) => s.name(),
            Scenario::Pool(s) => s.name(),
        }
    }
}

struct Args {
    cfg: Cfg,
    only: Option<String>,
    /// The Markdown page; the JSON goes beside it (same name, `.json`... see `json_path`).
    out: PathBuf,
    command: String,
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
}

/// `docs/BENCHMARKS.md` → `docs/bench-results.json`; any other `X.md` → `X.json`.
fn json_path(md: &Path) -> PathBuf {
    if md.file_name().is_some_and(|n| n == "BENCHMARKS.md") {
        md.with_file_name("bench-results.json")
    } else {
        md.with_extension("json")
    }
}

const USAGE: &str = "options: --quick --rounds N --seed N --only SUBSTR[,SUBSTR...] --out PATH.md; or --count WHAT N (instruction counts, see src/instr.rs)";

fn parse_args() -> Result<Args, AnyErr> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let quick = raw.iter().any(|a| a == "--quick");
    let ms = Duration::from_millis;
    let mut a = Args {
        cfg: if quick {
            Cfg {
                rounds: 3,
                e2e: Timing {
                    warmup: ms(300),
                    window: ms(1000),
                },
                pool: Timing {
                    warmup: ms(100),
                    window: ms(400),
                },
                seed,
                quick,
            }
        } else {
            Cfg {
                rounds: 5,
                e2e: Timing {
                    warmup: ms(500),
                    window: ms(2000),
                },
                pool: Timing {
                    warmup: ms(200),
                    window: ms(1000),
                },
                seed,
                quick,
            }
        },
        only: None,
        out: if quick {
            target_dir().join("bench-quick.md")
        } else {
            workspace_dir().join("docs/BENCHMARKS.md")
        },
        command: if raw.is_empty() {
            "cargo run --release -p pgwarden-bench".to_owned()
        } else {
            format!("cargo run --release -p pgwarden-bench -- {}", raw.join(" "))
        },
    };
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == "--quick" {
            i += 1;
            continue;
        }
        let val = raw
            .get(i + 1)
            .cloned()
            .ok_or_else(|| format!("{} needs a value ({USAGE})", raw[i]))?;
        match raw[i].as_str() {
            "--rounds" => a.cfg.rounds = val.parse()?,
            "--seed" => a.cfg.seed = val.parse()?,
            "--only" => a.only = Some(val),
            "--out" => a.out = val.into(),
            other => return Err(format!("unknown argument {other} ({USAGE})").into()),
        }
        i += 2;
    }
    if a.cfg.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    Ok(a)
}

fn main() -> Result<(), AnyErr> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().is_some_and(|a| a == "--count") {
        let (Some(what), Some(n)) = (raw.get(1), raw.get(2)) else {
            return Err(format!("--count WHAT N (WHAT: {:?})", instr::WHATS).into());
        };
        return instr::main(what, n.parse()?);
    }
    let args = parse_args()?;
    let load_before = report::loadavg();
    let server = PgServer::start()?;
    eprintln!(
        "PostgreSQL on 127.0.0.1:{}; seed {}; load {load_before}",
        server.port(),
        args.cfg.seed
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(&server, args, load_before))
}

async fn run(server: &PgServer, args: Args, load_before: String) -> Result<(), AnyErr> {
    let cfg = args.cfg;
    let pg = server.pg_config("postgres");
    let env = e2e::setup(&pg).await?;
    let pool_env = poolonly::setup().await?;

    let all: Vec<Scenario> = E2e::all()
        .into_iter()
        .map(Scenario::E2e)
        .chain(PoolScenario::all().into_iter().map(Scenario::Pool))
        .filter(|s| {
            args.only
                .as_deref()
                .is_none_or(|o| o.split(',').any(|p| s.name().contains(p)))
        })
        .collect();
    if all.is_empty() {
        return Err("--only matched no scenario".into());
    }
    let mut results: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    let mut orders: Vec<Vec<String>> = Vec::new();
    let mut rng = Rng::new(cfg.seed);
    let started = Instant::now();
    for round in 0..cfg.rounds {
        let mut order = all.clone();
        rng.shuffle(&mut order);
        orders.push(order.iter().map(Scenario::name).collect());
        for s in order {
            let sample = match s {
                Scenario::E2e(e) => e2e::run(&env, e, cfg, round).await?,
                Scenario::Pool(p) => poolonly::run(&pool_env, p, cfg).await?,
            };
            eprintln!(
                "round {} {:<28} {:>10.0} ops/s  p99 {:>8.1} µs  client CPU {:>8.0} ns/op  peak conns {}",
                round + 1,
                s.name(),
                sample.per_sec(),
                sample.q_us(0.99),
                sample.client_ns_per_op(),
                sample.peak_conns.map_or("–".to_owned(), |p| p.to_string()),
            );
            results.entry(s.name()).or_default().push(sample);
        }
    }

    let counters = |db: &PoolManager| {
        let k = db.pool().counters();
        let cs = db.pool().connector().cache_stats();
        json!({
            "opened": k.opened,
            "acquires_direct": k.acquires_direct,
            "acquires_waited": k.acquires_waited,
            "acquires_timed_out": k.acquires_timed_out,
            "cache_hits": cs.hits,
            "cache_misses": cs.misses,
            "resets": k.resets,
            "closed": serde_json::to_value(&k.closed).unwrap_or_default(),
        })
    };
    let counters = json!({
        "lat_cached": counters(&env.lat_cached),
        "lat_uncached": counters(&env.lat_uncached),
        "tp": counters(&env.tp),
    });
    let report = Report {
        cfg,
        command: args.command.clone(),
        server_version: &env.server_version,
        machine: Machine::probe(load_before),
        elapsed: started.elapsed(),
        orders,
        results: &results,
    };
    let md = report.markdown();
    let json = report.json(counters);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &md)?;
    std::fs::write(
        json_path(&args.out),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    eprintln!(
        "wrote {} and {}",
        args.out.display(),
        json_path(&args.out).display()
    );
    env.close().await;
    Ok(())
}
