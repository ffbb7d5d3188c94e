//! pgwarden end-to-end benchmark: pgwarden vs deadpool-postgres vs raw tokio-postgres.
//!
//! ```text
//! cargo run --release -p pgwarden-bench [-- --rounds 5 --window-ms 3000 --warmup-ms 500 --seed N --only SUBSTR]
//! ```
//!
//! One process, one throwaway PostgreSQL server (loopback TCP), every library measured in the
//! same run. Each round runs every scenario once, in an order shuffled per round (seeded, the
//! seed is printed); each scenario is a warm-up then a fixed measuring window, and only the
//! operations that start and end inside the window count. Every loop stops at its window's end;
//! an outer timeout bounds every scenario.
//!
//! Scenarios:
//! - `lat/*`: one task, sequential calls — pgwarden `PoolManager::query_one` with the statement
//!   cache on (1000) and off (0: prepare + execute + close every call), and a raw tokio-postgres
//!   client with the statement prepared once (the floor).
//! - `tp/*`: 1,000 tasks on 10 connections — pgwarden `query_one` (cache on), deadpool-postgres
//!   (`RecyclingMethod::Fast`, `prepare_cached` per op), and raw tokio-postgres (10 dedicated
//!   clients, one task each, statement prepared once per client).
//!
//! Each with a point select on a 100k-row table (random id) and `SELECT 1`.
//!
//! Output: a Markdown summary on stdout (also `target/bench-results.md`) and the raw figures in
//! `target/bench-results.json` (or `--out PATH`). Ratios within this run are the claim; absolute
//! numbers drift ±10% on a shared 2-core VM.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pgwarden::config::SslMode;
use pgwarden::{ConnectOptions, ManagerOptions, PgConnector, Pool, PoolManager, PoolOptions};
use pgwarden_testdb::PgServer;
use serde_json::json;
use tokio_postgres::{Client, NoTls};

type AnyErr = Box<dyn std::error::Error + Send + Sync>;

const POINT_SQL: &str = "SELECT id, v FROM items WHERE id = $1";
const SELECT1_SQL: &str = "SELECT 1";
const ROWS: i32 = 100_000;
const TP_TASKS: usize = 1000;
const POOL_SIZE: u32 = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Query {
    Point,
    Select1,
}

impl Query {
    fn sql(self) -> &'static str {
        match self {
            Query::Point => POINT_SQL,
            Query::Select1 => SELECT1_SQL,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Query::Point => "point",
            Query::Select1 => "select1",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lib {
    /// pgwarden `PoolManager::query_one`, statement cache on.
    Cached,
    /// pgwarden `PoolManager::query_one`, statement cache off.
    Uncached,
    /// deadpool-postgres, Fast recycling, `prepare_cached` per op.
    Deadpool,
    /// raw tokio-postgres, dedicated clients, statement prepared once.
    Raw,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    /// `lat` (1 task) or `tp` (1,000 tasks / 10 connections).
    latency: bool,
    lib: Lib,
    query: Query,
}

impl Scenario {
    fn name(&self) -> String {
        let lib = match (self.latency, self.lib) {
            (_, Lib::Cached) if !self.latency => "pgwarden",
            (_, Lib::Cached) => "pgwarden-cached",
            (_, Lib::Uncached) => "pgwarden-uncached",
            (_, Lib::Deadpool) => "deadpool",
            (_, Lib::Raw) => "raw",
        };
        format!(
            "{}/{}/{}",
            if self.latency { "lat" } else { "tp" },
            lib,
            self.query.name()
        )
    }
}

fn scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    for query in [Query::Point, Query::Select1] {
        for lib in [Lib::Cached, Lib::Uncached, Lib::Raw] {
            v.push(Scenario {
                latency: true,
                lib,
                query,
            });
        }
        for lib in [Lib::Cached, Lib::Deadpool, Lib::Raw] {
            v.push(Scenario {
                latency: false,
                lib,
                query,
            });
        }
    }
    v
}

#[derive(Clone, Copy)]
struct Cfg {
    rounds: usize,
    window: Duration,
    warmup: Duration,
    seed: u64,
}

/// The measuring window of one scenario run: operations started at or after `start` and
/// finished before `end` count.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn new(cfg: Cfg) -> Self {
        let start = Instant::now() + cfg.warmup;
        Self {
            start,
            end: start + cfg.window,
        }
    }
}

