//! The throwaway PostgreSQL server `bench` and `check` use when `DATABASE_URL` is unset.

use std::time::Instant;

use pgwarden::config::{Config, DbTarget, Source};
use pgwarden_testdb::PgServer;

use crate::fail::Failure;

/// The harness's default `max_connections`; raised when the pools need more.
const DEFAULT_MAX_CONNECTIONS: u32 = 200;
/// Room above the pools for superusers (`superuser_reserved_connections`) and the CLI's own
/// setup connection.
const HEADROOM: u32 = 10;

/// Connections this configuration's pools may open against the primary's server.
pub(crate) fn pools_on_primary(config: &Config) -> u32 {
    let failover = if config.failover.enabled && config.failover_url.is_none() {
        config.failover.pool_max
    } else {
        0
    };
    config.pool.max_size + failover
}

/// Starts a server whose `max_connections` fits the pools, and points the configuration at
/// it. `say` prints progress lines.
pub(crate) async fn start(config: &mut Config, say: impl Fn(&str)) -> Result<PgServer, Failure> {
    let max_connections = DEFAULT_MAX_CONNECTIONS.max(pools_on_primary(config) + HEADROOM);
    say(&format!(
        "DATABASE_URL is unset: starting a throwaway PostgreSQL server (max_connections {max_connections}) ..."
    ));
    let started = Instant::now();
    let server = tokio::task::spawn_blocking(move || {
        PgServer::builder().max_connections(max_connections).start()
    })
    .await
    .map_err(|e| Failure::runtime(format!("starting the throwaway server: {e}"), None))?
    .map_err(|e| Failure::harness(&e))?;
    say(&format!(
        "  started in {} ms on 127.0.0.1:{} (stopped and removed when pgwarden ends)",
        started.elapsed().as_millis(),
        server.port()
    ));
    let target = DbTarget::parse(&server.url("postgres"))
        .map_err(|e| Failure::runtime(format!("the throwaway server's URL: {e}"), None))?;
    config.set_database_url(target, Source::Override);
    Ok(server)
}

/// Stops and removes the server (a blocking `pg_ctl stop`, off the async workers).
pub(crate) async fn stop(server: PgServer) {
    let _ = tokio::task::spawn_blocking(move || drop(server)).await;
}
