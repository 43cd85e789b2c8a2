//! The data directory and the siblings pgha makes beside it: `.pgha-staging` (a clone in
//! progress), `.pgha-old-<time>` (a replaced data directory, kept), `.pgha-fork-<time>` (the WAL a
//! rewind throws away, kept) and `.pgha-failed` (a failed copy of the primary, removed). They sit
//! beside the data directory so that every swap is a rename on one filesystem. This module names
//! them, sizes them, checks free space, and moves, copies and removes them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

use crate::files::apply::{create_dir, sync_dir};
use crate::files::plan::Ownership;
use crate::host::postgres_account;
use crate::tools::{root_command, run_checked};

/// `<datadir>.pgha-staging`: beside the data directory, so the swap is a rename on one filesystem.
pub fn staging_path(data_dir: &Path) -> PathBuf {
    sibling(data_dir, ".pgha-staging")
}

/// `<datadir>.pgha-old-<UTC timestamp>`: where the replaced data directory is kept.
pub fn old_path(data_dir: &Path, now: SystemTime) -> PathBuf {
    sibling(data_dir, &format!(".pgha-old-{}", stamp(now)))
}

/// `<datadir>.pgha-fork-<UTC timestamp>`: the WAL a rewind throws away.
pub fn fork_path(data_dir: &Path, now: SystemTime) -> PathBuf {
    sibling(data_dir, &format!(".pgha-fork-{}", stamp(now)))
}

fn failed_path(data_dir: &Path) -> PathBuf {
    sibling(data_dir, ".pgha-failed")
}

fn stamp(now: SystemTime) -> String {
    humantime::format_rfc3339_seconds(now).to_string().chars().filter(|c| *c != '-' && *c != ':').collect()
}

fn sibling(data_dir: &Path, suffix: &str) -> PathBuf {
    let mut name = data_dir.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn parent(data_dir: &Path) -> Result<&Path> {
    data_dir.parent().context("the data directory has no parent")
}

/// Disk space a directory tree takes, as `du` counts it.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(metadata) = fs::symlink_metadata(path) else { return 0 };
    let own = metadata.blocks() * 512;
    if !metadata.is_dir() {
        return own;
    }
    let children =
        fs::read_dir(path).map(|entries| entries.flatten().map(|entry| dir_size(&entry.path())).sum()).unwrap_or(0);
    own + children
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).with_context(|| format!("cannot statvfs {}", dir.display()))?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// Bytes a copy of `database_bytes` needs free: the data, the WAL streamed meanwhile, and margin.
pub fn space_needed(database_bytes: u64) -> u64 {
    database_bytes + database_bytes / 5 + 128 * 1024 * 1024
}

/// Free bytes beside the data directory, or an error naming what a copy of `bytes` needs.
/// `what` says what the copy is for, `advice` what the admin can do.
pub fn require_space_beside(data_dir: &Path, bytes: u64, what: &str, advice: &str) -> Result<u64> {
    let parent = parent(data_dir)?;
    let available = free_bytes(parent)?;
    let needed = space_needed(bytes);
    if available < needed {
        bail!(
            "{} has {} MB free and {what} of {} MB needs about {} MB: {advice}",
            parent.display(),
            available >> 20,
            bytes >> 20,
            needed >> 20
        );
    }
    Ok(available)
}

/// The swap is a rename, which a mount point refuses.
pub fn check_swappable(data_dir: &Path) -> Result<()> {
    let parent = parent(data_dir)?;
    if let (Ok(dir), Ok(up)) = (fs::metadata(data_dir), fs::metadata(parent)) {
        if dir.dev() != up.dev() {
            bail!(
                "preflight: {} is a mount point: pgha replaces a data directory by renaming it beside itself; \
                 mount the parent directory instead",
                data_dir.display()
            );
        }
    }
    Ok(())
}

/// An empty staging directory (postgres, 0700), after removing one an interrupted clone left.
pub fn fresh_staging(data_dir: &Path) -> Result<PathBuf> {
    let staging = staging_path(data_dir);
    if staging.exists() {
        log::warn!("removing {} left by an interrupted clone", staging.display());
        fs::remove_dir_all(&staging).with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    let postgres = postgres_account()?;
    create_dir(&staging, Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o700 })?;
    Ok(staging)
}

/// Removes a staging directory; it only ever holds a copy of the primary.
pub fn remove_staging(staging: &Path) -> Result<()> {
    if staging.exists() {
        fs::remove_dir_all(staging).with_context(|| format!("cannot remove {}", staging.display()))?;
        log::info!("removed the staging directory {}", staging.display());
    }
    Ok(())
}

