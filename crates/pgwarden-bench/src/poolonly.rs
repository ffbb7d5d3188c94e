//! Pool-only scenarios: dummy connections (no I/O), get + drop, pgwarden's `Pool` through its
//! generic `Connector` trait against deadpool (managed, a dummy `Manager`) and bb8.

use std::convert::Infallible;
use std::time::Instant;

use pgwarden::{ConnectError, Connector, KillSwitch, Pool, PoolOptions};

use crate::util::{err, run_tasks, AnyErr, Cfg, Sample};

/// Objects in every pool-only pool.
pub(crate) const POOL_OBJECTS: u32 = 16;

/// How many operations a task runs between clock reads (a clock read costs ~20 ns, a
/// significant share of a pool cycle).
const BATCH: u64 = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PoolLib {
    Pgwarden,
    Deadpool,
    Bb8,
}

impl PoolLib {
    pub(crate) const ALL: [PoolLib; 3] = [PoolLib::Pgwarden, PoolLib::Deadpool, PoolLib::Bb8];
    pub(crate) fn name(self) -> &'static str {
        match self {
            PoolLib::Pgwarden => "pgwarden",
            PoolLib::Deadpool => "deadpool",
            PoolLib::Bb8 => "bb8",
        }
    }
}

/// Tasks contending for [`POOL_OBJECTS`] objects; 1 is the uncontended cycle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Shape {
    Uncontended,
    Tasks(usize),
}

