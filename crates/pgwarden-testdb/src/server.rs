//! `PgServer`: starting, stopping and dropping one throwaway server.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::builder::PgServerBuilder;
use crate::error::IoContext;
use crate::layout::{self, Slot};
use crate::sys::{self, ServerUser};
use crate::tls::TlsFiles;
use crate::{template, HarnessError};

/// The superuser every server is initialised with.
pub const SUPERUSER: &str = "postgres";
/// The TCP address servers listen on.
pub const HOST: &str = "127.0.0.1";
/// Bound on `pg_ctl start -w` (recovery after an immediate stop included).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on a stop before the harness falls back to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Tries at picking a free port before giving up.
const PORT_ATTEMPTS: usize = 5;

/// How `stop` shuts the server down (`pg_ctl stop -m ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for every client to disconnect (SIGTERM).
    Smart,
    /// Roll back and disconnect clients, then a clean shutdown (SIGINT).
    Fast,
    /// Abort without a shutdown checkpoint; the next start runs crash recovery (SIGQUIT).
    Immediate,
}

impl StopMode {
    fn signal(self) -> Signal {
        match self {
            StopMode::Smart => Signal::SIGTERM,
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        }
    }
}

/// How long a start took, for reporting.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct StartupTiming {
    /// From `start()` to accepting connections (slot wait included).
    pub total: Duration,
    /// Time spent in `initdb` when this start had to build the template.
    pub template_build: Option<Duration>,
}

/// Mutable process-control state.
#[derive(Debug, Default)]
pub(crate) struct ControlState {
    /// Processes we sent SIGSTOP to; they get SIGCONT before anything else touches the server.
    pub(crate) paused: Vec<i32>,
}

impl ControlState {
    /// Lets every paused process run again.
    pub(crate) fn resume_paused(&mut self) {
        // Children before the postmaster (first in the list), so it finds them running.
        for pid in self.paused.drain(..).rev() {
            sys::signal(pid, Signal::SIGCONT);
        }
    }
}

/// A throwaway PostgreSQL server in its own temp folder, stopped and removed on drop.
///
/// `Send + Sync`: every method takes `&self`, so tests can share it through an `Arc` and drive
/// faults from `spawn_blocking`. Process-control methods are serialised by an internal lock.
#[derive(Debug)]
pub struct PgServer {
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) port: u16,
    pub(crate) user: ServerUser,
    pub(crate) tls: Option<TlsFiles>,
    /// Settings written to `pgwarden.conf` (a replica copies them: hot standby demands
    /// limits at least as high as the primary's).
    pub(crate) spec: ConfSpec,
    /// Held while the server lives; shared with replicas.
    pub(crate) slot: Arc<Slot>,
    /// Lock rule: held for the whole of a start/stop/pause/resume, never while running SQL.
    pub(crate) control: Mutex<ControlState>,
    watchdog: Mutex<Option<Child>>,
    timing: StartupTiming,
}

/// What goes into a server's `pgwarden.conf`.
#[derive(Debug, Clone)]
pub(crate) struct ConfSpec {
    pub(crate) max_connections: u32,
    pub(crate) settings: Vec<(String, String)>,
}

