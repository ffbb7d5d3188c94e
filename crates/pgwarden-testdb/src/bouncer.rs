//! `PgBouncer`: a real PgBouncer in transaction mode in front of a throwaway server.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::IoContext;
use crate::layout::Slot;
use crate::server::{free_port, new_server_dir, write_owned, HOST, SUPERUSER};
use crate::sys::{self, ServerUser};
use crate::{HarnessError, PgServer};

/// Environment variable naming the `pgbouncer` program (default: `/usr/sbin/pgbouncer`, then
/// `pgbouncer` on the `PATH`).
pub const PGBOUNCER_ENV: &str = "PGWARDEN_PGBOUNCER";
/// Where Debian's `pgbouncer` package installs the program.
const DEBIAN_PGBOUNCER: &str = "/usr/sbin/pgbouncer";
/// Bound on PgBouncer opening its port.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries at picking a free port before giving up.
const PORT_ATTEMPTS: usize = 5;
/// Bound on one admin console call.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `default_pool_size`: server connections per (database, user).
pub const DEFAULT_BOUNCER_POOL_SIZE: u32 = 10;

/// Finds the `pgbouncer` program: `PGWARDEN_PGBOUNCER`, then Debian's `/usr/sbin/pgbouncer`,
/// then the `PATH`.
///
/// # Errors
/// [`HarnessError::PgBouncerNotFound`] naming the package to install.
pub fn find_pgbouncer() -> Result<PathBuf, HarnessError> {
    let env = std::env::var_os(PGBOUNCER_ENV).map(PathBuf::from);
    let path = std::env::var_os("PATH");
    find_pgbouncer_from(env.as_deref(), Path::new(DEBIAN_PGBOUNCER), path.as_deref())
}

/// [`find_pgbouncer`] with its inputs injected, so tests need not touch the process
/// environment: `env` is the value of `PGWARDEN_PGBOUNCER` (when set but not a file, that is an
/// error: a wrong setting is never silently replaced), `default` the packaged program, `path`
/// the value of `PATH`.
///
/// # Errors
/// [`HarnessError::PgBouncerNotFound`].
pub fn find_pgbouncer_from(
    env: Option<&Path>,
    default: &Path,
    path: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, HarnessError> {
    if let Some(p) = env.filter(|p| !p.as_os_str().is_empty()) {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        return Err(HarnessError::PgBouncerNotFound {
            detail: format!("{PGBOUNCER_ENV}={} is not a file. ", p.display()),
        });
    }
    if default.is_file() {
        return Ok(default.to_path_buf());
    }
    path.and_then(|path| {
        std::env::split_paths(path)
            .map(|d| d.join("pgbouncer"))
            .find(|p| p.is_file())
    })
    .ok_or(HarnessError::PgBouncerNotFound {
        detail: String::new(),
    })
}

/// Options for a PgBouncer in front of a server; finish with [`PgBouncerBuilder::start`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PgBouncerBuilder {
    server: Arc<PgServer>,
    pool_mode: String,
    pool_size: u32,
    max_client_conn: u32,
    settings: Vec<(String, String)>,
}

impl PgBouncerBuilder {
    /// `pool_mode`: `transaction` (default), `session` or `statement`.
    pub fn pool_mode(mut self, mode: &str) -> Self {
        self.pool_mode = mode.to_string();
        self
    }

    /// `default_pool_size`: server connections per database and user. Default: 10.
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// `max_client_conn`. Default: 500.
    pub fn max_client_conn(mut self, n: u32) -> Self {
        self.max_client_conn = n.max(1);
        self
    }

    /// Any `[pgbouncer]` setting (written last, so it wins over the harness defaults).
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }

    /// Writes the configuration into a fresh folder and starts PgBouncer (as the `postgres`
    /// user when we are root: it refuses to run as root); returns once it accepts connections.
    ///
    /// # Errors
    /// [`HarnessError::PgBouncerNotFound`] with the install command, or a failed start with
    /// the tail of PgBouncer's log.
    pub fn start(self) -> Result<PgBouncer, HarnessError> {
        PgBouncer::from_builder(self)
    }
}

/// A PgBouncer process in its own temp folder, on a free port of 127.0.0.1, forwarding every
/// database name to one throwaway server. Clients log in as the server's superuser without a
/// password (`auth_type = trust`); the admin console is the database `pgbouncer`.
///
/// Stopped and its folder removed on drop; the harness's watchdog does it when the test
/// process dies, and the next test run's sweep removes anything left.
#[derive(Debug)]
pub struct PgBouncer {
    server: Arc<PgServer>,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    watchdog: Option<Child>,
    /// The server's slot: PgBouncer is light, but it lives only while its server does.
    _slot: Arc<Slot>,
}