impl Shape {
    pub(crate) const ALL: [Shape; 3] = [Shape::Uncontended, Shape::Tasks(256), Shape::Tasks(1024)];
    pub(crate) fn name(self) -> String {
        match self {
            Shape::Uncontended => "uncontended".to_owned(),
            Shape::Tasks(n) => format!("{n}on{POOL_OBJECTS}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolScenario {
    pub(crate) lib: PoolLib,
    pub(crate) shape: Shape,
}

impl PoolScenario {
    pub(crate) fn name(&self) -> String {
        format!("pool/{}/{}", self.lib.name(), self.shape.name())
    }
    pub(crate) fn all() -> Vec<PoolScenario> {
        let mut v = Vec::new();
        for shape in Shape::ALL {
            for lib in PoolLib::ALL {
                v.push(PoolScenario { lib, shape });
            }
        }
        v
    }
}

/// A connection that is nothing: the pool's own cost is all that is measured.
pub(crate) struct DummyConn;

/// pgwarden's connector for [`DummyConn`]s: always clean, always alive.
pub(crate) struct DummyConnector;

impl Connector for DummyConnector {
    type Conn = DummyConn;

    async fn connect(&self) -> Result<DummyConn, ConnectError> {
        Ok(DummyConn)
    }
    fn target(&self) -> String {
        "dummy".to_owned()
    }
    fn is_closed(&self, _conn: &DummyConn) -> bool {
        false
    }
    fn needs_reset(&self, _conn: &DummyConn) -> bool {
        false
    }
    async fn validate(&self, _conn: &DummyConn) -> Result<(), ConnectError> {
        Ok(())
    }
    async fn reset(&self, _conn: &DummyConn) -> Result<(), ConnectError> {
        Ok(())
    }
    fn kill(&self, _conn: &DummyConn) -> KillSwitch {
        KillSwitch::noop()
    }
}

/// deadpool's manager for [`DummyConn`]s.
pub(crate) struct DummyManager;

impl deadpool::managed::Manager for DummyManager {
    type Type = DummyConn;
    type Error = Infallible;

    async fn create(&self) -> Result<DummyConn, Infallible> {
        Ok(DummyConn)
    }
    async fn recycle(
        &self,
        _obj: &mut DummyConn,
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

/// bb8's manager for [`DummyConn`]s.
pub(crate) struct DummyBb8;

impl bb8::ManageConnection for DummyBb8 {
    type Connection = DummyConn;
    type Error = Infallible;

    async fn connect(&self) -> Result<DummyConn, Infallible> {
        Ok(DummyConn)
    }
    async fn is_valid(&self, _conn: &mut DummyConn) -> Result<(), Infallible> {
        Ok(())
    }
    fn has_broken(&self, _conn: &mut DummyConn) -> bool {
        false
    }
}

/// The three pools, each with all [`POOL_OBJECTS`] objects created.
pub(crate) struct PoolEnv {
    pub(crate) pgwarden: Pool<DummyConnector>,
    pub(crate) deadpool: deadpool::managed::Pool<DummyManager>,
    pub(crate) bb8: bb8::Pool<DummyBb8>,
}

pub(crate) async fn setup() -> Result<PoolEnv, AnyErr> {
    let pgwarden = Pool::new(
        DummyConnector,
        PoolOptions::sized(POOL_OBJECTS, POOL_OBJECTS),
    );
    pgwarden.prewarm().await?;
    let deadpool = deadpool::managed::Pool::builder(DummyManager)
        .max_size(POOL_OBJECTS as usize)
        .build()
        .map_err(err)?;
    {
        let mut held = Vec::new();
        for _ in 0..POOL_OBJECTS {
            held.push(deadpool.get().await.map_err(err)?);
        }
    }
    // The check-out test off: on a dummy it would only add bb8's own bookkeeping.
    let bb8 = bb8::Pool::builder()
        .max_size(POOL_OBJECTS)
        .min_idle(Some(POOL_OBJECTS))
        .test_on_check_out(false)
        .build(DummyBb8)
        .await
        .map_err(err)?;
    Ok(PoolEnv {
        pgwarden,
        deadpool,
        bb8,
    })
}

/// One get + drop; contended tasks hold the object across a yield, so that all tasks are
/// in the pool's queue rather than one task spinning on a free object.
macro_rules! cycle {
    ($get:expr, $hold:expr) => {{
        let o = $get;
        if $hold {
            tokio::task::yield_now().await;
        }
        drop(o);
    }};
}

/// The per-task loop: batches of [`BATCH`] cycles, the clock read once per batch; a batch
/// counts when it starts inside the window. The uncontended task yields once per batch so it
/// does not monopolise its worker (the CPU sampler runs there too).
macro_rules! pool_loop {
    ($w:expr, $hold:expr, $get:expr) => {{
        let w = $w;
        let mut n = 0u64;
        let mut t = Instant::now();
        while t < w.end {
            for _ in 0..BATCH {
                cycle!($get, $hold);
            }
            if !$hold {
                tokio::task::yield_now().await;
            }
            let now = Instant::now();
            if t >= w.start && now < w.end {
                n += BATCH;
            }
            t = now;
        }
        Ok::<_, AnyErr>((n, Vec::new()))
    }};
}

pub(crate) async fn run(env: &PoolEnv, s: PoolScenario, cfg: Cfg) -> Result<Sample, AnyErr> {
    let (tasks, hold) = match s.shape {
        Shape::Uncontended => (1, false),
        Shape::Tasks(n) => (n, true),
    };
    let t = cfg.pool;
    match s.lib {
        PoolLib::Pgwarden => {
            let pool = env.pgwarden.clone();
            run_tasks(t, tasks, None, move |_, w, barrier| {
                let pool = pool.clone();
                async move {
                    barrier.wait().await;
                    pool_loop!(w, hold, pool.get().await?)
                }
            })
            .await
        }
        PoolLib::Deadpool => {
            let pool = env.deadpool.clone();
            run_tasks(t, tasks, None, move |_, w, barrier| {
                let pool = pool.clone();
                async move {
                    barrier.wait().await;
                    pool_loop!(w, hold, pool.get().await.map_err(err)?)
                }
            })
            .await
        }
        PoolLib::Bb8 => {
            let pool = env.bb8.clone();
            run_tasks(t, tasks, None, move |_, w, barrier| {
                let pool = pool.clone();
                async move {
                    barrier.wait().await;
                    pool_loop!(w, hold, pool.get().await.map_err(err)?)
                }
            })
            .await
        }
    }
}
