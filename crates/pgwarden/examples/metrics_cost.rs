//! What recording metrics costs: `SELECT 1` through the manager, 1,000 tasks on 10
//! connections, with recording on and off in interleaved rounds of one process (not a test).
//!
//! ```text
//! cargo run --release -p pgwarden --example metrics_cost [-- ROUNDS WINDOW_MS]
//! ```
//!
//! Rounds alternate on/off in ABBA order so a drift of the machine falls on both sides. The
//! figure is the ratio of the medians, on/off, and each round pair's ratio. After the rounds a
//! mixed load (some slow statements, some failures) runs and the status block and JSON
//! snapshot are printed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden::{Config, PoolManager};
use pgwarden_testdb::PgServer;

type AnyErr = Box<dyn std::error::Error + Send + Sync>;

/// CPU time this process has used (user + system), from /proc (Linux; 0 elsewhere).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; in clock
    // ticks (100 per second on Linux).
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<(), AnyErr> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(8), |a| a.parse())?;
    let window = Duration::from_millis(args.next().map_or(Ok(2000), |a| a.parse())?);
    let server = PgServer::start()?;
    let url = server.url("postgres");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(&url, rounds, window))
}

async fn run(url: &str, rounds: usize, window: Duration) -> Result<(), AnyErr> {
    let config = Config::from_vars([
        ("DATABASE_URL", url),
        ("DB_POOL_MAX", "10"),
        ("DB_POOL_MIN", "10"),
    ])?;
    let db = PoolManager::from_config(&config).await?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (db, done, stop) = (db.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    if db.query_one("SELECT 1", &[]).await.is_ok() {
                        done.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let (mut cpu_on, mut cpu_off) = (Vec::new(), Vec::new());
    for r in 0..rounds * 2 {
        // ABBA: on, off, off, on, on, off, …
        let recording = matches!(r % 4, 0 | 3);
        db.set_metrics_recording(recording);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (n0, t0, c0) = (done.load(Relaxed), Instant::now(), cpu_time());
        tokio::time::sleep(window).await;
        let n = done.load(Relaxed) - n0;
        let qps = n as f64 / t0.elapsed().as_secs_f64();
        let cpu_us = (cpu_time() - c0).as_secs_f64() * 1e6 / n.max(1) as f64;
        println!(
            "round {:2} recording {:3}: {qps:8.0} q/s, {cpu_us:5.2} µs CPU per query",
            r,
            if recording { "on" } else { "off" }
        );
        if recording { &mut on } else { &mut off }.push(qps);
        if recording { &mut cpu_on } else { &mut cpu_off }.push(cpu_us);
    }
    stop.store(true, Relaxed);
    for t in tasks {
        t.await?;
    }
    // In ABBA order the i-th "on" round and the i-th "off" round are neighbours.
    let pair_ratios: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
    let (m_on, m_off) = (median(on.clone()), median(off.clone()));
    println!(
        "median of the paired ratios on/off: {:.3} (pairs: {:.3?})",
        median(pair_ratios.clone()),
        pair_ratios
    );
    println!(
        "CPU per query: median on {:.2} µs, off {:.2} µs ({:+.2}%)",
        median(cpu_on.clone()),
        median(cpu_off.clone()),
        (median(cpu_on) / median(cpu_off) - 1.0) * 100.0
    );
    println!(
        "median on {m_on:.0} q/s, off {m_off:.0} q/s: recording costs {:.2}% (rounds: on {on:.0?}, off {off:.0?})",
        (1.0 - m_on / m_off) * 100.0
    );

    db.close(Duration::from_secs(2)).await;

    // A mixed load on a fresh manager, for a status block and a snapshot worth reading.
    let db = PoolManager::from_config(&config).await?;
    let load = (0..2000).map(|i| {
        let db = db.clone();
        async move {
            let r = match i % 250 {
                0 => db.execute("SELECT pg_sleep(0.12)", &[]).await.map(|_| ()),
                1 | 2 => db.query_one("SELECT 1 / 0", &[]).await.map(|_| ()),
                _ => db.query_one("SELECT 1", &[]).await.map(|_| ()),
            };
            r.is_ok()
        }
    });
    futures_util::future::join_all(load).await;
    println!("\n{}\n", db.status());
    println!("{}", serde_json::to_string_pretty(&db.metrics())?);
    db.close(Duration::from_secs(2)).await;
    Ok(())
}
