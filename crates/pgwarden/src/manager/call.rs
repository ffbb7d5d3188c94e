//! One statement call: the retry loop, the query timeout with its server-side cancel, and the
//! classification that decides whether another attempt is safe.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use super::lane::Path;
use super::op::{refused_as_read_only, AttemptResult, Op, Params};
use super::route::{Marking, PoolId};
use super::{ManagerOptions, PoolManager};
use crate::conn::PgConn;
use crate::error::Error;
use crate::retry::{acquire_verdict, classify, RetryClock, Verdict};
use crate::{PgConnector, PooledConnection};

/// A statement call; `.await` it. By default it is treated as a possible write: it runs only on
/// a read-write server and is retried only when it provably did not run. Mark it
/// [`Call::idempotent`] when running it twice is harmless (reads, upserts keyed by a client id
/// …) and it is also retried after a lost connection; mark it [`Call::read_only`] when a
/// standby may serve it.
#[must_use = "a call does nothing until it is awaited"]
pub struct Call<'a, O: Op> {
    db: &'a PoolManager,
    sql: &'a str,
    params: Params<'a>,
    marking: Marking,
    /// `.timeout(d)`: this call's query timeout, instead of the manager's.
    timeout: Option<Duration>,
    /// `.retries(n)`: this call's retry attempts, instead of the manager's.
    retries: Option<u32>,
    /// `.exclusive()` / `.pipelined()`: the path asked for.
    path: Path,
    _op: PhantomData<O>,
}

impl<'a, O: Op> Call<'a, O> {
    pub(super) fn new(db: &'a PoolManager, sql: &'a str, params: Params<'a>) -> Self {
        Self {
            db,
            sql,
            params,
            marking: Marking::Write,
            timeout: None,
            retries: None,
            path: Path::Auto,
            _op: PhantomData,
        }
    }

    /// The call may run twice: retry it after a lost connection too.
    pub fn idempotent(mut self) -> Self {
        if self.marking == Marking::Write {
            self.marking = Marking::Idempotent;
        }
        self
    }

    /// The call only reads: a standby may serve it (the failover pool's target even when it is
    /// read-only), and it is idempotent. A call marked so that writes fails on a standby with
    /// 25006 and is not rerun elsewhere.
    pub fn read_only(mut self) -> Self {
        self.marking = Marking::ReadOnly;
        self
    }

    /// This call's query timeout (each attempt's statement), instead of
    /// [`ManagerOptions::query_timeout`]. On expiry the statement is cancelled on the server,
    /// as with the default.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = pgwarden_testdb::PgServer::shared()?;
    /// # let url = server.url("postgres");
    /// # let config = pgwarden::Config::from_vars([("DATABASE_URL", url.as_str()), ("DB_POOL_MIN", "0")])?;
    /// # let db = pgwarden::PoolManager::from_config(&config).await?;
    /// use std::time::Duration;
    ///
    /// let err = db
    ///     .execute("SELECT pg_sleep(5)", &[])
    ///     .timeout(Duration::from_millis(100))
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.is_timeout());
    /// # db.close(Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn timeout(mut self, query_timeout: Duration) -> Self {
        self.timeout = Some(query_timeout);
        self
    }

    /// At most `n` retries after the first attempt, instead of
    /// [`ManagerOptions::retry_attempts`]; still only when a retry is safe, and never past
    /// [`ManagerOptions::retry_budget`]. `.retries(0)` makes one attempt.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = pgwarden_testdb::PgServer::shared()?;
    /// # let url = server.url("postgres");
    /// # let config = pgwarden::Config::from_vars([("DATABASE_URL", url.as_str()), ("DB_POOL_MIN", "0")])?;
    /// # let db = pgwarden::PoolManager::from_config(&config).await?;
    /// let row = db.query_one("SELECT 1", &[]).idempotent().retries(1).await?;
    /// assert_eq!(row.get::<_, i32>(0), 1);
    /// # db.close(std::time::Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = Some(n);
        self
    }

    /// Run on a connection of its own, never on the pipelined lane
    /// (`DB_PIPELINE_CONNECTIONS`). For a statement with session effects the SQL does not
    /// show: `SELECT set_config('x', 'y', false)`, advisory locks, a function that does either.
    pub fn exclusive(mut self) -> Self {
        self.path = Path::Exclusive;
        self
    }

    /// Run on the pipelined lane even when the SQL looks like it touches session state (a
    /// `SET`, a temporary table …), when the caller knows it is harmless to share. Without a
    /// lane, or with a per-call [`Call::timeout`] (the lane cannot cancel), the call still
    /// takes the exclusive path.
    pub fn pipelined(mut self) -> Self {
        self.path = Path::Pipelined;
        self
    }
}