/// Removes a half-made server folder (and stops its postmaster) unless disarmed.
struct DirGuard {
    dir: Option<PathBuf>,
    watchdog: Option<Child>,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            layout::stop_leftover(&dir.join("data"));
            layout::stop_leftover_bouncer(&dir);
            let _ = fs::remove_dir_all(&dir);
        }
        if let Some(mut child) = self.watchdog.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn quote_conf(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn conf_text(dir: &Path, port: u16, spec: &ConfSpec, tls: Option<&TlsFiles>) -> String {
    let mut text = String::from("# written by pgwarden-testdb\n");
    let fixed: [(&str, String); 14] = [
        ("listen_addresses", HOST.into()),
        ("port", port.to_string()),
        ("unix_socket_directories", dir.display().to_string()),
        ("max_connections", spec.max_connections.to_string()),
        ("shared_buffers", "32MB".into()),
        ("fsync", "off".into()),
        // Not `off`: with fsync off a commit costs only a write to the page cache, and an
        // immediate stop (crash) must never lose an acknowledged write — fault tests count them.
        ("synchronous_commit", "on".into()),
        ("full_page_writes", "off".into()),
        ("logging_collector", "off".into()),
        ("log_connections", "off".into()),
        ("wal_level", "replica".into()),
        ("max_wal_senders", "10".into()),
        ("password_encryption", "scram-sha-256".into()),
        ("dynamic_shared_memory_type", "posix".into()),
    ];
    for (name, value) in fixed.iter() {
        let _ = writeln!(text, "{name} = {}", quote_conf(value));
    }
    if let Some(tls) = tls {
        let _ = writeln!(text, "ssl = on");
        let _ = writeln!(
            text,
            "ssl_cert_file = {}",
            quote_conf(&tls.server_cert.display().to_string())
        );
        let _ = writeln!(
            text,
            "ssl_key_file = {}",
            quote_conf(&tls.server_key.display().to_string())
        );
    }
    for (name, value) in &spec.settings {
        let _ = writeln!(text, "{name} = {}", quote_conf(value));
    }
    text
}

const HBA: &str = "\
# written by pgwarden-testdb
local   all             all                         trust
local   replication     all                         trust
host    all             postgres    127.0.0.1/32    trust
host    replication     all         127.0.0.1/32    trust
host    all             all         127.0.0.1/32    scram-sha-256
";

/// Backstop: when the test process dies (even by SIGKILL), stop the server (or PgBouncer) and remove its
/// folder. Exits by itself once the folder is gone (normal drop). Arguments: pid, folder.
const WATCHDOG: &str = r#"
P=$1; D=$2
# A zombie counts as gone: the reaper of orphans may be slow to collect it.
alive() {
  s=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' /proc/$1/status 2>/dev/null)
  case "$s" in ''|Z|X) return 1;; esac
  return 0
}
sig_children() {
  for f in /proc/[0-9]*/stat; do
    read -r l < "$f" 2>/dev/null || continue
    set -- ${l##*") "}
    if [ "$2" = "$pm" ]; then p=${f#/proc/}; kill -$SIG "${p%/stat}" 2>/dev/null; fi
  done
}
while [ -d "$D" ] && alive "$P"; do sleep 0.2; done
[ -d "$D" ] || exit 0
pm=$(head -n1 "$D/data/postmaster.pid" 2>/dev/null)
if [ -n "$pm" ] && alive "$pm"; then
  SIG=CONT; kill -CONT "$pm" 2>/dev/null; sig_children
  kill -QUIT "$pm" 2>/dev/null
  i=0; while alive "$pm" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  if alive "$pm"; then SIG=KILL; sig_children; kill -KILL "$pm" 2>/dev/null; fi
fi
# A PgBouncer folder: SIGTERM is PgBouncer's immediate shutdown.
bp=$(head -n1 "$D/pgbouncer.pid" 2>/dev/null)
if [ -n "$bp" ] && alive "$bp" && [ "$(cat /proc/$bp/comm 2>/dev/null)" = pgbouncer ]; then
  kill -TERM "$bp" 2>/dev/null
  i=0; while alive "$bp" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  alive "$bp" && kill -KILL "$bp" 2>/dev/null
fi
rm -rf "$D"
"#;

fn spawn_watchdog(dir: &Path) -> Result<Child, HarnessError> {
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("pgwarden-testdb-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .current_dir("/")
        // Own process group: a Ctrl-C aimed at the test run must not kill the backstop.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ctx(|| "starting the cleanup watchdog (sh)".to_string())
}

/// Creates `servers/<unique>` owned by the server user, with the owner file and a watchdog.
pub(crate) fn new_server_dir(
    user: &ServerUser,
    prefix: &str,
) -> Result<DirGuardHandle, HarnessError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let parent = layout::servers_dir();
    layout::ensure_dir(&parent)?;
    let dir = parent.join(format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let mut guard = DirGuard {
        dir: Some(dir.clone()),
        watchdog: None,
    };
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .ctx(|| format!("chmod {}", dir.display()))?;
    fs::write(dir.join("owner"), layout::owner_tag())
        .ctx(|| format!("writing {}/owner", dir.display()))?;
    user.chown(&dir)?;
    user.chown(&dir.join("owner"))?;
    guard.watchdog = Some(spawn_watchdog(&dir)?);
    Ok(DirGuardHandle(guard))
}

/// A server folder under construction; [`DirGuardHandle::finish`] hands it to a `PgServer`.
pub(crate) struct DirGuardHandle(DirGuard);

impl DirGuardHandle {
    pub(crate) fn dir(&self) -> &Path {
        self.0.dir.as_deref().expect("armed")
    }

    pub(crate) fn disarm(mut self) -> (PathBuf, Child) {
        let dir = self.0.dir.take().expect("armed");
        let child = self.0.watchdog.take().expect("watchdog spawned");
        (dir, child)
    }
}

pub(crate) fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .ctx(|| "binding 127.0.0.1:0 to pick a free port".to_string())?;
    Ok(listener
        .local_addr()
        .ctx(|| "reading the picked port".to_string())?
        .port())
}

pub(crate) fn write_owned(path: &Path, text: &str, user: &ServerUser) -> Result<(), HarnessError> {
    fs::write(path, text).ctx(|| format!("writing {}", path.display()))?;
    user.chown(path)
}

/// Everything needed to launch a prepared data dir; shared by primaries and replicas.
pub(crate) struct Launch<'a> {
    pub(crate) bin: &'a Path,
    pub(crate) user: ServerUser,
    pub(crate) spec: ConfSpec,
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) slot: Arc<Slot>,
    pub(crate) started: Instant,
    pub(crate) template_build: Option<Duration>,
}

