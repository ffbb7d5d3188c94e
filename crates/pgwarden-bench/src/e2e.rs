//! End-to-end scenarios against the throwaway server: pgwarden, deadpool-postgres, bb8-postgres,
//! sqlx's PgPool and raw tokio-postgres.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bb8_postgres::PostgresConnectionManager;
use pgwarden::config::SslMode;
use pgwarden::{ConnectOptions, ManagerOptions, PgConnector, Pool, PoolManager, PoolOptions};
use sqlx::Row as _;
use tokio_postgres::{Client, NoTls, Statement};

use crate::conns::PeakSampler;
use crate::util::{err, run_tasks, AnyErr, Cfg, Rng, Sample, Window};

pub(crate) const POINT_SQL: &str = "SELECT id, v FROM items WHERE id = $1";
const SELECT1_SQL: &str = "SELECT 1";
pub(crate) const ROWS: i32 = 100_000;
pub(crate) const TP_TASKS: usize = 1000;
pub(crate) const POOL_SIZE: u32 = 10;
/// Server connections of the pipelined lane, and of the raw pipelined peer beside it.
pub(crate) const LANE_CONNS: u32 = 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Query {
    Point,
    Select1,
}

impl Query {
    pub(crate) const ALL: [Query; 2] = [Query::Point, Query::Select1];
    fn sql(self) -> &'static str {
        match self {
            Query::Point => POINT_SQL,
            Query::Select1 => SELECT1_SQL,
        }
    }
    pub(crate) fn name(self) -> &'static str {
        match self {
            Query::Point => "point",
            Query::Select1 => "select1",
        }
    }
}

/// A library as measured. Every pool has the same maximum size ([`POOL_SIZE`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Lib {
    /// pgwarden `PoolManager::query_one` at its defaults (statement cache on).
    Pgwarden,
    /// pgwarden `PoolManager::query_one`, statement cache off (latency scenarios only).
    PgwardenUncached,
    /// deadpool-postgres at its defaults (`RecyclingMethod::Fast`), `prepare_cached` per op.
    Deadpool,
    /// bb8-postgres at its defaults: a check-out ping (`test_on_check_out`), `query_one(&str)`.
    Bb8,
    /// bb8-postgres equalized: no check-out ping, statements cached per connection.
    Bb8Eq,
    /// sqlx `PgPool` at its defaults: a ping before acquire, statements cached (its default).
    Sqlx,
    /// sqlx `PgPool` equalized: no ping before acquire, all connections open.
    SqlxEq,
    /// raw tokio-postgres: dedicated clients, one task each, statement prepared once.
    Raw,
    /// pgwarden `PoolManager::query_one` on the pipelined lane ([`LANE_CONNS`] connections).
    Lane,
    /// raw tokio-postgres pipelined: [`LANE_CONNS`] clients shared by all tasks (task `i` on
    /// client `i % LANE_CONNS`), statement prepared once per client.
    RawPipelined,
}

impl Lib {
    pub(crate) const TP: [Lib; 9] = [
        Lib::Pgwarden,
        Lib::Deadpool,
        Lib::Bb8,
        Lib::Bb8Eq,
        Lib::Sqlx,
        Lib::SqlxEq,
        Lib::Raw,
        Lib::Lane,
        Lib::RawPipelined,
    ];
    pub(crate) fn name(self) -> &'static str {
        match self {
            Lib::Pgwarden => "pgwarden",
            Lib::PgwardenUncached => "pgwarden-uncached",
            Lib::Deadpool => "deadpool",
            Lib::Bb8 => "bb8",
            Lib::Bb8Eq => "bb8-eq",
            Lib::Sqlx => "sqlx",
            Lib::SqlxEq => "sqlx-eq",
            Lib::Raw => "raw",
            Lib::Lane => "pgwarden-lane",
            Lib::RawPipelined => "raw-pipelined",
        }
    }
    /// The `application_name` its connections carry (the peak-connections count).
    fn app(self, latency: bool) -> &'static str {
        match (self, latency) {
            (Lib::Pgwarden, true) => "bench-pgwarden-lat",
            (Lib::Pgwarden, false) => "bench-pgwarden",
            (Lib::PgwardenUncached, _) => "bench-pgwarden-uncached",
            (Lib::Deadpool, _) => "bench-deadpool",
            (Lib::Bb8, _) => "bench-bb8",
            (Lib::Bb8Eq, _) => "bench-bb8-eq",
            (Lib::Sqlx, _) => "bench-sqlx",
            (Lib::SqlxEq, _) => "bench-sqlx-eq",
            (Lib::Raw, _) => "bench-raw",
            (Lib::Lane, _) => "bench-pgwarden-lane",
            (Lib::RawPipelined, _) => "bench-raw-pipelined",
        }
    }
}

