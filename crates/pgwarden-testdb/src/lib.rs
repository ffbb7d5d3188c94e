#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod admin;
mod bouncer;
mod builder;
mod error;
mod faults;
mod layout;
mod pgbin;
mod replica;
mod server;
mod sys;
mod template;
mod tls;

pub use admin::{quote_ident, quote_literal, Session, ADMIN_APPLICATION_NAME};
pub use bouncer::{
    find_pgbouncer, find_pgbouncer_from, PgBouncer, PgBouncerBuilder, DEFAULT_BOUNCER_POOL_SIZE,
    PGBOUNCER_ENV,
};
pub use builder::{PgServerBuilder, DEFAULT_MAX_CONNECTIONS};
pub use error::HarnessError;
pub use layout::{temp_root, DEFAULT_MAX_SERVERS, DEFAULT_SLOT_WAIT, MAX_SERVERS_ENV};
pub use pgbin::{find_pg_bin, find_pg_bin_from, DEBIAN_VERSIONS_ROOT, PG_BIN_ENV};
pub use server::{PgServer, StartupTiming, StopMode, HOST, SUPERUSER};
pub use tls::generate_ca;
