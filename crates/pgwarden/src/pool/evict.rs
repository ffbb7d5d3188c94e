//! Steering from outside the pool, for the router: evicting every connection at once (a target
//! whose role changed under them: a primary that came back read-only), and ending a connect
//! backoff once a probe proved the target reachable.

use std::sync::atomic::Ordering;

use super::counters::CloseReason;
use super::state::Slot;
use super::{Connector, Inner, Pool};

impl<C: Connector> Inner<C> {
    /// Whether `slot` was opened before the last [`Pool::evict_all`].
    pub(crate) fn evicted(&self, slot: &Slot<C::Conn>) -> bool {
        slot.id < self.evict_below.load(Ordering::Relaxed)
    }
}

impl<C: Connector> Pool<C> {
    /// Closes every connection open now: the idle ones at once, those checked out when they
    /// are returned (their users are not interrupted). Connections opened afterwards are
    /// unaffected. Counted as lifetime closes.
    pub fn evict_all(&self) {
        let retired = {
            let mut st = self.inner.lock();
            let below = st.peek_next_id();
            self.inner.evict_below.fetch_max(below, Ordering::Relaxed);
            let idle = std::mem::take(&mut st.idle);
            idle.into_iter()
                .map(|slot| self.inner.retire(&mut st, slot, CloseReason::Lifetime))
                .collect::<Vec<_>>()
        };
        let n = retired.len();
        // Dropped after the lock: dropping a client may run its own code.
        drop(retired);
        tracing::info!(pool = %self.inner.opts.name, closed_idle = n, "evicted every connection");
        self.inner.notify_change();
        self.inner.wake_worker();
    }

    /// The target was just proved reachable (by the router's role probe): ends the connect
    /// backoff so waiters and the idle minimum are served now rather than after up to 2 s.
    /// The failure count stays, so a connect that still fails backs off further.
    pub fn retry_connects_now(&self) {
        let pending = {
            let mut st = self.inner.lock();
            st.retry_at.take().is_some()
        };
        if pending {
            self.inner.wake_worker();
        }
    }
}