impl Launch<'_> {
    /// Writes the config and starts the server, retrying with another port if the picked one
    /// was taken in the meantime.
    pub(crate) fn run(self, handle: DirGuardHandle) -> Result<PgServer, HarnessError> {
        let dir = handle.dir().to_path_buf();
        let data_dir = dir.join("data");
        write_owned(&data_dir.join("pg_hba.conf"), HBA, &self.user)?;
        let mut attempt = 0;
        let port = loop {
            attempt += 1;
            let port = free_port()?;
            write_owned(
                &dir.join("pgwarden.conf"),
                &conf_text(&dir, port, &self.spec, self.tls.as_ref()),
                &self.user,
            )?;
            match pg_ctl_start(
                self.bin,
                &self.user,
                &data_dir,
                &dir.join("server.log"),
                true,
            ) {
                Ok(()) => break port,
                Err(e) if attempt < PORT_ATTEMPTS && port_taken(&dir.join("server.log")) => {
                    tracing::debug!("port {port} was taken, retrying: {e}");
                    layout::stop_leftover(&data_dir);
                    let _ = fs::remove_file(dir.join("server.log"));
                }
                Err(e) => return Err(e),
            }
        };
        let (dir, watchdog) = handle.disarm();
        let timing = StartupTiming {
            total: self.started.elapsed(),
            template_build: self.template_build,
        };
        tracing::info!(
            ?timing,
            port,
            "throwaway PostgreSQL started in {}",
            dir.display()
        );
        Ok(PgServer {
            bin: self.bin.to_path_buf(),
            data_dir,
            dir,
            port,
            user: self.user,
            tls: self.tls,
            spec: self.spec,
            slot: self.slot,
            control: Mutex::new(ControlState::default()),
            watchdog: Mutex::new(Some(watchdog)),
            timing,
        })
    }
}

fn port_taken(log: &Path) -> bool {
    let text = sys::file_tail(log, 30);
    text.contains("could not bind") || text.contains("Address already in use")
}