impl<'a, O: Op> IntoFuture for Call<'a, O> {
    type Output = Result<O::Out, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<O::Out, Error>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run::<O>(
            self.db,
            self.sql,
            self.params,
            self.marking,
            PerCall {
                timeout: self.timeout,
                retries: self.retries,
                path: self.path,
            },
        ))
    }
}

/// One call's retries: the schedule, the budget, the stats. Drives the loop that both
/// statement calls and transactions run:
/// `loop { match retrying.next(attempt(retrying.deadline()).await).await { Some(r) => break r, None => {} } }`.
pub(super) struct Retrying<'a> {
    db: &'a PoolManager,
    started: Instant,
    /// No attempt made yet: the first deadline counts from `started` (no clock read).
    first: bool,
    clock: RetryClock<'a>,
    what: &'a str,
}

impl<'a> Retrying<'a> {
    pub(super) fn new(db: &'a PoolManager, what: &'a str) -> Self {
        Self::with_attempts(db, what, db.inner.opts.retry_attempts)
    }

    /// As [`Retrying::new`] with `attempts` retries instead of the manager's.
    pub(super) fn with_attempts(db: &'a PoolManager, what: &'a str, attempts: u32) -> Self {
        let opts = &db.inner.opts;
        Self {
            db,
            started: Instant::now(),
            first: true,
            clock: RetryClock::new(&opts.retry_delays, attempts, opts.retry_budget),
            what,
        }
    }

    /// As [`Retrying::with_attempts`] for a call begun at `started` whose first attempt was
    /// made: the next is the second.
    fn resumed(db: &'a PoolManager, what: &'a str, attempts: u32, started: Instant) -> Self {
        let mut r = Self::with_attempts(db, what, attempts);
        r.started = started;
        r.first = false;
        r
    }

    /// The next attempt's number: 1 for the first.
    pub(super) fn attempt(&self) -> u32 {
        self.clock.retries() + 1
    }

    /// The acquire deadline of the next attempt: the acquire timeout, cut to the budget.
    pub(super) fn deadline(&mut self) -> Instant {
        // A clock read costs ~45 ns on a VM; the first attempt starts as the call does.
        let now = if std::mem::take(&mut self.first) {
            self.started
        } else {
            Instant::now()
        };
        let deadline = now + self.db.pool().options().acquire_timeout;
        match self.clock.budget_end() {
            Some(end) => deadline.min(end),
            None => deadline,
        }
    }

    /// After an attempt: the call's result, or `None` after waiting out the backoff before the
    /// next attempt.
    pub(super) async fn next<T>(&mut self, outcome: AttemptResult<T>) -> Option<Result<T, Error>> {
        let result = match outcome {
            Ok(v) => Ok(v),
            Err((e, Verdict::Retry)) => match self.clock.next_delay(Instant::now()) {
                Some(delay) => {
                    self.db.inner.stats.retry(&e);
                    tracing::debug!(call = self.what, error = %e, delay_ms = delay.as_millis() as u64, "retrying");
                    tokio::time::sleep(delay).await;
                    return None;
                }
                None if self.clock.retries() == 0 => Err(e),
                None => Err(Error::RetriesExhausted {
                    attempts: self.clock.retries() + 1,
                    elapsed: self.started.elapsed(),
                    last: Box::new(e),
                }),
            },
            Err((mut e, _)) => {
                if let Error::Query { retries, .. } = &mut e {
                    *retries = self.clock.retries();
                }
                Err(e)
            }
        };
        self.db.inner.stats.call(self.started.elapsed(), &result);
        Some(result)
    }
}

