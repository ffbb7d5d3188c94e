//! A quick release-mode measuring loop (not a test, not the shipped bench suite).
//!
//! ```text
//! cargo run --release -p pgwarden --example pool_quickbench [-- --rounds 3 --window-ms 3000 --warmup-ms 500 --only NAME]
//! ```
//!
//! Starts a throwaway PostgreSQL (loopback TCP), then measures in one process, interleaved in
//! rounds (the scenario order rotates each round), each scenario a short warm-up then a fixed
//! measuring window:
//!
//! - `get1`     acquire+release, one task, pool of 10 (connections already open);
//! - `get1000`  acquire+release, 1,000 tasks, pool of 10;
//! - `pool_sel` SELECT 1 through the pool (PgConn::query_one, statement cache), 1,000 tasks / 10;
//! - `pool_sel10` the same with 10 tasks (diagnostic: pool overhead without the queue);
//! - `raw_prep` raw tokio-postgres, 10 clients, one task each, statement prepared once;
//! - `raw_text` raw tokio-postgres, 10 clients, `query_one("SELECT 1")` (prepares every time).
//!
//! Only operations that complete inside the window count; every loop stops at its window's end
//! (the acquire timeout bounds a stuck `get`, and an outer timeout bounds each scenario).
//! Figures are ratios within this run: absolute numbers drift ±10% on a shared 2-core VM.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pgwarden::config::SslMode;
use pgwarden::{ConnectOptions, PgConnector, Pool, PoolOptions};
use pgwarden_testdb::PgServer;
use tokio_postgres::{Client, NoTls};

type AnyErr = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy)]
struct Cfg {
    rounds: usize,
    window: Duration,
    warmup: Duration,
}

const SCENARIOS: [&str; 6] = [
    "get1",
    "get1000",
    "pool_sel",
    "pool_sel10",
    "raw_prep",
    "raw_text",
];

/// One scenario's outcome in one round.
struct Sample {
    ops: u64,
    window: Duration,
    /// Per-operation latency in ns (only for the SELECT scenarios).
    hist: Option<Histogram<u64>>,
    /// CPU cores kept busy during the window: (this process, the whole machine).
    cpu: (f64, f64),
}

impl Sample {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64()
    }
    fn ns_per_op(&self) -> f64 {
        self.window.as_nanos() as f64 / self.ops.max(1) as f64
    }
}

/// The measuring window of one scenario run: operations finishing in `[start, end)` count.
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

/// Samples CPU use over the window (a task of its own, so it does not touch the hot loops).
fn sample_cpu(w: Window) -> tokio::task::JoinHandle<(f64, f64)> {
    tokio::spawn(async move {
        tokio::time::sleep_until(w.start.into()).await;
        let a = cpu_ticks();
        let t0 = Instant::now();
        tokio::time::sleep_until(w.end.into()).await;
        let b = cpu_ticks();
        let secs = t0.elapsed().as_secs_f64() * 100.0;
        ((b.0 - a.0) as f64 / secs, (b.1 - a.1) as f64 / secs)
    })
}

fn new_hist() -> Histogram<u64> {
    // 1 ns .. 60 s, 3 significant figures.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// Runs `tasks` copies of `body` (each gets its index) and sums what they report, with an outer
/// bound so a hang fails loudly instead of stalling the run.
async fn run_tasks<F, Fut>(
    tasks: usize,
    w: Window,
    body: F,
) -> Result<(u64, Vec<u64>, (f64, f64)), AnyErr>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, Vec<u64>), AnyErr>> + Send + 'static,
{
    let cpu = sample_cpu(w);
    let handles: Vec<_> = (0..tasks).map(|i| tokio::spawn(body(i))).collect();
    let bound = w.end.saturating_duration_since(Instant::now()) + Duration::from_secs(30);
    let mut ops = 0;
    let mut lat = Vec::new();
    let joined = tokio::time::timeout(bound, async {
        for h in handles {
            let (n, l) = h.await??;
            ops += n;
            lat.extend(l);
        }
        Ok::<_, AnyErr>(())
    })
    .await;
    match joined {
        Ok(r) => r?,
        Err(_) => return Err("scenario did not finish within its outer bound".into()),
    }
    Ok((ops, lat, cpu.await?))
}

