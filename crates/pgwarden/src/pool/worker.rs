//! The pool's background work: opening connections, reaping, resets, shutdown.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::counters::{CloseReason, Counters};
use super::state::{connect_backoff, Handoff, Slot};
use super::{Connector, Inner};
use crate::pool::ConnectError;

/// Longest the worker sleeps when nothing is due (it is woken early by releases and acquires).
const MAX_NAP: Duration = Duration::from_secs(1);

pub(super) async fn run<C: Connector>(weak: Weak<Inner<C>>, wake: Arc<Notify>) {
    loop {
        let nap = match weak.upgrade() {
            Some(inner) => maintain(&inner),
            None => return,
        };
        // No strong reference is held while sleeping, so dropping the last pool handle ends
        // this task (Inner's Drop wakes it).
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

/// One round of upkeep; returns how long to sleep before the next one.
fn maintain<C: Connector>(inner: &Arc<Inner<C>>) -> Duration {
    let now = Instant::now();
    let opts = &inner.opts;
    let mut retired = Vec::new();
    let (connects, dirty, doomed, nap) = {
        let mut st = inner.lock();
        let doomed = std::mem::take(&mut st.doomed);
        if st.closed {
            let dirty = std::mem::take(&mut st.dirty);
            (0, dirty, doomed, MAX_NAP)
        } else {
            // Reap: expired connections, then idle ones above the minimum, least recently used
            // first (they sit at the front of the idle stack).
            let mut i = 0;
            while i < st.idle.len() {
                if now >= st.idle[i].expires {
                    let slot = st.idle.remove(i);
                    retired.push(inner.retire(&mut st, slot, CloseReason::Lifetime));
                } else {
                    i += 1;
                }
            }
            while st.idle.len() as u32 > opts.min_idle
                && now.saturating_duration_since(st.idle[0].idle_since) >= opts.idle_timeout
            {
                let slot = st.idle.remove(0);
                retired.push(inner.retire(&mut st, slot, CloseReason::Idle));
            }
            let connects = inner.plan_connects(&mut st, now);
            let dirty = std::mem::take(&mut st.dirty);

            // Next due time: the earliest expiry or idle timeout, or the end of a backoff that
            // holds back a connect still wanted.
            let mut due = now + MAX_NAP;
            for s in &st.idle {
                due = due.min(s.expires);
            }
            if st.idle.len() as u32 > opts.min_idle {
                due = due.min(st.idle[0].idle_since + opts.idle_timeout);
            }
            if let Some(t) = st.retry_at {
                if t > now {
                    due = due.min(t);
                }
            }
            (
                connects,
                dirty,
                doomed,
                due.saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            )
        }
    };
    if !retired.is_empty() {
        drop(retired);
        inner.notify_change();
    }
    for _ in 0..connects {
        tokio::spawn(connect_one(Arc::clone(inner)));
    }
    for slot in dirty {
        tokio::spawn(reset_one(Arc::clone(inner), slot));
    }
    for kill in doomed {
        kill.pull();
    }
    nap
}

/// Gives back a connect reservation if the connect task is dropped before it finishes.
struct Reservation<'a, C: Connector> {
    inner: &'a Inner<C>,
    armed: bool,
}

impl<C: Connector> Drop for Reservation<'_, C> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.inner.lock();
            st.opening -= 1;
            st.size -= 1;
        }
    }
}

