//! `pgha prune-archive`: keep the WAL archive within archive.keep, so it cannot grow forever.
//!
//! The archive directory belongs to postgres, and so does everything the archive_command puts
//! in it. The deleting is therefore done as postgres: root reads pgha.conf, then gives up its
//! rights for good before it lists anything, so a symlink or a renamed directory planted by the
//! postgres account can at worst make pgha delete what that account could delete itself.

use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::unistd::{Gid, Uid};

use crate::config::Config;
use crate::error::{ConfigError, EXIT_OK};
use crate::host::postgres_account;

#[derive(Debug, Args)]
pub struct PruneArchiveArgs {
    /// List what would be deleted and delete nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// Files the archive_command writes: WAL segments (24 hex digits), their .partial and .backup
/// companions, and pgha's own temporary copies. Timeline .history files are tiny and needed to
/// follow a promotion, so they are kept forever.
pub fn is_prunable_name(name: &str) -> bool {
    let hex = |text: &str| text.len() == 24 && text.chars().all(|c| c.is_ascii_hexdigit());
    let base = name.strip_suffix(".pgha-tmp").unwrap_or(name);
    if let Some(segment) = base.strip_suffix(".partial") {
        return hex(segment);
    }
    if let Some(rest) = base.strip_suffix(".backup") {
        return rest.split_once('.').is_some_and(|(segment, offset)| hex(segment) && offset.len() == 8);
    }
    hex(base)
}

/// What one pass over the archive found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub count: u64,
    pub bytes: u64,
    /// Files that were old enough but could not be deleted (each already logged).
    pub failed: u64,
}

/// Deletes (or, on a dry run, lists) the prunable regular files in `directory` last modified
/// more than `keep` before `now`. None when the directory does not exist.
pub fn prune(directory: &Path, keep: Duration, now: SystemTime, dry_run: bool) -> Result<Option<Pruned>> {
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(error).with_context(|| {
                format!("cannot list {} (it must belong to postgres, as `pgha primary` makes it)", directory.display())
            })
        }
    };
    let names = entries
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", directory.display()))?;
    // A keep reaching back before the clock's origin leaves nothing old enough.
    let Some(cutoff) = now.checked_sub(keep) else { return Ok(Some(Pruned::default())) };
    Ok(Some(prune_names(directory, &names, cutoff, dry_run)))
}

/// The entries `names` of `directory` that are prunable, regular files and older than `cutoff`.
/// Never follows a symlink and never touches anything but a regular file; an entry that is gone
/// by the time pgha looks at it (PostgreSQL's archiver renames its temporary copies, an admin
/// may be cleaning up too) is skipped.
fn prune_names(directory: &Path, names: &[OsString], cutoff: SystemTime, dry_run: bool) -> Pruned {
    let mut pruned = Pruned::default();
    for name in names {
        let Some(name) = name.to_str().filter(|name| is_prunable_name(name)) else { continue };
        let path = directory.join(name);
        let metadata = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == ErrorKind::NotFound => continue,
            Err(error) => {
                log::warn!("skipping {}: {error}", path.display());
                continue;
            }
        };
        if !metadata.file_type().is_file() {
            log::warn!("skipping {}: not a regular file", path.display());
            continue;
        }
        match metadata.modified() {
            Ok(modified) if modified < cutoff => {}
            Ok(_) => continue,
            Err(error) => {
                log::warn!("skipping {}: no modification time ({error})", path.display());
                continue;
            }
        }
        if dry_run {
            println!("would delete {}", path.display());
        } else {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::NotFound => continue,
                Err(error) => {
                    log::warn!("cannot delete {}: {error}", path.display());
                    pruned.failed += 1;
                    continue;
                }
            }
        }
        pruned.count += 1;
        pruned.bytes = pruned.bytes.saturating_add(metadata.len());
    }
    pruned
}

/// Gives up root for the postgres account, for the rest of the process. The systemd unit starts
/// pgha as postgres already (its system call filter forbids setuid), so there this is a check.
/// Any other account could not delete postgres' files anyway, and is refused with a clear word.
fn become_postgres() -> Result<()> {
    let account = postgres_account()?;
    let (uid, gid) = (Uid::from_raw(account.uid), Gid::from_raw(account.gid));
    if Uid::effective() == uid {
        return Ok(());
    }
    if !Uid::effective().is_root() {
        return Err(ConfigError::new(format!(
            "pgha prune-archive runs as root or postgres, not as uid {}: it deletes as postgres, the archive's owner",
            Uid::effective()
        ))
        .into());
    }
    nix::unistd::setgroups(&[gid]).context("cannot drop root's supplementary groups")?;
    nix::unistd::setgid(gid).context("cannot become group postgres")?;
    nix::unistd::setuid(uid).context("cannot become user postgres")?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        bail!("could still become root after switching to postgres: refusing to delete anything");
    }
    Ok(())
}

