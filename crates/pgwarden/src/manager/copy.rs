//! `COPY` through the pool: [`PoolManager::copy_in`] and [`PoolManager::copy_out`], each on a
//! connection checked out for it and bounded by the query timeout with the confirmed cancel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream};
use tokio::time::{Instant, Sleep};

use super::call::{bounded_for, checkout, Ctx};
use super::route::Marking;
use super::PoolManager;
use crate::error::Error;
use crate::{PgConnector, PooledConnection};

type Conn = PooledConnection<PgConnector>;

impl PoolManager {
    /// A connection for a COPY, from the pool a first attempt of a write would use.
    async fn copy_checkout(&self) -> Result<Conn, Error> {
        let deadline = Instant::now() + self.pool().options().acquire_timeout;
        checkout(self, deadline, 1, Marking::Write)
            .await
            .map(|(conn, _)| conn)
            .map_err(|(e, _)| e)
    }

    /// Starts a `COPY ... FROM STDIN` on a connection of its own and returns the sink its data
    /// goes into; [`CopyInSink::finish`] commits it. The query timeout bounds the whole COPY,
    /// from its start to the end of `finish`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = pgwarden_testdb::PgServer::shared()?;
    /// # let url = server.url("postgres");
    /// # let config = pgwarden::Config::from_vars([("DATABASE_URL", url.as_str()), ("DB_POOL_MIN", "0")])?;
    /// # let db = pgwarden::PoolManager::from_config(&config).await?;
    /// db.execute("CREATE TABLE IF NOT EXISTS doc_copy (id int8, name text)", &[]).await?;
    /// let mut sink = db.copy_in("COPY doc_copy (id, name) FROM STDIN").await?;
    /// for id in 0..1000 {
    ///     sink.send(format!("{id}\tname {id}\n")).await?;
    /// }
    /// let rows = sink.finish().await?;
    /// assert_eq!(rows, 1000);
    ///
    /// use futures_util::TryStreamExt;
    /// let mut out = db.copy_out("COPY (SELECT id FROM doc_copy ORDER BY id LIMIT 3) TO STDOUT").await?;
    /// let mut text = Vec::new();
    /// while let Some(chunk) = out.try_next().await? {
    ///     text.extend_from_slice(&chunk);
    /// }
    /// assert_eq!(text, b"0\n1\n2\n");
    /// # drop(out);
    /// # db.execute("DROP TABLE doc_copy", &[]).await?;
    /// # db.close(std::time::Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancellation
    /// A sink dropped before `finish` aborts the COPY (nothing of it commits); its connection
    /// goes back to the pool only after the pool has confirmed the COPY ended.
    ///
    /// # Errors
    /// [`Error::Acquire`]; [`Error::Query`] when the server refuses the statement;
    /// [`Error::QueryTimeout`] when it does not start within the query timeout.
    pub async fn copy_in(&self, sql: &str) -> Result<CopyInSink, Error> {
        let conn = self.copy_checkout().await?;
        let limit = self.inner.opts.query_timeout;
        let started = Instant::now();
        let (result, discard) = {
            let start =
                std::pin::pin!(async { conn.start_copy_in(sql).await.map_err(Error::query) });
            let ctx = Ctx::autocommit(false, sql);
            bounded_for(&self.inner.opts, limit, &conn, start, ctx, started).await
        };
        let (sink, conn) = started_on(conn, result, discard)?;
        Ok(CopyInSink {
            inner: Some(Box::pin(sink)),
            conn: Some(conn),
            deadline: started + limit,
            limit,
            grace: self.inner.opts.cancel_grace,
        })
    }

    /// Starts a `COPY ... TO STDOUT` on a connection of its own and returns its data as a
    /// stream of chunks (each usually one row in the COPY format). The query timeout bounds
    /// the whole COPY, from its start to its last chunk: when it fires, the COPY is cancelled
    /// on the server and the stream ends with [`Error::QueryTimeout`].
    ///
    /// See [`PoolManager::copy_in`] for an example.
    ///
    /// # Cancellation
    /// A stream dropped before its end leaves the COPY running; its connection is marked, so
    /// the pool cancels it (a confirmed cancel) and rolls back before reuse.
    ///
    /// # Errors
    /// As [`PoolManager::copy_in`]; each chunk may also be an error.
    pub async fn copy_out(&self, sql: &str) -> Result<CopyOutStream, Error> {
        let conn = self.copy_checkout().await?;
        let limit = self.inner.opts.query_timeout;
        let started = Instant::now();
        let (result, discard) = {
            let start =
                std::pin::pin!(async { conn.start_copy_out(sql).await.map_err(Error::query) });
            let ctx = Ctx::autocommit(true, sql);
            bounded_for(&self.inner.opts, limit, &conn, start, ctx, started).await
        };
        let (rows, conn) = started_on(conn, result, discard)?;
        Ok(CopyOutStream {
            inner: Box::pin(rows),
            conn: Some(conn),
            timer: Box::pin(tokio::time::sleep_until(started + limit)),
            phase: Phase::Reading,
            limit,
            grace: self.inner.opts.cancel_grace,
        })
    }
}

