//! Checking connections out: the acquire path and the guard that returns them.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::counters::{CloseReason, Counters};
use super::state::{Handoff, Slot, Waiter};
use super::AcquireError as Error;
use super::{Connector, Inner};

/// A checked-out connection. Derefs to the connector's connection; dropping it returns the
/// connection to the pool (or to the worker for a reset when it came back dirty).
#[must_use = "dropping the guard returns the connection at once"]
pub struct PooledConnection<C: Connector> {
    slot: Option<Box<Slot<C::Conn>>>,
    pool: Arc<Inner<C>>,
    /// Set while the pool itself has a round trip in flight on the connection (the validation
    /// ping), or by `discard`: the connection is closed instead of returned, for this reason.
    pub(super) poisoned: Option<CloseReason>,
    /// The leak watch, when leak detection is on and this checkout is watched.
    leak: Option<Box<super::leak::Watch>>,
}

impl<C: Connector> PooledConnection<C> {
    fn new(pool: &Arc<Inner<C>>, slot: Box<Slot<C::Conn>>) -> Self {
        Self {
            slot: Some(slot),
            pool: Arc::clone(pool),
            poisoned: None,
            leak: None,
        }
    }

    /// Watches this checkout for leaks when the pool's leak detection is on (see
    /// [`super::PoolOptions::leak_detection_threshold`]); `at` is where it was acquired.
    /// Off, this is one branch: no clock read, no timer.
    pub(crate) fn watch_leak(this: &mut Self, at: &'static std::panic::Location<'static>) {
        if let Some(threshold) = this.pool.opts.leak_detection_threshold {
            if this.leak.is_none() {
                let id = this.slot().id;
                this.leak = Some(super::leak::Watch::arm(&this.pool, id, at, threshold));
            }
        }
    }

    pub(super) fn slot(&self) -> &Slot<C::Conn> {
        self.slot.as_ref().expect("slot present until drop")
    }

    /// Closes the connection instead of returning it (for example after an error that leaves
    /// its state unknown).
    pub fn discard(mut this: Self) {
        this.poisoned = Some(CloseReason::Dirty);
    }

    /// Returns the connection now, `now` being a clock reading taken after its last use (the
    /// caller's, so that the release needs none of its own).
    pub(crate) fn release_at(mut this: Self, now: Instant) {
        if let Some(slot) = this.slot.take() {
            if let Some(w) = this.leak.take() {
                w.returned(&this.pool.opts.name, slot.id);
            }
            this.pool.release_at(slot, this.poisoned, now);
        }
    }

    /// The pool's id of this connection (stable for its lifetime, unique within the pool).
    pub fn id(this: &Self) -> u64 {
        this.slot().id
    }

    /// True when this checkout reused a connection that served an earlier one.
    pub fn was_reused(this: &Self) -> bool {
        this.slot().used
    }
}

impl<C: Connector> Deref for PooledConnection<C> {
    type Target = C::Conn;
    fn deref(&self) -> &C::Conn {
        &self.slot().conn
    }
}

impl<C: Connector> DerefMut for PooledConnection<C> {
    fn deref_mut(&mut self) -> &mut C::Conn {
        &mut self.slot.as_mut().expect("slot present until drop").conn
    }
}

impl<C: Connector> Drop for PooledConnection<C> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if let Some(w) = self.leak.take() {
                w.returned(&self.pool.opts.name, slot.id);
            }
            self.pool.release(slot, self.poisoned);
        }
    }
}

impl<C: Connector> std::fmt::Debug for PooledConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConnection")
            .field("id", &self.slot.as_ref().map(|s| s.id))
            .field("pool", &self.pool.opts.name)
            .finish()
    }
}

/// A place in the waiter queue. Dropping it (cancellation, timeout) removes the place and gives
/// back a connection that was handed over in the meantime.
struct WaitGuard<'a, C: Connector> {
    inner: &'a Arc<Inner<C>>,
    id: u64,
    rx: oneshot::Receiver<Handoff<C::Conn>>,
    /// The acquire ended with an outcome it counted itself (success, timeout, failure).
    settled: bool,
    /// Whoever sent us a hand-off already took us off the queue: no search needed.
    dequeued: bool,
}

impl<C: Connector> Drop for WaitGuard<'_, C> {
    fn drop(&mut self) {
        if !self.dequeued {
            let mut st = self.inner.lock();
            if let Some(pos) = st.waiters.iter().position(|w| w.id == self.id) {
                st.waiters.remove(pos);
            }
        }
        // After removal nobody can send any more; anything already sent is ours to give back.
        self.rx.close();
        if let Ok(Handoff::Conn(slot)) = self.rx.try_recv() {
            self.inner.release(slot, None);
        }
        if !self.settled {
            Counters::inc(&self.inner.counters.acquires_cancelled);
        }
    }
}

