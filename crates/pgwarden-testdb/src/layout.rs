//! The shared temp root: server folders, the initdb template cache, slot locks and the sweep of
//! servers left behind by killed test processes.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::IoContext;
use crate::sys;
use crate::HarnessError;

/// Environment variable capping the servers running at once across all test processes.
pub const MAX_SERVERS_ENV: &str = "PGWARDEN_TEST_MAX_SERVERS";
/// Default for [`MAX_SERVERS_ENV`] (the test machines have two cores).
pub const DEFAULT_MAX_SERVERS: usize = 3;
/// Default bound on waiting for a free slot.
pub const DEFAULT_SLOT_WAIT: Duration = Duration::from_secs(600);

/// `<temp>/pgwarden-testdb-<euid>`: per user, so root and a normal user never fight over
/// permissions, and never under anyone's home.
pub fn temp_root() -> PathBuf {
    std::env::temp_dir().join(format!(
        "pgwarden-testdb-{}",
        nix::unistd::Uid::effective().as_raw()
    ))
}

/// Creates `dir` (mode 0755 so the server user can traverse it) if missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), HarnessError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .ctx(|| format!("creating {}", dir.display()))
}

pub(crate) fn servers_dir() -> PathBuf {
    temp_root().join("servers")
}

pub(crate) fn templates_dir() -> PathBuf {
    temp_root().join("templates")
}

/// Identifies this process across pid reuse: "pid starttime".
pub(crate) fn owner_tag() -> String {
    let pid = std::process::id() as i32;
    format!("{pid} {}", sys::start_time(pid).unwrap_or(0))
}

/// True when the process named by an owner tag still runs.
pub(crate) fn owner_alive(tag: &str) -> bool {
    let mut parts = tag.split_whitespace();
    let Some(pid) = parts.next().and_then(|p| p.parse::<i32>().ok()) else {
        return false;
    };
    let start: Option<u64> = parts.next().and_then(|s| s.parse().ok());
    sys::pid_alive(pid) && (start.is_none() || start == sys::start_time(pid))
}

/// Opens (creating) a lock file and takes an exclusive flock, blocking or not.
pub(crate) fn lock_file(path: &Path, block: bool) -> Result<Option<Flock<File>>, HarnessError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx(|| format!("opening lock file {}", path.display()))?;
    let arg = if block {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(file, arg) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) if !block => Ok(None),
        Err((_, e)) => Err(HarnessError::sys(format!("locking {}", path.display()), e)),
    }
}

/// Proof that this server may run: one of the group's slot locks, held until dropped.
/// A replica shares its primary's slot through an `Arc`.
#[derive(Debug)]
pub(crate) struct Slot {
    _lock: Flock<File>,
}

/// Which slot lock files a server competes for.
#[derive(Debug, Clone)]
pub(crate) struct SlotGroup {
    pub(crate) name: String,
    pub(crate) max: usize,
    pub(crate) wait: Duration,
}

impl SlotGroup {
    pub(crate) fn from_env() -> Self {
        let max = std::env::var(MAX_SERVERS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_MAX_SERVERS);
        Self {
            name: "server".into(),
            max,
            wait: DEFAULT_SLOT_WAIT,
        }
    }

    /// Takes a free slot, polling until `self.wait` runs out.
    pub(crate) fn acquire(&self) -> Result<Slot, HarnessError> {
        let dir = temp_root().join("slots");
        ensure_dir(&dir)?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            for i in 0..self.max {
                let path = dir.join(format!("{}-{i}.lock", self.name));
                if let Some(lock) = lock_file(&path, false)? {
                    return Ok(Slot { _lock: lock });
                }
            }
            if started.elapsed() >= self.wait {
                return Err(HarnessError::SlotTimeout {
                    waited: started.elapsed(),
                    max: self.max,
                    dir,
                });
            }
            std::thread::sleep(pause.min(self.wait.saturating_sub(started.elapsed())));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// Runs the sweep once per process.
pub(crate) fn sweep_once() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if let Err(e) = sweep() {
            tracing::warn!("sweeping leftover test servers failed: {e}");
        }
    });
}

/// Stops and removes servers (and half-built templates) whose owning process is gone.
fn sweep() -> Result<(), HarnessError> {
    let root = temp_root();
    ensure_dir(&root)?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
        .ctx(|| format!("chmod {}", root.display()))?;
    let _lock = lock_file(&root.join("sweep.lock"), true)?;
    let servers = servers_dir();
    if let Ok(entries) = fs::read_dir(&servers) {
        for entry in entries.flatten() {
            let dir = entry.path();
            let owner = fs::read_to_string(dir.join("owner")).ok();
            let stale = match owner {
                Some(tag) => !owner_alive(&tag),
                // Being created right now, or a crash before the owner file was written.
                None => older_than(&dir, Duration::from_secs(120)),
            };
            if stale {
                tracing::info!("removing leftover test server {}", dir.display());
                stop_leftover(&dir.join("data"));
                stop_leftover_bouncer(&dir);
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(templates_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Half-built templates are named <key>.tmp.<pid>.<start>.
            if let Some((_, tag)) = name.split_once(".tmp.") {
                if !owner_alive(&tag.replace('.', " ")) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    Ok(())
}

/// Stops the postmaster of a data dir if the pid still names a postgres process.
pub(crate) fn stop_leftover(data_dir: &Path) {
    if let Some(pid) = sys::read_postmaster_pid(data_dir) {
        if sys::comm(pid).as_deref() == Some("postgres") {
            sys::kill_postmaster(pid, Duration::from_secs(10));
        }
    }
}

/// Stops the PgBouncer of a harness folder if its pid file still names a pgbouncer process.
pub(crate) fn stop_leftover_bouncer(dir: &Path) {
    let pid = fs::read_to_string(dir.join("pgbouncer.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        if sys::comm(pid).as_deref() == Some("pgbouncer") {
            sys::signal(pid, nix::sys::signal::Signal::SIGTERM);
            if !sys::wait_until(Duration::from_secs(5), || !sys::pid_alive(pid)) {
                sys::signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|a| a > age)
}
