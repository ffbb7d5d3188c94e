//! The statement methods an application calls on a checked-out connection.

use std::sync::atomic::Ordering::Relaxed;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::cleanliness::tracked;
use super::{PgConn, Sql};

impl PgConn {
    /// The raw tokio-postgres client, and the connection marked as used raw: anything done
    /// through the client is invisible to the pool, so the connection is reset (ROLLBACK, and
    /// DISCARD ALL when so configured) when it comes back. To cancel a statement, use
    /// [`PgConn::cancel_confirmed`]: a plain cancel can hit the next statement.
    pub fn client_marking_raw(&self) -> &Client {
        self.raw.store(true, Relaxed);
        &self.client
    }

    /// Runs a statement and returns its rows (tokio-postgres's `query`).
    ///
    /// # Errors
    /// The server's error, or a closed connection.
    pub async fn query<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        if let Some((text, typed)) = self.unnamed(sql, params) {
            return tracked!(self, Box::pin(self.client.query_typed(text, &typed)));
        }
        self.with_statement(
            sql,
            |s| async move { collect(&self.client, &s, params).await },
        )
        .await
    }

    /// Runs a statement returning exactly one row. The statement always runs to its end (all
    /// rows are read) before a wrong row count is reported, so the connection is never left
    /// with the statement still running, and a write in it has committed.
    ///
    /// # Errors
    /// [`crate::Error::Query`] with the server's error; [`crate::Error::RowCount`] when the
    /// statement returned no row or several.
    pub async fn query_one<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, crate::Error> {
        let rows = self.query(sql, params).await.map_err(statement_error)?;
        exactly_one(rows)
    }

    /// Runs a statement returning at most one row (read to its end, as [`PgConn::query_one`]).
    ///
    /// # Errors
    /// [`crate::Error::Query`] with the server's error; [`crate::Error::RowCount`] when the
    /// statement returned several rows.
    pub async fn query_opt<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, crate::Error> {
        let rows = self.query(sql, params).await.map_err(statement_error)?;
        at_most_one(rows)
    }

    /// Runs a statement and returns the number of rows it affected.
    ///
    /// # Errors
    /// As [`PgConn::query`].
    pub async fn execute<T: Sql + ?Sized>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        if let Some((text, typed)) = self.unnamed(sql, params) {
            return tracked!(self, Box::pin(self.client.execute_typed(text, &typed)));
        }
        self.with_statement(
            sql,
            // Boxed on its own for the reason `collect` gives.
            |s| async move { Box::pin(self.client.execute_raw(&s, params.iter().copied())).await },
        )
        .await
    }

    /// Prepares a statement (closed on the server when the last clone is dropped).
    ///
    /// # Errors
    /// As [`PgConn::query`].
    pub async fn prepare(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        self.mark_if_transaction_control(sql);
        tracked!(self, self.client.prepare(sql))
    }

    /// Runs one or more statements with the simple protocol. The pool cannot see what they
    /// did to the transaction state, so the connection is reset when it comes back.
    ///
    /// # Errors
    /// As [`PgConn::query`].
    pub async fn batch_execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.raw.store(true, Relaxed);
        tracked!(self, self.client.batch_execute(sql))
    }
}

/// A statement's failure as the library's error. (The one place this module builds one.)
pub(super) fn statement_error(e: tokio_postgres::Error) -> crate::Error {
    crate::Error::query(e)
}

/// The only row, or a [`crate::Error::RowCount`].
#[allow(clippy::result_large_err)] // private helpers; the public calls are async
pub(crate) fn exactly_one(mut rows: Vec<Row>) -> Result<Row, crate::Error> {
    match rows.len() {
        1 => Ok(rows.pop().expect("one row")),
        got => Err(crate::Error::RowCount {
            expected: "exactly one",
            got,
        }),
    }
}

/// No row or the only one, or a [`crate::Error::RowCount`].
#[allow(clippy::result_large_err)] // private helpers; the public calls are async
pub(crate) fn at_most_one(mut rows: Vec<Row>) -> Result<Option<Row>, crate::Error> {
    match rows.len() {
        0 => Ok(None),
        1 => Ok(rows.pop()),
        got => Err(crate::Error::RowCount {
            expected: "at most one",
            got,
        }),
    }
}

/// tokio-postgres's `query`, allocating less: its `query_raw` future (~1 KB: it has room for a
/// prepare it never makes with a prepared statement) is boxed on its own, under the size glibc
/// serves from its per-thread cache, and the rows are collected in place. Boxing the whole
/// `query` (or keeping it inline, which makes every call's boxed future ~2 KB) takes malloc's
/// slow path on every call.
async fn collect(
    client: &Client,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    use futures_util::TryStreamExt;
    let rows = Box::pin(client.query_raw(statement, params.iter().copied())).await?;
    let mut rows = std::pin::pin!(rows);
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await? {
        out.push(row);
    }
    Ok(out)
}