impl PgBouncer {
    /// A builder for a PgBouncer in front of `server` (transaction mode, pool size 10).
    pub fn builder(server: Arc<PgServer>) -> PgBouncerBuilder {
        PgBouncerBuilder {
            server,
            pool_mode: "transaction".into(),
            pool_size: DEFAULT_BOUNCER_POOL_SIZE,
            max_client_conn: 500,
            settings: Vec::new(),
        }
    }

    /// Starts one with the defaults in front of `server`.
    ///
    /// # Errors
    /// See [`PgBouncerBuilder::start`].
    pub fn start(server: Arc<PgServer>) -> Result<PgBouncer, HarnessError> {
        Self::builder(server).start()
    }

    fn from_builder(b: PgBouncerBuilder) -> Result<PgBouncer, HarnessError> {
        let program = find_pgbouncer()?;
        let user = ServerUser::detect()?;
        let handle = new_server_dir(&user, "b")?;
        let dir = handle.dir().to_path_buf();
        write_owned(
            &dir.join("userlist.txt"),
            &format!("\"{SUPERUSER}\" \"\"\n"),
            &user,
        )?;
        let mut attempt = 0;
        let (port, child) = loop {
            attempt += 1;
            let port = free_port()?;
            write_owned(&dir.join("pgbouncer.ini"), &ini(&b, &dir, port), &user)?;
            let _ = fs::remove_file(dir.join("pgbouncer.log"));
            match launch(&program, &user, &dir, port) {
                Ok(child) => break (port, child),
                Err(e) if attempt < PORT_ATTEMPTS && port_taken(&dir) => {
                    tracing::debug!("port {port} was taken, retrying: {e}");
                }
                Err(e) => return Err(e),
            }
        };
        let (dir, watchdog) = handle.disarm();
        tracing::info!(port, "PgBouncer started in {}", dir.display());
        Ok(PgBouncer {
            _slot: b.server.slot.clone(),
            server: b.server,
            dir,
            port,
            child: Some(child),
            watchdog: Some(watchdog),
        })
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// PgBouncer's TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server behind it.
    pub fn server(&self) -> &Arc<PgServer> {
        &self.server
    }

    /// `postgres://postgres@127.0.0.1:PORT/dbname`, through PgBouncer.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{dbname}", self.port)
    }

