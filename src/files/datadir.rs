//! The data directory and the siblings pgha makes beside it: `.pgha-staging` (a clone in
//! progress), `.pgha-old-<time>` (a replaced data directory, kept), `.pgha-fork-<time>` (the WAL a
//! rewind throws away, kept) and `.pgha-failed` (a failed copy of the primary, removed). They sit
//! beside the data directory so that every swap is a rename on one filesystem. This module names
//! them, sizes them, checks free space, and moves, copies and removes them.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

use crate::files::secure::{copy_tree, open_parent, CopyOwnership, Dir, Ownership};
use crate::host::postgres_account;

/// Whether the cluster would start in recovery: a standby.signal or recovery.signal (12 and
/// later) or a recovery.conf (11 and earlier) in its data directory, which postgres owns, so
/// looked up through a handle without following links.
pub fn starts_in_recovery(cluster: &crate::debian::Cluster) -> Result<bool> {
    let dir = Dir::open(&cluster.data_dir)?;
    let names: &[&str] =
        if cluster.version.uses_recovery_conf() { &["recovery.conf"] } else { &["standby.signal", "recovery.signal"] };
    for name in names {
        if dir.stat(name)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

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

/// What pgha kept beside a data directory: a replaced data directory or a rewind's fork.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub path: PathBuf,
    pub kind: KeptKind,
    /// When pgha made it, from its name.
    pub made: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeptKind {
    Old,
    Fork,
}

impl KeptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeptKind::Old => "old data directory",
            KeptKind::Fork => "fork",
        }
    }
}

/// Which kept directory `name` is beside a data directory called `data_name`, and when it was
/// made; None for any other name (the timestamp must be one pgha writes).
pub fn parse_kept_name(data_name: &str, name: &str) -> Option<(KeptKind, SystemTime)> {
    let rest = name.strip_prefix(data_name)?;
    let (kind, stamp) = if let Some(stamp) = rest.strip_prefix(".pgha-old-") {
        (KeptKind::Old, stamp)
    } else {
        (KeptKind::Fork, rest.strip_prefix(".pgha-fork-")?)
    };
    // 20270115T080000Z, as `stamp` writes it.
    let bytes = stamp.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<&str> {
        let part = stamp.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then_some(part)
    };
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        digits(0..4)?,
        digits(4..6)?,
        digits(6..8)?,
        digits(9..11)?,
        digits(11..13)?,
        digits(13..15)?
    );
    Some((kind, humantime::parse_rfc3339(&rfc3339).ok()?))
}

/// The `.pgha-old-*` and `.pgha-fork-*` directories beside the data directory, oldest first.
/// Only names are read from the parent (postgres owns it); an entry that is not a directory
/// (a link planted there, say) is no kept directory.
pub fn kept_beside(data_dir: &Path) -> Result<Vec<Kept>> {
    let (parent, data_name) = open_parent(data_dir)?;
    let data_name = data_name.to_string_lossy().into_owned();
    let mut kept = Vec::new();
    for name in parent.list()? {
        let Some(text) = name.to_str() else { continue };
        let Some((kind, made)) = parse_kept_name(&data_name, text) else { continue };
        if parent.stat(&name)?.is_some_and(|stat| stat.kind == crate::files::secure::Kind::Dir) {
            kept.push(Kept { path: parent.path().join(&name), kind, made });
        }
    }
    kept.sort_by_key(|kept| kept.made);
    Ok(kept)
}

/// Removes a kept directory through the handle of its parent: nothing in it is followed.
pub fn remove_kept(kept: &Kept) -> Result<()> {
    let (parent, name) = open_parent(&kept.path)?;
    parent.remove_tree(&name).with_context(|| format!("cannot remove {}", kept.path.display()))
}

/// The size of the filesystem holding `dir`, in bytes.
pub fn filesystem_bytes(dir: &Path) -> Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).with_context(|| format!("cannot statvfs {}", dir.display()))?;
    Ok(stat.blocks() as u64 * stat.fragment_size() as u64)
}

fn name_of(path: &Path) -> Result<OsString> {
    Ok(path.file_name().with_context(|| format!("{} names no directory", path.display()))?.to_os_string())
}

fn postgres_only() -> Result<Ownership> {
    let postgres = postgres_account()?;
    Ok(Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o700 })
}

/// An empty staging directory (postgres, 0700), after removing one an interrupted clone left.
/// Whatever is at the staging name (a directory, a symlink, anything) is removed without being
/// followed, and the new directory is created exclusively.
pub fn fresh_staging(data_dir: &Path) -> Result<PathBuf> {
    let staging = staging_path(data_dir);
    let (parent, _) = open_parent(data_dir)?;
    let name = name_of(&staging)?;
    if parent.stat(&name)?.is_some() {
        log::warn!("removing {} left by an interrupted clone", staging.display());
        parent.remove_tree(&name)?;
    }
    parent.create_dir(&name, postgres_only()?)?;
    Ok(staging)
}