/// Opens one connection for a reservation made by `plan_connects`, then hands it to the oldest
/// waiter or makes it idle.
pub(super) async fn connect_one<C: Connector>(inner: Arc<Inner<C>>) {
    // Cancellation safety: if this task is dropped (runtime shutdown), the reservation is
    // returned and a connection opened meanwhile is dropped (closed) with the future.
    let mut reservation = Reservation {
        inner: &inner,
        armed: true,
    };
    let bound = inner
        .opts
        .connect_timeout
        .saturating_mul(inner.connector.hosts().max(1));
    let result = match tokio::time::timeout(bound, inner.connector.connect()).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::transient(
            inner.connector.target(),
            format!(
                "timed out after {}ms (DB_CONNECT_TIMEOUT)",
                bound.as_millis()
            ),
        )),
    };
    reservation.armed = false;
    drop(reservation);

    let mut to_drop = None;
    {
        let mut st = inner.lock();
        st.opening -= 1;
        match result {
            Ok(conn) => {
                Counters::inc(&inner.counters.opened);
                st.failures = 0;
                st.retry_at = None;
                st.last_error = None;
                let slot = inner.new_slot(&mut st, conn);
                if st.closed {
                    to_drop = Some(inner.retire(&mut st, slot, CloseReason::Shutdown));
                } else {
                    inner.deliver(&mut st, slot);
                }
            }
            Err(e) => {
                Counters::inc(&inner.counters.connect_failures);
                st.size -= 1;
                st.failures += 1;
                let permanent = e.is_permanent();
                st.retry_at = Some(Instant::now() + connect_backoff(st.failures, permanent));
                tracing::warn!(pool = %inner.opts.name, error = %e, failures = st.failures, "connect failed");
                if permanent && st.open_count() == 0 {
                    // Waiting cannot heal this and no open connection can come back to serve
                    // the waiters: tell them now.
                    for w in st.waiters.drain(..) {
                        let _ = w.tx.send(Handoff::Failed(e.clone()));
                    }
                }
                st.last_error = Some(e);
            }
        }
    }
    drop(to_drop);
    inner.notify_change();
    inner.wake_worker();
}

/// Resets a connection that came back dirty; closes (and kills) it when that fails or takes
/// longer than the reset timeout.
async fn reset_one<C: Connector>(inner: Arc<Inner<C>>, slot: Box<Slot<C::Conn>>) {
    // Cancellation safety: if this task is dropped, `slot` is dropped with it and the size is
    // fixed by `Unaccounted`.
    struct Unaccounted<'a, C: Connector>(&'a Inner<C>, Option<u64>);
    impl<C: Connector> Drop for Unaccounted<'_, C> {
        fn drop(&mut self) {
            if let Some(id) = self.1 {
                let mut st = self.0.lock();
                st.size -= 1;
                if let Some(k) = st.live.remove(&id) {
                    drop(st);
                    k.pull();
                }
            }
        }
    }
    let mut guard = Unaccounted(&inner, Some(slot.id));
    let ok = matches!(
        tokio::time::timeout(inner.opts.reset_timeout, inner.connector.reset(&slot.conn)).await,
        Ok(Ok(()))
    ) && !inner.connector.is_closed(&slot.conn);
    guard.1 = None;
    drop(guard);

    let mut st = inner.lock();
    if ok && !st.closed && Instant::now() < slot.expires {
        Counters::inc(&inner.counters.resets);
        let mut slot = slot;
        slot.used = true;
        inner.deliver(&mut st, slot);
        return;
    }
    let reason = if !ok {
        CloseReason::Dirty
    } else if st.closed {
        CloseReason::Shutdown
    } else {
        CloseReason::Lifetime
    };
    // A dirty one's kill switch is queued for the worker by `retire`.
    let slot = inner.retire(&mut st, slot, reason);
    drop(st);
    if reason == CloseReason::Dirty {
        tracing::warn!(pool = %inner.opts.name, "a connection returned dirty could not be reset in time; closed it");
    }
    drop(slot);
    inner.notify_change();
    inner.wake_worker();
}

pub(super) async fn close<C: Connector>(inner: &Arc<Inner<C>>, grace: Duration) {
    let deadline = Instant::now() + grace;
    let (idle, waiters) = {
        let mut st = inner.lock();
        st.closed = true;
        let idle = std::mem::take(&mut st.idle);
        let idle: Vec<_> = idle
            .into_iter()
            .map(|s| inner.retire(&mut st, s, CloseReason::Shutdown))
            .collect();
        let waiters: Vec<_> = st.waiters.drain(..).collect();
        (idle, waiters)
    };
    for w in waiters {
        let _ = w.tx.send(Handoff::Closed);
    }
    drop(idle);
    inner.wake_worker();
    loop {
        let changed = inner.changed();
        if inner.lock().size == 0 {
            return;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            break;
        }
    }
    // Past the grace period: sever what is still out. The guards' later release only fixes
    // the books.
    let kills: Vec<_> = inner.lock().live.drain().map(|(_, k)| k).collect();
    if !kills.is_empty() {
        tracing::warn!(pool = %inner.opts.name, connections = kills.len(), "close(): killed connections still checked out after the grace period");
    }
    for k in kills {
        k.pull();
    }
}
