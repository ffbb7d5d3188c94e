//! A statement's deadline on a timer the connection keeps from one statement to the next.
//!
//! `tokio::time::timeout` registers a timer-wheel entry for every statement and removes it when
//! the statement ends (measured: ~640 instructions per `SELECT 1` under callgrind, on top of
//! the driver's lock). Statements on one connection run one after another and almost all end
//! long before the query timeout, so the connection keeps one timer armed at some earlier
//! statement's deadline: a new deadline that comes later needs no re-arming while the timer
//! has not fired, and when it fires early the timer is moved to the deadline of the statement
//! then running. With a steady query timeout the timer is re-armed about once per timeout
//! period per connection instead of once per statement; the bound stays exact (the statement
//! is never allowed past its deadline, it is the wake-up that is shared). On a pipelined lane
//! connection many statements are in flight at once: each takes a timer left by an earlier
//! one (or arms a new one), so the connection keeps as many as it had statements in flight at
//! most, bounded by the lane's in-flight bound.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;

use tokio::time::{Instant, Sleep};

use super::PgConn;

/// The connection's timers: one for an exclusive connection (one statement at a time), up to
/// one per statement in flight on a pipelined lane connection, each kept armed at an earlier
/// statement's deadline for the next statement to take. Lock rule: held only to take a timer
/// out or put one back.
#[derive(Default)]
pub(crate) struct StatementTimer(Mutex<Vec<Pin<Box<Sleep>>>>);

impl StatementTimer {
    fn take(&self) -> Option<Pin<Box<Sleep>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put(&self, timer: Option<Pin<Box<Sleep>>>) {
        if let Some(t) = timer {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(t);
        }
    }
}

impl StatementTimer {
    /// Polls `fut` until it completes (`Some`) or `until` passes (`None`), as
    /// `tokio::time::timeout_at` does, on this timer.
    ///
    /// Cancellation safety: dropped midway, the timer is dropped with this future (the wheel
    /// entry removed) and the next statement arms a new one.
    pub(crate) fn within<'a, F: Future>(
        &'a self,
        until: Instant,
        fut: Pin<&'a mut F>,
    ) -> Within<'a, F> {
        Within {
            timers: self,
            until,
            fut,
            timer: None,
            taken: false,
        }
    }
}

/// The future of [`StatementTimer::within`]. Written out rather than an `async fn`: it is part of
/// every call's future, and a generator would keep its arguments twice.
pub(crate) struct Within<'a, F> {
    timers: &'a StatementTimer,
    until: Instant,
    fut: Pin<&'a mut F>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The connection's kept timer was taken (on the first poll).
    taken: bool,
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        // Every field is Unpin (the statement's future is pinned by its owner).
        let this = &mut *self;
        if !this.taken {
            this.taken = true;
            this.timer = this.timers.take();
        }
        if let Poll::Ready(v) = this.fut.as_mut().poll(cx) {
            this.timers.put(this.timer.take());
            return Poll::Ready(Some(v));
        }
        let until = this.until;
        let t = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if t.deadline() > until {
            // A shorter timeout than the last statement's (a call's `.timeout(d)`).
            t.as_mut().reset(until);
        }
        loop {
            match t.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Armed at this statement's deadline: it has passed.
                Poll::Ready(()) if t.deadline() >= until => {
                    this.timers.put(this.timer.take());
                    return Poll::Ready(None);
                }
                // An earlier statement's deadline: move on to this one's.
                Poll::Ready(()) => t.as_mut().reset(until),
            }
        }
    }
}

impl PgConn {
    /// [`StatementTimer::within`] on this connection's timer.
    pub(crate) fn within<'a, F: Future>(
        &'a self,
        until: Instant,
        fut: Pin<&'a mut F>,
    ) -> Within<'a, F> {
        self.timer.within(until, fut)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The wake-up shared across statements never lets one run past its own deadline, nor
    /// cuts one short, whatever deadline the timer was armed at before.
    #[tokio::test(start_paused = true)]
    async fn each_deadline_is_exact_whatever_the_timer_held() {
        let timer = StatementTimer::default();
        let run = |start: Instant, timeout: Duration, work: Duration| {
            let timer = &timer;
            async move {
                let fut = std::pin::pin!(tokio::time::sleep(work));
                let out = timer.within(start + timeout, fut).await;
                (out.is_some(), start.elapsed())
            }
        };
        let ms = Duration::from_millis;
        // Finishes in time: the timer stays armed at 1 s.
        assert_eq!(run(Instant::now(), ms(1000), ms(10)).await, (true, ms(10)));
        // A later deadline than the timer's (armed 10 ms earlier): the timer fires first,
        // and the statement still gets its full second.
        assert_eq!(
            run(Instant::now(), ms(1000), ms(1500)).await,
            (false, ms(1000))
        );
        // A later deadline: runs past the timer's firing and ends in time.
        let (done, took) = run(Instant::now(), ms(3000), ms(2000)).await;
        assert!(done && took == ms(2000), "{took:?}");
        // Times out exactly at its own deadline, though the timer held an earlier one.
        let (done, took) = run(Instant::now(), ms(2000), ms(5000)).await;
        assert!(!done && took == ms(2000), "{took:?}");
        // A shorter timeout than the timer held: cut at its own deadline.
        let (done, took) = run(Instant::now(), ms(100), ms(5000)).await;
        assert!(!done && took == ms(100), "{took:?}");
    }
    /// Statements in flight at once on one connection (the pipelined lane) each get a timer of
    /// their own from the pool of timers, and each is cut exactly at its own deadline or runs
    /// to its end; the connection keeps no more timers than it had statements in flight.
    #[tokio::test(start_paused = true)]
    async fn concurrent_statements_each_keep_their_own_deadline() {
        let timer = StatementTimer::default();
        let ms = Duration::from_millis;
        for _round in 0..3 {
            let start = Instant::now();
            // Statement i: deadline 100 + 10 i ms, work 45 + 20 i ms: the first six end in
            // time (45 + 20 i < 100 + 10 i for i < 6), the rest are cut at their deadline.
            let runs = (0..10u64).map(|i| {
                let timer = &timer;
                async move {
                    let work = std::pin::pin!(tokio::time::sleep(ms(45 + 20 * i)));
                    let out = timer.within(start + ms(100 + 10 * i), work).await;
                    (i, out.is_some(), start.elapsed())
                }
            });
            for (i, done, took) in futures_util::future::join_all(runs).await {
                if i < 6 {
                    assert!(done && took == ms(45 + 20 * i), "{i}: {took:?}");
                } else {
                    assert!(!done && took == ms(100 + 10 * i), "{i}: {took:?}");
                }
            }
            let kept = timer.0.lock().unwrap().len();
            assert!((1..=10).contains(&kept), "{kept} timers kept");
        }
    }
}