/// `pg_ctl start`; with `wait`, until it accepts connections (after recovery if needed).
pub(crate) fn pg_ctl_start(
    bin: &Path,
    user: &ServerUser,
    data_dir: &Path,
    log: &Path,
    wait: bool,
) -> Result<(), HarnessError> {
    let mut cmd = Command::new(bin.join("pg_ctl"));
    cmd.arg("start")
        .arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(log)
        .arg("-t")
        .arg(START_TIMEOUT.as_secs().to_string())
        .arg(if wait { "-w" } else { "-W" })
        .current_dir(data_dir.parent().unwrap_or(data_dir));
    user.apply(&mut cmd);
    let out = sys::run_unchecked(
        &mut cmd,
        "pg_ctl start",
        START_TIMEOUT + Duration::from_secs(10),
        None,
    );
    let reason = match out {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => sys::command_error("pg_ctl start", &out).to_string(),
        Err(e) => e.to_string(),
    };
    Err(HarnessError::StartFailed {
        data_dir: data_dir.to_path_buf(),
        reason,
        log_path: log.to_path_buf(),
        log_tail: sys::file_tail(log, 25),
    })
}

impl PgServer {
    /// A builder with the defaults (`max_connections` 200, no TLS).
    pub fn builder() -> PgServerBuilder {
        PgServerBuilder::default()
    }

    /// Starts a server with the defaults.
    ///
    /// # Errors
    /// See [`PgServerBuilder::start`].
    pub fn start() -> Result<PgServer, HarnessError> {
        Self::builder().start()
    }

    /// One default server per test process, for tests that only need their own database
    /// (use [`PgServer::create_database`]). It lives until the process exits; its watchdog then
    /// stops it and removes its folder.
    ///
    /// # Errors
    /// See [`PgServerBuilder::start`]; a failed start is retried by the next call.
    pub fn shared() -> Result<Arc<PgServer>, HarnessError> {
        static SHARED: Mutex<Option<Arc<PgServer>>> = Mutex::new(None);
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = shared.as_ref() {
            return Ok(server.clone());
        }
        let server = Arc::new(Self::start()?);
        *shared = Some(server.clone());
        Ok(server)
    }

    pub(crate) fn from_builder(b: PgServerBuilder) -> Result<PgServer, HarnessError> {
        let started = Instant::now();
        layout::sweep_once();
        let bin = match b.pg_bin {
            Some(bin) => bin,
            None => crate::find_pg_bin()?,
        };
        let user = ServerUser::detect()?;
        let slot = Arc::new(b.slots.acquire()?);
        let (template, template_build) = template::ensure(&bin, &user)?;
        let handle = new_server_dir(&user, "s")?;
        let dir = handle.dir().to_path_buf();
        // `cp -a` keeps the server user's ownership and the 0700 mode of the data dir.
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(&template).arg(dir.join("data"));
        sys::run(
            &mut cp,
            "cp -a <template> <data dir>",
            Duration::from_secs(120),
        )?;
        let tls = if b.ssl {
            Some(crate::tls::generate_server_tls(&dir, &user)?)
        } else {
            None
        };
        Launch {
            bin: &bin,
            user,
            spec: ConfSpec {
                max_connections: b.max_connections,
                settings: b.settings,
            },
            tls,
            slot,
            started,
            template_build,
        }
        .run(handle)
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port (stays the same across `stop`/`start_again`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Folder of the Unix socket (the server's temp folder).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (`pg_ctl -l`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The superuser, `"postgres"`; it logs in without a password over loopback and the socket.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// `postgres://postgres@127.0.0.1:PORT/dbname`.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{dbname}", self.port)
    }

    /// Key=value connection string through the Unix socket.
    pub fn socket_url(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={SUPERUSER} dbname={dbname}",
            self.dir.display(),
            self.port
        )
    }

    /// A tokio-postgres config for the superuser over TCP.
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

    /// CA certificate (PEM) that issued the server certificate, when started with `ssl(true)`.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_cert.as_path())
    }

