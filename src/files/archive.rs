//! The WAL archive directory: the one place that writes a finished segment into it (with
//! fsync, a size cap and a free-space floor), prunes it by age and by size, and measures it.
//! Everything here runs as postgres, the archive's owner (`archive_command` runs as postgres;
//! `pgha prune-archive` gives up root first) except `usage`, which root calls for `pgha status`
//! and which only reads metadata, never following a link.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use crate::files::datadir::free_bytes;

/// Suffix of the empty file left in a dropped segment's place, so the gap stays visible.
pub const DROPPED_SUFFIX: &str = ".pgha-dropped";
/// Suffix of a segment being copied: renamed to its final name only once it is on disk.
const TEMPORARY_SUFFIX: &str = ".pgha-tmp";

/// Files the archive_command writes: WAL segments (24 hex digits), their .partial and .backup
/// companions, and pgha's own temporary copies and dropped-segment markers. Timeline .history
/// files are tiny and needed to follow a promotion, so they are kept forever.
pub fn is_prunable_name(name: &str) -> bool {
    let hex = |text: &str| text.len() == 24 && text.chars().all(|c| c.is_ascii_hexdigit());
    let base = name.strip_suffix(TEMPORARY_SUFFIX).or_else(|| name.strip_suffix(DROPPED_SUFFIX)).unwrap_or(name);
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
        delete_counted(&path, metadata.len(), dry_run, &mut pruned);
    }
    pruned
}

/// Deletes one archived file of `bytes` (or, on a dry run, lists it) and counts it. A file gone
/// meanwhile is not counted; one that cannot be deleted is logged and counted as failed.
fn delete_counted(path: &Path, bytes: u64, dry_run: bool, pruned: &mut Pruned) {
    if dry_run {
        println!("would delete {}", path.display());
    } else {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => return,
            Err(error) => {
                log::warn!("cannot delete {}: {error}", path.display());
                pruned.failed += 1;
                return;
            }
        }
    }
    pruned.count += 1;
    pruned.bytes = pruned.bytes.saturating_add(bytes);
}

/// What `archive_segment` did with one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Archived {
    /// Copied, synced and renamed into place.
    Stored { bytes: u64 },
    /// An identical copy was already there: a retry after a crash between copy and report.
    AlreadyThere,
    /// Not copied: the filesystem had less than the floor free. An empty marker takes its place.
    Dropped { free: u64 },
}

/// The limits `archive_command` passes on from pgha.conf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// archive.max_size: the oldest files go once the archive holds more.
    pub max_bytes: Option<u64>,
    /// archive.min_free: below this much free space a segment is dropped instead of copied.
    pub min_free_bytes: Option<u64>,
}

/// The names PostgreSQL hands to archive_command: a segment, a .partial, .backup or .history
/// file, never a path.
pub fn is_archivable_name(name: &str) -> bool {
    let history = name
        .strip_suffix(".history")
        .is_some_and(|timeline| timeline.len() == 8 && timeline.chars().all(|c| c.is_ascii_hexdigit()));
    history || (is_prunable_name(name) && !name.ends_with(TEMPORARY_SUFFIX) && !name.ends_with(DROPPED_SUFFIX))
}

/// Copies the finished WAL file `source` into `directory` as `name`: to a temporary name first,
/// synced, then renamed and the directory synced, so a crash leaves either no segment or a whole
/// one, and PostgreSQL recycles its own copy only once this one is durable. An existing file of
/// that name must be identical (PostgreSQL retries a segment whose success it did not hear);
/// a different one is an error, never overwritten.
pub fn archive_segment(source: &Path, directory: &Path, name: &str, limits: ArchiveLimits) -> Result<Archived> {
    if !is_archivable_name(name) {
        bail!("{name:?} is not a WAL file name: expected what PostgreSQL passes as %f");
    }
    let target = directory.join(name);
    let mut input = File::open(source).with_context(|| format!("cannot open {}", source.display()))?;
    let length = input.metadata().with_context(|| format!("cannot stat {}", source.display()))?.len();
    match fs::symlink_metadata(&target) {
        Ok(existing) if existing.file_type().is_file() => {
            if same_content(&mut input, &target)? {
                return Ok(Archived::AlreadyThere);
            }
            bail!("{} exists with other content: refusing to overwrite an archived segment", target.display());
        }
        Ok(_) => bail!("{} exists and is not a regular file", target.display()),
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("cannot stat {}", target.display())),
    }
    if let Some(floor) = limits.min_free_bytes {
        let free = free_bytes(directory)?;
        if free < floor.saturating_add(length) {
            mark_dropped(directory, name)?;
            return Ok(Archived::Dropped { free });
        }
    }
    let temporary = directory.join(format!("{name}{TEMPORARY_SUFFIX}"));
    // A copy an earlier attempt left half-written.
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("cannot remove {}", temporary.display())),
    }
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    let bytes =
        std::io::copy(&mut input, &mut output).with_context(|| format!("cannot write {}", temporary.display()))?;
    output.flush()?;
    output.sync_all().with_context(|| format!("cannot sync {}", temporary.display()))?;
    drop(output);
    fs::rename(&temporary, &target).with_context(|| format!("cannot rename {} into place", temporary.display()))?;
    sync_directory(directory)?;
    Ok(Archived::Stored { bytes })
}

