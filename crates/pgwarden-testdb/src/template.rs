//! One `initdb` per (bin dir, version), cached under the temp root and copied per server.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::IoContext;
use crate::layout::{ensure_dir, lock_file, owner_tag, templates_dir};
use crate::sys::{self, ServerUser};
use crate::HarnessError;

/// Each server's `postgresql.conf` includes this file from its server folder (one level above
/// the data dir), so a base backup copied into another folder picks up that folder's settings.
pub(crate) const INCLUDE_LINE: &str =
    "\n# pgwarden-testdb: per-server settings\ninclude '../pgwarden.conf'\n";

/// FNV-1a: a hash that stays the same across Rust releases, for cache keys.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Returns the template data dir for `bin`, building it (under an exclusive lock, atomically
/// renamed into place) when missing, plus how long the build took if this call built it.
pub(crate) fn ensure(
    bin: &Path,
    user: &ServerUser,
) -> Result<(PathBuf, Option<Duration>), HarnessError> {
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("--version").current_dir("/");
    user.apply(&mut cmd);
    let out = sys::run(&mut cmd, "initdb --version", Duration::from_secs(30))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let key = format!("{:016x}", fnv(&format!("{}\n{version}", bin.display())));
    let root = templates_dir();
    ensure_dir(&root)?;
    let ready = root.join(&key);
    let data = ready.join("data");
    if data.join("PG_VERSION").is_file() {
        return Ok((data, None));
    }
    let _lock = lock_file(&root.join(format!("{key}.lock")), true)?;
    if data.join("PG_VERSION").is_file() {
        return Ok((data, None));
    }
    let started = Instant::now();
    let tmp = root.join(format!("{key}.tmp.{}", owner_tag().replace(' ', ".")));
    let _ = fs::remove_dir_all(&tmp);
    ensure_dir(&tmp)?;
    user.chown(&tmp)?;
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(tmp.join("data"))
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ])
        .current_dir(&tmp);
    user.apply(&mut cmd);
    sys::run(&mut cmd, "initdb", Duration::from_secs(300))?;
    let conf = tmp.join("data/postgresql.conf");
    let mut text = fs::read_to_string(&conf).ctx(|| format!("reading {}", conf.display()))?;
    text.push_str(INCLUDE_LINE);
    fs::write(&conf, text).ctx(|| format!("writing {}", conf.display()))?;
    fs::rename(&tmp, &ready).ctx(|| format!("moving {} to {}", tmp.display(), ready.display()))?;
    let took = started.elapsed();
    tracing::info!(?took, "built initdb template {}", ready.display());
    Ok((data, Some(took)))
}
