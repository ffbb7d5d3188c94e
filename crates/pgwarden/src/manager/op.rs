//! What a statement call is made of, shared by the exclusive path ([`super::call`]) and the
//! pipelined lane ([`super::lane`]): the operations (`query`, `query_one` …), their parameters,
//! an attempt's result, and what a refused write on a read-only server means.

use std::future::Future;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::route::{Marking, PoolId};
use super::PoolManager;
use crate::conn::PgConn;
use crate::error::Error;
use crate::retry::Verdict;

/// Statement parameters.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

mod sealed {
    pub trait Sealed {}
}

/// What a call returns: rows, one row, an optional row, or a row count.
pub trait Op: sealed::Sealed + Send + Sync + 'static {
    /// The call's result.
    type Out: Send + 'static;
    #[doc(hidden)]
    fn run<'c>(
        conn: &'c PgConn,
        sql: &'c str,
        params: Params<'c>,
    ) -> impl Future<Output = Result<Self::Out, Error>> + Send + 'c;
    /// The result from the rows and row count a statement on the pipelined lane returned.
    #[doc(hidden)]
    #[allow(clippy::result_large_err)] // the call's own result type
    fn from_lane(rows: Vec<Row>, count: u64) -> Result<Self::Out, Error>;
}

/// `query`: every row.
#[derive(Debug)]
pub struct Rows;
/// `query_one`: exactly one row.
#[derive(Debug)]
pub struct One;
/// `query_opt`: zero or one row.
#[derive(Debug)]
pub struct Opt;
/// `execute`: the number of rows affected.
#[derive(Debug)]
pub struct Exec;

impl sealed::Sealed for Rows {}
impl sealed::Sealed for One {}
impl sealed::Sealed for Opt {}
impl sealed::Sealed for Exec {}

impl Op for Rows {
    type Out = Vec<Row>;
    async fn run<'c>(
        conn: &'c PgConn,
        sql: &'c str,
        params: Params<'c>,
    ) -> Result<Vec<Row>, Error> {
        conn.query(sql, params).await.map_err(Error::query)
    }
    fn from_lane(rows: Vec<Row>, _: u64) -> Result<Vec<Row>, Error> {
        Ok(rows)
    }
}

impl Op for One {
    type Out = Row;
    fn run<'c>(
        conn: &'c PgConn,
        sql: &'c str,
        params: Params<'c>,
    ) -> impl Future<Output = Result<Row, Error>> + Send + 'c {
        conn.query_one(sql, params)
    }
    fn from_lane(rows: Vec<Row>, _: u64) -> Result<Row, Error> {
        crate::conn::exactly_one(rows)
    }
}

impl Op for Opt {
    type Out = Option<Row>;
    fn run<'c>(
        conn: &'c PgConn,
        sql: &'c str,
        params: Params<'c>,
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'c {
        conn.query_opt(sql, params)
    }
    fn from_lane(rows: Vec<Row>, _: u64) -> Result<Option<Row>, Error> {
        crate::conn::at_most_one(rows)
    }
}

impl Op for Exec {
    type Out = u64;
    async fn run<'c>(conn: &'c PgConn, sql: &'c str, params: Params<'c>) -> Result<u64, Error> {
        conn.execute(sql, params).await.map_err(Error::query)
    }
    fn from_lane(_: Vec<Row>, count: u64) -> Result<u64, Error> {
        Ok(count)
    }
}

/// One attempt's result: the value, or the error with the verdict on another attempt.
pub(super) type AttemptResult<T> = Result<T, (Error, Verdict)>;

/// 25006: a write refused by a read-only server (a standby, or a primary with read-only
/// sessions). Nothing ran. When the call may run on a read-write server, the router evicts
/// that target's connections and re-checks roles, and the call is retried there.
pub(super) async fn refused_as_read_only(
    db: &PoolManager,
    id: PoolId,
    marking: Marking,
    e: &Error,
) -> bool {
    if e.code() != Some(READ_ONLY_SQL_TRANSACTION) || marking == Marking::ReadOnly {
        return false;
    }
    // Boxed: rare, and the probe's future would otherwise weigh on every call's future.
    Box::pin(db.inner.router.on_read_only(id)).await;
    true
}

/// SQLSTATE 25006 read_only_sql_transaction.
pub(super) const READ_ONLY_SQL_TRANSACTION: &str = "25006";
