//! Process plumbing: the unprivileged server user, running programs with a deadline, /proc.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};

use crate::error::IoContext;
use crate::HarnessError;

/// The user the server programs run as: `postgres` when we are root, ourselves otherwise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerUser {
    /// `Some` when the programs must switch user (we are root).
    switch_to: Option<(Uid, Gid)>,
}

impl ServerUser {
    pub(crate) fn detect() -> Result<Self, HarnessError> {
        if !Uid::effective().is_root() {
            return Ok(Self { switch_to: None });
        }
        let name = "postgres";
        let user = User::from_name(name)
            .map_err(|e| HarnessError::sys(format!("looking up the `{name}` user"), e))?
            .ok_or_else(|| HarnessError::NoServerUser { user: name.into() })?;
        Ok(Self {
            switch_to: Some((user.uid, user.gid)),
        })
    }

    /// Makes `cmd` run as the server user.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.switch_to {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
    }

    /// Gives `path` to the server user (no-op when we are that user).
    pub(crate) fn chown(&self, path: &Path) -> Result<(), HarnessError> {
        if let Some((uid, gid)) = self.switch_to {
            std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))
                .ctx(|| format!("giving {} to the postgres user", path.display()))?;
        }
        Ok(())
    }
}

/// Runs `cmd` (stdin closed) and returns its output, killing it after `timeout`.
///
/// # Errors
/// Spawn failures, the timeout, and a non-zero exit (with the output tail).
pub(crate) fn run(
    cmd: &mut Command,
    what: &str,
    timeout: Duration,
) -> Result<Output, HarnessError> {
    let out = run_unchecked(cmd, what, timeout, None)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(command_error(what, &out))
    }
}

pub(crate) fn command_error(what: &str, out: &Output) -> HarnessError {
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    HarnessError::Command {
        program: what.to_string(),
        status: out.status.to_string(),
        output: tail(&text, 20),
    }
}

/// Like [`run`] but returns non-zero exits as `Ok`; `stdin` is written to the program.
pub(crate) fn run_unchecked(
    cmd: &mut Command,
    what: &str,
    timeout: Duration,
    stdin: Option<&str>,
) -> Result<Output, HarnessError> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().ctx(|| format!("starting `{what}`"))?;
    let pid = Pid::from_raw(child.id() as i32);
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        // A failed write shows up as the program's own error.
        let _ = pipe.write_all(input.as_bytes());
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.ctx(|| format!("waiting for `{what}`")),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            Err(HarnessError::Timeout {
                what: format!("`{what}` to finish (it was killed)"),
                waited: timeout,
            })
        }
    }
}

/// Last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Last lines of a file, or a note why there are none.
pub(crate) fn file_tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), n),
        Err(e) => format!("(no log: {e})"),
    }
}

/// Fields of /proc/<pid>/stat after the command name: (state, ppid, starttime).
fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    // starttime is field 22 overall, i.e. index 19 after the state (field 3).
    let start = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

/// True when `pid` exists and is not a zombie.
pub(crate) fn pid_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((state, _, _)) if state != 'Z' && state != 'X')
}

/// Start time (clock ticks since boot) of `pid`, to tell a process from a reused pid.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, _, start)| start)
}

/// Command name of `pid` from /proc/<pid>/comm.
pub(crate) fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Direct children of `parent`, found by scanning /proc.
pub(crate) fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((_, ppid, _)) if ppid == parent))
        .collect()
}

/// Polls `cond` every few milliseconds until it is true or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub(crate) fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// Stops a postmaster we cannot (or need not) reach through pg_ctl: SIGQUIT (immediate
/// shutdown), then SIGKILL if it is still there after `grace`. Returns once it is gone.
pub(crate) fn kill_postmaster(pid: i32, grace: Duration) {
    if !pid_alive(pid) {
        return;
    }
    signal(pid, Signal::SIGCONT);
    signal(pid, Signal::SIGQUIT);
    if !wait_until(grace, || !pid_alive(pid)) {
        for child in children_of(pid) {
            signal(child, Signal::SIGKILL);
        }
        signal(pid, Signal::SIGKILL);
        wait_until(Duration::from_secs(5), || !pid_alive(pid));
    }
}

/// Reads the postmaster pid (first line of postmaster.pid) of a data directory.
pub(crate) fn read_postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}