/// One end-to-end scenario: `lat` (one task, sequential calls) or `tp` (1,000 tasks).
#[derive(Clone, Copy, Debug)]
pub(crate) struct E2e {
    pub(crate) latency: bool,
    pub(crate) lib: Lib,
    pub(crate) query: Query,
}

impl E2e {
    pub(crate) fn name(&self) -> String {
        let lib = match self.lib {
            Lib::Pgwarden if self.latency => "pgwarden-cached",
            l => l.name(),
        };
        let kind = if self.latency { "lat" } else { "tp" };
        format!("{kind}/{lib}/{}", self.query.name())
    }

    pub(crate) fn all() -> Vec<E2e> {
        let mut v = Vec::new();
        for query in Query::ALL {
            for lib in [Lib::Pgwarden, Lib::PgwardenUncached, Lib::Raw] {
                v.push(E2e {
                    latency: true,
                    lib,
                    query,
                });
            }
            for lib in Lib::TP {
                v.push(E2e {
                    latency: false,
                    lib,
                    query,
                });
            }
        }
        v
    }
}

/// A tokio-postgres client with its own statement cache: what deadpool-postgres's
/// `prepare_cached` gives, for bb8 (which has none).
pub(crate) struct CachedClient {
    client: Client,
    stmts: HashMap<&'static str, Statement>,
}

impl CachedClient {
    async fn prepare_cached(&mut self, sql: &'static str) -> Result<Statement, AnyErr> {
        if let Some(st) = self.stmts.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client.prepare(sql).await?;
        self.stmts.insert(sql, st.clone());
        Ok(st)
    }
}

/// bb8-postgres's manager, handing out [`CachedClient`]s.
pub(crate) struct Bb8Cached(PostgresConnectionManager<NoTls>);

impl bb8::ManageConnection for Bb8Cached {
    type Connection = CachedClient;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<CachedClient, Self::Error> {
        Ok(CachedClient {
            client: self.0.connect().await?,
            stmts: HashMap::new(),
        })
    }
    async fn is_valid(&self, conn: &mut CachedClient) -> Result<(), Self::Error> {
        self.0.is_valid(&mut conn.client).await
    }
    fn has_broken(&self, conn: &mut CachedClient) -> bool {
        conn.client.is_closed()
    }
}

/// Everything an end-to-end scenario runs against.
pub(crate) struct Env {
    /// pgwarden, cache 1000, pool 1..10 (latency scenarios).
    pub(crate) lat_cached: PoolManager,
    /// pgwarden, cache 0, pool 1..10 (latency scenarios).
    pub(crate) lat_uncached: PoolManager,
    /// pgwarden at its defaults, pool 10..10 (throughput scenarios).
    pub(crate) tp: PoolManager,
    deadpool: deadpool_postgres::Pool,
    bb8: bb8::Pool<PostgresConnectionManager<NoTls>>,
    bb8_eq: bb8::Pool<Bb8Cached>,
    sqlx: sqlx::PgPool,
    sqlx_eq: sqlx::PgPool,
    /// 10 dedicated raw clients.
    raw: Vec<Arc<Client>>,
    /// pgwarden with the pipelined lane on [`LANE_CONNS`] connections.
    pub(crate) lane: PoolManager,
    /// [`LANE_CONNS`] raw clients shared by every task.
    raw_pipelined: Vec<Arc<Client>>,
    monitor: Arc<Client>,
    pub(crate) server_version: String,
}

fn app_config(pg: &tokio_postgres::Config, app: &str) -> tokio_postgres::Config {
    let mut c = pg.clone();
    c.application_name(app);
    c
}

async fn pgwarden_manager(
    pg: &tokio_postgres::Config,
    app: &str,
    cache: usize,
    min_idle: u32,
) -> Result<PoolManager, AnyErr> {
    let mut connect_opts = ConnectOptions::default();
    connect_opts.statement_cache_size = cache;
    connect_opts.application_name = Some(app.to_owned());
    let connector = PgConnector::new(&app_config(pg, app), SslMode::Disable, None, connect_opts)?;
    let pool = Pool::new(connector, PoolOptions::sized(POOL_SIZE, min_idle));
    pool.prewarm().await?;
    Ok(PoolManager::new(pool, ManagerOptions::default()))
}

async fn connect_raw(pg: &tokio_postgres::Config, app: &str) -> Result<Arc<Client>, AnyErr> {
    let (client, conn) = app_config(pg, app).connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Arc::new(client))
}

fn sqlx_options(pg: &tokio_postgres::Config, app: &str) -> sqlx::postgres::PgConnectOptions {
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    sqlx::postgres::PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(port)
        .username(pg.get_user().unwrap_or("postgres"))
        .database(pg.get_dbname().unwrap_or("postgres"))
        .application_name(app)
}

