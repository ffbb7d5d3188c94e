//! Pool machinery driven by a fake connector with paused time: waiters, guards, cancellation,
//! sizing, reaping. Nothing here is about what PostgreSQL does — that is tested against
//! PostgreSQL in `tests/`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Slow(u64),
    Fail,
    FailPermanent,
    Hang,
}

#[derive(Default)]
struct FakeState {
    connect: Mutex<Option<Mode>>,
    validate: Mutex<Option<Mode>>,
    reset: Mutex<Option<Mode>>,
    connects_started: AtomicU32,
    connecting_now: AtomicI64,
    max_connecting: AtomicI64,
    live: AtomicI64,
    max_live: AtomicI64,
    validations: AtomicU32,
    resets: AtomicU32,
    kills: AtomicU32,
    next_id: AtomicU32,
}

#[derive(Clone, Default)]
struct Fake(Arc<FakeState>);

struct FakeConn {
    id: u32,
    closed: Arc<AtomicBool>,
    dirty: AtomicBool,
    state: Arc<FakeState>,
}

impl Drop for FakeConn {
    fn drop(&mut self) {
        self.state.live.fetch_sub(1, SeqCst);
    }
}

async fn behave(mode: Mode) -> Result<(), ConnectError> {
    match mode {
        Mode::Ok => Ok(()),
        Mode::Slow(ms) => {
            sleep(Duration::from_millis(ms)).await;
            Ok(())
        }
        Mode::Fail => Err(ConnectError::transient("fake", "connection refused")),
        Mode::FailPermanent => Err(ConnectError::permanent(
            "fake",
            "password authentication failed for user \"app\"",
        )
        .with_code("28P01")),
        Mode::Hang => std::future::pending().await,
    }
}

impl Fake {
    fn set(&self, which: &Mutex<Option<Mode>>, m: Mode) {
        *which.lock().unwrap() = Some(m);
    }
    fn mode(which: &Mutex<Option<Mode>>) -> Mode {
        which.lock().unwrap().unwrap_or(Mode::Ok)
    }
}

impl Connector for Fake {
    type Conn = FakeConn;

    async fn connect(&self) -> Result<FakeConn, ConnectError> {
        let s = &self.0;
        s.connects_started.fetch_add(1, SeqCst);
        let now = s.connecting_now.fetch_add(1, SeqCst) + 1;
        s.max_connecting.fetch_max(now, SeqCst);
        struct Dec<'a>(&'a AtomicI64);
        impl Drop for Dec<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        let _dec = Dec(&s.connecting_now);
        behave(Self::mode(&s.connect)).await?;
        let live = s.live.fetch_add(1, SeqCst) + 1;
        s.max_live.fetch_max(live, SeqCst);
        Ok(FakeConn {
            id: s.next_id.fetch_add(1, SeqCst),
            closed: Arc::new(AtomicBool::new(false)),
            dirty: AtomicBool::new(false),
            state: Arc::clone(s),
        })
    }

    fn target(&self) -> String {
        "fake:5432/db".into()
    }

    fn is_closed(&self, conn: &FakeConn) -> bool {
        conn.closed.load(SeqCst)
    }

    fn needs_reset(&self, conn: &FakeConn) -> bool {
        conn.dirty.load(SeqCst)
    }

    async fn validate<'a>(&'a self, _conn: &'a FakeConn) -> Result<(), ConnectError> {
        self.0.validations.fetch_add(1, SeqCst);
        behave(Self::mode(&self.0.validate)).await
    }

    async fn reset<'a>(&'a self, conn: &'a FakeConn) -> Result<(), ConnectError> {
        self.0.resets.fetch_add(1, SeqCst);
        behave(Self::mode(&self.0.reset)).await?;
        conn.dirty.store(false, SeqCst);
        Ok(())
    }

    fn kill(&self, conn: &FakeConn) -> KillSwitch {
        let closed = Arc::clone(&conn.closed);
        let s = Arc::clone(&self.0);
        KillSwitch::new(move || {
            closed.store(true, SeqCst);
            s.kills.fetch_add(1, SeqCst);
        })
    }
}

fn opts(max: u32, min: u32) -> PoolOptions {
    PoolOptions {
        acquire_timeout: Duration::from_secs(2),
        ..PoolOptions::sized(max, min)
    }
}