/// Removes a staging directory; it only ever holds a copy of the primary.
pub fn remove_staging(staging: &Path) -> Result<()> {
    let (parent, name) = open_parent(staging)?;
    if parent.stat(&name)?.is_some() {
        parent.remove_tree(&name)?;
        log::info!("removed the staging directory {}", staging.display());
    }
    Ok(())
}

/// Moves the data directory aside and staging into its place. Returns where the old one went.
/// Neither rename replaces anything: a name planted meanwhile makes the swap fail, not vanish.
pub fn swap_in(data_dir: &Path, staging: &Path) -> Result<Option<PathBuf>> {
    let (parent, data_name) = open_parent(data_dir)?;
    let staging_name = name_of(staging)?;
    let old = match parent.stat(&data_name)? {
        Some(_) => {
            let old = old_path(data_dir, SystemTime::now());
            parent.rename_noreplace(&data_name, name_of(&old)?)?;
            log::info!("moved the old data directory to {}", old.display());
            Some(old)
        }
        None => None,
    };
    if let Err(error) = parent.rename_noreplace(&staging_name, &data_name) {
        if let Some(old) = &old {
            parent.rename_noreplace(name_of(old)?, &data_name)?;
        }
        return Err(error);
    }
    parent.open_dir(&data_name)?.set_ownership(postgres_only()?)?;
    parent.sync()?;
    Ok(old)
}

/// Undoes `swap_in` after the new copy failed: the copy goes (it is only the primary's data,
/// nothing of this host's is lost) and the old data directory comes back.
pub fn swap_back(data_dir: &Path, old: Option<&Path>) -> Result<()> {
    let (parent, data_name) = open_parent(data_dir)?;
    let failed = name_of(&failed_path(data_dir))?;
    if parent.stat(&failed)?.is_some() {
        parent.remove_tree(&failed)?;
    }
    parent.rename_noreplace(&data_name, &failed)?;
    if let Some(old) = old {
        parent.rename_noreplace(name_of(old)?, &data_name)?;
        log::info!("moved {} back to {}", old.display(), data_dir.display());
    }
    parent.remove_tree(&failed)?;
    parent.sync()
}

/// Copies the (cleanly shut down) data directory to `<datadir>.pgha-old-<time>` after checking
/// it fits; refuses, leaving everything as it was, when it does not. The copy is made through
/// handles (no link in the data directory is followed), with reflinks where the filesystem has them.
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
    let (parent, data_name) = open_parent(data_dir)?;
    let copy_name = name_of(&copy)?;
    let source = parent.open_dir(&data_name)?;
    let target = parent.create_dir(&copy_name, postgres_only()?)?;
    if let Err(error) = copy_tree(&source, &target, CopyOwnership::Preserve) {
        let _ = parent.remove_tree(&copy_name);
        return Err(error.context(format!("cannot copy {} to {}", data_dir.display(), copy.display())));
    }
    Ok(copy)
}

/// A new, empty `<datadir>.pgha-fork-<time>` (postgres, 0700), made exclusively so nothing
/// planted at the name is used. The WAL goes in as postgres (`tools::copy_as_postgres`).
pub fn create_fork_dir(data_dir: &Path) -> Result<PathBuf> {
    let fork = fork_path(data_dir, SystemTime::now());
    let (parent, _) = open_parent(data_dir)?;
    parent.create_dir(name_of(&fork)?, postgres_only()?)?.sync()?;
    Ok(fork)
}

/// Adds a note to a saved fork.
pub fn add_note(fork: &Path, name: &str, text: &str) -> Result<()> {
    let postgres = postgres_only()?;
    Dir::open_following_root_links(fork)?.write_atomic(name, text.as_bytes(), Ownership { mode: 0o600, ..postgres })
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
        let (kind, made) = parse_kept_name("main", "main.pgha-old-20270115T080000Z").unwrap();
        assert_eq!((kind, made), (KeptKind::Old, at));
        assert_eq!(parse_kept_name("main", "main.pgha-fork-20270115T080000Z").unwrap().0, KeptKind::Fork);
    }

    #[test]
    fn only_names_pgha_writes_are_kept_directories() {
        for name in [
            "main",
            "main.pgha-staging",
            "main.pgha-old-2027011T080000Z",
            "main.pgha-old-20270115T080000",
            "main.pgha-old-2027O115T080000Z",
            "main.pgha-old-20271315T080000Z",
            "other.pgha-old-20270115T080000Z",
            "main.pgha-old-20270115T080000Z/..",
        ] {
            assert_eq!(parse_kept_name("main", name), None, "{name}");
        }
    }

    #[test]
    fn space_includes_margin() {
        assert!(space_needed(1 << 30) > (1 << 30) + (200 << 20));
    }
}