/// One call: the first attempt inline, the retry loop (rare) boxed apart so that its state
/// does not weigh on every call's future. The clock is read twice per call on this path: the
/// acquire's reading (the call's start, the statement's start, the acquire deadline and the
/// query timeout all count from it) and one when the statement ends (its duration, the call's,
/// the metrics and the connection's release).
async fn run<O: Op>(
    db: &PoolManager,
    sql: &str,
    params: Params<'_>,
    marking: Marking,
    per_call: PerCall,
) -> Result<O::Out, Error> {
    // The one dispatch point between the pipelined lane and the exclusive path (boxed: the
    // lane's future must not weigh on every exclusive call's).
    if let Some(lane) = super::lane::route(db, sql, marking, per_call.path, per_call.timeout, 1) {
        if let Some(result) =
            Box::pin(lane_first::<O>(db, lane, sql, params, marking, per_call)).await
        {
            return result;
        }
    }
    // Settled by a plain function: nothing but the retry loop's box outlives the attempt here,
    // so this future is the attempt's and a few words (it is boxed on every call).
    let first = attempt::<O>(db, sql, params, marking, per_call.timeout, 1, None).await;
    match settle::<O>(db, sql, params, marking, per_call, first) {
        Settled::Done(result) => result,
        Settled::Retry(again) => again.await,
    }
}

/// A call after its first attempt: its result, or the retry loop to run.
enum Settled<'a, T> {
    Done(Result<T, Error>),
    Retry(Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>),
}

/// Counts a call whose first attempt ended, or hands back the retry loop (boxed) when the
/// attempt's verdict allows another. A plain function, so that nothing of it is kept in the
/// call's future across an await.
fn settle<'a, O: Op>(
    db: &'a PoolManager,
    sql: &'a str,
    params: Params<'a>,
    marking: Marking,
    per_call: PerCall,
    first: Attempted<O::Out>,
) -> Settled<'a, O::Out> {
    let result = match first.outcome {
        Ok(v) => Ok(v),
        // No verdict but `Retry` may lead to another attempt (see `Retrying::next`).
        Err((e, v)) if v != Verdict::Retry => Err(e),
        Err(failed) => {
            db.inner.stats.acquire(first.pool, first.waited);
            let started = first.started;
            return Settled::Retry(Box::pin(retry::<O>(
                db, sql, params, marking, per_call, started, failed,
            )));
        }
    };
    db.inner.stats.one_attempt(
        first.ended,
        first.elapsed,
        &result,
        first.pool,
        first.waited,
    );
    Settled::Done(result)
}

/// A call's first attempt on the pipelined lane, and its retries; `None` when the lane could
/// not take it (the exclusive path serves it).
async fn lane_first<O: Op>(
    db: &PoolManager,
    lane: &std::sync::Arc<crate::lane::Lane>,
    sql: &str,
    params: Params<'_>,
    marking: Marking,
    per_call: PerCall,
) -> Option<Result<O::Out, Error>> {
    let started = Instant::now();
    let deadline = started + db.pool().options().acquire_timeout;
    let outcome = super::lane::attempt::<O>(db, lane, sql, params, marking, deadline).await?;
    let result = match outcome {
        Ok(v) => Ok(v),
        Err((e, v)) if v != Verdict::Retry => Err(e),
        Err(failed) => {
            return Some(retry::<O>(db, sql, params, marking, per_call, started, failed).await)
        }
    };
    db.inner.stats.call(started.elapsed(), &result);
    Some(result)
}

/// The retry loop of a call whose first attempt, begun at `started`, failed with `failed`.
async fn retry<O: Op>(
    db: &PoolManager,
    sql: &str,
    params: Params<'_>,
    marking: Marking,
    per_call: PerCall,
    started: Instant,
    failed: (Error, Verdict),
) -> Result<O::Out, Error> {
    let attempts = per_call.retries.unwrap_or(db.inner.opts.retry_attempts);
    let mut retrying = Retrying::resumed(db, sql, attempts, started);
    let mut outcome = Err(failed);
    loop {
        if let Some(result) = retrying.next(outcome).await {
            return result;
        }
        let (n, deadline) = (retrying.attempt(), retrying.deadline());
        if let Some(lane) = super::lane::route(db, sql, marking, per_call.path, per_call.timeout, n)
        {
            let laned = super::lane::attempt::<O>(db, lane, sql, params, marking, deadline);
            if let Some(o) = Box::pin(laned).await {
                outcome = o;
                continue;
            }
        }
        let t = attempt::<O>(
            db,
            sql,
            params,
            marking,
            per_call.timeout,
            n,
            Some(deadline),
        )
        .await;
        db.inner.stats.acquire(t.pool, t.waited);
        outcome = t.outcome;
    }
}