/// xorshift64*: a per-task generator of ids and the round shuffles (no shared state).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn id(&mut self) -> i32 {
        (self.next() % ROWS as u64) as i32 + 1
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// One scenario's outcome in one round.
struct Sample {
    ops: u64,
    window: Duration,
    hist: Histogram<u64>,
    /// CPU cores kept busy during the window: (this process, the whole machine).
    cpu: (f64, f64),
}

impl Sample {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64()
    }
    fn q_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    fn mean_us(&self) -> f64 {
        self.hist.mean() / 1000.0
    }
    /// CPU µs per operation: (this process, the rest of the machine — PostgreSQL mostly).
    fn cpu_us_per_op(&self) -> (f64, f64) {
        let r = self.per_sec().max(1.0);
        (
            self.cpu.0 * 1e6 / r,
            (self.cpu.1 - self.cpu.0).max(0.0) * 1e6 / r,
        )
    }
}

/// (this process's CPU ticks, the machine's busy CPU ticks), from /proc (100 Hz ticks).
fn cpu_ticks() -> (u64, u64) {
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(11) // fields 3..=13
                .take(2) // utime, stime
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(f.iter().sum())
        })
        .unwrap_or(0);
    let all = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = f.iter().take(8).sum();
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            Some(total - idle)
        })
        .unwrap_or(0);
    (own, all)
}

/// Samples CPU use over the window (a task of its own, off the hot loops).
fn sample_cpu(w: Window) -> tokio::task::JoinHandle<(f64, f64)> {
    tokio::spawn(async move {
        tokio::time::sleep_until(w.start.into()).await;
        let a = cpu_ticks();
        let t0 = Instant::now();
        tokio::time::sleep_until(w.end.into()).await;
        let b = cpu_ticks();
        let secs = t0.elapsed().as_secs_f64() * 100.0;
        (
            b.0.saturating_sub(a.0) as f64 / secs,
            b.1.saturating_sub(a.1) as f64 / secs,
        )
    })
}

fn new_hist() -> Histogram<u64> {
    // 1 ns .. 60 s, 3 significant figures.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// The timed loop of one task: `$body` (using `$id`, a random id) runs until the window ends;
/// operations that start and end inside the window are counted and timed.
macro_rules! timed_loop {
    ($w:expr, $rng:expr, $id:ident => $body:expr) => {{
        let w: Window = $w;
        let mut rng: Rng = $rng;
        let mut n = 0u64;
        let mut lat: Vec<u64> = Vec::new();
        loop {
            let $id: i32 = rng.id();
            let t0 = Instant::now();
            $body;
            let now = Instant::now();
            if now >= w.end {
                break;
            }
            if t0 >= w.start {
                n += 1;
                lat.push((now - t0).as_nanos() as u64);
            }
        }
        Ok::<_, AnyErr>((n, lat))
    }};
}

/// Runs `tasks` copies of `body` (each gets its index; all start together behind a barrier) and
/// merges what they report, with an outer bound so a hang fails loudly instead of stalling.
async fn run_tasks<F, Fut>(cfg: Cfg, tasks: usize, body: F) -> Result<Sample, AnyErr>
where
    F: Fn(usize, Window, Arc<tokio::sync::Barrier>) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, Vec<u64>), AnyErr>> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
    let w = Window::new(cfg);
    let cpu = sample_cpu(w);
    let handles: Vec<_> = (0..tasks)
        .map(|i| tokio::spawn(body(i, w, Arc::clone(&barrier))))
        .collect();
    let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
    let bound = w.end.saturating_duration_since(Instant::now()) + Duration::from_secs(30);
    let mut ops = 0;
    let mut hist = new_hist();
    let joined = tokio::time::timeout(bound, async {
        for h in handles {
            let (n, l) = h.await??;
            ops += n;
            for v in l {
                hist.saturating_record(v.max(1));
            }
        }
        Ok::<_, AnyErr>(())
    })
    .await;
    match joined {
        Ok(r) => r?,
        Err(_) => {
            for a in aborts {
                a.abort();
            }
            return Err("scenario did not finish within its outer bound".into());
        }
    }
    Ok(Sample {
        ops,
        window: cfg.window,
        hist,
        cpu: cpu.await?,
    })
}

