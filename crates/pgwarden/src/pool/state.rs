//! The pool's bookkeeping under its one lock, and the synchronous transitions on it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::counters::CloseReason;
use super::{Connector, Inner, KillSwitch, Status};
use crate::pool::ConnectError;

/// One connection the pool owns, with its timestamps. Kept boxed: a connection can be large
/// (a `PgConn` is ~450 bytes), and it moves between the idle stack, hand-offs and guards on
/// every checkout.
pub(crate) struct Slot<T> {
    pub(crate) conn: T,
    pub(crate) id: u64,
    /// Created, for the lifetime check (already jittered).
    pub(crate) expires: Instant,
    /// When it last went idle.
    pub(crate) idle_since: Instant,
    /// Handed out at least once before.
    pub(crate) used: bool,
}

/// What a waiter receives.
pub(crate) enum Handoff<T> {
    Conn(Box<Slot<T>>),
    Failed(ConnectError),
    Closed,
    /// The waiter's deadline passed (sent by the worker's sweep).
    TimedOut,
}

pub(crate) struct Waiter<T> {
    pub(crate) id: u64,
    pub(crate) tx: oneshot::Sender<Handoff<T>>,
    /// The worker fails the wait with [`Handoff::TimedOut`] at this instant: one pool-level
    /// timer instead of one per waiting acquire (registering and removing a timer-wheel entry
    /// per wait was a fifth of the worker threads' CPU at 256 tasks on 16 connections).
    pub(crate) deadline: Instant,
}

pub(crate) struct State<T> {
    /// Idle connections; the most recently used at the end (popped first), the least at index 0.
    pub(crate) idle: Vec<Box<Slot<T>>>,
    /// Dirty connections waiting for the worker to reset them.
    pub(crate) dirty: Vec<Box<Slot<T>>>,
    /// Every connection the pool owns or is opening: idle + in use + dirty/resetting + opening.
    pub(crate) size: u32,
    pub(crate) opening: u32,
    pub(crate) in_use: u32,
    /// Acquires waiting, oldest first.
    pub(crate) waiters: VecDeque<Waiter<T>>,
    next_id: u64,
    pub(crate) closed: bool,
    /// Consecutive connect failures, for backoff.
    pub(crate) failures: u32,
    /// No connect is started before this.
    pub(crate) retry_at: Option<Instant>,
    pub(crate) last_error: Option<ConnectError>,
    /// Kill switches of every open connection, by slot id.
    pub(crate) live: HashMap<u64, KillSwitch>,
    /// Kill switches of connections closed while something may still run on them, for the
    /// worker to pull (it may need to spawn a cancel, which `Drop` must not).
    pub(crate) doomed: Vec<KillSwitch>,
    /// When the worker will next run on its own (`None`: not planned). A waiter whose deadline
    /// comes earlier wakes it, so that the sweep is on time.
    pub(crate) sweep_at: Option<Instant>,
}

