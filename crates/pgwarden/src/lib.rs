//! pgwarden: a PostgreSQL connection pool manager.
#![warn(missing_docs)]

pub mod error;
pub mod pool;

pub use error::{ConnectError, Error};
pub use pool::{Connector, KillSwitch, Pool, PoolCounters, PoolOptions, PooledConnection, Status};
