//! Does the target behave like a transaction-mode pooler (PgBouncer, PgDog, ...)? There, one
//! client connection is served by whichever server connection is free at each transaction, so
//! prepared statements (the statement cache) can meet a server connection that lacks them.

use std::time::Duration;

use pgwarden::{PgConnector, Pool, PooledConnection};

/// How long the second look at the backend may wait behind the other connection's open
/// transaction. A server never makes it wait; a pooler with one free server connection does.
const BLOCKED_AFTER: Duration = Duration::from_secs(2);

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooler {
    /// The backend changed between two transactions on one connection.
    Transaction,
    /// One backend per connection, as on a server (or a session-mode pooler).
    None,
    /// Not checked: the pool may not open the two connections the probe needs.
    Unknown,
}

/// `SELECT pg_backend_pid()` in two separate transactions on connection A, while connection B
/// holds a transaction open in between. B's transaction takes the server connection A has
/// just released (a pooler reuses the most recent one), so behind a transaction-mode pooler A's
/// second transaction runs on another backend — or waits for B, when the pooler has no other.
/// On a server, A keeps its backend. Plain simple-protocol statements: nothing prepared.
pub(crate) async fn detect(pool: &Pool<PgConnector>) -> Pooler {
    if pool.status().max < 2 {
        return Pooler::Unknown;
    }
    let (Ok(a), Ok(b)) = (pool.get().await, pool.get().await) else {
        return Pooler::Unknown;
    };
    let Some(first) = backend_pid(&a).await else {
        return Pooler::Unknown;
    };
    if b.client_marking_raw()
        .batch_execute("BEGIN; SELECT 1")
        .await
        .is_err()
    {
        return Pooler::Unknown;
    }
    let second = tokio::time::timeout(BLOCKED_AFTER, backend_pid(&a)).await;
    let _ = b.client_marking_raw().batch_execute("ROLLBACK").await;
    match second {
        Ok(Some(pid)) if pid == first => Pooler::None,
        Ok(Some(_)) => Pooler::Transaction,
        Ok(None) => Pooler::Unknown,
        Err(_) => {
            // A's statement is still queued behind B's transaction somewhere: do not reuse A.
            PooledConnection::discard(a);
            Pooler::Transaction
        }
    }
}

async fn backend_pid(conn: &PooledConnection<PgConnector>) -> Option<i32> {
    let messages = conn
        .client_marking_raw()
        .simple_query("SELECT pg_backend_pid()")
        .await
        .ok()?;
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
        _ => None,
    })
}
