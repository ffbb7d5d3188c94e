//! `PgServerBuilder`.

use std::path::PathBuf;
use std::time::Duration;

use crate::layout::SlotGroup;
use crate::{HarnessError, PgServer};

/// Default `max_connections` of a throwaway server.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 200;

/// Options for a throwaway server; finish with [`PgServerBuilder::start`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PgServerBuilder {
    pub(crate) max_connections: u32,
    pub(crate) ssl: bool,
    pub(crate) settings: Vec<(String, String)>,
    pub(crate) pg_bin: Option<PathBuf>,
    pub(crate) slots: SlotGroup,
}

impl Default for PgServerBuilder {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            ssl: false,
            settings: Vec::new(),
            pg_bin: None,
            slots: SlotGroup::from_env(),
        }
    }
}

impl PgServerBuilder {
    /// `max_connections`. Default: 200.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// `ssl = on` with a certificate for DNS name `localhost` only, issued by a throwaway CA
    /// ([`PgServer::ca_cert_path`]). Default: off.
    pub fn ssl(mut self, on: bool) -> Self {
        self.ssl = on;
        self
    }

    /// Any `postgresql.conf` setting (written last, so it wins over the harness defaults).
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }

    /// Uses this folder of server programs instead of [`crate::find_pg_bin`].
    pub fn pg_bin(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pg_bin = Some(dir.into());
        self
    }

    /// Competes for `max` slots of a separately named group instead of the global cap
    /// (`PGWARDEN_TEST_MAX_SERVERS`). Meant for testing the cap itself.
    pub fn slot_group(mut self, name: &str, max: usize) -> Self {
        self.slots.name = format!("group-{name}");
        self.slots.max = max.max(1);
        self
    }

    /// How long to wait for a free slot. Default: 10 minutes.
    pub fn slot_wait(mut self, wait: Duration) -> Self {
        self.slots.wait = wait;
        self
    }

    /// Takes a slot, copies the cached `initdb` template (building it once), writes the
    /// config and starts the server; returns once it accepts connections.
    ///
    /// # Errors
    /// Missing binaries, a slot wait that ran out, or a failed start (with the server log tail).
    pub fn start(self) -> Result<PgServer, HarnessError> {
        PgServer::from_builder(self)
    }
}
