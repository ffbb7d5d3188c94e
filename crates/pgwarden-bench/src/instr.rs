//! `--count WHAT N`: N operations of one library on one task of a current-thread runtime, for
//! instruction counts under callgrind (this VM has no hardware counters). The measured loop
//! lies between two calls of [`mark`], so callgrind can cut the profile there: the second part
//! divided by N is the client's instructions per operation, the connection task and the
//! runtime included, setup (and waiting for a server slot) excluded.
//!
//! ```text
//! valgrind --tool=callgrind --dump-before='*instr::mark' --callgrind-out-file=cg.out \
//!     target/release/pgwarden-bench --count e2e-pgwarden 3000
//! grep ^totals: cg.out.2   # the loop's instructions
//! ```
//!
//! WHAT: `pool-pgwarden`, `pool-deadpool`, `pool-bb8` (uncontended get + drop of a dummy),
//! `e2e-pgwarden`, `e2e-deadpool`, `e2e-raw` (`SELECT 1`, cached statement, one connection);
//! `e2e-pgwarden-nometrics` is pgwarden with the recording of metrics off: the difference is
//! what recording costs per call; `e2e-pgwarden-lane` is the same call on the pipelined lane
//! (one lane connection), to set beside `e2e-raw`.

use pgwarden::config::SslMode;
use pgwarden::{ConnectOptions, ManagerOptions, PgConnector, Pool, PoolManager, PoolOptions};
use pgwarden_testdb::PgServer;
use tokio_postgres::NoTls;

use crate::poolonly;
use crate::util::{err, AnyErr};

/// What `--count` can run.
pub(crate) const WHATS: [&str; 10] = [
    "pool-pgwarden",
    "pool-deadpool",
    "pool-bb8",
    "e2e-pgwarden",
    "e2e-pgwarden-nometrics",
    "e2e-pgwarden-lane",
    "e2e-deadpool",
    "e2e-raw",
    "contended-pgwarden",
    "contended-deadpool",
];

/// Tasks and connections of the `contended-*` counts: every call waits for a connection, as at
/// 1,000 tasks on 10.
const CONTENDED_TASKS: u64 = 100;
const CONTENDED_CONNS: u32 = 10;

