//! The statement-cache glue: prepared statements looked up, prepared and cached, and re-prepared
//! when the server no longer honours a cached one.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::MutexGuard;

use tokio_postgres::Statement;

use super::cleanliness::tracked;
use super::{PgConn, Sql};
use crate::statements::StatementCache;

/// A cached statement the server no longer honours: 0A000 "cached plan must not change result
/// type" after a schema change, or 26000 "prepared statement … does not exist" after a
/// `DISCARD ALL` / `DEALLOCATE` the cache did not see. Either way the execution did nothing.
pub(crate) fn is_stale_statement(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == "26000")
        || e.as_db_error().is_some_and(|db| {
            db.code().code() == "0A000"
                && db
                    .message()
                    .contains("cached plan must not change result type")
        })
}

impl PgConn {
    pub(super) fn cache(&self) -> MutexGuard<'_, StatementCache<Statement>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Statements in this connection's cache.
    pub fn cached_statements(&self) -> usize {
        self.cache().len()
    }

    /// Drops `sql`'s statement from the cache (the server no longer honours it).
    pub(crate) fn forget_statement(&self, sql: &str) {
        drop(self.cache().remove(sql));
    }

    /// The prepared statement for `sql`, from the cache or prepared (and cached) now.
    ///
    /// # Errors
    /// The server's error preparing it, or a closed connection.
    pub async fn prepare_cached(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.cache().get(sql) {
            return Ok(s);
        }
        self.mark_if_transaction_control(sql);
        // Boxed: a miss is rare, and tokio-postgres's prepare future is large.
        let stmt = tracked!(self, Box::pin(self.client.prepare(sql)))?;
        let evicted = self.cache().insert(sql, stmt.clone());
        // Dropping the evicted statement queues its Close on this connection.
        drop(evicted);
        Ok(stmt)
    }

    /// Runs `run` with the statement for `sql`: cached when the text is known and the cache is
    /// on. When the server says a cached plan went stale (0A000 "cached plan must not change
    /// result type", after a schema change), the statement is dropped, prepared again and run
    /// once more — safe, since the failed execution did nothing.
    pub(super) async fn with_statement<T, R, F, Fut>(
        &self,
        sql: &T,
        run: F,
    ) -> Result<R, tokio_postgres::Error>
    where
        T: Sql + ?Sized,
        F: Fn(Statement) -> Fut,
        Fut: Future<Output = Result<R, tokio_postgres::Error>>,
    {
        self.mark_if_transaction_control(sql);
        self.executing.store(false, Relaxed);
        // One await of `run` on the common path keeps this future (and every call's) small;
        // the rare paths are boxed.
        let (stmt, cached) = match (sql.prepared(), sql.text()) {
            (Some(stmt), _) => (stmt.clone(), None),
            (None, Some(text)) if !self.caching => {
                let stmt = tracked!(self, Box::pin(self.client.prepare(text)))?;
                (stmt, None)
            }
            (None, Some(text)) => (self.prepare_cached(text).await?, Some(text)),
            (None, None) => unreachable!("Sql gives a text or a statement"),
        };
        self.mark_execution_sent();
        match (tracked!(self, run(stmt)), cached) {
            (Err(e), Some(text)) if is_stale_statement(&e) => {
                drop(self.cache().remove(text));
                if self.in_tx.load(Relaxed) || self.raw.load(Relaxed) {
                    // The failure aborted the transaction: running again inside it would only
                    // meet 25P02. The next use prepares afresh.
                    return Err(e);
                }
                Box::pin(async {
                    self.executing.store(false, Relaxed);
                    let stmt = self.prepare_cached(text).await?;
                    self.mark_execution_sent();
                    tracked!(self, run(stmt))
                })
                .await
            }
            (other, _) => other,
        }
    }
}