    /// How long this server took to start.
    pub fn startup_timing(&self) -> StartupTiming {
        self.timing
    }

    /// The postmaster's pid from `postmaster.pid`, when it is alive.
    pub fn postmaster_pid(&self) -> Option<i32> {
        sys::read_postmaster_pid(&self.data_dir).filter(|&pid| sys::pid_alive(pid))
    }

    /// True while a postmaster runs for this data dir.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    pub(crate) fn lock_control(&self) -> MutexGuard<'_, ControlState> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the server (the same signals as `pg_ctl stop -m ...`), resuming it first if it
    /// is paused, and waits until the postmaster is gone.
    ///
    /// # Errors
    /// [`HarnessError::Timeout`] when a smart/fast stop takes longer than a minute (clients
    /// still connected with `Smart`); the server is then killed.
    pub fn stop(&self, mode: StopMode) -> Result<(), HarnessError> {
        let mut control = self.lock_control();
        self.stop_locked(&mut control, mode)
    }

    pub(crate) fn stop_locked(
        &self,
        control: &mut ControlState,
        mode: StopMode,
    ) -> Result<(), HarnessError> {
        control.resume_paused();
        let Some(pid) = self.postmaster_pid() else {
            return Ok(());
        };
        sys::signal(pid, mode.signal());
        if sys::wait_until(STOP_TIMEOUT, || !sys::pid_alive(pid)) {
            return Ok(());
        }
        sys::kill_postmaster(pid, Duration::from_secs(5));
        Err(HarnessError::Timeout {
            what: format!("the postmaster (pid {pid}) to stop with {mode:?}; it was killed"),
            waited: STOP_TIMEOUT,
        })
    }

    /// Starts the stopped server again (same port and data dir) and waits until it accepts
    /// connections — after an immediate stop, until crash recovery has finished.
    ///
    /// # Errors
    /// [`HarnessError::StartFailed`] with the log tail.
    pub fn start_again(&self) -> Result<(), HarnessError> {
        let _control = self.lock_control();
        pg_ctl_start(
            &self.bin,
            &self.user,
            &self.data_dir,
            &self.log_path(),
            true,
        )
    }

    /// Starts the stopped server and returns as soon as the postmaster listens on its port,
    /// so a test can see `57P03` (the database system is starting up) during recovery.
    ///
    /// # Errors
    /// [`HarnessError::StartFailed`], or a timeout when the port never opens.
    pub fn start_again_no_wait(&self) -> Result<(), HarnessError> {
        let _control = self.lock_control();
        pg_ctl_start(
            &self.bin,
            &self.user,
            &self.data_dir,
            &self.log_path(),
            false,
        )?;
        let addr = (Ipv4Addr::LOCALHOST, self.port).into();
        let listening = sys::wait_until(START_TIMEOUT, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if listening {
            Ok(())
        } else {
            Err(HarnessError::StartFailed {
                data_dir: self.data_dir.clone(),
                reason: format!("port {} never opened", self.port),
                log_path: self.log_path(),
                log_tail: sys::file_tail(&self.log_path(), 25),
            })
        }
    }

    /// `stop(mode)` then `start_again()`.
    ///
    /// # Errors
    /// As for those two.
    pub fn restart(&self, mode: StopMode) -> Result<(), HarnessError> {
        let mut control = self.lock_control();
        self.stop_locked(&mut control, mode)?;
        pg_ctl_start(
            &self.bin,
            &self.user,
            &self.data_dir,
            &self.log_path(),
            true,
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let control = self.control.get_mut().unwrap_or_else(|p| p.into_inner());
        control.resume_paused();
        if let Some(pid) = self.postmaster_pid() {
            // What `pg_ctl stop -m immediate` does, without its 100 ms polling.
            sys::kill_postmaster(pid, Duration::from_secs(10));
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!("could not remove {}: {e}", self.dir.display());
        }
        let watchdog = self.watchdog.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = watchdog.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