pub(crate) fn main(what: &str, n: u64) -> Result<(), AnyErr> {
    if !WHATS.contains(&what) {
        return Err(format!("--count: unknown {what} (one of {WHATS:?})").into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let Some(lib) = what.strip_prefix("pool-") {
        return rt.block_on(pool(lib, n));
    }
    let server = PgServer::start()?;
    let pg = server.pg_config("postgres");
    if let Some(lib) = what.strip_prefix("contended-") {
        return rt.block_on(contended(&pg, lib, n));
    }
    rt.block_on(e2e(&pg, &what["e2e-".len()..], n))
}

/// Where callgrind cuts the profile (`--dump-before='*instr::mark'`): before and after the
/// measured loop.
#[inline(never)]
fn mark() {
    std::hint::black_box(());
}

async fn pool(lib: &str, n: u64) -> Result<(), AnyErr> {
    let env = poolonly::setup().await?;
    mark();
    match lib {
        "pgwarden" => {
            for _ in 0..n {
                drop(env.pgwarden.get().await?);
            }
        }
        "deadpool" => {
            for _ in 0..n {
                drop(env.deadpool.get().await.map_err(err)?);
            }
        }
        _ => {
            for _ in 0..n {
                drop(env.bb8.get().await.map_err(err)?);
            }
        }
    }
    mark();
    Ok(())
}

async fn e2e(pg: &tokio_postgres::Config, lib: &str, n: u64) -> Result<(), AnyErr> {
    const SQL: &str = "SELECT 1";
    let mut sum = 0i64;
    match lib {
        "pgwarden" | "pgwarden-nometrics" => {
            let connector =
                PgConnector::new(pg, SslMode::Disable, None, ConnectOptions::default())?;
            let pool = Pool::new(connector, PoolOptions::sized(1, 1));
            pool.prewarm().await?;
            let db = PoolManager::new(pool, ManagerOptions::default());
            db.set_metrics_recording(lib == "pgwarden");
            mark();
            for _ in 0..n {
                let row = db.query_one(SQL, &[]).await?;
                sum += i64::from(row.get::<_, i32>(0));
            }
            mark();
            db.close(std::time::Duration::from_secs(1)).await;
        }
        "pgwarden-lane" => {
            let connector =
                PgConnector::new(pg, SslMode::Disable, None, ConnectOptions::default())?;
            let pool = Pool::new(connector, PoolOptions::sized(2, 0));
            let mut mo = ManagerOptions::default();
            mo.pipeline_connections = 1;
            let db = PoolManager::new(pool, mo);
            db.prewarm_lane().await;
            drop(db.query_one(SQL, &[]).await?);
            mark();
            for _ in 0..n {
                let row = db.query_one(SQL, &[]).await?;
                sum += i64::from(row.get::<_, i32>(0));
            }
            mark();
            if db.lane_stats().served < n {
                return Err("the calls did not run on the lane".into());
            }
            db.close(std::time::Duration::from_secs(1)).await;
        }
        "deadpool" => {
            let pool = crate::e2e::deadpool_pool(pg.clone(), 1)?;
            drop(pool.get().await?);
            mark();
            for _ in 0..n {
                let c = pool.get().await?;
                let st = c.prepare_cached(SQL).await?;
                sum += i64::from(c.query_one(&st, &[]).await?.get::<_, i32>(0));
            }
            mark();
        }
        _ => {
            let (client, conn) = pg.connect(NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let st = client.prepare(SQL).await?;
            mark();
            for _ in 0..n {
                sum += i64::from(client.query_one(&st, &[]).await?.get::<_, i32>(0));
            }
            mark();
        }
    }
    if sum != n as i64 {
        return Err(format!("expected {n} rows of 1, summed {sum}").into());
    }
    Ok(())
}

/// `contended-*`: `SELECT 1` with a cached statement from [`CONTENDED_TASKS`] tasks on
/// [`CONTENDED_CONNS`] connections, N calls in all: the waiter path of every call is counted.
async fn contended(pg: &tokio_postgres::Config, lib: &str, n: u64) -> Result<(), AnyErr> {
    const SQL: &str = "SELECT 1";
    let per_task = n.div_ceil(CONTENDED_TASKS);
    let mut tasks = tokio::task::JoinSet::new();
    if lib == "pgwarden" {
        let connector = PgConnector::new(pg, SslMode::Disable, None, ConnectOptions::default())?;
        let pool = Pool::new(
            connector,
            PoolOptions::sized(CONTENDED_CONNS, CONTENDED_CONNS),
        );
        pool.prewarm().await?;
        let db = PoolManager::new(pool, ManagerOptions::default());
        // The statement cached on every connection, as deadpool's below.
        let mut held = Vec::new();
        for _ in 0..CONTENDED_CONNS {
            let c = db.get().await?;
            drop(c.prepare_cached(SQL).await?);
            held.push(c);
        }
        drop(held);
        mark();
        for _ in 0..CONTENDED_TASKS {
            let db = db.clone();
            tasks.spawn(async move {
                let mut sum = 0i64;
                for _ in 0..per_task {
                    sum += i64::from(db.query_one(SQL, &[]).await?.get::<_, i32>(0));
                }
                Ok::<_, AnyErr>(sum)
            });
        }
    } else {
        let pool = crate::e2e::deadpool_pool(pg.clone(), CONTENDED_CONNS as usize)?;
        let mut held = Vec::new();
        for _ in 0..CONTENDED_CONNS {
            let c = pool.get().await?;
            drop(c.prepare_cached(SQL).await?);
            held.push(c);
        }
        drop(held);
        mark();
        for _ in 0..CONTENDED_TASKS {
            let pool = pool.clone();
            tasks.spawn(async move {
                let mut sum = 0i64;
                for _ in 0..per_task {
                    let c = pool.get().await?;
                    let st = c.prepare_cached(SQL).await?;
                    sum += i64::from(c.query_one(&st, &[]).await?.get::<_, i32>(0));
                }
                Ok::<_, AnyErr>(sum)
            });
        }
    }
    let mut sum = 0;
    while let Some(r) = tasks.join_next().await {
        sum += r??;
    }
    mark();
    if sum != (per_task * CONTENDED_TASKS) as i64 {
        return Err(format!(
            "expected {} rows of 1, summed {sum}",
            per_task * CONTENDED_TASKS
        )
        .into());
    }
    Ok(())
}
