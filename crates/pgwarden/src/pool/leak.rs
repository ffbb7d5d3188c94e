//! Leak detection (HikariCP's `leakDetectionThreshold`): a checkout held longer than
//! [`PoolOptions::leak_detection_threshold`](super::PoolOptions::leak_detection_threshold) is
//! logged at WARN with where it was acquired and for how long, counted, and logged again when
//! it comes back.
//!
//! Off (the default), nothing here runs: the guard carries `None` and no clock is read.
//! On, each watched checkout reads the clock once and arms one timer task, aborted when the
//! connection comes back in time.

use std::panic::Location;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::counters::Counters;
use super::{Connector, Inner};

/// The watch on one checkout; dropped (with the guard) when the connection comes back.
pub(super) struct Watch {
    at: &'static Location<'static>,
    since: Instant,
    /// Set by the timer once it reported the leak: the return is then logged too.
    reported: Arc<AtomicBool>,
    timer: JoinHandle<()>,
}

impl Watch {
    /// Arms the timer for a checkout of connection `id` acquired at `at`.
    pub(super) fn arm<C: Connector>(
        inner: &Arc<Inner<C>>,
        id: u64,
        at: &'static Location<'static>,
        threshold: Duration,
    ) -> Box<Self> {
        let since = Instant::now();
        let reported = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&reported);
        // Weak: a leaked guard must not keep a closed pool alive through its timer.
        let pool = Arc::downgrade(inner);
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(since + threshold).await;
            let Some(pool) = pool.upgrade() else { return };
            flag.store(true, Ordering::Release);
            Counters::inc(&pool.counters.leaks);
            tracing::warn!(
                pool = %pool.opts.name,
                connection = id,
                acquired_at = %at,
                held_ms = since.elapsed().as_millis() as u64,
                threshold_ms = threshold.as_millis() as u64,
                "possible connection leak: a checkout is held longer than DB_LEAK_DETECTION_THRESHOLD (acquired at {at})"
            );
        });
        Box::new(Self {
            at,
            since,
            reported,
            timer,
        })
    }

    /// The connection came back: stops the timer, and logs the return of a reported leak.
    pub(super) fn returned(self, pool: &str, id: u64) {
        self.timer.abort();
        if self.reported.load(Ordering::Acquire) {
            tracing::warn!(
                pool = %pool,
                connection = id,
                acquired_at = %self.at,
                held_ms = self.since.elapsed().as_millis() as u64,
                "a connection reported as leaked came back (acquired at {})",
                self.at
            );
        }
    }
}