pub(crate) async fn setup(pg: &tokio_postgres::Config) -> Result<Env, AnyErr> {
    let monitor = connect_raw(pg, "bench-monitor").await?;
    monitor
        .batch_execute(
            "DROP TABLE IF EXISTS items;
             CREATE TABLE items AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1,100000) g;
             ALTER TABLE items ADD PRIMARY KEY (id);",
        )
        .await?;
    // On its own: VACUUM cannot run in the implicit transaction of a multi-statement batch.
    monitor.batch_execute("VACUUM ANALYZE items").await?;
    let server_version: String = monitor.query_one("SHOW server_version", &[]).await?.get(0);

    let lat_cached = pgwarden_manager(pg, Lib::Pgwarden.app(true), 1000, 1).await?;
    let lat_uncached = pgwarden_manager(pg, Lib::PgwardenUncached.app(true), 0, 1).await?;
    let tp = pgwarden_manager(pg, Lib::Pgwarden.app(false), 1000, POOL_SIZE).await?;

    let deadpool = deadpool_pool(app_config(pg, Lib::Deadpool.app(false)), POOL_SIZE as usize)?;
    // Open all its connections now (deadpool opens lazily), as pgwarden's are.
    {
        let mut held = Vec::new();
        for _ in 0..POOL_SIZE {
            held.push(deadpool.get().await?);
        }
    }

    // bb8 at its defaults (lazy connections, ping on check-out), only the size set.
    let bb8 = bb8::Pool::builder()
        .max_size(POOL_SIZE)
        .build(PostgresConnectionManager::new(
            app_config(pg, Lib::Bb8.app(false)),
            NoTls,
        ))
        .await?;
    let bb8_eq = bb8::Pool::builder()
        .max_size(POOL_SIZE)
        .min_idle(Some(POOL_SIZE))
        .test_on_check_out(false)
        .build(Bb8Cached(PostgresConnectionManager::new(
            app_config(pg, Lib::Bb8Eq.app(false)),
            NoTls,
        )))
        .await?;

    let sqlx = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect_with(sqlx_options(pg, Lib::Sqlx.app(false)))
        .await?;
    let sqlx_eq = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .min_connections(POOL_SIZE)
        .test_before_acquire(false)
        .connect_with(sqlx_options(pg, Lib::SqlxEq.app(false)))
        .await?;

    let mut raw = Vec::new();
    for _ in 0..POOL_SIZE {
        raw.push(connect_raw(pg, Lib::Raw.app(false)).await?);
    }
    let lane = {
        let mut co = ConnectOptions::default();
        co.application_name = Some(Lib::Lane.app(false).to_owned());
        let app_pg = app_config(pg, Lib::Lane.app(false));
        let connector = PgConnector::new(&app_pg, SslMode::Disable, None, co)?;
        // Only the lane's connections open: every call of the scenario goes on the lane.
        let pool = Pool::new(connector, PoolOptions::sized(POOL_SIZE, 0));
        let mut mo = ManagerOptions::default();
        mo.pipeline_connections = LANE_CONNS;
        let db = PoolManager::new(pool, mo);
        db.prewarm_lane().await;
        db
    };
    let mut raw_pipelined = Vec::new();
    for _ in 0..LANE_CONNS {
        raw_pipelined.push(connect_raw(pg, Lib::RawPipelined.app(false)).await?);
    }
    Ok(Env {
        lat_cached,
        lat_uncached,
        tp,
        deadpool,
        bb8,
        bb8_eq,
        sqlx,
        sqlx_eq,
        raw,
        lane,
        raw_pipelined,
        monitor,
        server_version,
    })
}