/// One attempt's outcome with its clock readings.
struct Attempted<T> {
    outcome: AttemptResult<T>,
    /// The acquire's first reading.
    started: Instant,
    /// A reading taken when the attempt ended.
    ended: Instant,
    /// `ended - started`, carried from its parts (the wait and the statement) so that the
    /// call's metrics need no clock subtraction of their own.
    elapsed: Duration,
    /// The pool asked (its index) and the time spent waiting for it.
    pool: usize,
    waited: Duration,
}

/// A call's own options (`.timeout(d)`, `.retries(n)`); `None`: the manager's.
#[derive(Debug, Clone, Copy, Default)]
struct PerCall {
    timeout: Option<Duration>,
    retries: Option<u32>,
    path: Path,
}

/// A connection for attempt `n` from the pool the router picks; failing to get one is worth
/// another attempt only when waiting may help (see [`acquire_verdict`]): a pool exhausted the
/// whole time is retried only when the router has another pool that can serve the call.
pub(super) async fn checkout(
    db: &PoolManager,
    deadline: Instant,
    n: u32,
    marking: Marking,
) -> Result<(PooledConnection<PgConnector>, PoolId), (Error, Verdict)> {
    let router = &db.inner.router;
    let id = router.pick(n, marking);
    let started = Instant::now();
    let got = router.pool(id).get_until(deadline).await;
    db.inner.stats.acquire(id.index(), started.elapsed());
    match got {
        Ok(conn) => {
            router.note_reachable(id, true);
            Ok((conn, id))
        }
        Err(e) => {
            if e.connect_error().is_some() {
                router.note_reachable(id, false);
            }
            let v = acquire_verdict(&e, router.has_alternative(id, marking));
            Err((Error::Acquire(e), v))
        }
    }
}

/// One attempt: a connection, the statement under the query timeout, and the verdict.
/// `deadline` `None`: the acquire timeout from the acquire's first reading.
async fn attempt<O: Op>(
    db: &PoolManager,
    sql: &str,
    params: Params<'_>,
    marking: Marking,
    timeout: Option<Duration>,
    n: u32,
    deadline: Option<Instant>,
) -> Attempted<O::Out> {
    let router = &db.inner.router;
    let id = router.pick(n, marking);
    let (conn, started, now, waited) = match router.pool(id).get_timed(deadline).await {
        Ok(t) => {
            router.note_reachable(id, true);
            (t.conn, t.started, t.now, t.waited)
        }
        Err((e, started)) => {
            // The failure path reads the clock; it did not wait when it has no reading.
            let ended = Instant::now();
            let started = started.unwrap_or(ended);
            // Nothing ran: the whole attempt was the wait.
            let waited = ended.saturating_duration_since(started);
            if e.connect_error().is_some() {
                router.note_reachable(id, false);
            }
            let v = acquire_verdict(&e, router.has_alternative(id, marking));
            return Attempted {
                outcome: Err((Error::Acquire(e), v)),
                started,
                ended,
                elapsed: waited,
                pool: id.index(),
                waited,
            };
        }
    };
    let idempotent = marking.idempotent();
    let (result, discard) = {
        // Pinned here, not moved into `bounded`: the statement's future is stored once.
        let fut = std::pin::pin!(O::run(&conn, sql, params));
        let opts = &db.inner.opts;
        let limit = timeout.unwrap_or(opts.query_timeout);
        let ctx = Ctx::autocommit(idempotent, sql);
        // The query timeout counts from the checkout's reading: never later than the start.
        bounded_for(opts, limit, &conn, fut, ctx, now).await
    };
    let ended = Instant::now();
    let ran = ended.saturating_duration_since(now);
    db.inner.stats.statement_at(ended, sql, ran, &db.inner.opts);
    if discard {
        PooledConnection::discard(conn);
    } else {
        PooledConnection::release_at(conn, ended);
    }
    let outcome = match result {
        Err((e, _)) if refused_as_read_only(db, id, marking, &e).await => Err((e, Verdict::Retry)),
        r => r,
    };
    Attempted {
        outcome,
        started,
        ended,
        elapsed: waited + ran,
        pool: id.index(),
        waited,
    }
}

