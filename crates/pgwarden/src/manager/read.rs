//! The read side of the router: the read pool (`DB_READ_URL`), what the last probe found of its
//! standby (up, in recovery, lag) and the counts of reads routed and fallen back.
//!
//! The lag is measured by the health checker's tick (and once at start-up, before the first read
//! is routed): the primary's `pg_current_wal_lsn()` on a probe connection, then, on a connection
//! of the read pool (so the very server reads go to), `pg_is_in_recovery()` and
//! `pg_wal_lsn_diff(<primary lsn>, pg_last_wal_replay_lsn())`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::route::{PoolView, ReadFallback, ReadView};
use crate::connect::PgConnector;
use crate::metrics::{ReadFallbackCounts, ReadSnapshot};
use crate::pool::{Connector, Pool};

/// The standby's side of the lag probe. `$1` is the primary's WAL position as text (NULL when
/// it could not be read); `pg_last_wal_replay_lsn()` is NULL when not in recovery.
const STANDBY_SQL: &str = "SELECT pg_is_in_recovery(), \
     pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())::float8";

/// `lag` while not known.
const UNKNOWN_LAG: u64 = u64::MAX;
/// `in_recovery` values.
const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// The read pool and its standby's state. Atomics: read on every `.read_only()` checkout.
#[derive(Debug)]
pub(crate) struct ReadSide {
    pub(crate) pool: Pool<PgConnector>,
    max_lag_bytes: u64,
    up: AtomicBool,
    in_recovery: AtomicU8,
    lag: AtomicU64,
    routed: AtomicU64,
    fallbacks: [AtomicU64; ReadFallback::COUNT],
    /// The state last logged, so a warning is written once per change, not every probe.
    logged: AtomicU8,
    /// Serializes probes (the tick and a manual check).
    probing: tokio::sync::Mutex<()>,
}

/// What was last logged about the standby.
const LOG_SERVING: u8 = 0;
const LOG_DOWN: u8 = 1;
const LOG_NOT_STANDBY: u8 = 2;
const LOG_LAGGING: u8 = 3;

/// One probe's finding.
pub(super) enum Found {
    /// In recovery; the lag when the primary's position was known.
    Standby(Option<u64>),
    NotStandby,
    /// Unreachable, or the probe failed: serves no reads until the next good probe.
    Down(String),
    /// The read pool was exhausted until the deadline: nothing learned, nothing changed.
    Busy,
}

