//! pgwarden: a PostgreSQL connection pool manager — clean connections, safe retries, failover,
//! metrics.
//!
//! - [`config`]: profiles (development / staging / production) and `DB_*` environment
//!   variables, validated all at once, secrets redacted.
//! - [`Pool`]: one pool to one target — a maximum never exceeded, FIFO waiters, validation on
//!   reuse, idle and lifetime reaping, connections never handed out inside a transaction or
//!   with a statement in flight, cancellation-safe acquire.
//! - [`PoolManager`]: the query API — a per-connection statement cache, query timeouts that
//!   cancel on the server, retries that never run a write twice ("outcome unknown" instead),
//!   transactions (isolation level, read only, savepoints) rerun whole on serialization
//!   failures and deadlocks, status and metrics.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = pgwarden_testdb::PgServer::shared()?;
//! # let database_url = server.url("postgres");
//! use pgwarden::{Config, PoolManager};
//!
//! // In a service: `PoolManager::from_env()`, reading DATABASE_URL, DB_POOL_MAX, …
//! let config = Config::from_vars([("DATABASE_URL", database_url.as_str()), ("DB_POOL_MIN", "2")])?;
//! let db = PoolManager::from_config(&config).await?;
//!
//! db.execute("CREATE TABLE IF NOT EXISTS doc_t (id int8 PRIMARY KEY)", &[]).await?;
//! // A write: never retried once it may have run; a lost connection says "outcome unknown".
//! db.execute("INSERT INTO doc_t VALUES ($1) ON CONFLICT DO NOTHING", &[&1i64]).await?;
//! // A read may run twice: retried after a lost connection too.
//! let row = db.query_one("SELECT $1::int4 + 1", &[&41i32]).idempotent().await?;
//! assert_eq!(row.get::<_, i32>(0), 42);
//!
//! println!("{}", db.status());
//! println!("{}", serde_json::to_string(&db.metrics())?);
//! db.close(std::time::Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
mod conn;
pub mod connect;
pub mod error;
pub mod health;
mod hooks;
#[cfg(feature = "http")]
pub mod http;
pub mod lane;
pub mod listen;
pub mod manager;
pub mod metrics;
pub mod pool;
mod retry;
mod setup;
mod sqlstate;
mod statements;
mod tls;

pub use config::{
    Config, ConfigError, DbTarget, Problem, Profile, Secret, Setting, Source, SslMode, TargetError,
};
pub use conn::{PgConn, PgTransaction, Sql};
pub use connect::{ConnectOptions, PgConnector, ResetPolicy};
pub use error::{AcquireError, BuildError, ConnectError, Error, TimeoutPhase};
pub use hooks::{
    AfterConnect, AfterRelease, BeforeAcquire, CheckFuture, HookFuture, HookResult, Release,
    ReleaseFuture,
};
pub use listen::{Listener, ListenerEvent};
pub use manager::{CopyInSink, CopyOutStream};
pub use manager::{
    GenericClient, IsolationLevel, ManagerOptions, PoolManager, RowStream, Savepoint, Snapshot, Tx,
    TxCall, TxOptions,
};
pub use pool::{Connector, KillSwitch, Pool, PoolCounters, PoolOptions, PooledConnection, Status};
pub use statements::CacheStats;
pub use tls::{MakeRustls, TlsError};

/// A pool of PostgreSQL connections.
pub type PgPool = Pool<PgConnector>;

/// The guide's Rust blocks, run as doc tests so that the guide cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/GUIDE.md")]
pub struct GuideDoctests;
