//! What `bench` runs: the built-in workloads over a small seeded schema of its own, or the
//! user's statement.

use std::sync::Arc;

use clap::ValueEnum;
use pgwarden::{Error, PoolManager};
use rand::rngs::StdRng;
use rand::Rng;

/// Rows of the seeded accounts table.
pub(crate) const ROWS: i64 = 10_000;
/// `slow`: one call in this many is a slow statement.
const SLOW_EVERY: u64 = 50;
/// `slow`: the slow statement, above the default 100 ms slow-query threshold.
const SLOW_SQL: &str = "SELECT pg_sleep(0.15)";
/// `mixed`: one call in this many is a write transaction.
const WRITE_EVERY: u64 = 5;

/// A built-in workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Workload {
    /// `SELECT 1`: the pool's own overhead.
    Select1,
    /// Indexed lookups of one row in the seeded table.
    PointSelect,
    /// Lookups plus short write transactions (one in five calls: an UPDATE and an INSERT).
    Mixed,
    /// Lookups with a share of slow statements (1 in 50 sleeps 150 ms), so slow-query
    /// detection and the health grade show.
    Slow,
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Select1 => "select1",
            Workload::PointSelect => "point-select",
            Workload::Mixed => "mixed",
            Workload::Slow => "slow",
        }
    }
}

/// The benchmark's own tables: named per run so a shared server's tables are never touched,
/// and dropped afterwards.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub(crate) accounts: String,
    pub(crate) history: String,
}

impl Tables {
    pub(crate) fn for_this_run() -> Self {
        let tag: u16 = rand::random();
        let prefix = format!("pgwarden_bench_{}_{tag:04x}", std::process::id());
        Self {
            accounts: format!("{prefix}_accounts"),
            history: format!("{prefix}_history"),
        }
    }

    pub(crate) fn create_sql(&self) -> String {
        let (a, h) = (&self.accounts, &self.history);
        format!(
            "CREATE TABLE {a} (id int8 PRIMARY KEY, balance int8 NOT NULL DEFAULT 0, filler text NOT NULL);
             INSERT INTO {a} SELECT g, 0, repeat('x', 80) FROM generate_series(1, {ROWS}) g;
             CREATE TABLE {h} (id int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account int8 NOT NULL,
                               delta int8 NOT NULL, at timestamptz NOT NULL DEFAULT now());
             ANALYZE {a};"
        )
    }

    pub(crate) fn drop_sql(&self) -> String {
        format!("DROP TABLE IF EXISTS {}, {}", self.accounts, self.history)
    }
}

/// One run's load: what each call does.
pub(crate) enum Job {
    /// A built-in workload (its tables when it needs them).
    Builtin {
        workload: Workload,
        point: String,
        update: Arc<str>,
        insert: Arc<str>,
    },
    /// `--sql`.
    Sql { sql: String, idempotent: bool },
}

impl Job {
    pub(crate) fn builtin(workload: Workload, tables: Option<&Tables>) -> Self {
        let (point, update, insert) = match tables {
            Some(t) => (
                format!(
                    "SELECT id, balance, filler FROM {} WHERE id = $1",
                    t.accounts
                ),
                format!(
                    "UPDATE {} SET balance = balance + $1 WHERE id = $2",
                    t.accounts
                ),
                format!("INSERT INTO {} (account, delta) VALUES ($1, $2)", t.history),
            ),
            None => Default::default(),
        };
        Job::Builtin {
            workload,
            point,
            update: update.into(),
            insert: insert.into(),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Job::Builtin { workload, .. } => workload.name(),
            Job::Sql { .. } => "sql",
        }
    }

    /// Whether the built-in workload reads and writes the seeded tables.
    pub(crate) fn needs_tables(workload: Workload) -> bool {
        workload != Workload::Select1
    }

    /// Call number `n` of a task. Reads are marked idempotent (safe to retry); writes are not.
    pub(crate) async fn call(
        &self,
        db: &PoolManager,
        rng: &mut StdRng,
        n: u64,
    ) -> Result<(), Error> {
        match self {
            Job::Sql { sql, idempotent } => {
                let call = db.execute(sql, &[]);
                if *idempotent {
                    call.idempotent().await.map(drop)
                } else {
                    call.await.map(drop)
                }
            }
            Job::Builtin {
                workload: Workload::Select1,
                ..
            } => db.query_one("SELECT 1", &[]).idempotent().await.map(drop),
            Job::Builtin {
                workload: Workload::Slow,
                ..
            } if n % SLOW_EVERY == SLOW_EVERY - 1 => {
                db.execute(SLOW_SQL, &[]).idempotent().await.map(drop)
            }
            Job::Builtin {
                workload: Workload::Mixed,
                update,
                insert,
                ..
            } if n % WRITE_EVERY == WRITE_EVERY - 1 => {
                let id: i64 = rng.random_range(1..=ROWS);
                let delta: i64 = rng.random_range(-100..=100);
                db.transaction(|tx| {
                    let (update, insert) = (update.clone(), insert.clone());
                    async move {
                        tx.execute(&update, &[&delta, &id]).await?;
                        tx.execute(&insert, &[&id, &delta]).await
                    }
                })
                .await
                .map(drop)
            }
            Job::Builtin { point, .. } => {
                let id: i64 = rng.random_range(1..=ROWS);
                db.query_one(point, &[&id]).idempotent().await.map(drop)
            }
        }
    }
}
