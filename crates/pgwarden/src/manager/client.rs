//! One client trait for the three things an application runs statements on: the
//! [`PoolManager`], a checked-out connection and a transaction.

use std::future::Future;

use tokio_postgres::Row;

use super::op::Params;
use super::stream::RowStream;
use super::tx::{Savepoint, Tx};
use super::PoolManager;
use crate::conn::PgConn;
use crate::error::Error;
use crate::{PgConnector, PooledConnection};

/// Statements on the [`PoolManager`], a checked-out connection ([`PooledConnection`] or
/// [`PgConn`]) or a transaction ([`Tx`]), so a repository function is written once and called
/// with any of them.
///
/// Each implementor keeps its own behaviour: on the manager a statement gets a connection,
/// the query timeout and retries (as an unmarked call: a possible write, retried only when it
/// provably did not run); on a transaction it runs under the query timeout and a failure aborts
/// the transaction; on a connection it runs as [`PgConn::query`] does. `prepare` belongs to one
/// connection, so it is not part of the trait.
///
/// # Moving from tokio-postgres's `GenericClient`
/// Import `pgwarden::GenericClient` instead of `tokio_postgres::GenericClient` (or
/// `deadpool_postgres::GenericClient`) and take `&impl GenericClient`. Differences: statements
/// are given as text (the statement cache prepares them), errors are [`Error`], there is no
/// `prepare` or `transaction` (open transactions with [`PoolManager::transaction`]), and
/// `query_raw` is [`GenericClient::query_stream`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = pgwarden_testdb::PgServer::shared()?;
/// # let url = server.url("postgres");
/// # let config = pgwarden::Config::from_vars([("DATABASE_URL", url.as_str()), ("DB_POOL_MIN", "0")])?;
/// # let db = pgwarden::PoolManager::from_config(&config).await?;
/// use pgwarden::{Error, GenericClient};
///
/// async fn answer(db: &impl GenericClient) -> Result<i32, Error> {
///     Ok(db.query_one("SELECT $1::int4 + 1", &[&41i32]).await?.get(0))
/// }
///
/// assert_eq!(answer(&db).await?, 42); // the manager
/// let conn = db.get().await?;
/// assert_eq!(answer(&conn).await?, 42); // a checked-out connection
/// drop(conn);
/// let n = db.transaction(|tx| async move { answer(&tx).await }).await?;
/// assert_eq!(n, 42); // a transaction
/// # db.close(std::time::Duration::from_secs(1)).await;
/// # Ok(())
/// # }
/// ```
pub trait GenericClient: Send + Sync {
    /// Every row of a statement.
    ///
    /// # Errors
    /// [`Error::Query`], and what the implementor adds (acquire, timeout, retries).
    fn query(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send;

    /// Exactly one row.
    ///
    /// # Errors
    /// As [`GenericClient::query`], and [`Error::RowCount`] for no row or several.
    fn query_one(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = Result<Row, Error>> + Send;

    /// Zero or one row.
    ///
    /// # Errors
    /// As [`GenericClient::query`], and [`Error::RowCount`] for several rows.
    fn query_opt(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send;

    /// The number of rows a statement affected.
    ///
    /// # Errors
    /// As [`GenericClient::query`].
    fn execute(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = Result<u64, Error>> + Send;

    /// The rows of a statement as a [`RowStream`], read as they arrive; see its cancellation
    /// note.
    ///
    /// # Errors
    /// As [`GenericClient::query`], for starting the statement.
    fn query_stream<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<RowStream<'a>, Error>> + Send;
}

impl GenericClient for PoolManager {
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        PoolManager::query(self, sql, params).await
    }

    async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        PoolManager::query_one(self, sql, params).await
    }

    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        PoolManager::query_opt(self, sql, params).await
    }

    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        PoolManager::execute(self, sql, params).await
    }

    async fn query_stream<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> Result<RowStream<'a>, Error> {
        PoolManager::query_stream(self, sql, params).await
    }
}

impl GenericClient for PgConn {
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        PgConn::query(self, sql, params).await.map_err(Error::query)
    }

    async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        PgConn::query_one(self, sql, params).await
    }

    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        PgConn::query_opt(self, sql, params).await
    }

    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        PgConn::execute(self, sql, params)
            .await
            .map_err(Error::query)
    }

    async fn query_stream<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> Result<RowStream<'a>, Error> {
        RowStream::start_on(self, sql, params).await
    }
}

impl GenericClient for PooledConnection<PgConnector> {
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        <PgConn as GenericClient>::query(self, sql, params).await
    }

    async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        <PgConn as GenericClient>::query_one(self, sql, params).await
    }

    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        <PgConn as GenericClient>::query_opt(self, sql, params).await
    }

    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        <PgConn as GenericClient>::execute(self, sql, params).await
    }

    async fn query_stream<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> Result<RowStream<'a>, Error> {
        <PgConn as GenericClient>::query_stream(self, sql, params).await
    }
}

impl GenericClient for Tx {
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        Tx::query(self, sql, params).await
    }

    async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        Tx::query_one(self, sql, params).await
    }

    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        Tx::query_opt(self, sql, params).await
    }

    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        Tx::execute(self, sql, params).await
    }

    async fn query_stream<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> Result<RowStream<'a>, Error> {
        RowStream::start_in(self, sql, params).await
    }
}

/// A savepoint's statements run in its transaction, at its depth.
impl GenericClient for Savepoint<'_> {
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        Tx::query(self, sql, params).await
    }

    async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        Tx::query_one(self, sql, params).await
    }

    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        Tx::query_opt(self, sql, params).await
    }

    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        Tx::execute(self, sql, params).await
    }

    async fn query_stream<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> Result<RowStream<'a>, Error> {
        RowStream::start_in(self, sql, params).await
    }
}