impl ReadSide {
    pub(crate) fn new(pool: Pool<PgConnector>, max_lag_bytes: u64) -> Self {
        Self {
            pool,
            max_lag_bytes,
            up: AtomicBool::new(true),
            in_recovery: AtomicU8::new(UNKNOWN),
            lag: AtomicU64::new(UNKNOWN_LAG),
            routed: AtomicU64::new(0),
            fallbacks: std::array::from_fn(|_| AtomicU64::new(0)),
            logged: AtomicU8::new(LOG_SERVING),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    /// What the routing decision needs.
    pub(crate) fn view(&self) -> ReadView {
        let s = self.pool.status();
        ReadView {
            pool: PoolView {
                in_use: s.in_use,
                max: s.max,
                up: self.up.load(Ordering::Relaxed),
                writable: Some(false),
            },
            in_recovery: match self.in_recovery.load(Ordering::Relaxed) {
                YES => Some(true),
                NO => Some(false),
                _ => None,
            },
            lag_bytes: Some(self.lag.load(Ordering::Relaxed)).filter(|&l| l != UNKNOWN_LAG),
            max_lag_bytes: self.max_lag_bytes,
        }
    }

    pub(crate) fn routed(&self) {
        self.routed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fell_back(&self, why: ReadFallback) {
        self.fallbacks[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A checkout on the read pool reached (`true`) or could not reach the standby. A failed
    /// one also forgets the lag: after an outage, reads wait for a fresh measure.
    pub(crate) fn note_reachable(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        if !up {
            self.lag.store(UNKNOWN_LAG, Ordering::Relaxed);
        }
    }

    /// The snapshot's `read` section.
    pub(crate) fn snapshot(&self) -> ReadSnapshot {
        let by: [u64; ReadFallback::COUNT] =
            std::array::from_fn(|i| self.fallbacks[i].load(Ordering::Relaxed));
        let v = self.view();
        let serving = v.pool.up
            && v.in_recovery == Some(true)
            && v.lag_bytes
                .is_some_and(|l| v.max_lag_bytes == 0 || l <= v.max_lag_bytes);
        ReadSnapshot {
            enabled: true,
            serving,
            routed: self.routed.load(Ordering::Relaxed),
            fallbacks: by.iter().sum(),
            fallbacks_by_reason: ReadFallbackCounts::of(&by),
            lag_bytes: v
                .lag_bytes
                .filter(|_| v.in_recovery == Some(true) && v.pool.up),
            max_lag_bytes: self.max_lag_bytes,
        }
    }

    /// Measures the standby's lag behind `primary` and records what it found, each step under
    /// `timeout`.
    pub(crate) async fn probe(&self, primary: &PgConnector, timeout: Duration) {
        let _one = self.probing.lock().await;
        // The primary's position first: the standby's replay is then compared with a position
        // the primary had already reached.
        let primary_lsn = primary.current_wal_lsn(timeout).await;
        if let Err(e) = &primary_lsn {
            tracing::debug!(error = %e, "lag probe: the primary's WAL position is unknown");
        }
        let found = self.ask_standby(primary_lsn.ok(), timeout).await;
        self.record(found);
    }

    async fn ask_standby(&self, primary_lsn: Option<String>, timeout: Duration) -> Found {
        let deadline = Instant::now() + timeout;
        let conn = match self.pool.get_until(deadline).await {
            Ok(c) => c,
            Err(e) if e.connect_error().is_some() => return Found::Down(e.to_string()),
            Err(_) => return Found::Busy,
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&primary_lsn];
        let asked = conn.query_one(STANDBY_SQL, &params);
        // Cancellation safety: a probe dropped by the timeout leaves its connection marked in
        // flight, and the pool resets or closes it on return.
        let row = match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => return Found::Down(e.to_string()),
            Err(_) => return Found::Down(format!("no answer within {}ms", timeout.as_millis())),
        };
        match (row.try_get::<_, bool>(0), row.try_get::<_, Option<f64>>(1)) {
            // A replay ahead of the position read a moment earlier is no lag.
            (Ok(true), Ok(lag)) => Found::Standby(lag.map(|l| l.max(0.0) as u64)),
            (Ok(false), _) => Found::NotStandby,
            (Err(e), _) | (_, Err(e)) => Found::Down(e.to_string()),
        }
    }

    pub(super) fn record(&self, found: Found) {
        let target = self.pool.connector().target();
        match found {
            Found::Busy => {
                tracing::debug!(%target, "lag probe: the read pool is exhausted; nothing changed");
                return;
            }
            Found::Standby(lag) => {
                self.in_recovery.store(YES, Ordering::Relaxed);
                match lag {
                    Some(l) => self.lag.store(l, Ordering::Relaxed),
                    // The primary did not answer: it writes no WAL while down, so the last
                    // measure still bounds the lag — unless the standby itself was away.
                    None if !self.is_up() => self.lag.store(UNKNOWN_LAG, Ordering::Relaxed),
                    None => {}
                }
                self.up.store(true, Ordering::Relaxed);
            }
            Found::NotStandby => {
                self.up.store(true, Ordering::Relaxed);
                self.in_recovery.store(NO, Ordering::Relaxed);
                self.lag.store(UNKNOWN_LAG, Ordering::Relaxed);
            }
            Found::Down(_) => self.note_reachable(false),
        }
        let v = self.view();
        let now = match (&found, v.lag_bytes) {
            (Found::Down(_), _) => LOG_DOWN,
            (Found::NotStandby, _) => LOG_NOT_STANDBY,
            (_, Some(l)) if v.max_lag_bytes != 0 && l > v.max_lag_bytes => LOG_LAGGING,
            _ => LOG_SERVING,
        };
        if self.logged.swap(now, Ordering::Relaxed) == now {
            return;
        }
        let limit = self.max_lag_bytes;
        match (&found, now) {
            (Found::Down(e), _) => tracing::warn!(
                %target,
                error = %e,
                "read target (DB_READ_URL) is unreachable: reads go to the primary until it answers"
            ),
            (_, LOG_NOT_STANDBY) => tracing::warn!(
                %target,
                "read target (DB_READ_URL) is not a standby (pg_is_in_recovery() is false): reads go to the primary"
            ),
            (_, LOG_LAGGING) => tracing::warn!(
                %target,
                lag_bytes = v.lag_bytes,
                max_lag_bytes = limit,
                "read target (DB_READ_URL) lags more than DB_READ_MAX_LAG: reads go to the primary"
            ),
            _ => {
                tracing::info!(%target, lag_bytes = v.lag_bytes, "read target (DB_READ_URL) serves reads")
            }
        }
    }
}
