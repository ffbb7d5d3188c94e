//! The `pgwarden` binary, run as a user would, against real PostgreSQL.

mod bad_input;
mod bench;
mod check;
mod common;
mod config;
mod guide;