fn to_sample(cfg: Cfg, ops: u64, lat: Option<Vec<u64>>, cpu: (f64, f64)) -> Sample {
    let hist = lat.map(|l| {
        let mut h = new_hist();
        for v in l {
            h.saturating_record(v.max(1));
        }
        h
    });
    Sample {
        ops,
        window: cfg.window,
        hist,
        cpu,
    }
}

/// 1. acquire+release, uncontended: one task.
async fn get1(pool: &Pool<PgConnector>, cfg: Cfg) -> Result<Sample, AnyErr> {
    let w = Window::new(cfg);
    let pool = pool.clone();
    let (ops, _, cpu) = run_tasks(1, w, move |_| {
        let pool = pool.clone();
        async move {
            let mut n = 0u64;
            // Warm-up, then count; the clock is read every 64 cycles to keep it off the path.
            // `get()` on an idle connection never returns Pending (it is no cooperative yield
            // point), so without the explicit yield this loop would monopolise its worker and
            // starve whatever sits in that worker's queue (the CPU sampler, the pool's worker).
            'outer: loop {
                for _ in 0..64 {
                    drop(pool.get().await?);
                }
                tokio::task::yield_now().await;
                if Instant::now() >= w.start {
                    break 'outer;
                }
            }
            loop {
                for _ in 0..64 {
                    drop(pool.get().await?);
                }
                n += 64;
                tokio::task::yield_now().await;
                if Instant::now() >= w.end {
                    break;
                }
            }
            Ok((n, Vec::new()))
        }
    })
    .await?;
    Ok(to_sample(cfg, ops, None, cpu))
}

/// 2. acquire+release at 1,000 tasks on a pool of 10.
async fn get1000(pool: &Pool<PgConnector>, cfg: Cfg) -> Result<Sample, AnyErr> {
    let w = Window::new(cfg);
    let done = Arc::new(AtomicU64::new(0));
    let pool = pool.clone();
    let d = Arc::clone(&done);
    // Every task is parked in `get` before any loops: otherwise the first task polled finds an
    // idle connection, spins get/drop without ever yielding (the fast path is no yield point)
    // and the run measures one or two spinning tasks instead of contention.
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let (_, _, cpu) = run_tasks(1000, w, move |_| {
        let pool = pool.clone();
        let done = Arc::clone(&d);
        let barrier = Arc::clone(&barrier);
        async move {
            barrier.wait().await;
            let mut n = 0u64;
            loop {
                drop(pool.get().await?);
                let now = Instant::now();
                if now >= w.end {
                    break;
                }
                if now >= w.start {
                    n += 1;
                }
            }
            done.fetch_add(n, Relaxed);
            Ok((n, Vec::new()))
        }
    })
    .await?;
    Ok(to_sample(cfg, done.load(Relaxed), None, cpu))
}

/// 3. SELECT 1 through the pool, `tasks` tasks on 10 connections.
async fn pool_sel(pool: &Pool<PgConnector>, tasks: usize, cfg: Cfg) -> Result<Sample, AnyErr> {
    let w = Window::new(cfg);
    let pool = pool.clone();
    let (ops, lat, cpu) = run_tasks(tasks, w, move |_| {
        let pool = pool.clone();
        async move {
            let mut n = 0u64;
            let mut lat = Vec::new();
            loop {
                let t0 = Instant::now();
                {
                    let c = pool.get().await?;
                    let row = c.query_one("SELECT 1", &[]).await?;
                    debug_assert_eq!(row.get::<_, i32>(0), 1);
                }
                let now = Instant::now();
                if now >= w.end {
                    break;
                }
                if t0 >= w.start {
                    n += 1;
                    lat.push((now - t0).as_nanos() as u64);
                }
            }
            Ok((n, lat))
        }
    })
    .await?;
    Ok(to_sample(cfg, ops, Some(lat), cpu))
}