/// Moves the data directory aside and staging into its place. Returns where the old one went.
pub fn swap_in(data_dir: &Path, staging: &Path) -> Result<Option<PathBuf>> {
    let parent = parent(data_dir)?;
    let old = if data_dir.exists() {
        let old = old_path(data_dir, SystemTime::now());
        fs::rename(data_dir, &old)
            .with_context(|| format!("cannot move {} to {}", data_dir.display(), old.display()))?;
        log::info!("moved the old data directory to {}", old.display());
        Some(old)
    } else {
        None
    };
    if let Err(error) = fs::rename(staging, data_dir) {
        if let Some(old) = &old {
            fs::rename(old, data_dir).with_context(|| format!("cannot move {} back", old.display()))?;
        }
        return Err(error).with_context(|| format!("cannot move {} to {}", staging.display(), data_dir.display()));
    }
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))?;
    sync_dir(parent)?;
    Ok(old)
}

/// Undoes `swap_in` after the new copy failed: the copy goes (it is only the primary's data,
/// nothing of this host's is lost) and the old data directory comes back.
pub fn swap_back(data_dir: &Path, old: Option<&Path>) -> Result<()> {
    let failed_copy = failed_path(data_dir);
    let _ = fs::remove_dir_all(&failed_copy);
    fs::rename(data_dir, &failed_copy)
        .with_context(|| format!("cannot move the failed copy out of {}", data_dir.display()))?;
    if let Some(old) = old {
        fs::rename(old, data_dir)
            .with_context(|| format!("cannot move {} back to {}", old.display(), data_dir.display()))?;
        log::info!("moved {} back to {}", old.display(), data_dir.display());
    }
    fs::remove_dir_all(&failed_copy).with_context(|| format!("cannot remove {}", failed_copy.display()))
}

/// Copies the (cleanly shut down) data directory to `<datadir>.pgha-old-<time>` after checking
/// it fits; refuses, leaving everything as it was, when it does not.
pub fn copy_aside(data_dir: &Path) -> Result<PathBuf> {
    let copy = old_path(data_dir, SystemTime::now());
    let size = dir_size(data_dir);
    require_space_beside(
        data_dir,
        size,
        "a copy of the data directory before pg_rewind changes it",
        "free some space, or run `pgha rejoin --no-keep-copy` to keep only the diverged WAL",
    )?;
    log::info!("copying {} ({} MB) to {} before pg_rewind", data_dir.display(), size >> 20, copy.display());
    let mut command = root_command("cp");
    command.arg("-a").arg("--reflink=auto").arg(data_dir).arg(&copy);
    if let Err(error) = run_checked(&mut command, "cp -a") {
        let _ = fs::remove_dir_all(&copy);
        return Err(error);
    }
    Ok(copy)
}

/// Copies `names` from `from` into a new `<datadir>.pgha-fork-<time>` (postgres, 0700), with
/// `notes` written beside them as files. Returns the directory.
pub fn save_fork(data_dir: &Path, from: &Path, names: &[String], notes: &[(&str, &str)]) -> Result<PathBuf> {
    let fork = fork_path(data_dir, SystemTime::now());
    let postgres = postgres_account()?;
    create_dir(&fork, Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o700 })?;
    for name in names {
        fs::copy(from.join(name), fork.join(name)).with_context(|| format!("cannot save {name}"))?;
        std::os::unix::fs::chown(fork.join(name), Some(postgres.uid), Some(postgres.gid))?;
    }
    for (name, text) in notes {
        fs::write(fork.join(name), text)?;
    }
    Ok(fork)
}

/// Adds a note to a saved fork.
pub fn add_note(fork: &Path, name: &str, text: &str) -> Result<()> {
    fs::write(fork.join(name), text).with_context(|| format!("cannot write {}", fork.join(name).display()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn staging_and_old_copies_sit_beside_the_data_directory() {
        let data = Path::new("/var/lib/postgresql/15/main");
        assert_eq!(staging_path(data), Path::new("/var/lib/postgresql/15/main.pgha-staging"));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(old_path(data, at), Path::new("/var/lib/postgresql/15/main.pgha-old-20270115T080000Z"));
        assert_eq!(fork_path(data, at), Path::new("/var/lib/postgresql/15/main.pgha-fork-20270115T080000Z"));
    }

    #[test]
    fn space_includes_margin() {
        assert!(space_needed(1 << 30) > (1 << 30) + (200 << 20));
    }
}
