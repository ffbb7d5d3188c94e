//! The manager's side of the pipelined lane ([`crate::lane`]): which calls it serves, and one
//! attempt of a call on it.
//!
//! The lane serves `query`, `query_one`, `query_opt` and `execute` when the router would send
//! the attempt to the primary pool. It never serves: transactions and `get()` (they do not come
//! here), a call with its own `.timeout(d)` (the lane's time limit is the server's
//! `statement_timeout`, set once per connection; enforcing a shorter one would need a
//! CancelRequest), a call marked `.exclusive()`, and — unless marked `.pipelined()` — SQL that
//! the sniffing flags as touching session state ([`crate::conn::pins_session`]).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::op::{refused_as_read_only, AttemptResult, Op, Params, READ_ONLY_SQL_TRANSACTION};
use super::route::{Marking, PoolId};
use super::PoolManager;
use crate::error::Error;
use crate::lane::{Lane, LaneConn};
use crate::retry::{classify, Verdict};
use crate::sqlstate::QUERY_CANCELED;

/// Which path a call asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Path {
    /// The lane when it can serve the call (see the module docs), else exclusive.
    #[default]
    Auto,
    /// Always an exclusive connection (`.exclusive()`).
    Exclusive,
    /// The lane even when the sniffing would pin the statement (`.pipelined()`).
    Pipelined,
}

/// The lane, when it is to serve attempt `n` of this call.
pub(super) fn route<'a>(
    db: &'a PoolManager,
    sql: &str,
    marking: Marking,
    path: Path,
    timeout: Option<Duration>,
    n: u32,
) -> Option<&'a Arc<Lane>> {
    let lane = db.inner.lane.as_ref()?;
    if path == Path::Exclusive || timeout.is_some() {
        return None;
    }
    if path == Path::Auto && crate::conn::pins_session(sql) {
        return None;
    }
    (db.inner.router.pick(n, marking) == PoolId::Primary).then_some(lane)
}

/// One attempt on the lane; `None` when it could not take the call (no live connection, or no
/// room before `deadline`): the exclusive path serves it instead.
pub(super) async fn attempt<O: Op>(
    db: &PoolManager,
    lane: &Arc<Lane>,
    sql: &str,
    params: Params<'_>,
    marking: Marking,
    deadline: Instant,
) -> Option<AttemptResult<O::Out>> {
    let entered = lane.enter(deadline).await?;
    let opts = &db.inner.opts;
    let idempotent = marking.idempotent();
    let executed = AtomicBool::new(false);
    let started = Instant::now();
    // The server ends the statement at `query_timeout`; the grace lets its 57014 arrive. Past
    // it, the caller abandons only its own response.
    let until = started + opts.query_timeout + opts.cancel_grace;
    // On the connection's timers (see `conn::deadline`), not a timer entry per statement.
    let running = std::pin::pin!(run(&entered.conn, sql, params, &executed));
    let outcome = entered.conn.pg().within(until, running).await.ok_or(());
    lane.served();
    let ended = Instant::now();
    db.inner
        .stats
        .statement_at(ended, sql, ended.saturating_duration_since(started), opts);
    let executed = executed.load(Relaxed);
    let e = match outcome {
        Ok(Ok((rows, count))) => {
            return Some(O::from_lane(rows, count).map_err(|e| (e, Verdict::Fail)))
        }
        Ok(Err(e)) => e,
        Err(_elapsed) => {
            let e = Error::QueryTimeout {
                after: opts.query_timeout,
                ended: false,
                unknown: executed && !idempotent,
            };
            return Some(Err((e, Verdict::Fail)));
        }
    };
    if e.is_closed() || entered.conn.pg().is_closed() {
        lane.lost(entered.slot, &entered.conn);
    }
    if crate::conn::is_stale_statement(&e) {
        // The execution did nothing; the next attempt prepares afresh.
        entered.conn.pg().forget_statement(sql);
        return Some(Err((query_error(e, true), Verdict::Retry)));
    }
    let code = e.code().map(|c| c.code());
    let read_only = code == Some(READ_ONLY_SQL_TRANSACTION);
    if code == Some(QUERY_CANCELED) {
        // The lane sends no cancel: this is its statement_timeout.
        let e = Error::QueryTimeout {
            after: opts.query_timeout,
            ended: true,
            unknown: false,
        };
        return Some(Err((e, Verdict::Fail)));
    }
    let (err, verdict) = classify_lane(e, executed, idempotent);
    if read_only && refused_as_read_only(db, PoolId::Primary, marking, &err).await {
        // Its connections reach a read-only server now: the lane reopens on demand.
        lane.retire_all();
        return Some(Err((err, Verdict::Retry)));
    }
    Some(Err((err, verdict)))
}

/// The health checker's ping of the primary's server through the lane (a `SELECT 1` pipelined
/// with the callers' statements, no cancel): `None` when the lane has no live connection to
/// take it. While the lane holds connections, pinging through the primary pool would open one
/// more server connection just to ask what the lane's traffic already shows.
pub(crate) async fn ping(db: &PoolManager, deadline: Instant) -> Option<Result<(), String>> {
    let lane = db.inner.lane.as_ref()?;
    let entered = lane.enter(deadline).await?;
    let ran = tokio::time::timeout_at(
        deadline,
        entered.conn.pg().shared_client().batch_execute("SELECT 1"),
    )
    .await;
    Some(match ran {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            if e.is_closed() || entered.conn.pg().is_closed() {
                lane.lost(entered.slot, &entered.conn);
            }
            Err(format!("lane: {e}"))
        }
        Err(_) => Err("lane: no answer in time".to_owned()),
    })
}

/// Prepares (cached per lane connection) and runs the statement, reading every row; also
/// returns the row count. `executed` is set once the execution is sent on an open connection:
/// before that, a failure ran nothing.
async fn run(
    conn: &LaneConn,
    sql: &str,
    params: Params<'_>,
    executed: &AtomicBool,
) -> Result<(Vec<Row>, u64), tokio_postgres::Error> {
    let pg = conn.pg();
    let stmt = pg.prepare_cached(sql).await?;
    let client = pg.shared_client();
    executed.store(!client.is_closed(), Relaxed);
    let stream = client
        .query_raw(&stmt, params.iter().map(|p| *p as &dyn ToSql))
        .await?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await? {
        rows.push(row);
    }
    Ok((rows, stream.rows_affected().unwrap_or(0)))
}

/// The verdict on a lane statement's failure: as on the exclusive path for an autocommit
/// statement (the lane serves no `CALL` or `DO`, so every statement is atomic).
fn classify_lane(e: tokio_postgres::Error, executed: bool, idempotent: bool) -> (Error, Verdict) {
    let verdict = classify(&e, idempotent || !executed, false, false);
    match verdict {
        Verdict::OutcomeUnknown => (Error::OutcomeUnknown { error: e }, verdict),
        v => (query_error(e, v == Verdict::Retry), v),
    }
}

fn query_error(error: tokio_postgres::Error, retryable: bool) -> Error {
    Error::Query {
        error,
        retries: 0,
        retryable,
        not_retried: None,
    }
}