/// Everything a scenario runs against.
struct Env {
    /// pgwarden, cache 1000, pool 1..10 (latency scenarios).
    lat_cached: PoolManager,
    /// pgwarden, cache 0, pool 1..10 (latency scenarios).
    lat_uncached: PoolManager,
    /// pgwarden, cache 1000, pool 10..10 (throughput scenarios).
    tp: PoolManager,
    deadpool: deadpool_postgres::Pool,
    /// 10 dedicated raw clients.
    raw: Vec<Arc<Client>>,
    server_version: String,
}

async fn run_scenario(env: &Env, s: Scenario, cfg: Cfg, round: usize) -> Result<Sample, AnyErr> {
    let q = s.query;
    let sql = q.sql();
    let seed = cfg.seed ^ ((round as u64) << 32);
    // Each op checks its result, so a wrong row cannot pass for a fast one.
    fn check(row: &tokio_postgres::Row, q: Query, id: i32) -> Result<(), AnyErr> {
        let got: i32 = row.try_get(0)?;
        let want = if q == Query::Point { id } else { 1 };
        if got != want {
            return Err(format!("wrong row: {got} != {want}").into());
        }
        Ok(())
    }
    match (s.latency, s.lib) {
        (true, Lib::Cached | Lib::Uncached) | (false, Lib::Cached) => {
            let db = match (s.latency, s.lib) {
                (true, Lib::Cached) => env.lat_cached.clone(),
                (true, _) => env.lat_uncached.clone(),
                _ => env.tp.clone(),
            };
            let tasks = if s.latency { 1 } else { TP_TASKS };
            run_tasks(cfg, tasks, move |i, w, barrier| {
                let db = db.clone();
                async move {
                    barrier.wait().await;
                    timed_loop!(w, Rng::new(seed + i as u64), id => {
                        let row = if q == Query::Point {
                            db.query_one(sql, &[&id]).await?
                        } else {
                            db.query_one(sql, &[]).await?
                        };
                        check(&row, q, id)?;
                    })
                }
            })
            .await
        }
        (false, Lib::Deadpool) => {
            let pool = env.deadpool.clone();
            run_tasks(cfg, TP_TASKS, move |i, w, barrier| {
                let pool = pool.clone();
                async move {
                    barrier.wait().await;
                    timed_loop!(w, Rng::new(seed + i as u64), id => {
                        let c = pool.get().await?;
                        let st = c.prepare_cached(sql).await?;
                        let row = if q == Query::Point {
                            c.query_one(&st, &[&id]).await?
                        } else {
                            c.query_one(&st, &[]).await?
                        };
                        drop(c);
                        check(&row, q, id)?;
                    })
                }
            })
            .await
        }
        (_, Lib::Raw) => {
            let clients: Vec<Arc<Client>> = if s.latency {
                env.raw[..1].to_vec()
            } else {
                env.raw.clone()
            };
            run_tasks(cfg, clients.len(), move |i, w, barrier| {
                let client = Arc::clone(&clients[i]);
                async move {
                    let st = client.prepare(sql).await?;
                    barrier.wait().await;
                    timed_loop!(w, Rng::new(seed + i as u64), id => {
                        let row = if q == Query::Point {
                            client.query_one(&st, &[&id]).await?
                        } else {
                            client.query_one(&st, &[]).await?
                        };
                        check(&row, q, id)?;
                    })
                }
            })
            .await
        }
        (true, Lib::Deadpool) | (false, Lib::Uncached) => unreachable!("not a scenario"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn join(v: &[f64], f: impl Fn(f64) -> String) -> String {
    v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(" / ")
}

struct Args {
    cfg: Cfg,
    only: Option<String>,
    out: std::path::PathBuf,
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn parse_args() -> Result<Args, AnyErr> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let mut a = Args {
        cfg: Cfg {
            rounds: 5,
            window: Duration::from_millis(3000),
            warmup: Duration::from_millis(500),
            seed,
        },
        only: None,
        out: target_dir().join("bench-results.json"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = args
            .get(i + 1)
            .cloned()
            .ok_or_else(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--rounds" => a.cfg.rounds = val.parse()?,
            "--window-ms" => a.cfg.window = Duration::from_millis(val.parse()?),
            "--warmup-ms" => a.cfg.warmup = Duration::from_millis(val.parse()?),
            "--seed" => a.cfg.seed = val.parse()?,
            "--only" => a.only = Some(val),
            "--out" => a.out = val.into(),
            other => {
                return Err(format!(
                    "unknown argument {other} (--rounds N --window-ms N --warmup-ms N --seed N --only SUBSTR --out PATH)"
                )
                .into())
            }
        }
        i += 2;
    }
    if a.cfg.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    Ok(a)
}

fn main() -> Result<(), AnyErr> {
    let args = parse_args()?;
    let server = PgServer::start()?;
    eprintln!(
        "PostgreSQL on 127.0.0.1:{}; seed {}",
        server.port(),
        args.cfg.seed
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(&server, args))
}

async fn pgwarden_manager(
    pg: &tokio_postgres::Config,
    cache: usize,
    min_idle: u32,
) -> Result<PoolManager, AnyErr> {
    let mut connect_opts = ConnectOptions::default();
    connect_opts.statement_cache_size = cache;
    let connector = PgConnector::new(pg, SslMode::Disable, None, connect_opts)?;
    let mut opts = PoolOptions::sized(POOL_SIZE, min_idle);
    opts.acquire_timeout = Duration::from_secs(30);
    let pool = Pool::new(connector, opts);
    pool.prewarm().await?;
    Ok(PoolManager::new(pool, ManagerOptions::default()))
}

async fn setup(pg: &tokio_postgres::Config) -> Result<Env, AnyErr> {
    // The table, through a client of its own.
    let (admin, conn) = pg.connect(NoTls).await?;
    let driver = tokio::spawn(conn);
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS items;
             CREATE TABLE items AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1,100000) g;
             ALTER TABLE items ADD PRIMARY KEY (id);",
        )
        .await?;
    // On its own: VACUUM cannot run in the implicit transaction of a multi-statement batch.
    admin.batch_execute("VACUUM ANALYZE items").await?;
    let server_version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    drop(admin);
    let _ = driver.await;

    let lat_cached = pgwarden_manager(pg, 1000, 1).await?;
    let lat_uncached = pgwarden_manager(pg, 0, 1).await?;
    let tp = pgwarden_manager(pg, 1000, POOL_SIZE).await?;

    let mgr = deadpool_postgres::Manager::from_config(
        pg.clone(),
        NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let deadpool = deadpool_postgres::Pool::builder(mgr)
        .max_size(POOL_SIZE as usize)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()?;
    // Open all its connections now (deadpool opens lazily).
    {
        let mut held = Vec::new();
        for _ in 0..POOL_SIZE {
            held.push(deadpool.get().await?);
        }
    }

    let mut raw = Vec::new();
    for _ in 0..POOL_SIZE {
        let (client, conn) = pg.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        raw.push(Arc::new(client));
    }
    Ok(Env {
        lat_cached,
        lat_uncached,
        tp,
        deadpool,
        raw,
        server_version,
    })
}

async fn run(server: &PgServer, args: Args) -> Result<(), AnyErr> {
    let cfg = args.cfg;
    let pg = server.pg_config("postgres");
    let env = setup(&pg).await?;

    let all: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| args.only.as_deref().is_none_or(|o| s.name().contains(o)))
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
            let sample = run_scenario(&env, s, cfg, round).await?;
            eprintln!(
                "round {} {:<28} {:>9.0} ops/s  p50 {:>7.1} µs  p99 {:>8.1} µs  cpu: client {:.2}, machine {:.2} cores",
                round + 1,
                s.name(),
                sample.per_sec(),
                sample.q_us(0.5),
                sample.q_us(0.99),
                sample.cpu.0,
                sample.cpu.1
            );
            results.entry(s.name()).or_default().push(sample);
        }
    }
    let elapsed = started.elapsed();

    let report = Report {
        cfg,
        server_version: &env.server_version,
        results: &results,
    };
    let md = report.markdown(&orders, elapsed);
    println!("{md}");
    let json = report.json(&orders, &env);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)?)?;
    std::fs::write(args.out.with_extension("md"), &md)?;
    eprintln!(
        "wrote {} and {}",
        args.out.display(),
        args.out.with_extension("md").display()
    );

    for db in [&env.lat_cached, &env.lat_uncached, &env.tp] {
        db.close(Duration::from_secs(5)).await;
    }
    env.deadpool.close();
    Ok(())
}