/// The connection and what a COPY's start returned, or its error; a connection the start left
/// unusable (`discard`: a timeout whose cancel was not confirmed, a lost connection) is
/// closed, not returned to the pool.
#[allow(clippy::result_large_err)] // a private helper of the async public calls
fn started_on<T>(
    conn: Conn,
    result: super::op::AttemptResult<T>,
    discard: bool,
) -> Result<(T, Conn), Error> {
    match result {
        Ok(started) => {
            debug_assert!(!discard, "a COPY start is discarded only on a failure");
            Ok((started, conn))
        }
        Err((e, _)) => {
            if discard {
                PooledConnection::discard(conn);
            }
            Err(e)
        }
    }
}

/// The data side of a `COPY ... FROM STDIN` ([`PoolManager::copy_in`]). Send the data in the
/// statement's format, then [`CopyInSink::finish`].
///
/// Every call is bounded by what is left of the query timeout. When it runs out (also while
/// the caller was not sending), the COPY is cancelled and aborted — nothing of it commits —
/// and the call returns [`Error::QueryTimeout`]; the connection goes back to the pool when
/// the server confirmed the end, else it is closed. A sink left idle keeps its COPY open
/// until it is used again or dropped.
#[must_use = "a COPY commits only when finished"]
pub struct CopyInSink {
    /// `None` once the COPY was aborted on a timeout.
    inner: Option<Pin<Box<tokio_postgres::CopyInSink<Bytes>>>>,
    /// `None` once closed on a timeout without a confirmed end.
    conn: Option<Conn>,
    deadline: Instant,
    limit: Duration,
    grace: Duration,
}

impl std::fmt::Debug for CopyInSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyInSink")
            .field("open", &self.inner.is_some())
            .finish_non_exhaustive()
    }
}

impl CopyInSink {
    fn timed_out(&self, ended: bool, unknown: bool) -> Error {
        Error::QueryTimeout {
            after: self.limit,
            ended,
            unknown,
        }
    }

    /// Sends one piece of data (any split: rows may span pieces).
    ///
    /// # Errors
    /// [`Error::Query`] when the server rejected the data (the COPY is over; the connection
    /// is reset before reuse); [`Error::QueryTimeout`] as described on the type.
    pub async fn send(&mut self, data: impl Into<Bytes>) -> Result<(), Error> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(self.timed_out(self.conn.is_some(), false));
        };
        if Instant::now() >= self.deadline {
            return Err(self.abort().await);
        }
        match tokio::time::timeout_at(self.deadline, inner.send(data.into())).await {
            Ok(sent) => sent.map_err(Error::query),
            Err(_) => Err(self.abort().await),
        }
    }

    /// Ends the data and commits the COPY; returns the number of rows copied.
    ///
    /// # Errors
    /// As [`CopyInSink::send`]. When the timeout fires during `finish` and the server does
    /// not confirm the cancel in time, the error says the outcome is unknown.
    pub async fn finish(mut self) -> Result<u64, Error> {
        if self.inner.is_none() || self.conn.is_none() {
            return Err(self.timed_out(self.conn.is_some(), false));
        }
        if Instant::now() >= self.deadline {
            return Err(self.abort().await);
        }
        let (limit, grace) = (self.limit, self.grace);
        let timed_out = |ended, unknown| Error::QueryTimeout {
            after: limit,
            ended,
            unknown,
        };
        let (Some(mut inner), Some(conn)) = (self.inner.take(), self.conn.take()) else {
            unreachable!("checked above");
        };
        let mut fin = std::pin::pin!(inner.as_mut().finish());
        let out = match tokio::time::timeout_at(self.deadline, fin.as_mut()).await {
            Ok(out) => out,
            Err(_) => {
                // CopyDone may be sent: the COPY can commit any moment now, so it is not
                // aborted but cancelled, and its answer awaited.
                let grace_end = Instant::now() + grace;
                let cancelled = matches!(
                    Box::pin(tokio::time::timeout_at(grace_end, conn.cancel_confirmed())).await,
                    Ok(Ok(()))
                );
                match tokio::time::timeout_at(grace_end, fin).await {
                    Ok(Err(e)) if cancelled && is_cancel(&e) => {
                        conn.copy_ended();
                        return Err(timed_out(true, false));
                    }
                    // It finished just as the timeout fired: its result stands.
                    Ok(out) => out,
                    Err(_) => {
                        PooledConnection::discard(conn);
                        return Err(timed_out(false, true));
                    }
                }
            }
        };
        match out {
            Ok(n) => {
                conn.copy_ended();
                Ok(n)
            }
            // The COPY failed on the server; the connection stays marked and is reset.
            Err(e) => Err(Error::query(e)),
        }
    }

    /// Cancels and aborts the COPY (CopyFail: nothing of it commits), then checks within the
    /// cancel grace that the server is idle again; if not, the connection is closed.
    async fn abort(&mut self) -> Error {
        let grace_end = Instant::now() + self.grace;
        let Some(conn) = self.conn.as_ref() else {
            return self.timed_out(false, false);
        };
        // Boxed: the cancel's connect-and-handshake future is large and rarely needed.
        let _ = Box::pin(tokio::time::timeout_at(grace_end, conn.cancel_confirmed())).await;
        // Dropping tokio-postgres's sink sends CopyFail and Sync; the ping's answer comes after
        // theirs, so it proves the COPY is over.
        self.inner = None;
        let ended = matches!(
            tokio::time::timeout_at(grace_end, conn.ping()).await,
            Ok(Ok(()))
        );
        if ended {
            conn.copy_ended();
        } else if let Some(conn) = self.conn.take() {
            PooledConnection::discard(conn);
        }
        self.timed_out(ended, false)
    }
}

