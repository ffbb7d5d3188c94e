//! A worker that moves money between accounts, one transaction per transfer, and handles the
//! two failures a caller must think about: a transient one (retry later) and "outcome unknown"
//! (the COMMIT may or may not have happened: look before running it again).
//!
//! ```text
//! DATABASE_URL=postgres://app:secret@localhost/app cargo run -p pgwarden --example worker -- 1000
//! ```
//!
//! Every transfer carries an id chosen by the worker (in a real system: the job's id). The
//! transaction records it first, under a primary key, so running a transfer twice applies it
//! once: that is what makes "run it again" a safe answer to every failure.

use std::time::Duration;

use pgwarden::{Error, PoolManager};

/// What became of the transfers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Applied by this run.
    pub(crate) applied: u64,
    /// Found already applied (by an earlier run, or by an attempt whose outcome was unknown).
    pub(crate) already_applied: u64,
    /// Outcome unknown, then found committed by looking.
    pub(crate) resolved_unknown: u64,
    /// Given up on, with the last error logged.
    pub(crate) failed: u64,
}

/// Creates the worker's tables (once) and its accounts.
pub(crate) async fn setup(db: &PoolManager, accounts: i64) -> Result<(), Error> {
    db.execute(
        "CREATE TABLE IF NOT EXISTS worker_accounts (id int8 PRIMARY KEY, balance int8 NOT NULL)",
        &[],
    )
    .await?;
    db.execute(
        "CREATE TABLE IF NOT EXISTS worker_transfers (id int8 PRIMARY KEY, from_id int8 NOT NULL, \
         to_id int8 NOT NULL, amount int8 NOT NULL)",
        &[],
    )
    .await?;
    // ON CONFLICT makes the statement idempotent, so the manager may retry it.
    db.execute(
        "INSERT INTO worker_accounts SELECT g, 1000 FROM generate_series(1, $1::int8) g \
         ON CONFLICT DO NOTHING",
        &[&accounts],
    )
    .idempotent()
    .await?;
    Ok(())
}

/// What one run of a transfer's transaction did.
enum Ran {
    Applied,
    AlreadyApplied,
}

/// Runs transfer `id` once, as one transaction. The manager reruns the whole body by itself on
/// a serialization failure or a deadlock.
async fn run_once(
    db: &PoolManager,
    id: i64,
    from: i64,
    to: i64,
    amount: i64,
) -> Result<Ran, Error> {
    db.transaction(move |tx| async move {
        let recorded = tx
            .execute(
                "INSERT INTO worker_transfers VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                &[&id, &from, &to, &amount],
            )
            .await?;
        if recorded == 0 {
            return Ok(Ran::AlreadyApplied);
        }
        tx.execute(
            "UPDATE worker_accounts SET balance = balance - $2 WHERE id = $1",
            &[&from, &amount],
        )
        .await?;
        tx.execute(
            "UPDATE worker_accounts SET balance = balance + $2 WHERE id = $1",
            &[&to, &amount],
        )
        .await?;
        Ok(Ran::Applied)
    })
    .await
}

/// The session died under the transaction before its COMMIT was sent: the server rolled it
/// back, nothing committed. The manager does not rerun a body on its own then (it cannot know
/// that running it twice is harmless); this worker's bodies are keyed, so it may.
fn session_lost(e: &Error) -> bool {
    e.pg_error().is_some_and(tokio_postgres::Error::is_closed)
        || e.code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P"))
}

/// Transfer `id`, until it is known to be applied or fails for a reason retrying cannot fix.
async fn transfer(db: &PoolManager, id: i64, accounts: i64, summary: &mut Summary) {
    let (from, to, amount) = (id % accounts + 1, (id + 1) % accounts + 1, 1 + id % 10);
    let mut unknown = false;
    for attempt in 1..=3u32 {
        match run_once(db, id, from, to, amount).await {
            Ok(Ran::Applied) => {
                summary.applied += 1;
                return;
            }
            Ok(Ran::AlreadyApplied) if unknown => {
                summary.resolved_unknown += 1;
                return;
            }
            Ok(Ran::AlreadyApplied) => {
                summary.already_applied += 1;
                return;
            }
            Err(e) if e.outcome_unknown() => {
                // The connection was lost during COMMIT: look. A read may be retried by the
                // manager, so mark it idempotent.
                let seen = db
                    .query_opt("SELECT 1 FROM worker_transfers WHERE id = $1", &[&id])
                    .idempotent()
                    .await;
                if let Ok(Some(_)) = seen {
                    summary.resolved_unknown += 1;
                    return;
                }
                // Not there (or the look failed): run it again; the id keeps a late COMMIT
                // from being applied twice.
                unknown = true;
            }
            Err(e) if e.is_retryable() || session_lost(&e) => {
                // The manager's own retries ran out (a restart, a full pool), or the session
                // died before COMMIT (the server rolled the transaction back): wait, then run it
                // again. A real worker would put the job back on its queue instead.
                tracing::warn!(transfer = id, attempt, error = %e, "transient failure; will retry");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(e) => {
                // A constraint, a permission, a bug in the SQL: retrying will not help.
                tracing::error!(transfer = id, error = %e, "transfer failed");
                summary.failed += 1;
                return;
            }
        }
    }
    tracing::error!(transfer = id, "transfer given up after 3 runs");
    summary.failed += 1;
}

/// Runs transfers `first..first + count` on `tasks` tasks.
pub(crate) async fn run(db: &PoolManager, first: i64, count: i64, tasks: i64) -> Summary {
    const ACCOUNTS: i64 = 10;
    if let Err(e) = setup(db, ACCOUNTS).await {
        tracing::error!(error = %e, "setup failed");
        return Summary {
            failed: u64::try_from(count).unwrap_or(0),
            ..Summary::default()
        };
    }
    let mut workers = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let db = db.clone();
        workers.spawn(async move {
            let mut summary = Summary::default();
            for id in (first..first + count).filter(|id| id % tasks == t) {
                transfer(&db, id, ACCOUNTS, &mut summary).await;
            }
            summary
        });
    }
    let mut total = Summary::default();
    while let Some(done) = workers.join_next().await {
        let s = done.expect("a worker task panicked");
        total.applied += s.applied;
        total.already_applied += s.already_applied;
        total.resolved_unknown += s.resolved_unknown;
        total.failed += s.failed;
    }
    total
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let count: i64 = std::env::args().nth(1).map_or(Ok(100), |n| n.parse())?;
    // DATABASE_URL, DB_POOL_MAX, … over the profile's defaults (DB_PROFILE or APP_ENV).
    let db = PoolManager::from_env().await?;
    let summary = run(&db, 1, count, 8).await;
    println!("{summary:?}");
    println!("{}", db.status());
    db.close(Duration::from_secs(5)).await;
    if summary.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