struct Report<'a> {
    cfg: Cfg,
    server_version: &'a str,
    results: &'a BTreeMap<String, Vec<Sample>>,
}

/// A per-round comparison of two scenarios.
struct Cmp {
    per_round: Vec<f64>,
    median: f64,
    wins: usize,
    rounds: usize,
}

impl Report<'_> {
    fn get(&self, name: &str) -> Option<&Vec<Sample>> {
        self.results.get(name).filter(|v| !v.is_empty())
    }

    /// `f(a) / f(b)` per round; a "win" is a ratio above 1 when `higher_is_better`, else below.
    fn cmp(&self, a: &str, b: &str, f: impl Fn(&Sample) -> f64, higher: bool) -> Option<Cmp> {
        let (a, b) = (self.get(a)?, self.get(b)?);
        let per_round: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect();
        let wins = per_round
            .iter()
            .filter(|r| if higher { **r > 1.0 } else { **r < 1.0 })
            .count();
        Some(Cmp {
            median: median(per_round.clone()),
            wins,
            rounds: per_round.len(),
            per_round,
        })
    }

    fn med(&self, name: &str, f: impl Fn(&Sample) -> f64) -> f64 {
        self.get(name)
            .map_or(f64::NAN, |v| median(v.iter().map(f).collect()))
    }

    fn markdown(&self, orders: &[Vec<String>], elapsed: Duration) -> String {
        let mut o = String::new();
        let c = self.cfg;
        let _ = writeln!(
            o,
            "_{} rounds, scenarios shuffled per round (seed {}), {} ms warm-up + {} ms window each, \
             2 tokio workers, loopback TCP, PostgreSQL {}; run took {:.0} s. Figures are the \
             median over rounds; ratios are per round, then their median._\n",
            c.rounds,
            c.seed,
            c.warmup.as_millis(),
            c.window.as_millis(),
            self.server_version,
            elapsed.as_secs_f64()
        );

        let any = |prefix: &str| self.results.keys().any(|k| k.starts_with(prefix));
        // 1. Latency, one task.
        if any("lat/") {
            let _ = writeln!(
            o,
            "### 1. Statement cache: one task, sequential `PoolManager::query_one` (pool 1..10)\n"
        );
            let _ = writeln!(
            o,
            "| scenario | calls/s | p50 µs | p95 µs | p99 µs | mean µs | client CPU µs/call | server CPU µs/call | calls/s per round |"
        );
            let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
            for q in ["point", "select1"] {
                for lib in ["pgwarden-cached", "pgwarden-uncached", "raw"] {
                    let n = format!("lat/{lib}/{q}");
                    self.row(&mut o, &n);
                }
            }
            let _ = writeln!(
            o,
            "\n| query | mean latency reduction, cache on vs off (per round) | median | p50 reduction (median) | p99 reduction (median) | rounds cache won |"
        );
            let _ = writeln!(o, "|---|---|---:|---:|---:|---:|");
            for q in ["point", "select1"] {
                let (a, b) = (
                    format!("lat/pgwarden-cached/{q}"),
                    format!("lat/pgwarden-uncached/{q}"),
                );
                if let (Some(m), Some(p50), Some(p99)) = (
                    self.cmp(&a, &b, Sample::mean_us, false),
                    self.cmp(&a, &b, |s| s.q_us(0.5), false),
                    self.cmp(&a, &b, |s| s.q_us(0.99), false),
                ) {
                    let red = |r: f64| format!("{:.1}%", (1.0 - r) * 100.0);
                    let _ = writeln!(
                        o,
                        "| {q} | {} | **{}** | {} | {} | {}/{} |",
                        join(&m.per_round, red),
                        red(m.median),
                        red(p50.median),
                        red(p99.median),
                        m.wins,
                        m.rounds
                    );
                }
            }
            for q in ["point", "select1"] {
                if let Some(m) = self.cmp(
                    &format!("lat/pgwarden-cached/{q}"),
                    &format!("lat/raw/{q}"),
                    Sample::mean_us,
                    false,
                ) {
                    let _ = writeln!(
                    o,
                    "\npgwarden cached / raw client mean latency, {q}: median {:.2} (rounds {})",
                    m.median,
                    join(&m.per_round, |x| format!("{x:.2}"))
                );
                }
            }
        }
        // 2. Throughput.
        if any("tp/") {
            let _ = writeln!(
                o,
                "\n### 2. Throughput: {TP_TASKS} tasks on {POOL_SIZE} connections\n"
            );
            let _ = writeln!(
            o,
            "| scenario | ops/s (median) | p50 µs | p95 µs | p99 µs | mean µs | client CPU µs/op | server CPU µs/op | ops/s per round |"
        );
            let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
            for q in ["point", "select1"] {
                for lib in ["pgwarden", "deadpool", "raw"] {
                    self.row(&mut o, &format!("tp/{lib}/{q}"));
                }
            }
            let _ = writeln!(
                o,
                "\n| query | ratio | per round | median | rounds pgwarden won |"
            );
            let _ = writeln!(o, "|---|---|---|---:|---:|");
            for q in ["point", "select1"] {
                for (a, b, label) in [
                    ("pgwarden", "deadpool", "pgwarden / deadpool"),
                    ("pgwarden", "raw", "pgwarden / raw"),
                    ("deadpool", "raw", "deadpool / raw"),
                ] {
                    if let Some(m) = self.cmp(
                        &format!("tp/{a}/{q}"),
                        &format!("tp/{b}/{q}"),
                        Sample::per_sec,
                        true,
                    ) {
                        let won = if a == "pgwarden" {
                            format!("{}/{}", m.wins, m.rounds)
                        } else {
                            "–".to_owned()
                        };
                        let _ = writeln!(
                            o,
                            "| {q} | {label} | {} | **{:.3}** | {won} |",
                            join(&m.per_round, |x| format!("{x:.3}")),
                            m.median
                        );
                    }
                }
            }
        }
        let _ = writeln!(o, "\nRound orders:\n");
        for (i, ord) in orders.iter().enumerate() {
            let _ = writeln!(o, "{}. {}", i + 1, ord.join(", "));
        }
        o
    }

    fn row(&self, o: &mut String, name: &str) {
        let Some(v) = self.get(name) else { return };
        let rates: Vec<f64> = v.iter().map(Sample::per_sec).collect();
        let _ = writeln!(
            o,
            "| {name} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            median(rates.clone()),
            self.med(name, |s| s.q_us(0.5)),
            self.med(name, |s| s.q_us(0.95)),
            self.med(name, |s| s.q_us(0.99)),
            self.med(name, Sample::mean_us),
            self.med(name, |s| s.cpu_us_per_op().0),
            self.med(name, |s| s.cpu_us_per_op().1),
            join(&rates, |x| format!("{x:.0}"))
        );
    }

    fn json(&self, orders: &[Vec<String>], env: &Env) -> serde_json::Value {
        let mut scen = serde_json::Map::new();
        for (name, v) in self.results {
            let rounds: Vec<_> = v
                .iter()
                .map(|s| {
                    json!({
                        "ops": s.ops,
                        "ops_per_sec": s.per_sec(),
                        "p50_us": s.q_us(0.5),
                        "p95_us": s.q_us(0.95),
                        "p99_us": s.q_us(0.99),
                        "p999_us": s.q_us(0.999),
                        "max_us": s.hist.max() as f64 / 1000.0,
                        "mean_us": s.mean_us(),
                        "client_cpu_cores": s.cpu.0,
                        "machine_cpu_cores": s.cpu.1,
                        "client_cpu_us_per_op": s.cpu_us_per_op().0,
                        "other_cpu_us_per_op": s.cpu_us_per_op().1,
                    })
                })
                .collect();
            scen.insert(
                name.clone(),
                json!({
                    "median_ops_per_sec": self.med(name, Sample::per_sec),
                    "median_p50_us": self.med(name, |s| s.q_us(0.5)),
                    "median_p95_us": self.med(name, |s| s.q_us(0.95)),
                    "median_p99_us": self.med(name, |s| s.q_us(0.99)),
                    "median_mean_us": self.med(name, Sample::mean_us),
                    "rounds": rounds,
                }),
            );
        }
        let mut cmps = serde_json::Map::new();
        let mut put = |key: String, c: Option<Cmp>| {
            if let Some(c) = c {
                cmps.insert(
                    key,
                    json!({"per_round": c.per_round, "median": c.median, "wins": c.wins, "rounds": c.rounds}),
                );
            }
        };
        for q in ["point", "select1"] {
            let (a, b) = (
                format!("lat/pgwarden-cached/{q}"),
                format!("lat/pgwarden-uncached/{q}"),
            );
            put(
                format!("lat/{q}/cached_over_uncached_mean"),
                self.cmp(&a, &b, Sample::mean_us, false),
            );
            put(
                format!("lat/{q}/cached_over_uncached_p50"),
                self.cmp(&a, &b, |s| s.q_us(0.5), false),
            );
            for (x, y) in [
                ("pgwarden", "deadpool"),
                ("pgwarden", "raw"),
                ("deadpool", "raw"),
            ] {
                put(
                    format!("tp/{q}/{x}_over_{y}"),
                    self.cmp(
                        &format!("tp/{x}/{q}"),
                        &format!("tp/{y}/{q}"),
                        Sample::per_sec,
                        true,
                    ),
                );
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
                "metrics": serde_json::to_value(db.metrics()).unwrap_or_default(),
            })
        };
        json!({
            "command": "cargo run --release -p pgwarden-bench",
            "config": {
                "rounds": self.cfg.rounds,
                "warmup_ms": self.cfg.warmup.as_millis() as u64,
                "window_ms": self.cfg.window.as_millis() as u64,
                "seed": self.cfg.seed,
                "tokio_workers": 2,
                "throughput_tasks": TP_TASKS,
                "pool_size": POOL_SIZE,
                "point_sql": POINT_SQL,
                "rows": ROWS,
                "server_version": self.server_version,
            },
            "round_orders": orders,
            "scenarios": scen,
            "comparisons": cmps,
            "pgwarden_counters": {
                "lat_cached": counters(&env.lat_cached),
                "lat_uncached": counters(&env.lat_uncached),
                "tp": counters(&env.tp),
            },
        })
    }
}
