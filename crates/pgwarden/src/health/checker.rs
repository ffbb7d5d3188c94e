//! The health checker: one background task per manager that, every
//! `DB_HEALTH_CHECK_INTERVAL`, pings each pool's target with a bounded query and logs the
//! status block (INFO when good, WARN on a warning, ERROR when critical).
//!
//! It holds only a weak reference to the manager, and the manager aborts it when it is
//! dropped or closed, so it never keeps a manager alive nor outlives it.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Grade;
use crate::manager::{PoolManager, WeakManager};

/// Longest a ping (acquire + `SELECT 1`) may take.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// One pool's ping.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Ping {
    /// The pool's name.
    pub pool: String,
    /// The round trip (acquire + `SELECT 1`), or why it failed.
    pub result: Result<Duration, String>,
}

/// What one health check found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HealthCheck {
    /// Each pool's ping.
    pub pings: Vec<Ping>,
    /// The grade logged.
    pub grade: Grade,
}

/// Spawns the checker for `db`, ticking every `interval` (at least 1 s). The first tick is one
/// interval after the start.
pub(crate) fn spawn(db: WeakManager, interval: Duration) -> JoinHandle<()> {
    let interval = interval.max(Duration::from_secs(1));
    tokio::spawn(async move {
        // The manager probes the roles at start-up itself.
        let mut next_check = Instant::now() + interval;
        let mut nap = interval;
        loop {
            tokio::time::sleep(nap).await;
            // Upgraded for one tick only: between ticks the manager may go away.
            let Some(db) = db.upgrade() else { return };
            if db.is_closed() {
                return;
            }
            if Instant::now() >= next_check {
                tick(&db).await;
                next_check = Instant::now() + interval;
            } else {
                // Between checks, while the primary is down or read-only: roles only.
                db.router().refresh_topology().await;
            }
            let until_check = next_check.saturating_duration_since(Instant::now());
            nap = if db.router().primary_degraded() {
                until_check.min(DEGRADED_PERIOD)
            } else {
                until_check
            };
        }
    })
}

/// The role-probe period while the primary is down or read-only (when shorter than the
/// interval), so a promoted standby takes writes soon after its promotion, not up to an
/// interval later.
pub(crate) const DEGRADED_PERIOD: Duration = Duration::from_millis(250);

/// One health check.
pub(crate) async fn tick(db: &PoolManager) -> HealthCheck {
    // Role probe first, so this tick's pings and status block see the roles just probed (the
    // probe bounds itself per host). Anything else that must run once per interval per
    // target goes here too: the read target's lag (DB_READ_MAX_LAG), measured against the
    // primary's WAL position.
    db.router().refresh_topology().await;
    db.router().refresh_read().await;

    let pings =
        futures_util::future::join_all(db.health_targets().into_iter().map(|(name, pool)| {
            async move {
                let started = Instant::now();
                let deadline = started + PING_TIMEOUT.min(pool.options().acquire_timeout);
                let is_primary = std::ptr::eq(pool, db.router().primary());
                let ping = async {
                    if is_primary {
                        if let Some(r) = crate::manager::lane_ping(db, deadline).await {
                            return r;
                        }
                    }
                    let conn = pool.get_until(deadline).await.map_err(|e| e.to_string())?;
                    // Cancellation safety: a ping dropped by the timeout leaves its connection
                    // marked in flight, and the pool resets or closes it on return.
                    conn.batch_execute("SELECT 1")
                        .await
                        .map_err(|e| e.to_string())
                };
                let result = match tokio::time::timeout_at(deadline, ping).await {
                    Ok(Ok(())) => Ok(started.elapsed()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(format!(
                        "no answer within {}ms",
                        deadline.duration_since(started).as_millis()
                    )),
                };
                if let Err(e) = &result {
                    tracing::warn!(pool = %name, error = %e, "health check: ping failed");
                }
                Ping { pool: name, result }
            }
        }))
        .await;

    let snapshot = db.metrics();
    let text = crate::metrics::status_text(&snapshot);
    let grade = snapshot.health.grade;
    let driven_by = snapshot.health.driven_by.map(|m| m.name());
    match grade {
        Grade::Good => tracing::info!(grade = "good", "health check\n{text}"),
        Grade::Warning => tracing::warn!(grade = "warning", driven_by, "health check\n{text}"),
        Grade::Critical => tracing::error!(grade = "critical", driven_by, "health check\n{text}"),
    }
    HealthCheck { pings, grade }
}