impl Env {
    pub(crate) async fn close(self) {
        for db in [&self.lat_cached, &self.lat_uncached, &self.tp, &self.lane] {
            db.close(Duration::from_secs(5)).await;
        }
        self.deadpool.close();
        self.sqlx.close().await;
        self.sqlx_eq.close().await;
    }
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
            let $id: i32 = rng.id(ROWS);
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

/// Each op checks its result, so a wrong row cannot pass for a fast one.
fn check(got: i32, q: Query, id: i32) -> Result<(), AnyErr> {
    let want = if q == Query::Point { id } else { 1 };
    if got != want {
        return Err(format!("wrong row: {got} != {want}").into());
    }
    Ok(())
}

pub(crate) async fn run(env: &Env, s: E2e, cfg: Cfg, round: usize) -> Result<Sample, AnyErr> {
    let (q, t) = (s.query, cfg.e2e);
    let sql = q.sql();
    let point = q == Query::Point;
    let seed = cfg.seed ^ ((round as u64) << 32);
    let tasks = if s.latency { 1 } else { TP_TASKS };
    let peak = Some(PeakSampler {
        monitor: Arc::clone(&env.monitor),
        app: s.lib.app(s.latency),
    });
    match s.lib {
        Lib::Pgwarden | Lib::PgwardenUncached | Lib::Lane => {
            let db = match (s.latency, s.lib) {
                (_, Lib::Lane) => env.lane.clone(),
                (true, Lib::Pgwarden) => env.lat_cached.clone(),
                (true, _) => env.lat_uncached.clone(),
                _ => env.tp.clone(),
            };
            run_tasks(t, tasks, peak, move |i, w, barrier| {
                let db = db.clone();
                async move {
                    barrier.wait().await;
                    timed_loop!(w, Rng::new(seed + i as u64), id => {
                        let row = if point {
                            db.query_one(sql, &[&id]).await?
                        } else {
                            db.query_one(sql, &[]).await?
                        };
                        check(row.try_get(0)?, q, id)?;
                    })
                }
            })
            .await
        }
        Lib::Deadpool => {
            let pool = env.deadpool.clone();
            run_tasks(t, tasks, peak, move |i, w, barrier| {
                let pool = pool.clone();
                async move {
                    barrier.wait().await;
                    timed_loop!(w, Rng::new(seed + i as u64), id => {
                        let c = pool.get().await?;
                        let st = c.prepare_cached(sql).await?;
                        let row = if point {
                            c.query_one(&st, &[&id]).await?
                        } else {
                            c.query_one(&st, &[]).await?
                        };
                        drop(c);
                        check(row.try_get(0)?, q, id)?;
                    })
                }
            })
            .await
        }
        Lib::Bb8 => {
            let pool = env.bb8.clone();
            run_tasks(t, tasks, peak, move |i, w, barrier| {
                let pool = pool.clone();
                async move {
                    barrier.wait().await;
                    timed_loop!(w, Rng::new(seed + i as u64), id => {
                        let c = pool.get().await.map_err(err)?;
                        let row = if point {
                            c.query_one(sql, &[&id]).await?
                        } else {
                            c.query_one(sql, &[]).await?
                        };
                        drop(c);
                        check(row.try_get(0)?, q, id)?;
                    })
                }
            })
            .await
        }
        Lib::Bb8Eq => {
            let pool = env.bb8_eq.clone();
            run_tasks(t, tasks, peak, move |i, w, barrier| {
                let pool = pool.clone();
                async move {
                    barrier.wait().await;
                    timed_loop!(w, Rng::new(seed + i as u64), id => {
                        let mut c = pool.get().await.map_err(err)?;
                        let st = c.prepare_cached(sql).await?;
                        let row = if point {
                            c.client.query_one(&st, &[&id]).await?
                        } else {
                            c.client.query_one(&st, &[]).await?
                        };
                        drop(c);
                        check(row.try_get(0)?, q, id)?;
                    })
                }
            })
            .await
        }
        Lib::Sqlx | Lib::SqlxEq => {
            let pool = if s.lib == Lib::Sqlx {
                env.sqlx.clone()
            } else {
                env.sqlx_eq.clone()
            };
            run_tasks(t, tasks, peak, move |i, w, barrier| {
                let pool = pool.clone();
                async move {
                    barrier.wait().await;
                    timed_loop!(w, Rng::new(seed + i as u64), id => {
                        let row = if point {
                            sqlx::query(sql).bind(id).fetch_one(&pool).await?
                        } else {
                            sqlx::query(sql).fetch_one(&pool).await?
                        };
                        check(row.try_get(0)?, q, id)?;
                    })
                }
            })
            .await
        }
        Lib::Raw | Lib::RawPipelined => {
            let (clients, tasks): (Vec<Arc<Client>>, usize) = match (s.lib, s.latency) {
                (Lib::RawPipelined, _) => (env.raw_pipelined.clone(), tasks),
                (_, true) => (env.raw[..1].to_vec(), 1),
                _ => (env.raw.clone(), env.raw.len()),
            };
            run_tasks(t, tasks, peak, move |i, w, barrier| {
                let client = Arc::clone(&clients[i % clients.len()]);
                async move {
                    let st = client.prepare(sql).await?;
                    barrier.wait().await;
                    timed_loop!(w, Rng::new(seed + i as u64), id => {
                        let row = if point {
                            client.query_one(&st, &[&id]).await?
                        } else {
                            client.query_one(&st, &[]).await?
                        };
                        check(row.try_get(0)?, q, id)?;
                    })
                }
            })
            .await
        }
    }
}

/// A deadpool-postgres pool at its defaults (`RecyclingMethod::Fast`, no wait timeout) with
/// `size` connections at most, opened lazily.
pub(crate) fn deadpool_pool(
    config: tokio_postgres::Config,
    size: usize,
) -> Result<deadpool_postgres::Pool, AnyErr> {
    let mgr = deadpool_postgres::Manager::from_config(
        config,
        NoTls,
        deadpool_postgres::ManagerConfig::default(),
    );
    Ok(deadpool_postgres::Pool::builder(mgr)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}
