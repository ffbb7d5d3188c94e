//! Finding the PostgreSQL server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;

/// Environment variable naming the folder that holds `initdb`, `pg_ctl`, ...
pub const PG_BIN_ENV: &str = "PGWARDEN_PG_BIN";

/// Where Debian and Ubuntu install one folder per major version.
pub const DEBIAN_VERSIONS_ROOT: &str = "/usr/lib/postgresql";

/// Finds the folder holding the PostgreSQL server programs.
///
/// Order: `PGWARDEN_PG_BIN`, then the newest `/usr/lib/postgresql/<version>/bin`, then
/// `pg_config --bindir`. Each candidate must contain `initdb` (Debian's libpq-dev `pg_config`
/// points at a folder without it).
///
/// # Errors
/// [`HarnessError::PgBinNotFound`] naming the package to install.
pub fn find_pg_bin() -> Result<PathBuf, HarnessError> {
    let env = std::env::var_os(PG_BIN_ENV).map(PathBuf::from);
    find_pg_bin_from(
        env.as_deref(),
        Path::new(DEBIAN_VERSIONS_ROOT),
        Some(Path::new("pg_config")),
    )
}

/// [`find_pg_bin`] with its inputs injected, so tests need not touch the process environment.
///
/// `pg_bin_env` is the value of `PGWARDEN_PG_BIN`; when it is set but holds no `initdb`,
/// that is an error (a wrong setting is never silently replaced by another install).
/// `versions_root` is scanned for `<version>/bin/initdb`, newest version first (numeric
/// order: 10 > 9.6). `pg_config` is the program to ask for `--bindir`, or `None` to skip it.
///
/// # Errors
/// [`HarnessError::PgBinNotFound`].
pub fn find_pg_bin_from(
    pg_bin_env: Option<&Path>,
    versions_root: &Path,
    pg_config: Option<&Path>,
) -> Result<PathBuf, HarnessError> {
    if let Some(dir) = pg_bin_env.filter(|d| !d.as_os_str().is_empty()) {
        if has_initdb(dir) {
            return Ok(dir.to_path_buf());
        }
        return Err(HarnessError::PgBinNotFound {
            detail: format!("{PG_BIN_ENV}={} holds no initdb. ", dir.display()),
        });
    }
    if let Some(dir) = newest_versioned_bin(versions_root) {
        return Ok(dir);
    }
    if let Some(pg_config) = pg_config {
        if let Ok(out) = Command::new(pg_config).arg("--bindir").output() {
            if out.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_initdb(&dir) {
                    return Ok(dir);
                }
            }
        }
    }
    Err(HarnessError::PgBinNotFound {
        detail: String::new(),
    })
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file()
}

/// Parses "15", "9.6", "16.2" into a sortable key.
fn version_key(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|p| p.parse().ok()).collect()
}

fn newest_versioned_bin(root: &Path) -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let key = version_key(e.file_name().to_str()?)?;
            let bin = e.path().join("bin");
            has_initdb(&bin).then_some((key, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_keys_sort_numerically() {
        let mut v = [version_key("9.6"), version_key("15"), version_key("10")];
        v.sort();
        assert_eq!(v.last().unwrap().as_deref(), Some(&[15][..]));
        assert_eq!(version_key("abc"), None);
    }
}
