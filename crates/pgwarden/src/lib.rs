//! pgwarden: a PostgreSQL connection pool manager.
#![warn(missing_docs)]

pub mod config;
mod conn;
pub mod connect;
pub mod error;
pub mod manager;
pub mod pool;
pub mod retry;
pub mod statements;
pub mod tls;

pub use conn::{PgConn, PgTransaction, Sql};
pub use connect::{ConnectOptions, PgConnector, ResetPolicy};
pub use error::{ConnectError, Error};
pub use manager::{ManagerOptions, PoolManager, Snapshot, Tx};
pub use pool::{Connector, KillSwitch, Pool, PoolCounters, PoolOptions, PooledConnection, Status};

/// A pool of PostgreSQL connections.
pub type PgPool = Pool<PgConnector>;