/// 4. raw tokio-postgres: one task per dedicated client.
async fn raw(clients: &[Arc<Client>], prepared: bool, cfg: Cfg) -> Result<Sample, AnyErr> {
    let w = Window::new(cfg);
    let clients: Vec<Arc<Client>> = clients.to_vec();
    let (ops, lat, cpu) = run_tasks(clients.len(), w, move |i| {
        let client = Arc::clone(&clients[i]);
        async move {
            let stmt = client.prepare("SELECT 1").await?;
            let mut n = 0u64;
            let mut lat = Vec::new();
            loop {
                let t0 = Instant::now();
                let row = if prepared {
                    client.query_one(&stmt, &[]).await?
                } else {
                    client.query_one("SELECT 1", &[]).await?
                };
                debug_assert_eq!(row.get::<_, i32>(0), 1);
                let now = Instant::now();
                if now >= w.end {
                    break;
                }
                if t0 >= w.start {
                    n += 1;
                    lat.push((now - t0).as_nanos() as u64);
                }
            }
            Ok((n, lat))
        }
    })
    .await?;
    Ok(to_sample(cfg, ops, Some(lat), cpu))
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

fn fmt_rounds(v: &[f64], f: impl Fn(f64) -> String) -> String {
    v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(" / ")
}

fn parse_args() -> (Cfg, Option<String>) {
    let mut cfg = Cfg {
        rounds: 3,
        window: Duration::from_millis(3000),
        warmup: Duration::from_millis(500),
    };
    let mut only = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--rounds" => cfg.rounds = val.parse().expect("--rounds N"),
            "--window-ms" => {
                cfg.window = Duration::from_millis(val.parse().expect("--window-ms N"))
            }
            "--warmup-ms" => {
                cfg.warmup = Duration::from_millis(val.parse().expect("--warmup-ms N"))
            }
            "--only" => only = Some(val),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    (cfg, only)
}

fn main() -> Result<(), AnyErr> {
    let (cfg, only) = parse_args();
    let server = PgServer::start()?;
    eprintln!("PostgreSQL on 127.0.0.1:{}", server.port());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(&server, cfg, only))
}