fn same_content(input: &mut File, existing: &Path) -> Result<bool> {
    let mut other = File::open(existing).with_context(|| format!("cannot open {}", existing.display()))?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    input.read_to_end(&mut ours).context("cannot read the segment to archive")?;
    other.read_to_end(&mut theirs).with_context(|| format!("cannot read {}", existing.display()))?;
    Ok(ours == theirs)
}

fn mark_dropped(directory: &Path, name: &str) -> Result<()> {
    let marker = directory.join(format!("{name}{DROPPED_SUFFIX}"));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&marker)
    {
        Ok(_) => {}
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error).with_context(|| format!("cannot create {}", marker.display())),
    }
    sync_directory(directory)
}

fn sync_directory(directory: &Path) -> Result<()> {
    File::open(directory)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync directory {}", directory.display()))
}

/// One prunable file of the archive, as the size cap sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: String,
    bytes: u64,
    modified: SystemTime,
}

/// The prunable regular files of `directory` (links and anything else skipped, never followed).
fn entries(directory: &Path) -> Result<Vec<Entry>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(directory).with_context(|| format!("cannot list {}", directory.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", directory.display()))?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if !is_prunable_name(&name) {
            continue;
        }
        let metadata = match fs::symlink_metadata(entry.path()) {
            Ok(metadata) if metadata.file_type().is_file() => metadata,
            _ => continue,
        };
        found.push(Entry {
            name,
            bytes: metadata.len(),
            modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    Ok(found)
}

/// The names to delete, oldest first, so that what stays holds at most `max_bytes`; `spare` (the
/// segment just archived) is never among them. Pure.
fn over_the_cap(mut entries: Vec<Entry>, max_bytes: u64, spare: Option<&str>) -> Vec<Entry> {
    let mut total: u64 = entries.iter().map(|entry| entry.bytes).sum();
    entries.sort_by(|a, b| (a.modified, &a.name).cmp(&(b.modified, &b.name)));
    let mut doomed = Vec::new();
    for entry in entries {
        if total <= max_bytes {
            break;
        }
        if Some(entry.name.as_str()) == spare {
            continue;
        }
        total -= entry.bytes;
        doomed.push(entry);
    }
    doomed
}

/// Deletes the oldest prunable files until the archive holds at most `max_bytes` (or, on a dry
/// run, lists them).
pub fn prune_to_size(directory: &Path, max_bytes: u64, spare: Option<&str>, dry_run: bool) -> Result<Pruned> {
    let mut pruned = Pruned::default();
    for entry in over_the_cap(entries(directory)?, max_bytes, spare) {
        delete_counted(&directory.join(&entry.name), entry.bytes, dry_run, &mut pruned);
    }
    Ok(pruned)
}

/// How much the archive holds, for `pgha status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
    /// Segments dropped under the free-space floor whose markers are still there.
    pub dropped: u64,
}

/// Measures `directory` from metadata alone. None when it cannot be listed (missing, not a
/// directory, or unreadable): status then says the archive directory cannot be read.
pub fn usage(directory: &Path) -> Option<Usage> {
    let found = entries(directory).map_err(|error| log::debug!("{error:#}")).ok()?;
    let mut usage = Usage::default();
    for entry in found {
        if entry.name.ends_with(DROPPED_SUFFIX) {
            usage.dropped += 1;
        } else {
            usage.files += 1;
            usage.bytes = usage.bytes.saturating_add(entry.bytes);
        }
    }
    Some(usage)
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

    const SEGMENT: &str = "000000010000000000000005";

    fn wal_file(dir: &Path, content: &[u8]) -> std::path::PathBuf {
        let path = dir.join("source");
        fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn a_segment_is_stored_whole_and_a_retry_of_the_same_one_is_done() {
        let (pg_wal, archive) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = wal_file(pg_wal.path(), b"wal bytes");
        let limits = ArchiveLimits::default();
        assert_eq!(archive_segment(&source, archive.path(), SEGMENT, limits).unwrap(), Archived::Stored { bytes: 9 });
        assert_eq!(fs::read(archive.path().join(SEGMENT)).unwrap(), b"wal bytes");
        assert_eq!(names(archive.path()), [SEGMENT], "a temporary copy was left behind");
        assert_eq!(archive_segment(&source, archive.path(), SEGMENT, limits).unwrap(), Archived::AlreadyThere);
    }

    #[test]
    fn a_different_file_of_the_same_name_is_never_overwritten() {
        let (pg_wal, archive) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fs::write(archive.path().join(SEGMENT), b"other timeline's bytes").unwrap();
        let source = wal_file(pg_wal.path(), b"wal bytes");
        let error = archive_segment(&source, archive.path(), SEGMENT, ArchiveLimits::default()).unwrap_err();
        assert!(format!("{error:#}").contains("other content"), "{error:#}");
        assert_eq!(fs::read(archive.path().join(SEGMENT)).unwrap(), b"other timeline's bytes");
    }

    #[test]
    fn a_half_written_copy_of_a_crashed_attempt_is_replaced() {
        let (pg_wal, archive) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fs::write(archive.path().join(format!("{SEGMENT}.pgha-tmp")), b"wal").unwrap();
        let source = wal_file(pg_wal.path(), b"wal bytes");
        archive_segment(&source, archive.path(), SEGMENT, ArchiveLimits::default()).unwrap();
        assert_eq!(names(archive.path()), [SEGMENT]);
        assert_eq!(fs::read(archive.path().join(SEGMENT)).unwrap(), b"wal bytes");
    }

    #[test]
    fn a_link_planted_at_the_temporary_name_is_not_written_through() {
        let (pg_wal, archive, outside) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let canary = outside.path().join("canary");
        fs::write(&canary, "keep me\n").unwrap();
        symlink(&canary, archive.path().join(format!("{SEGMENT}.pgha-tmp"))).unwrap();
        let source = wal_file(pg_wal.path(), b"wal bytes");
        archive_segment(&source, archive.path(), SEGMENT, ArchiveLimits::default()).unwrap();
        assert_eq!(fs::read_to_string(&canary).unwrap(), "keep me\n");
        assert_eq!(fs::read(archive.path().join(SEGMENT)).unwrap(), b"wal bytes");
    }

    #[test]
    fn under_the_floor_a_segment_is_dropped_and_marked_not_failed() {
        let (pg_wal, archive) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = wal_file(pg_wal.path(), b"wal bytes");
        let limits = ArchiveLimits { max_bytes: None, min_free_bytes: Some(u64::MAX / 2) };
        assert!(matches!(archive_segment(&source, archive.path(), SEGMENT, limits).unwrap(), Archived::Dropped { .. }));
        assert_eq!(names(archive.path()), [format!("{SEGMENT}.pgha-dropped")]);
        assert_eq!(usage(archive.path()), Some(Usage { bytes: 0, files: 0, dropped: 1 }));
        // With room again, the next segment is archived.
        let room = ArchiveLimits { max_bytes: None, min_free_bytes: Some(1) };
        let next = "000000010000000000000006";
        assert_eq!(archive_segment(&source, archive.path(), next, room).unwrap(), Archived::Stored { bytes: 9 });
    }

    #[test]
    fn only_names_postgresql_passes_are_archived() {
        for name in [
            SEGMENT,
            "00000002.history",
            "000000010000000000000003.00000028.backup",
            "000000010000000000000003.partial",
        ] {
            assert!(is_archivable_name(name), "{name}");
        }
        for name in ["../000000010000000000000005", "", "x", "000000010000000000000005.pgha-tmp", "0000000G.history"] {
            assert!(!is_archivable_name(name), "{name}");
        }
        let (pg_wal, archive) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = wal_file(pg_wal.path(), b"wal");
        assert!(archive_segment(&source, archive.path(), "../escape", ArchiveLimits::default()).is_err());
        assert!(names(archive.path()).is_empty());
    }

    fn entry(name: &str, bytes: u64, age_days: u64) -> Entry {
        Entry { name: name.into(), bytes, modified: SystemTime::UNIX_EPOCH + DAY * (100 - age_days as u32) }
    }

    #[test]
    fn the_cap_takes_the_oldest_first_and_spares_the_newest_segment() {
        let entries = vec![entry("b", 10, 1), entry("a", 10, 3), entry("c", 10, 2), entry("d", 10, 0)];
        let doomed: Vec<String> = over_the_cap(entries.clone(), 25, None).into_iter().map(|e| e.name).collect();
        assert_eq!(doomed, ["a", "c"]);
        assert!(over_the_cap(entries.clone(), 40, None).is_empty());
        let doomed: Vec<String> = over_the_cap(entries, 5, Some("d")).into_iter().map(|e| e.name).collect();
        assert_eq!(doomed, ["a", "c", "b"]);
    }

    #[test]
    fn pruning_to_size_deletes_files_and_leaves_history_and_links() {
        let archive = tempfile::tempdir().unwrap();
        let dir = archive.path();
        for (index, name) in
            ["000000010000000000000001", "000000010000000000000002", "000000010000000000000003"].iter().enumerate()
        {
            fs::write(dir.join(name), vec![0u8; 100]).unwrap();
            age(&dir.join(name), DAY * (3 - index as u32));
        }
        fs::write(dir.join("00000002.history"), vec![0u8; 1000]).unwrap();
        symlink("/etc/passwd", dir.join("000000010000000000000000")).unwrap();
        assert_eq!(prune_to_size(dir, 250, None, true).unwrap(), Pruned { count: 1, bytes: 100, failed: 0 });
        assert_eq!(names(dir).len(), 5, "a dry run deleted something");
        assert_eq!(prune_to_size(dir, 150, None, false).unwrap(), Pruned { count: 2, bytes: 200, failed: 0 });
        assert_eq!(names(dir), ["000000010000000000000000", "000000010000000000000003", "00000002.history"]);
        assert_eq!(usage(dir), Some(Usage { bytes: 100, files: 1, dropped: 0 }));
        assert_eq!(usage(&dir.join("missing")), None);
    }
}
