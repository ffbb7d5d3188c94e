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
    for r in 0..rounds * 2 {
        // ABBA: on, off, off, on, on, off, …
        let recording = matches!(r % 4, 0 | 3);
        db.set_metrics_recording(recording);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (n0, t0) = (done.load(Relaxed), Instant::now());
        tokio::time::sleep(window).await;
        let qps = (done.load(Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64();
        println!(
            "round {:2} recording {:3}: {qps:8.0} q/s",
            r,
            if recording { "on" } else { "off" }
        );
        if recording { &mut on } else { &mut off }.push(qps);
    }
    stop.store(true, Relaxed);
    for t in tasks {
        t.await?;
    }
    let (m_on, m_off) = (median(on.clone()), median(off.clone()));
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