enum Step<T> {
    Got(Box<Slot<T>>),
    /// Queued: the waiter's id, its receiver, connects to spawn, whether to wake the worker.
    Wait(u64, oneshot::Receiver<Handoff<T>>, u32, bool),
    Fail(Error),
}

/// Checks a connection out. `deadline` `None` means the pool's acquire timeout from the first
/// clock reading this acquire takes: an idle connection then costs one clock read in all (the
/// check's), a waited one two (plus the release's, on the other side).
pub(super) async fn acquire<C: Connector>(
    inner: &Arc<Inner<C>>,
    deadline: Option<Instant>,
) -> Result<PooledConnection<C>, Error> {
    acquire_timed(inner, deadline)
        .await
        .map(|t| t.conn)
        .map_err(|(e, _)| e)
}

/// A checkout with the clock readings its acquire took, so that a caller timing around it
/// needs no reading of its own.
pub(crate) struct Timed<C: Connector> {
    pub(crate) conn: PooledConnection<C>,
    /// The acquire's first reading: when it began, as far as the wait time tells.
    pub(crate) started: Instant,
    /// Its last reading: when the connection was checked and handed out.
    pub(crate) now: Instant,
    /// `now - started` (zero when the acquire was served at once).
    pub(crate) waited: std::time::Duration,
}

/// [`acquire`] returning its readings; a failure carries its first reading when it took one
/// (it did not when it failed at once, without waiting).
pub(super) async fn acquire_timed<C: Connector>(
    inner: &Arc<Inner<C>>,
    mut deadline: Option<Instant>,
) -> Result<Timed<C>, (Error, Option<Instant>)> {
    let timeout = inner.opts.acquire_timeout;
    // This acquire's first clock reading: when it began, as far as the wait time and a
    // timeout error tell.
    let mut start: Option<Instant> = None;
    let mut waited = false;
    // After a connection failed its check, the caller keeps its place at the head of the queue.
    let mut front = false;
    loop {
        let step = {
            let mut st = inner.lock();
            if st.closed {
                Step::Fail(Error::Closed)
            } else if let Some(slot) = st.idle.pop() {
                st.in_use += 1;
                Step::Got(slot)
            } else if let Some(e) = st.last_error.as_ref().filter(|e| {
                e.is_permanent()
                    && st.open_count() == 0
                    && st.retry_at.is_some_and(|t| Instant::now() < t)
            }) {
                // No connection is open, the last connect failed for a reason waiting cannot
                // heal, and the backoff has not yet allowed another try: fail fast with the
                // real cause. (With connections open, a returning one may serve us.)
                Step::Fail(Error::Connect(e.clone()))
            } else {
                let id = st.next_id();
                let (tx, rx) = oneshot::channel();
                let now = Instant::now();
                start.get_or_insert(now);
                let until = *deadline.get_or_insert(now + timeout);
                waited = true;
                let waiter = Waiter {
                    id,
                    tx,
                    deadline: until,
                };
                if front {
                    st.waiters.push_front(waiter);
                } else {
                    st.waiters.push_back(waiter);
                }
                let n = inner.plan_connects(&mut st, now);
                // Connects are wanted but held back (backoff, handshake cap): the worker
                // starts them when it may. A merely full pool needs no worker, unless our
                // deadline comes before its next sweep.
                let wake = (n == 0 && st.size < inner.opts.max_size)
                    || st.sweep_at.is_none_or(|t| until < t);
                Step::Wait(id, rx, n, wake)
            }
        };
        let slot = match step {
            Step::Fail(e) => {
                Counters::inc(&inner.counters.acquires_failed);
                return Err((e, start));
            }
            Step::Got(slot) => slot,
            Step::Wait(id, rx, n, wake) => {
                let Some(start) = start else {
                    unreachable!("set when queued")
                };
                for _ in 0..n {
                    tokio::spawn(super::worker::connect_one(Arc::clone(inner)));
                }
                if wake {
                    inner.wake_worker();
                }
                // Cancellation safety: from here the WaitGuard owns our place in the queue.
                let mut wait = WaitGuard {
                    inner,
                    id,
                    rx,
                    settled: false,
                    dequeued: false,
                };
                // No timer of our own: the worker's sweep sends `TimedOut` at our deadline.
                match (&mut wait.rx).await {
                    Ok(Handoff::Conn(slot)) => {
                        wait.settled = true;
                        wait.dequeued = true;
                        slot
                    }
                    Ok(Handoff::Failed(e)) => {
                        wait.settled = true;
                        wait.dequeued = true;
                        Counters::inc(&inner.counters.acquires_failed);
                        return Err((Error::Connect(e), Some(start)));
                    }
                    Ok(Handoff::Closed) | Err(_) => {
                        wait.settled = true;
                        wait.dequeued = true;
                        Counters::inc(&inner.counters.acquires_failed);
                        return Err((Error::Closed, Some(start)));
                    }
                    Ok(Handoff::TimedOut) => {
                        wait.settled = true;
                        wait.dequeued = true;
                        drop(wait);
                        return Err((timed_out(inner, start), Some(start)));
                    }
                }
            }
        };

        // Cancellation safety: the guard owns the slot from here; dropping it returns the
        // connection, or closes it when poisoned by an unfinished validation ping.
        let mut guard = PooledConnection::new(inner, slot);
        if !waited {
            // An idle connection never makes acquire wait: let a loop of acquires still yield
            // to other tasks now and then.
            tokio::task::coop::consume_budget().await;
        }
        // The one clock read of an idle checkout: the connection's checks, the deadline (when
        // the caller gave none) and the wait time all use it.
        let now = Instant::now();
        // This reading is the acquire's first: it waited for nothing (no subtraction needed).
        let at_once = start.is_none();
        start.get_or_insert(now);
        let until = *deadline.get_or_insert(now + timeout);
        let verdict = match check(inner, &mut guard, now, until).await {
            None if inner.connector.has_acquire_check() => {
                super::hooks::before_acquire(inner, &mut guard, until).await
            }
            v => v,
        };
        if let Some(reason) = verdict {
            let slot = guard.slot.take().expect("slot present");
            let slot = {
                let mut st = inner.lock();
                st.in_use -= 1;
                inner.retire(&mut st, slot, reason)
            };
            drop(slot);
            inner.notify_change();
            inner.wake_worker();
            front = true;
            let now = Instant::now();
            if now >= until {
                let start = start.unwrap_or(now);
                return Err((timed_out(inner, start), Some(start)));
            }
            continue;
        }
        let c = &inner.counters;
        Counters::inc(if waited {
            &c.acquires_waited
        } else {
            &c.acquires_direct
        });
        let wait = match start {
            Some(start) if !at_once => now.saturating_duration_since(start),
            _ => std::time::Duration::ZERO,
        };
        if waited {
            c.waited(wait);
        }
        if guard.slot().used {
            Counters::inc(&c.reused);
        }
        return Ok(Timed {
            conn: guard,
            started: start.unwrap_or(now),
            now,
            waited: wait,
        });
    }
}