/// What a statement is, for classifying its failure.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ctx {
    pub(super) idempotent: bool,
    pub(super) in_transaction: bool,
    pub(super) commit: bool,
    /// False for `CALL` and `DO`: a procedure may COMMIT part of its work before it fails, so
    /// even a serialization failure does not prove that nothing committed.
    pub(super) atomic: bool,
}

impl Ctx {
    pub(super) fn autocommit(idempotent: bool, sql: &str) -> Self {
        Self {
            idempotent,
            in_transaction: false,
            commit: false,
            atomic: !crate::conn::runs_procedure(sql),
        }
    }
}

/// Runs one statement under the query timeout. On expiry the statement is cancelled on the
/// server (a confirmed cancel) and given what is left of one grace period to end. Returns the
/// outcome and whether the connection must be closed: when the statement did not provably end,
/// it may still be running.
pub(super) async fn bounded<T, F>(
    opts: &ManagerOptions,
    conn: &PgConn,
    fut: F,
    ctx: Ctx,
) -> (AttemptResult<T>, bool)
where
    F: Future<Output = Result<T, Error>>,
{
    bounded_pinned(opts, conn, std::pin::pin!(fut), ctx, Instant::now()).await
}

/// [`bounded`] for a future the caller pinned, with the caller's reading of the statement's
/// start (the query timeout counts from it; one clock read fewer per call).
pub(super) async fn bounded_pinned<T, F>(
    opts: &ManagerOptions,
    conn: &PgConn,
    fut: Pin<&mut F>,
    ctx: Ctx,
    started: Instant,
) -> (AttemptResult<T>, bool)
where
    F: Future<Output = Result<T, Error>>,
{
    bounded_for(opts, opts.query_timeout, conn, fut, ctx, started).await
}

/// [`bounded_pinned`] under `query_timeout` instead of the manager's (a call's `.timeout(d)`).
pub(super) async fn bounded_for<T, F>(
    opts: &ManagerOptions,
    query_timeout: Duration,
    conn: &PgConn,
    mut fut: Pin<&mut F>,
    ctx: Ctx,
    started: Instant,
) -> (AttemptResult<T>, bool)
where
    F: Future<Output = Result<T, Error>>,
{
    let until = started + query_timeout;
    // On the connection's timer, not `tokio::time::timeout_at`: no timer entry per statement.
    if let Some(r) = conn.within(until, fut.as_mut()).await {
        return (r.map_err(|e| classify_error(e, conn, ctx)), false);
    }
    // Boxed: rare, and its timers would otherwise weigh on every call's future.
    Box::pin(timed_out(opts, query_timeout, conn, fut, ctx)).await
}

/// A statement past its query timeout: cancelled on the server, then given what is left of one
/// grace period to end.
async fn timed_out<T, F>(
    opts: &ManagerOptions,
    query_timeout: Duration,
    conn: &PgConn,
    fut: Pin<&mut F>,
    ctx: Ctx,
) -> (AttemptResult<T>, bool)
where
    F: Future<Output = Result<T, Error>>,
{
    let timeout_err = |ended: bool| Error::QueryTimeout {
        after: query_timeout,
        ended,
        unknown: !ended && !ctx.idempotent && (!ctx.in_transaction || ctx.commit),
    };
    let grace_end = Instant::now() + opts.cancel_grace;
    // Once the cancel is confirmed, the backend has been signalled: the cancel hits this
    // statement, or is ignored if the statement already ended. It cannot reach a later one.
    // (Boxed: the cancel's connect-and-handshake future is large and rarely needed; inline it
    // would weigh on every call's future.)
    let cancelled = matches!(
        Box::pin(tokio::time::timeout_at(grace_end, conn.cancel_confirmed())).await,
        Ok(Ok(()))
    );
    if !cancelled {
        return (Err((timeout_err(false), Verdict::Fail)), true);
    }
    match tokio::time::timeout_at(grace_end, fut).await {
        // It finished just as the timeout fired: its result stands.
        Ok(Ok(v)) => (Ok(v), false),
        Ok(Err(Error::Query { error, .. }))
            if error.code().map(|c| c.code()) == Some(crate::sqlstate::QUERY_CANCELED) =>
        {
            (Err((timeout_err(true), Verdict::Fail)), false)
        }
        Ok(Err(e)) => (Err(classify_error(e, conn, ctx)), false),
        Err(_) => (Err((timeout_err(false), Verdict::Fail)), true),
    }
}