impl PruneArchiveArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let config = Config::load(config_path)?;
        if !config.archive.enabled {
            println!("archive.enabled is false: nothing to prune");
            return Ok(EXIT_OK);
        }
        become_postgres()?;
        let directory = &config.archive.directory;
        let keep = humantime::format_duration(config.archive.keep);
        let Some(pruned) = prune(directory, config.archive.keep, SystemTime::now(), self.dry_run)? else {
            println!("{} does not exist: nothing to prune", directory.display());
            return Ok(EXIT_OK);
        };
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        if pruned.count == 0 {
            println!("nothing older than {keep} in {}: no changes", directory.display());
        } else {
            log::info!("{verb} {} archived files ({} MB) older than {keep}", pruned.count, pruned.bytes >> 20);
            println!("{verb} {} files, {} MB", pruned.count, pruned.bytes >> 20);
        }
        if pruned.failed > 0 {
            bail!(
                "{} old files in {} could not be deleted (see the warnings above)",
                pruned.failed,
                directory.display()
            );
        }
        Ok(EXIT_OK)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::{symlink, MetadataExt};

    use nix::fcntl::AT_FDCWD;
    use nix::sys::stat::{utimensat, Mode, UtimensatFlags};
    use nix::sys::time::TimeSpec;

    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn only_wal_files_are_prunable() {
        assert!(is_prunable_name("000000010000000000000003"));
        assert!(is_prunable_name("000000010000000000000003.partial"));
        assert!(is_prunable_name("000000010000000000000003.00000028.backup"));
        assert!(is_prunable_name("000000010000000000000003.pgha-tmp"));
        assert!(!is_prunable_name("00000002.history"));
        assert!(!is_prunable_name("notes.txt"));
        assert!(!is_prunable_name("00000001000000000000000"));
    }

    /// Sets an entry's own times (a symlink's, not its target's) to `age` ago.
    fn age(path: &Path, age: Duration) {
        let then = SystemTime::now() - age;
        let seconds = then.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        let time = TimeSpec::new(seconds, 0);
        utimensat(AT_FDCWD, path, &time, &time, UtimensatFlags::NoFollowSymlink).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn deletes_old_wal_only_and_a_dry_run_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        for name in ["000000010000000000000001", "000000010000000000000002.partial", "00000002.history", "notes"] {
            fs::write(dir.join(name), "x").unwrap();
            age(&dir.join(name), 3 * DAY);
        }
        fs::write(dir.join("000000010000000000000003"), "new").unwrap();
        let dry = prune(dir, 2 * DAY, SystemTime::now(), true).unwrap().unwrap();
        assert_eq!(dry, Pruned { count: 2, bytes: 2, failed: 0 });
        assert_eq!(names(dir).len(), 5);
        let done = prune(dir, 2 * DAY, SystemTime::now(), false).unwrap().unwrap();
        assert_eq!(done, Pruned { count: 2, bytes: 2, failed: 0 });
        assert_eq!(names(dir), ["000000010000000000000003", "00000002.history", "notes"]);
        assert_eq!(prune(&dir.join("missing"), DAY, SystemTime::now(), false).unwrap(), None);
    }

    #[test]
    fn a_keep_longer_than_the_clock_deletes_nothing() {
        let temp = tempfile::tempdir().unwrap();
        fs::write(temp.path().join("000000010000000000000001"), "x").unwrap();
        age(&temp.path().join("000000010000000000000001"), 3 * DAY);
        let keep = crate::config::parse_duration("1000000000y").unwrap();
        assert_eq!(prune(temp.path(), keep, SystemTime::now(), false).unwrap(), Some(Pruned::default()));
        assert_eq!(prune(temp.path(), Duration::MAX, SystemTime::UNIX_EPOCH, false).unwrap(), Some(Pruned::default()));
        assert_eq!(names(temp.path()), ["000000010000000000000001"]);
    }

    #[test]
    fn a_file_gone_before_its_turn_is_skipped() {
        let temp = tempfile::tempdir().unwrap();
        fs::write(temp.path().join("000000010000000000000002"), "xy").unwrap();
        age(&temp.path().join("000000010000000000000002"), 3 * DAY);
        let listed: Vec<OsString> = ["000000010000000000000001", "000000010000000000000002"].map(Into::into).into();
        let pruned = prune_names(temp.path(), &listed, SystemTime::now() - DAY, false);
        assert_eq!(pruned, Pruned { count: 1, bytes: 2, failed: 0 });
        assert!(names(temp.path()).is_empty());
    }

    /// What the postgres account could plant in its archive: WAL-named symlinks to a root-owned
    /// file and directory outside, and a FIFO. None of them is followed, opened or deleted.
    #[test]
    fn symlinks_and_fifos_in_the_archive_are_left_alone() {
        let outside = tempfile::tempdir().unwrap();
        let canary = outside.path().join("canary");
        fs::write(&canary, "root's file\n").unwrap();
        File::options().write(true).open(&canary).unwrap().set_modified(SystemTime::now() - 30 * DAY).unwrap();
        let canary_dir = outside.path().join("dir");
        fs::create_dir(&canary_dir).unwrap();
        fs::write(canary_dir.join("000000010000000000000009"), "inside\n").unwrap();
        age(&canary_dir.join("000000010000000000000009"), 30 * DAY);
        let before = fs::metadata(&canary).unwrap();

        let archive = tempfile::tempdir().unwrap();
        let dir = archive.path();
        symlink(&canary, dir.join("000000010000000000000001")).unwrap();
        symlink(&canary_dir, dir.join("000000010000000000000002")).unwrap();
        symlink(canary_dir.join("000000010000000000000009"), dir.join("000000010000000000000003.partial")).unwrap();
        nix::unistd::mkfifo(&dir.join("000000010000000000000004"), Mode::from_bits_truncate(0o600)).unwrap();
        for name in names(dir) {
            age(&dir.join(name), 30 * DAY);
        }

        let pruned = prune(dir, DAY, SystemTime::now(), false).unwrap().unwrap();
        assert_eq!(pruned, Pruned::default());
        assert_eq!(fs::read_to_string(&canary).unwrap(), "root's file\n");
        let after = fs::metadata(&canary).unwrap();
        assert_eq!((after.uid(), after.mode(), after.mtime()), (before.uid(), before.mode(), before.mtime()));
        assert_eq!(names(&canary_dir), ["000000010000000000000009"]);
        assert_eq!(names(outside.path()), ["canary", "dir"]);
        assert_eq!(names(dir).len(), 4, "pgha removed an entry it should have skipped");
    }
}