/// Counts an acquire timeout and builds its error: the real cause and a pool snapshot.
fn timed_out<C: Connector>(inner: &Inner<C>, start: Instant) -> Error {
    Counters::inc(&inner.counters.acquires_timed_out);
    let st = inner.lock();
    Error::TimedOut {
        pool: inner.opts.name.clone(),
        waited: start.elapsed(),
        last_connect_error: st.last_error.clone(),
        status: st.status(inner.opts.max_size),
    }
}

/// Checks a connection before it is handed out; returns why it must be closed instead.
async fn check<C: Connector>(
    inner: &Arc<Inner<C>>,
    guard: &mut PooledConnection<C>,
    now: Instant,
    deadline: Instant,
) -> Option<CloseReason> {
    let slot = guard.slot();
    if now >= slot.expires || inner.evicted(slot) {
        return Some(CloseReason::Lifetime);
    }
    if inner.connector.is_closed(&slot.conn) {
        return Some(CloseReason::Broken);
    }
    if now.saturating_duration_since(slot.idle_since) <= inner.opts.validation_window {
        return None;
    }
    let bound = now
        + inner
            .opts
            .validation_timeout
            .min(deadline.saturating_duration_since(now));
    guard.poisoned = Some(CloseReason::FailedValidation);
    // Boxed: rarely needed, and it would otherwise weigh on every acquire's future.
    match Box::pin(tokio::time::timeout_at(
        bound,
        inner.connector.validate(&guard.slot().conn),
    ))
    .await
    {
        Ok(Ok(())) => {
            guard.poisoned = None;
            None
        }
        Ok(Err(e)) => {
            tracing::info!(pool = %inner.opts.name, error = %e, "an idle connection failed its ping; replacing it");
            Some(CloseReason::FailedValidation)
        }
        Err(_) => {
            tracing::info!(pool = %inner.opts.name, timeout_ms = (bound - now).as_millis() as u64, "an idle connection did not answer its ping in time; replacing it");
            Some(CloseReason::FailedValidation)
        }
    }
}