/// The verdict on a statement's error. A failure before the execution was sent (while
/// preparing, or on a connection already closed) ran nothing, so it is as safe to retry as an
/// idempotent call.
///
/// The verdict is also written into the error ([`Error::is_retryable`]), with the reason when a
/// usually transient failure is not retried.
pub(super) fn classify_error(e: Error, conn: &PgConn, ctx: Ctx) -> (Error, Verdict) {
    match e {
        Error::Query { error, .. } => {
            let executed = conn.reached_execution();
            let idempotent = ctx.idempotent || !executed;
            let verdict = classify(&error, idempotent, ctx.in_transaction, ctx.commit);
            let rerun = crate::sqlstate::transaction_rerun(error.code().map(|c| c.code()));
            let (verdict, not_retried) = match verdict {
                Verdict::OutcomeUnknown => {
                    return (Error::OutcomeUnknown { error }, Verdict::OutcomeUnknown)
                }
                Verdict::Retry if executed && !ctx.atomic && !ctx.idempotent => (
                    Verdict::Fail,
                    Some("a CALL or DO may have committed part of its work before it failed"),
                ),
                Verdict::Fail if ctx.in_transaction && rerun => (
                    Verdict::Fail,
                    Some("it ran inside a transaction, which is rerun whole when the body returns it"),
                ),
                v => (v, None),
            };
            let e = Error::Query {
                error,
                retries: 0,
                retryable: verdict == Verdict::Retry,
                not_retried,
            };
            (e, verdict)
        }
        other => (other, Verdict::Fail),
    }
}

#[cfg(test)]
mod tests {
    /// Every call's future is boxed (`IntoFuture` needs a type to name), so its size is paid on
    /// every call: keep it within what glibc's malloc serves from its per-thread cache (requests
    /// up to 1,032 bytes). Above that, every call took malloc's slow path and its free (a
    /// `SELECT 1` call measured 2,232 bytes and ~400 instructions more per call under
    /// callgrind). It was 6.5 KB before rare paths were boxed and tracking done in place.
    #[tokio::test]
    async fn call_and_acquire_futures_stay_small() {
        fn size_of_val<F>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let pg: tokio_postgres::Config = "host=127.0.0.1 port=1 user=nobody dbname=none"
            .parse()
            .unwrap();
        let connector = crate::PgConnector::new(
            &pg,
            crate::config::SslMode::Disable,
            None,
            crate::ConnectOptions::default(),
        )
        .unwrap();
        let db = super::PoolManager::new(
            crate::Pool::new(connector, crate::PoolOptions::sized(1, 0)),
            super::ManagerOptions::default(),
        );
        let (sql, w, per) = ("SELECT 1", super::Marking::Write, super::PerCall::default());
        let sizes = [
            (
                "query",
                size_of_val(&super::run::<crate::manager::Rows>(&db, sql, &[], w, per)),
            ),
            (
                "query_one",
                size_of_val(&super::run::<crate::manager::One>(&db, sql, &[], w, per)),
            ),
            (
                "query_opt",
                size_of_val(&super::run::<crate::manager::Opt>(&db, sql, &[], w, per)),
            ),
            (
                "execute",
                size_of_val(&super::run::<crate::manager::Exec>(&db, sql, &[], w, per)),
            ),
        ];
        for (what, size) in sizes {
            assert!(size <= 1024, "{what}'s call future: {size} bytes");
        }
        let get = db.pool().get();
        assert!(
            size_of_val(&get) <= 1024,
            "acquire future: {} bytes",
            size_of_val(&get)
        );
    }
}