/// Lets spawned tasks run and paused time auto-advance until the pool is quiet.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    sleep(Duration::from_millis(50)).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// The books agree with reality once everything settled.
async fn assert_consistent(pool: &Pool<Fake>, fake: &Fake) {
    settle().await;
    let st = pool.status();
    assert_eq!(st.in_use, 0, "nothing checked out: {st}");
    assert_eq!(st.waiting, 0, "no waiter left: {st}");
    assert_eq!(st.opening, 0, "no connect in flight: {st}");
    assert_eq!(
        i64::from(st.size),
        fake.0.live.load(SeqCst),
        "pool size matches live connections: {st}"
    );
    assert_eq!(st.size, st.idle, "every open connection is idle: {st}");
    assert!(fake.0.max_live.load(SeqCst) <= i64::from(st.max));
}

#[tokio::test(start_paused = true)]
async fn reuses_most_recently_used_connection_and_counts_reuse() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(5, 0));
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let (ida, idb) = (a.id, b.id);
    drop(a);
    drop(b);
    // b went back last: it comes out first.
    let c = pool.get().await.unwrap();
    assert_eq!(c.id, idb);
    assert!(PooledConnection::was_reused(&c));
    let d = pool.get().await.unwrap();
    assert_eq!(d.id, ida);
    drop((c, d));
    let k = pool.counters();
    assert_eq!(k.opened, 2);
    assert_eq!(k.reused, 2);
    assert_eq!(k.acquired(), 4);
    assert!((k.reuse_rate_pct() - 50.0).abs() < 1e-9);
    assert_consistent(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn never_exceeds_max_and_caps_concurrent_connects() {
    let fake = Fake::default();
    fake.set(&fake.0.connect, Mode::Slow(20));
    let pool = Pool::new(fake.clone(), opts(5, 0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move {
            let c = p.get().await.unwrap();
            sleep(Duration::from_millis(5)).await;
            drop(c);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fake.0.max_live.load(SeqCst), 5);
    assert!(fake.0.max_connecting.load(SeqCst) <= 3);
    assert_eq!(pool.counters().opened, 5);
    assert_consistent(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(1, 0));
    let held = pool.get().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let p = pool.clone();
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let c = p.get().await.unwrap();
            order.lock().unwrap().push(i);
            sleep(Duration::from_millis(1)).await;
            drop(c);
        }));
        // Make arrival order unambiguous.
        tokio::task::yield_now().await;
        sleep(Duration::from_micros(10)).await;
    }
    assert_eq!(pool.status().waiting, 20);
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
    assert_consistent(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn nested_acquire_times_out_with_snapshot_instead_of_hanging() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(1, 0));
    let held = pool.get().await.unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_secs(2));
    let text = err.to_string();
    assert!(matches!(err, AcquireError::TimedOut { .. }), "{text}");
    assert!(
        text.contains("size 1/1, idle 0, in use 1, waiting 0"),
        "{text}"
    );
    assert!(text.contains("DB_POOL_MAX"), "{text}");
    assert_eq!(pool.counters().acquires_timed_out, 1);
    drop(held);
    assert_consistent(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn timeout_carries_the_last_connect_error_and_connects_back_off() {
    let fake = Fake::default();
    fake.set(&fake.0.connect, Mode::Fail);
    let pool = Pool::new(fake.clone(), opts(10, 0));
    let err = pool.get().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("connection refused"), "{text}");
    assert!(text.contains("timed out after 2000ms"), "{text}");
    assert!(err.is_retryable());
    // 2 s of failures with backoff (50 ms doubling to 2 s, half-jittered): a handful, not a storm.
    let attempts = fake.0.connects_started.load(SeqCst);
    assert!((3..=12).contains(&attempts), "attempts {attempts}");
    // The server comes back: the pool recovers without help.
    fake.set(&fake.0.connect, Mode::Ok);
    let c = timeout(Duration::from_secs(5), pool.get())
        .await
        .unwrap()
        .unwrap();
    drop(c);
    assert!(pool.last_connect_error().is_none());
    assert_consistent(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn permanent_connect_errors_fail_fast() {
    let fake = Fake::default();
    fake.set(&fake.0.connect, Mode::FailPermanent);
    let pool = Pool::new(fake.clone(), opts(10, 0));
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(matches!(err, AcquireError::Connect(_)), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("password authentication failed"));
    // Many callers at once: all fail at once, and the server sees no stampede.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move { p.get().await.map(drop) }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(AcquireError::Connect(_))));
    }
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(fake.0.connects_started.load(SeqCst) <= 4);
    assert_consistent(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn prewarms_min_idle_and_keeps_it_after_reaping() {
    let fake = Fake::default();
    let mut o = opts(10, 3);
    o.idle_timeout = Duration::from_secs(10);
    let pool = Pool::new(fake.clone(), o);
    pool.prewarm().await.unwrap();
    assert_eq!(pool.status().idle, 3);
    // Burst to 8, then idle: back down to the minimum after the idle timeout.
    let burst: Vec<_> = futures_util::future::join_all((0..8).map(|_| pool.get()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    drop(burst);
    settle().await;
    // 8 were in use with none idle, so the minimum asked for 3 more, within the maximum.
    let peak = pool.status().size;
    assert_eq!(peak, 10);
    sleep(Duration::from_secs(11)).await;
    settle().await;
    assert_eq!(pool.status().size, 3);
    assert_eq!(pool.counters().closed.idle, u64::from(peak - 3));
    assert_consistent(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn prewarm_reports_permanent_errors() {
    let fake = Fake::default();
    fake.set(&fake.0.connect, Mode::FailPermanent);
    let pool = Pool::new(fake.clone(), opts(10, 3));
    let err = pool.prewarm().await.unwrap_err();
    assert!(matches!(err, AcquireError::Connect(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn lifetime_reaping_is_jittered_and_invisible_to_callers() {
    let fake = Fake::default();
    let mut o = opts(10, 10);
    o.max_lifetime = Duration::from_secs(100);
    let pool = Pool::new(fake.clone(), o);
    pool.prewarm().await.unwrap();
    // Around the lifetime connections are replaced one by one, spread over the 2.5 s jitter.
    sleep(Duration::from_millis(97_400)).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        sleep(Duration::from_millis(100)).await;
        let c = pool.get().await.unwrap();
        seen.insert(pool.counters().closed.lifetime);
        drop(c);
    }
    let closed = pool.counters().closed.lifetime;
    assert_eq!(closed, 10);
    assert!(seen.len() >= 4, "expiries spread out: {seen:?}");
    assert_consistent(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_validated_and_dead_ones_replaced() {
    let fake = Fake::default();
    let mut o = opts(2, 0);
    o.validation_timeout = Duration::from_millis(500);
    let pool = Pool::new(fake.clone(), o);
    let c = pool.get().await.unwrap();
    drop(c);
    // Within the validation window: no ping.
    drop(pool.get().await.unwrap());
    assert_eq!(fake.0.validations.load(SeqCst), 0);
    sleep(Duration::from_secs(2)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(fake.0.validations.load(SeqCst), 1);
    // The ping fails (a blackholed socket): the caller gets a new connection, no error.
    sleep(Duration::from_secs(2)).await;
    fake.set(&fake.0.validate, Mode::Hang);
    let c = pool.get().await.unwrap();
    assert!(!PooledConnection::was_reused(&c));
    assert_eq!(pool.counters().closed.failed_validation, 1);
    drop(c);
    // A connection found closed is replaced without a ping.
    let c = pool.get().await.unwrap();
    c.closed.store(true, SeqCst);
    drop(c);
    assert_eq!(pool.counters().closed.broken, 1);
    fake.set(&fake.0.validate, Mode::Ok);
    drop(pool.get().await.unwrap());
    assert_consistent(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn dirty_connections_are_reset_before_reuse_or_killed() {
    let fake = Fake::default();
    let mut o = opts(1, 0);
    o.reset_timeout = Duration::from_millis(500);
    let pool = Pool::new(fake.clone(), o);
    let c = pool.get().await.unwrap();
    let id = c.id;
    c.dirty.store(true, SeqCst);
    drop(c);
    // The next user waits for the reset and gets the same, clean connection.
    let c = pool.get().await.unwrap();
    assert_eq!(c.id, id);
    assert!(!c.dirty.load(SeqCst));
    assert_eq!(fake.0.resets.load(SeqCst), 1);
    // A reset that hangs: the connection is killed and replaced.
    fake.set(&fake.0.reset, Mode::Hang);
    c.dirty.store(true, SeqCst);
    drop(c);
    let c = pool.get().await.unwrap();
    assert_ne!(c.id, id);
    assert_eq!(fake.0.kills.load(SeqCst), 1);
    assert_eq!(pool.counters().closed.dirty, 1);
    drop(c);
    assert_consistent(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn discard_closes_instead_of_returning() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(2, 0));
    let c = pool.get().await.unwrap();
    PooledConnection::discard(c);
    assert_eq!(pool.status().size, 0);
    assert_consistent(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn acquire_cancel_storm_loses_no_wakeup_and_close_completes() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(1, 0));
    let served = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let p = pool.clone();
        let served = Arc::clone(&served);
        tasks.push(tokio::spawn(async move {
            let c = p
                .get_until(Instant::now() + Duration::from_secs(60))
                .await
                .unwrap();
            served.fetch_add(1, SeqCst);
            sleep(Duration::from_micros(100 + i % 7)).await;
            drop(c);
        }));
    }
    // 50 acquires polled once and dropped, interleaved with the others.
    for _ in 0..50 {
        let fut = pool.get();
        let _ = futures_util::FutureExt::now_or_never(fut);
        tokio::task::yield_now().await;
    }
    for t in tasks {
        timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
    }
    assert_eq!(served.load(SeqCst), 200);
    assert!(pool.counters().acquires_cancelled >= 1);
    assert_consistent(&pool, &fake).await;
    timeout(Duration::from_secs(1), pool.close(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(pool.status().size, 0);
    assert_eq!(fake.0.live.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn close_wakes_waiters_refuses_new_acquires_and_kills_stragglers() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(1, 0));
    let held = pool.get().await.unwrap();
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.get().await.map(drop) });
    settle().await;
    assert_eq!(pool.status().waiting, 1);
    let closing = tokio::spawn({
        let p = pool.clone();
        async move { p.close(Duration::from_secs(1)).await }
    });
    let r = waiter.await.unwrap();
    assert!(matches!(r, Err(AcquireError::Closed)));
    assert!(matches!(pool.get().await, Err(AcquireError::Closed)));
    assert!(AcquireError::Closed.to_string().contains("pool closed"));
    // The held connection is killed at the grace deadline.
    closing.await.unwrap();
    assert!(held.closed.load(SeqCst));
    assert_eq!(fake.0.kills.load(SeqCst), 1);
    drop(held);
    assert_eq!(pool.status().size, 0);
    assert_eq!(fake.0.live.load(SeqCst), 0);
}

/// Cancellation at every await point of acquire and release: for each combination of connect,
/// validation and reset behaviour and each cancellation time, the pool's books stay right and
/// the pool keeps serving. In the spirit of deadpool's combinatorial cancellation test.
#[tokio::test(start_paused = true)]
async fn cancellation_at_every_await_point_keeps_books_right() {
    let modes = [
        Mode::Ok,
        Mode::Slow(30),
        Mode::Fail,
        Mode::FailPermanent,
        Mode::Hang,
    ];
    let cancel_after_us = [0u64, 1, 10_000, 25_000, 40_000, 2_500_000];
    let mut combos = 0;
    for &connect in &modes {
        for &validate in &modes {
            for &reset in &[Mode::Ok, Mode::Slow(30), Mode::Hang] {
                for &dirty in &[false, true] {
                    for &after in &cancel_after_us {
                        combos += 1;
                        let fake = Fake::default();
                        let mut o = opts(2, 0);
                        o.acquire_timeout = Duration::from_millis(200);
                        o.connect_timeout = Duration::from_millis(100);
                        o.validation_window = Duration::ZERO;
                        o.validation_timeout = Duration::from_millis(50);
                        o.reset_timeout = Duration::from_millis(50);
                        let pool = Pool::new(fake.clone(), o);
                        // Seed one connection so validation and reset paths are reachable.
                        if let Ok(c) = pool.get().await {
                            c.dirty.store(dirty, SeqCst);
                            drop(c);
                        }
                        settle().await;
                        fake.set(&fake.0.connect, connect);
                        fake.set(&fake.0.validate, validate);
                        fake.set(&fake.0.reset, reset);
                        let p = pool.clone();
                        let task = tokio::spawn(async move {
                            let c = p.get().await?;
                            c.dirty.store(dirty, SeqCst);
                            sleep(Duration::from_millis(20)).await;
                            drop(c);
                            Ok::<_, AcquireError>(())
                        });
                        sleep(Duration::from_micros(after)).await;
                        task.abort();
                        let _ = task.await;
                        // Everything heals once the connector behaves.
                        fake.set(&fake.0.connect, Mode::Ok);
                        fake.set(&fake.0.validate, Mode::Ok);
                        fake.set(&fake.0.reset, Mode::Ok);
                        sleep(Duration::from_secs(11)).await; // past any backoff
                        let c = timeout(Duration::from_secs(5), pool.get())
                            .await
                            .expect("no hang")
                            .unwrap_or_else(|e| {
                                panic!("{connect:?}/{validate:?}/{reset:?}/{dirty}/{after}: {e}")
                            });
                        drop(c);
                        assert_consistent(&pool, &fake).await;
                        assert!(fake.0.max_live.load(SeqCst) <= 2);
                        pool.close(Duration::from_millis(10)).await;
                        settle().await;
                        assert_eq!(fake.0.live.load(SeqCst), 0, "closed pool holds nothing");
                    }
                }
            }
        }
    }
    assert_eq!(combos, 900);
}

// Regressions found in review: each of these failed before its fix.

#[tokio::test(start_paused = true)]
async fn permanent_error_spares_waiters_a_returning_connection_can_serve() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(2, 0));
    let a = pool.get().await.unwrap();
    // The server starts refusing new logins (e.g. mid password rotation); `a` stays healthy.
    fake.set(&fake.0.connect, Mode::FailPermanent);
    let p2 = pool.clone();
    let waiter = tokio::spawn(async move { p2.get().await.map(|c| c.id) });
    // `a` comes back 10 ms later: the waiter only had to wait for it.
    sleep(Duration::from_millis(10)).await;
    drop(a);
    let got = waiter.await.unwrap();
    assert!(
        got.is_ok(),
        "a waiter that a returning healthy connection could serve was failed: {got:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_error_fails_fast_only_when_no_connection_is_open() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(2, 0));
    let a = pool.get().await.unwrap();
    fake.set(&fake.0.connect, Mode::FailPermanent);
    let _ = timeout(Duration::from_millis(50), pool.get()).await; // one failed connect
                                                                  // Pool: 1 open healthy connection, checked out for 5 ms at a time. A new caller...
    let p2 = pool.clone();
    let holder = tokio::spawn(async move {
        drop(a);
        for _ in 0..100 {
            let c = p2.get().await;
            sleep(Duration::from_millis(5)).await;
            drop(c);
        }
    });
    sleep(Duration::from_millis(1)).await;
    let r = pool.get().await.map(|c| c.id);
    holder.abort();
    assert!(
        r.is_ok(),
        "failed fast instead of waiting 5 ms for the healthy connection: {r:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_just_reset_connection_is_not_pinged_again() {
    let fake = Fake::default();
    let pool = Pool::new(
        fake.clone(),
        PoolOptions {
            acquire_timeout: Duration::from_secs(10),
            ..opts(1, 0)
        },
    );
    let a = pool.get().await.unwrap();
    let first_id = a.id;
    // Two waiters, W1 first.
    let (p1, p2) = (pool.clone(), pool.clone());
    let w1 = tokio::spawn(async move { (Instant::now(), p1.get().await.map(|c| c.id)) });
    sleep(Duration::from_millis(1)).await;
    let w2 = tokio::spawn(async move { (Instant::now(), p2.get().await.map(|c| c.id)) });
    sleep(Duration::from_millis(1)).await;
    // `a` is held 2 s (longer than the 1 s validation window), then returned dirty.
    sleep(Duration::from_secs(2)).await;
    a.dirty.store(true, SeqCst);
    drop(a);
    let (r1, r2) = (w1.await.unwrap(), w2.await.unwrap());
    // The reset (ROLLBACK) just proved the connection alive, yet it was pinged before reuse.
    assert_eq!(fake.0.resets.load(SeqCst), 1);
    assert_eq!(
        fake.0.validations.load(SeqCst),
        0,
        "a connection that was just reset was validated again (stale idle_since); W1 got {r1:?}, W2 {r2:?}, first id {first_id}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_whose_connection_failed_its_ping_keeps_its_place() {
    let fake = Fake::default();
    let pool = Pool::new(
        fake.clone(),
        PoolOptions {
            acquire_timeout: Duration::from_secs(10),
            ..opts(1, 0)
        },
    );
    let a = pool.get().await.unwrap();
    drop(a);
    // Idle for 2 s: the next checkout pings it, and the ping hangs (dead peer) until the
    // 2 s validation timeout; a second caller arrives meanwhile.
    sleep(Duration::from_secs(2)).await;
    fake.set(&fake.0.validate, Mode::Hang);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut hs = Vec::new();
    for name in ["first", "second"] {
        let (p, o) = (pool.clone(), Arc::clone(&order));
        hs.push(tokio::spawn(async move {
            let c = p.get().await.unwrap();
            p.connector().set(&p.connector().0.validate, Mode::Ok);
            o.lock().unwrap().push(name);
            sleep(Duration::from_millis(10)).await;
            drop(c);
        }));
        tokio::task::yield_now().await;
    }
    for h in hs {
        h.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec!["first", "second"],
        "the caller that arrived first was served last"
    );
}

#[tokio::test(start_paused = true)]
async fn a_short_deadline_does_not_close_a_healthy_connection() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(1, 0));
    drop(pool.get().await.unwrap());
    sleep(Duration::from_secs(2)).await;
    // A healthy connection whose ping takes 10 ms (a busy server); the caller has 16 ms left.
    fake.set(&fake.0.validate, Mode::Slow(10));
    let r = pool
        .get_until(Instant::now() + Duration::from_millis(16))
        .await;
    let k = pool.counters();
    assert_eq!(
        k.closed.failed_validation, 0,
        "a healthy connection was closed because the caller's budget cut the ping to 8 ms (got {:?})",
        r.as_ref().map(|c| c.id)
    );
}

#[tokio::test(start_paused = true)]
async fn connections_retired_in_an_unknown_state_are_killed() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(2, 0));
    let c = pool.get().await.unwrap();
    PooledConnection::discard(c);
    settle().await;
    // Ping in flight when the pool gives up on it:
    drop(pool.get().await.unwrap());
    sleep(Duration::from_secs(2)).await;
    fake.set(&fake.0.validate, Mode::Hang);
    let _ = pool.get().await;
    settle().await; // the worker pulls the kill switches
    let k = pool.counters();
    assert!(k.closed.dirty + k.closed.failed_validation >= 2, "{k:?}");
    assert_eq!(
        fake.0.kills.load(SeqCst),
        2,
        "connections retired with a statement possibly in flight were only dropped, not killed"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn acquire_fast_path_yields_to_other_tasks() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(1, 1));
    pool.prewarm().await.unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&ran);
    tokio::spawn(async move { r.store(true, SeqCst) });
    for _ in 0..10_000 {
        drop(pool.get().await.unwrap());
        if ran.load(SeqCst) {
            return;
        }
    }
    panic!("10,000 get/drop cycles never let another task on this thread run");
}

/// A fast-path acquire dropped at its cooperative yield point gives the connection back.
#[tokio::test(flavor = "current_thread")]
async fn acquire_dropped_at_its_yield_point_leaks_nothing() {
    let fake = Fake::default();
    let pool = Pool::new(fake.clone(), opts(1, 1));
    pool.prewarm().await.unwrap();
    let mut pending = 0;
    for _ in 0..2000 {
        match futures_util::FutureExt::now_or_never(pool.get()) {
            Some(c) => drop(c.unwrap()),
            None => pending += 1,
        }
    }
    assert!(pending > 0, "the budget ran out at least once");
    let st = pool.status();
    assert_eq!((st.size, st.idle, st.in_use), (1, 1, 0), "{st}");
    drop(pool.get().await.unwrap());
}
