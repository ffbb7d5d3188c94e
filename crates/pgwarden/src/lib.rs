//! pgwarden: a PostgreSQL connection pool manager — clean connections, safe retries, failover,
//! metrics.
//!
//! Configuration comes from [`config`]: profiles, environment variables, validation.
#![forbid(unsafe_code)]

pub mod config;

pub use config::{
    Config, ConfigError, DbTarget, Problem, Profile, Secret, Setting, Source, SslMode, TargetError,
};
