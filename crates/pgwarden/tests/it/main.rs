//! Integration tests against real PostgreSQL servers started by `pgwarden-testdb`.
//!
//! One test binary with a module per area keeps link time down. Tests that only need a database
//! share one server per process; tests that stop, restart, pause or reconfigure a server start
//! their own.

mod api;
mod common;
mod config;
mod conn_transaction;
mod copy;
mod errors;
mod failover;
mod guide;
mod hooks;
mod hooks_pool;
mod http;
mod lane;
mod leak;
mod listen;
mod manager;
mod metrics;
mod pgbouncer;
mod pool_basic;
mod pool_clean;
mod pool_faults;
mod proxy;
mod read_routing;
mod regressions;
mod session_attrs;
mod tls;
mod tx_options;
