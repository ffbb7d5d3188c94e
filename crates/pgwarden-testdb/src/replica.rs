//! Streaming replicas (`pg_basebackup -R`) and promotion.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::IoContext;
use crate::server::{new_server_dir, Launch};
use crate::sys;
use crate::tls::{install_key_files, TlsFiles};
use crate::{HarnessError, PgServer};

impl PgServer {
    /// Starts a streaming replica of this server: `pg_basebackup -R` into a new folder,
    /// started with the same settings (hot standby refuses limits below the primary's) and
    /// TLS files, on its own port. Returns once it accepts read-only connections.
    ///
    /// The replica shares this server's slot, so primary + replica never wait on each other.
    ///
    /// # Errors
    /// pg_basebackup or start failures (with the log tail).
    pub fn start_replica(&self) -> Result<PgServer, HarnessError> {
        let started = Instant::now();
        if !self.is_running() {
            return Err(HarnessError::NotRunning);
        }
        let handle = new_server_dir(&self.user, "r")?;
        let dir = handle.dir().to_path_buf();
        let mut cmd = Command::new(self.bin.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(dir.join("data"))
            .args(["-R", "-X", "stream", "-c", "fast", "-U", "postgres", "-h"])
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .current_dir(&dir);
        self.user.apply(&mut cmd);
        sys::run(&mut cmd, "pg_basebackup", Duration::from_secs(300))?;
        let tls = match &self.tls {
            Some(primary) => {
                let files = TlsFiles {
                    ca_cert: dir.join("ca.crt"),
                    server_cert: dir.join("server.crt"),
                    server_key: dir.join("server.key"),
                };
                for (from, to) in [
                    (&primary.ca_cert, &files.ca_cert),
                    (&primary.server_cert, &files.server_cert),
                    (&primary.server_key, &files.server_key),
                ] {
                    fs::copy(from, to).ctx(|| format!("copying {}", from.display()))?;
                }
                install_key_files(&files, &self.user)?;
                Some(files)
            }
            None => None,
        };
        Launch {
            bin: &self.bin,
            user: self.user,
            spec: self.spec.clone(),
            tls,
            slot: self.slot.clone(),
            started,
            template_build: None,
        }
        .run(handle)
    }

    /// `pg_ctl promote`, then waits until `pg_is_in_recovery()` is false.
    ///
    /// # Errors
    /// pg_ctl failures or a timeout.
    pub fn promote(&self) -> Result<(), HarnessError> {
        {
            let _control = self.lock_control();
            let mut cmd = Command::new(self.bin.join("pg_ctl"));
            cmd.arg("promote")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-w", "-t", "60"])
                .current_dir(&self.dir);
            self.user.apply(&mut cmd);
            sys::run(&mut cmd, "pg_ctl promote", Duration::from_secs(70))?;
        }
        let waited = Duration::from_secs(30);
        let mut last = Ok(String::new());
        if sys::wait_until(waited, || {
            last = self.psql("postgres", "SELECT pg_is_in_recovery()");
            matches!(&last, Ok(s) if s == "f")
        }) {
            return Ok(());
        }
        last?;
        Err(HarnessError::Timeout {
            what: "the promoted server to leave recovery".into(),
            waited,
        })
    }
}