/// The data of a `COPY ... TO STDOUT` ([`PoolManager::copy_out`]), chunk by chunk.
#[must_use = "streams do nothing unless polled"]
pub struct CopyOutStream {
    inner: Pin<Box<tokio_postgres::CopyOutStream>>,
    /// `None` once closed after a timeout without a confirmed end.
    conn: Option<Conn>,
    /// The query timeout's deadline, then the end of the cancel grace.
    timer: Pin<Box<Sleep>>,
    phase: Phase,
    limit: Duration,
    grace: Duration,
}

type CancelFuture = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

enum Phase {
    Reading,
    /// The timeout fired: the confirmed cancel is on its way.
    Cancelling(CancelFuture),
    /// The cancel was confirmed: waiting for the COPY to end (with 57014, or normally).
    Draining,
    Done,
}

impl std::fmt::Debug for CopyOutStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOutStream")
            .field("done", &matches!(self.phase, Phase::Done))
            .finish_non_exhaustive()
    }
}

impl CopyOutStream {
    /// The COPY is over on the server: the connection is idle and goes back clean.
    fn ended(&mut self, item: Option<Result<Bytes, Error>>) -> Poll<Option<Result<Bytes, Error>>> {
        if let Some(conn) = &self.conn {
            conn.copy_ended();
        }
        self.phase = Phase::Done;
        Poll::Ready(item)
    }

    /// The COPY did not provably end within the grace: the connection is closed.
    fn give_up(&mut self) -> Poll<Option<Result<Bytes, Error>>> {
        if let Some(conn) = self.conn.take() {
            PooledConnection::discard(conn);
        }
        self.phase = Phase::Done;
        Poll::Ready(Some(Err(Error::QueryTimeout {
            after: self.limit,
            ended: false,
            unknown: false,
        })))
    }

    fn read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(Err(e))) if matches!(self.phase, Phase::Draining) && is_cancel(&e) => {
                let err = Error::QueryTimeout {
                    after: self.limit,
                    ended: true,
                    unknown: false,
                };
                self.ended(Some(Err(err)))
            }
            Poll::Ready(Some(Err(e))) => self.ended(Some(Err(Error::query(e)))),
            Poll::Ready(None) => self.ended(None),
        }
    }
}

impl Stream for CopyOutStream {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Reading => {
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return this.read(cx);
                    }
                    let Some(conn) = &this.conn else {
                        return this.give_up();
                    };
                    this.phase = Phase::Cancelling(Box::pin(conn.cancel_confirmed_owned()));
                    let grace_end = Instant::now() + this.grace;
                    this.timer.as_mut().reset(grace_end);
                }
                Phase::Cancelling(cancel) => match cancel.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => this.phase = Phase::Draining,
                    Poll::Ready(Err(_)) => return this.give_up(),
                    Poll::Pending if this.timer.as_mut().poll(cx).is_ready() => {
                        return this.give_up()
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Draining => {
                    // Chunks sent before the cancel landed are still the COPY's data.
                    if let Poll::Ready(item) = this.read(cx) {
                        return Poll::Ready(item);
                    }
                    if this.timer.as_mut().poll(cx).is_ready() {
                        return this.give_up();
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// 57014 query_canceled: the cancel landed and the statement stopped.
fn is_cancel(e: &tokio_postgres::Error) -> bool {
    e.code().map(|c| c.code()) == Some(crate::sqlstate::QUERY_CANCELED)
}