    /// A tokio-postgres config for the superuser through PgBouncer.
    pub fn pg_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(HOST)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// PgBouncer's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pgbouncer.log")
    }

    /// PgBouncer's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Runs `SHOW <what>` (`CLIENTS`, `SERVERS`, `POOLS`, ...) on the admin console and returns
    /// its rows, each keyed by column name.
    ///
    /// # Errors
    /// [`HarnessError::Sql`] with psql's error text.
    pub fn show(&self, what: &str) -> Result<Vec<HashMap<String, String>>, HarnessError> {
        if !what.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(HarnessError::InvalidName {
                what: "SHOW subject",
                name: what.to_string(),
            });
        }
        let mut cmd = Command::new(self.server.bin.join("psql"));
        cmd.args(["-X", "-A", "-F", "\x1f", "-R", "\x1e", "-P", "footer=off"])
            .arg("-d")
            .arg(format!(
                "host={HOST} port={} user={SUPERUSER} dbname=pgbouncer",
                self.port
            ))
            .arg("-c")
            .arg(format!("SHOW {what}"))
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .current_dir("/");
        let out = sys::run_unchecked(&mut cmd, "psql (PgBouncer console)", ADMIN_TIMEOUT, None)?;
        if !out.status.success() {
            return Err(HarnessError::Sql {
                dbname: "pgbouncer".into(),
                what: format!("SHOW {what}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut records = text
            .trim_end_matches('\n')
            .split('\x1e')
            .filter(|r| !r.is_empty());
        let header: Vec<&str> = records.next().unwrap_or_default().split('\x1f').collect();
        Ok(records
            .map(|r| {
                header
                    .iter()
                    .zip(r.split('\x1f'))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect())
    }

    /// Backend pids (`pg_backend_pid()` on the server) of PgBouncer's server connections.
    ///
    /// # Errors
    /// As [`PgBouncer::show`].
    pub fn server_pids(&self) -> Result<Vec<i32>, HarnessError> {
        Ok(self
            .show("SERVERS")?
            .iter()
            .filter_map(|row| row.get("remote_pid")?.parse().ok())
            .filter(|&pid| pid != 0)
            .collect())
    }

    /// `pg_terminate_backend` on every server connection PgBouncer holds right now; returns
    /// how many the server terminated.
    ///
    /// # Errors
    /// As [`PgBouncer::show`] and [`PgServer::psql`].
    pub fn terminate_server_connections(&self) -> Result<u64, HarnessError> {
        let pids = self.server_pids()?;
        if pids.is_empty() {
            return Ok(0);
        }
        let list: Vec<String> = pids.iter().map(i32::to_string).collect();
        let sql = format!(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
             FROM unnest(ARRAY[{}]::int4[]) AS pid",
            list.join(",")
        );
        let out = self.server.psql("postgres", &sql)?;
        out.trim().parse().map_err(|_| HarnessError::Sql {
            dbname: "postgres".into(),
            what: "pg_terminate_backend".into(),
            stderr: format!("unexpected output {out:?}"),
        })
    }

    /// Stops PgBouncer at once (SIGTERM: immediate shutdown), killing it if it lingers.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            sys::signal(pid, Signal::SIGTERM);
            if !sys::wait_until(Duration::from_secs(5), || {
                matches!(child.try_wait(), Ok(Some(_)))
            }) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!("could not remove {}: {e}", self.dir.display());
        }
        if let Some(mut child) = self.watchdog.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `pgbouncer.ini`: every database name goes to the server over loopback TCP (so the server
/// sees PgBouncer's connections as `client_addr` 127.0.0.1 and their pids in `SHOW SERVERS`).
fn ini(b: &PgBouncerBuilder, dir: &Path, port: u16) -> String {
    let mut text = String::from("; written by pgwarden-testdb\n[databases]\n");
    let _ = writeln!(text, "* = host={HOST} port={}", b.server.port());
    text.push_str("\n[pgbouncer]\n");
    let path = |name: &str| dir.join(name).display().to_string();
    let fixed: [(&str, String); 15] = [
        ("listen_addr", HOST.into()),
        ("listen_port", port.to_string()),
        ("unix_socket_dir", dir.display().to_string()),
        ("auth_type", "trust".into()),
        ("auth_file", path("userlist.txt")),
        ("admin_users", SUPERUSER.into()),
        ("pool_mode", b.pool_mode.clone()),
        ("default_pool_size", b.pool_size.to_string()),
        ("max_client_conn", b.max_client_conn.to_string()),
        ("logfile", path("pgbouncer.log")),
        ("pidfile", path("pgbouncer.pid")),
        // After a failed server login PgBouncer waits this long before the next try (15 s
        // by default): far too long for tests that restart servers.
        ("server_login_retry", "1".into()),
        // Sent by JDBC and others; tokio-postgres does not, but a strict PgBouncer refuses
        // unknown startup parameters.
        ("ignore_startup_parameters", "extra_float_digits".into()),
        ("log_connections", "0".into()),
        ("log_disconnections", "0".into()),
    ];
    // PgBouncer's ini values are not quoted; the harness's paths hold no spaces.
    for (name, value) in fixed.iter() {
        let _ = writeln!(text, "{name} = {value}");
    }
    for (name, value) in &b.settings {
        let _ = writeln!(text, "{name} = {value}");
    }
    text
}

/// Starts PgBouncer in the foreground (as our child) and waits until its port answers.
fn launch(program: &Path, user: &ServerUser, dir: &Path, port: u16) -> Result<Child, HarnessError> {
    let mut cmd = Command::new(program);
    cmd.arg(dir.join("pgbouncer.ini"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    user.apply(&mut cmd);
    let mut child = cmd
        .spawn()
        .ctx(|| format!("starting {}", program.display()))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let started = Instant::now();
    let mut exited = None;
    let up = sys::wait_until(START_TIMEOUT, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
    let reason = match (up, exited) {
        (true, None) => return Ok(child),
        (_, Some(status)) => format!("it exited ({status})"),
        (false, None) => {
            let _ = child.kill();
            let _ = child.wait();
            format!("port {port} did not open within {:?}", started.elapsed())
        }
    };
    Err(HarnessError::BouncerStartFailed {
        reason,
        log_path: dir.join("pgbouncer.log"),
        log_tail: sys::file_tail(&dir.join("pgbouncer.log"), 25),
    })
}

fn port_taken(dir: &Path) -> bool {
    sys::file_tail(&dir.join("pgbouncer.log"), 30).contains("Address already in use")
}
