//! The role probe: which of a connector's hosts is up, and which accepts writes.
//!
//! Each host is asked on a fresh connection of its own (not a pooled one), so a multi-host
//! target reports every host, and a read-only host answers even when the target requires
//! `target_session_attrs=read-write`.

use std::time::Duration;

use super::PgConnector;

/// What one host said about its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A primary that accepts writes.
    ReadWrite,
    /// A primary whose sessions are read-only (`default_transaction_read_only=on`).
    ReadOnly,
    /// A standby in recovery (`pg_is_in_recovery()`).
    Standby,
}

impl Role {
    /// Whether writes can run there.
    pub fn writable(self) -> bool {
        self == Role::ReadWrite
    }
}

/// The probe's answer for one host of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRole {
    /// The host's index in the target's host list.
    pub index: usize,
    /// `host:port/db`, without credentials.
    pub host: String,
    /// Its role, or why it could not be asked (unreachable, timed out, refused).
    pub role: Result<Role, String>,
}

/// The probe's statement: recovery state and the session's read-only default in one round trip.
pub(crate) const PROBE_SQL: &str =
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')";

impl PgConnector {
    /// Asks every host of the target its role, all at once, each under `timeout` (handshake
    /// and query together).
    pub async fn probe_roles(&self, timeout: Duration) -> Vec<HostRole> {
        let probes = self.hosts.iter().enumerate().map(|(index, h)| async move {
            let role = match tokio::time::timeout(timeout, self.probe_one(&h.config, timeout)).await
            {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
            };
            HostRole {
                index,
                host: h.label.clone(),
                role,
            }
        });
        futures_util::future::join_all(probes).await
    }

    async fn probe_one(
        &self,
        config: &tokio_postgres::Config,
        timeout: Duration,
    ) -> Result<Role, String> {
        let row = self
            .probe_query(config, timeout, "role probe", PROBE_SQL)
            .await?;
        let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
        let read_only: String = row.try_get(1).map_err(|e| e.to_string())?;
        Ok(if in_recovery {
            Role::Standby
        } else if read_only == "on" {
            Role::ReadOnly
        } else {
            Role::ReadWrite
        })
    }

    /// The current WAL position (`pg_current_wal_lsn()`, as text) of the host connections go
    /// to first (the read-write one, once the role probe found it), on a fresh connection,
    /// under `timeout`. An error on a standby (recovery is in progress) or an unreachable host.
    pub(crate) async fn current_wal_lsn(&self, timeout: Duration) -> Result<String, String> {
        let first = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        let Some(h) = self.hosts.get(first).or(self.hosts.first()) else {
            return Err("no host".into());
        };
        let sql = "SELECT pg_current_wal_lsn()::text";
        let row = tokio::time::timeout(
            timeout,
            self.probe_query(&h.config, timeout, "lag probe", sql),
        )
        .await
        .map_err(|_| format!("no answer within {}ms", timeout.as_millis()))??;
        row.try_get(0).map_err(|e| e.to_string())
    }

    /// One statement on a fresh connection to one host, told apart from the pool's own
    /// sessions in pg_stat_activity by `what` in its application_name.
    async fn probe_query(
        &self,
        config: &tokio_postgres::Config,
        timeout: Duration,
        what: &str,
        sql: &str,
    ) -> Result<tokio_postgres::Row, String> {
        let mut c = config.clone();
        // The probe must reach a read-only host too, to learn that it is one.
        c.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
        c.connect_timeout(timeout);
        let name = format!(
            "{} ({what})",
            config.get_application_name().unwrap_or("pgwarden")
        );
        c.application_name(&name);
        let (client, connection) = c
            .connect(self.tls.clone())
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let row = client.query_one(sql, &[]).await;
        drop(client);
        // The connection ends once the client is gone; abort in case the server stalls.
        driver.abort();
        row.map_err(|e| e.to_string())
    }
}
