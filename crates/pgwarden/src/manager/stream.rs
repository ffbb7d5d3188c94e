//! Row streams: a large result read row by row, holding its connection until dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::time::Instant;
use tokio_postgres::Row;

use super::call::{bounded, checkout, Ctx, Retrying};
use super::op::{AttemptResult, Params};
use super::route::Marking;
use super::tx::Tx;
use super::PoolManager;
use crate::conn::PgConn;
use crate::error::Error;
use crate::{PgConnector, PooledConnection};

/// The rows of one statement, read as they arrive. It holds its connection (checked out from
/// the pool, or borrowed from a connection or transaction) until it is dropped.
///
/// The query timeout bounds starting the statement; the rows are then read at the caller's
/// pace. To stop early, drop the stream.
///
/// # Cancellation
/// A stream dropped before its last row leaves the statement running on the server; its
/// connection is marked so that it never goes back to the pool busy: the pool cancels the
/// statement (a confirmed cancel) and rolls back before the connection serves anyone else.
/// On a borrowed connection, the next statement on it waits until the server stops sending
/// the abandoned rows; a transaction whose body dropped a stream is rolled back and says so.
#[must_use = "streams do nothing unless polled"]
pub struct RowStream<'a> {
    rows: Pin<Box<tokio_postgres::RowStream>>,
    hold: Hold<'a>,
    /// The last row or the error was read: the statement is over.
    ended: bool,
}

enum Hold<'a> {
    Owned(PooledConnection<PgConnector>),
    Borrowed(&'a PgConn),
    Tx(&'a Tx),
}

impl std::fmt::Debug for RowStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowStream")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<'a> RowStream<'a> {
    fn conn(&self) -> &PgConn {
        match &self.hold {
            Hold::Owned(c) => c,
            Hold::Borrowed(c) => c,
            Hold::Tx(tx) => tx.conn(),
        }
    }

    /// The stream of a statement started on a connection the caller holds.
    pub(crate) async fn start_on(
        conn: &'a PgConn,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Self, Error> {
        let rows = conn.start_stream(sql, params).await.map_err(Error::query)?;
        Ok(Self::new(rows, Hold::Borrowed(conn)))
    }

    /// The stream of a statement started inside a manager's transaction.
    pub(super) async fn start_in(tx: &'a Tx, sql: &str, params: Params<'_>) -> Result<Self, Error> {
        let rows = tx.start_stream(sql, params).await?;
        Ok(Self::new(rows, Hold::Tx(tx)))
    }

    fn new(rows: tokio_postgres::RowStream, hold: Hold<'a>) -> Self {
        Self {
            rows: Box::pin(rows),
            hold,
            ended: false,
        }
    }
}

impl Stream for RowStream<'_> {
    type Item = Result<Row, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let out = match self.rows.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(row))) => return Poll::Ready(Some(Ok(row))),
            Poll::Ready(Some(Err(e))) => Some(Err(Error::query(e))),
            Poll::Ready(None) => None,
        };
        self.ended = true;
        self.conn().stream_ended();
        if let (Some(Err(e)), Hold::Tx(tx)) = (&out, &self.hold) {
            tx.note_failure(e.to_string(), e.code().map(str::to_owned));
        }
        Poll::Ready(out)
    }
}

impl PoolManager {
    /// The rows of a statement as a [`RowStream`], read as they arrive, for results too large
    /// to buffer. The stream holds a connection until it is dropped. Starting the statement
    /// is retried as a call is (treated as a possible write); rows are not.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = pgwarden_testdb::PgServer::shared()?;
    /// # let url = server.url("postgres");
    /// # let config = pgwarden::Config::from_vars([("DATABASE_URL", url.as_str()), ("DB_POOL_MIN", "0")])?;
    /// # let db = pgwarden::PoolManager::from_config(&config).await?;
    /// use futures_util::TryStreamExt;
    ///
    /// let mut rows = db.query_stream("SELECT generate_series(1, 1000000)", &[]).await?;
    /// let mut sum = 0i64;
    /// while let Some(row) = rows.try_next().await? {
    ///     sum += i64::from(row.get::<_, i32>(0));
    ///     if sum > 100 {
    ///         break; // dropping the stream cancels the rest on the server
    ///     }
    /// }
    /// # drop(rows);
    /// # db.close(std::time::Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`PoolManager::query`]; each row may also be an [`Error::Query`].
    pub async fn query_stream(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<RowStream<'static>, Error> {
        let mut retrying = Retrying::new(self, sql);
        loop {
            let (n, deadline) = (retrying.attempt(), retrying.deadline());
            let outcome = start_attempt(self, sql, params, n, deadline).await;
            if let Some(result) = retrying.next(outcome).await {
                return result;
            }
        }
    }
}

/// One attempt at starting a stream: a connection, the statement's start under the query
/// timeout, and the connection moved into the stream.
async fn start_attempt(
    db: &PoolManager,
    sql: &str,
    params: Params<'_>,
    n: u32,
    deadline: Instant,
) -> AttemptResult<RowStream<'static>> {
    // A stream's statement is treated as a possible write: only a read-write server serves it.
    let (conn, _) = checkout(db, deadline, n, Marking::Write).await?;
    let (result, discard) = {
        let start = async { conn.start_stream(sql, params).await.map_err(Error::query) };
        bounded(&db.inner.opts, &conn, start, Ctx::autocommit(false, sql)).await
    };
    if discard {
        PooledConnection::discard(conn);
        return result.map(|_| unreachable!("a discarded connection carries an error"));
    }
    result.map(|rows| RowStream::new(rows, Hold::Owned(conn)))
}