async fn run(server: &PgServer, cfg: Cfg, only: Option<String>) -> Result<(), AnyErr> {
    let pg = server.pg_config("postgres");
    let connector = PgConnector::new(&pg, SslMode::Disable, None, ConnectOptions::default())?;
    let mut opts = PoolOptions::sized(10, 10);
    opts.acquire_timeout = Duration::from_secs(30);
    let pool = Pool::new(connector, opts);
    pool.prewarm().await?;

    let mut clients = Vec::new();
    for _ in 0..10 {
        let (client, conn) = pg.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        clients.push(Arc::new(client));
    }

    let names: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|n| only.as_deref().is_none_or(|o| o == *n))
        .collect();
    let mut results: Vec<Vec<Sample>> = names.iter().map(|_| Vec::new()).collect();
    for round in 0..cfg.rounds {
        for k in 0..names.len() {
            let idx = (k + round) % names.len();
            let s = match names[idx] {
                "get1" => get1(&pool, cfg).await?,
                "get1000" => get1000(&pool, cfg).await?,
                "pool_sel" => pool_sel(&pool, 1000, cfg).await?,
                "pool_sel10" => pool_sel(&pool, 10, cfg).await?,
                "raw_prep" => raw(&clients, true, cfg).await?,
                "raw_text" => raw(&clients, false, cfg).await?,
                _ => unreachable!(),
            };
            eprintln!(
                "round {} {:<10} {:>12.0} ops/s {:>9.1} ns/op  cpu: client {:.2} cores, machine {:.2}",
                round + 1,
                names[idx],
                s.per_sec(),
                s.ns_per_op(),
                s.cpu.0,
                s.cpu.1
            );
            results[idx].push(s);
        }
    }

    println!();
    println!(
        "pgwarden quickbench: {} rounds, {} ms warm-up + {} ms window each, 2 runtime workers, loopback TCP",
        cfg.rounds,
        cfg.warmup.as_millis(),
        cfg.window.as_millis()
    );
    println!(
        "{:<52} {:>10} {:>9} {:>8} {:>8} {:>9} {:>9}  rounds (ops/s)",
        "scenario", "ops/s med", "ns/op", "p50 µs", "p99 µs", "client µs", "other µs",
    );
    let mut med = std::collections::HashMap::new();
    let label = |n: &str| match n {
        "get1" => "1 acquire+release, 1 task, pool 10",
        "get1000" => "2 acquire+release, 1000 tasks, pool 10",
        "pool_sel" => "3 SELECT 1 via pool (cached stmt), 1000 t / 10",
        "pool_sel10" => "3' SELECT 1 via pool, 10 tasks / 10 (diagnostic)",
        "raw_prep" => "4a raw tokio-postgres, 10 clients, prepared",
        "raw_text" => "4b raw tokio-postgres, 10 clients, text",
        _ => "?",
    };
    for (i, n) in names.iter().enumerate() {
        let rates: Vec<f64> = results[i].iter().map(Sample::per_sec).collect();
        let m = median(rates.clone());
        med.insert(*n, m);
        let (p50, p99) = {
            let p = |q: f64| {
                median(
                    results[i]
                        .iter()
                        .filter_map(|s| s.hist.as_ref())
                        .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
                        .collect(),
                )
            };
            if results[i].iter().any(|s| s.hist.is_some()) {
                (format!("{:.0}", p(0.5)), format!("{:.0}", p(0.99)))
            } else {
                ("-".into(), "-".into())
            }
        };
        // CPU time per operation: this process, and everything else (PostgreSQL backends).
        let client_us = median(
            results[i]
                .iter()
                .map(|s| s.cpu.0 * 1e6 / s.per_sec())
                .collect(),
        );
        let other_us = median(
            results[i]
                .iter()
                .map(|s| (s.cpu.1 - s.cpu.0).max(0.0) * 1e6 / s.per_sec())
                .collect(),
        );
        println!(
            "{:<52} {:>10.0} {:>9.1} {:>8} {:>8} {:>9.2} {:>9.2}  {}",
            label(n),
            m,
            1e9 / m,
            p50,
            p99,
            client_us,
            other_us,
            fmt_rounds(&rates, |x| format!("{x:.0}"))
        );
    }
    let ratio = |a: &str, b: &str| match (med.get(a), med.get(b)) {
        (Some(x), Some(y)) => format!("{:.2}", x / y),
        _ => "-".into(),
    };
    // Per-round ratios too, since rounds are interleaved.
    let per_round = |a: &str, b: &str| {
        let ia = names.iter().position(|n| *n == a);
        let ib = names.iter().position(|n| *n == b);
        match (ia, ib) {
            (Some(ia), Some(ib)) => fmt_rounds(
                &results[ia]
                    .iter()
                    .zip(&results[ib])
                    .map(|(x, y)| x.per_sec() / y.per_sec())
                    .collect::<Vec<_>>(),
                |x| format!("{x:.2}"),
            ),
            _ => "-".into(),
        }
    };
    println!("(p50/p99: whole operation, acquire wait included; client/other µs: CPU time per operation in this process / in the rest of the machine)");
    println!();
    println!(
        "ratio pool SELECT 10 tasks / raw prepared: {} (rounds {})",
        ratio("pool_sel10", "raw_prep"),
        per_round("pool_sel10", "raw_prep")
    );
    println!(
        "ratio pool SELECT / raw prepared: {} (rounds {})",
        ratio("pool_sel", "raw_prep"),
        per_round("pool_sel", "raw_prep")
    );
    println!(
        "ratio pool SELECT / raw text:     {} (rounds {})",
        ratio("pool_sel", "raw_text"),
        per_round("pool_sel", "raw_text")
    );
    println!(
        "ratio raw text / raw prepared:    {} (rounds {})",
        ratio("raw_text", "raw_prep"),
        per_round("raw_text", "raw_prep")
    );
    let k = pool.counters();
    let cs = pool.connector().cache_stats();
    println!(
        "pool counters: opened {}, direct {}, waited {}, timed out {}, closed {:?}; statement cache hits {} misses {}",
        k.opened, k.acquires_direct, k.acquires_waited, k.acquires_timed_out, k.closed, cs.hits, cs.misses
    );
    pool.close(Duration::from_secs(5)).await;
    Ok(())
}