impl<T> State<T> {
    pub(crate) fn new() -> Self {
        Self {
            idle: Vec::new(),
            dirty: Vec::new(),
            size: 0,
            opening: 0,
            in_use: 0,
            waiters: VecDeque::new(),
            next_id: 1,
            closed: false,
            failures: 0,
            retry_at: None,
            last_error: None,
            live: HashMap::new(),
            doomed: Vec::new(),
            sweep_at: None,
        }
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The id the next connection will get.
    pub(crate) fn peek_next_id(&self) -> u64 {
        self.next_id
    }

    pub(crate) fn status(&self, max: u32) -> Status {
        Status {
            max,
            size: self.size,
            idle: self.idle.len() as u32,
            in_use: self.in_use,
            waiting: self.waiters.len() as u32,
            opening: self.opening,
        }
    }

    /// Connections open (not being opened).
    pub(crate) fn open_count(&self) -> u32 {
        self.size - self.opening
    }
}

/// Delay before the next connect after `failures` consecutive failures: 50 ms doubling up to
/// 2 s (10 s for permanent errors, which need a human anyway), with jitter in [d/2, d].
pub(crate) fn connect_backoff(failures: u32, permanent: bool) -> Duration {
    let cap_ms: u64 = if permanent { 10_000 } else { 2_000 };
    let exp = failures.saturating_sub(1).min(16);
    let ms = (50u64 << exp).min(cap_ms);
    let jittered = rand::random_range(ms / 2..=ms);
    Duration::from_millis(jittered)
}

/// Max lifetime less up to 2.5%, so connections opened together do not expire together.
pub(crate) fn jittered_lifetime(max_lifetime: Duration) -> Duration {
    let span = max_lifetime.as_nanos() / 40;
    let cut = if span == 0 {
        0
    } else {
        rand::random_range(0..=span)
    };
    max_lifetime.saturating_sub(Duration::from_nanos(u64::try_from(cut).unwrap_or(0)))
}

impl<C: Connector> Inner<C> {
    /// A future that completes at the next `notify_change` (a connect succeeded or failed, or a
    /// connection was retired). Create it before checking the condition it waits for.
    pub(crate) fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    pub(crate) fn wake_worker(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn notify_change(&self) {
        self.changed.notify_waiters();
    }

    /// Removes a connection from the pool's books and returns it, to be dropped after the lock.
    /// When its state is unknown (broken, failed validation, dirty), its kill switch is queued
    /// for the worker: a statement may still run on the server, and dropping the client alone
    /// would leave the session open until that statement ends.
    pub(crate) fn retire(
        &self,
        st: &mut State<C::Conn>,
        slot: Box<Slot<C::Conn>>,
        reason: CloseReason,
    ) -> Box<Slot<C::Conn>> {
        st.size -= 1;
        let kill = st.live.remove(&slot.id);
        self.counters.closed(reason);
        if let (
            Some(kill),
            CloseReason::Broken | CloseReason::FailedValidation | CloseReason::Dirty,
        ) = (kill, reason)
        {
            st.doomed.push(kill);
            self.wake_worker();
        }
        slot
    }

    /// Hands a clean connection to the oldest waiter still listening, or makes it idle. `now`
    /// is the caller's clock reading, taken after the connection was last known alive.
    pub(crate) fn deliver(
        &self,
        st: &mut State<C::Conn>,
        mut slot: Box<Slot<C::Conn>>,
        now: Instant,
    ) {
        // Just opened, used, or reset: known alive now, so no ping before its next use.
        slot.idle_since = now;
        while let Some(w) = st.waiters.pop_front() {
            st.in_use += 1;
            match w.tx.send(Handoff::Conn(slot)) {
                Ok(()) => return,
                Err(Handoff::Conn(back)) => {
                    // That waiter is gone (its guard is about to remove it); try the next one.
                    st.in_use -= 1;
                    slot = back;
                }
                Err(_) => unreachable!("sent a connection"),
            }
        }
        st.idle.push(slot);
    }

    /// Reserves up to the number of connects wanted now (for waiters and the idle minimum),
    /// within the maximum, the handshake cap and the backoff. The caller spawns that many.
    pub(crate) fn plan_connects(&self, st: &mut State<C::Conn>, now: Instant) -> u32 {
        if st.closed || st.retry_at.is_some_and(|t| now < t) {
            return 0;
        }
        let idle = st.idle.len() as u32;
        let want = st.waiters.len() as u32 + self.opts.min_idle.saturating_sub(idle);
        let need = want.saturating_sub(st.opening);
        let room = self.opts.max_size.saturating_sub(st.size);
        let slots = self.opts.max_connecting.saturating_sub(st.opening);
        let n = need.min(room).min(slots);
        st.size += n;
        st.opening += n;
        n
    }

    /// Returns a checked-out connection. Synchronous and cheap: no I/O, no spawning.
    pub(crate) fn release(self: &Arc<Self>, slot: Box<Slot<C::Conn>>, forced: Option<CloseReason>) {
        self.release_at(slot, forced, Instant::now());
    }

    /// [`Inner::release`] with the caller's clock reading, taken after the connection's last use.
    pub(crate) fn release_at(
        self: &Arc<Self>,
        mut slot: Box<Slot<C::Conn>>,
        forced: Option<CloseReason>,
        now: Instant,
    ) {
        let broken = forced.is_some() || self.connector.is_closed(&slot.conn);
        let dirty = !broken && self.connector.needs_reset(&slot.conn);
        let mut st = self.lock();
        st.in_use -= 1;
        let reason = if st.closed {
            Some(CloseReason::Shutdown)
        } else if broken {
            Some(forced.unwrap_or(CloseReason::Broken))
        } else if dirty {
            st.dirty.push(slot);
            drop(st);
            self.wake_worker();
            return;
        } else if now >= slot.expires || self.evicted(&slot) {
            Some(CloseReason::Lifetime)
        } else {
            None
        };
        match reason {
            None => {
                slot.used = true;
                // The caller's reading: taken after the user let go.
                slot.idle_since = now;
                let Some(w) = st.waiters.pop_front() else {
                    st.idle.push(slot);
                    return;
                };
                st.in_use += 1;
                // The hand-off wakes the waiter's task: done outside the lock, so that the
                // other worker thread is not held up behind a wake (or a preempted waker).
                // The waiter is off the queue but its guard may drop meanwhile: then the send
                // fails and the connection goes to the next waiter, as `deliver` does.
                drop(st);
                if let Err(Handoff::Conn(back)) = w.tx.send(Handoff::Conn(slot)) {
                    let mut st = self.lock();
                    st.in_use -= 1;
                    self.deliver(&mut st, back, now);
                }
            }
            Some(reason) => {
                let slot = self.retire(&mut st, slot, reason);
                let replenish = !st.closed;
                drop(st);
                drop(slot);
                self.notify_change();
                if replenish {
                    self.wake_worker();
                }
            }
        }
    }

    /// Makes a slot for a freshly opened connection.
    pub(crate) fn new_slot(&self, st: &mut State<C::Conn>, conn: C::Conn) -> Box<Slot<C::Conn>> {
        let id = st.next_id();
        st.live.insert(id, self.connector.kill(&conn));
        let now = Instant::now();
        Box::new(Slot {
            conn,
            id,
            expires: now + jittered_lifetime(self.opts.max_lifetime),
            idle_since: now,
            used: false,
        })
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn backoff_grows_then_caps_with_jitter() {
        for _ in 0..50 {
            let d1 = connect_backoff(1, false);
            assert!(d1 >= Duration::from_millis(25) && d1 <= Duration::from_millis(50));
            let d3 = connect_backoff(3, false);
            assert!(d3 >= Duration::from_millis(100) && d3 <= Duration::from_millis(200));
            let d20 = connect_backoff(20, false);
            assert!(d20 >= Duration::from_millis(1000) && d20 <= Duration::from_millis(2000));
            let p = connect_backoff(30, true);
            assert!(p >= Duration::from_secs(5) && p <= Duration::from_secs(10));
        }
    }

    #[test]
    fn lifetime_jitter_stays_within_two_and_a_half_percent_below() {
        let max = Duration::from_secs(1800);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let l = jittered_lifetime(max);
            assert!(l <= max);
            assert!(l >= max - Duration::from_secs(45));
            seen.insert(l.as_millis());
        }
        assert!(seen.len() > 100, "jitter should spread lifetimes");
        assert_eq!(jittered_lifetime(Duration::ZERO), Duration::ZERO);
    }
}
