//! What pg_rewind is about to change in a data directory, saved before it does, and put back on
//! request: the files it overwrites, truncates or removes, the blocks it overwrites in the files
//! it patches, the length of those it extends, and the names of those it creates, plus pg_control
//! and backup_label, which it writes last.
//!
//! This replaces a copy of the whole data directory: its cost follows the change, not the
//! database. It is valid until the rewound cluster first starts (replay then changes files
//! outside pg_rewind's list): for a rewind that failed, or one whose cluster never started.
//!
//! Both directions run as postgres: pgha calls itself as that account (`pgha rewind-save`,
//! `pgha rewind-restore`), so nothing the account could plant in its own data directory turns
//! a copy made by root against root.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::files::secure::Ownership;
use crate::tools::pg_rewind::{FileAction, FileEntry};

/// The saved set's description, written last: a directory without it holds no complete save.
pub const MANIFEST: &str = "manifest.json";
const FILES: &str = "files";
const BLOCKS: &str = "blocks";

/// Files pg_rewind writes whatever its file map says.
const ALWAYS_WRITTEN: [&str; 2] = ["global/pg_control", "backup_label"];
/// Files pgha itself writes into the data directory after the rewind, before the first start
/// (it takes recovery settings out of the postgresql.auto.conf pg_rewind copied).
const PGHA_WRITES: [&str; 4] = ["standby.signal", "recovery.conf", "recovery.signal", "postgresql.auto.conf"];

/// What is saved of one path, and how it is put back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Saved {
    /// A whole copy under files/.
    File { path: String, mode: u32 },
    /// A file pg_rewind removes: a hard link under files/ keeps it at no cost.
    Link { path: String },
    /// The listed blocks, at their own offsets in a sparse file under blocks/; `size` is the
    /// file's length before.
    Blocks { path: String, size: u64, blocks: Vec<u32> },
    /// Only extended: cut back to `size`.
    Length { path: String, size: u64 },
    /// Not there before: removed (a directory when empty).
    Absent { path: String },
    /// A directory that was there: made again.
    Dir { path: String, mode: u32 },
}

impl Saved {
    pub fn path(&self) -> &str {
        match self {
            Saved::File { path, .. }
            | Saved::Link { path }
            | Saved::Blocks { path, .. }
            | Saved::Length { path, .. }
            | Saved::Absent { path }
            | Saved::Dir { path, .. } => path,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub block_size: u64,
    pub entries: Vec<Saved>,
    /// Paths the real run changed that the dry run had not listed: the save cannot put them back.
    pub not_covered: Vec<String>,
}

/// What was there at a path before, as the plan needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Missing,
    File {
        size: u64,
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    /// A symlink, FIFO or anything else pg_rewind's map does not change in place.
    Other,
}

/// A path relative to the data directory with nothing but plain names in it.
fn plain_relative(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|component| matches!(component, Component::Normal(_)))
}

/// What to save for pg_rewind's file map, given what is at each path now. Pure. Paths the map
/// does not change (NONE without blocks) are left out, and so are the files `rewritten_as_is`
/// says pg_rewind overwrites with the same bytes (WAL segments from before the divergence: both
/// servers hold the same WAL up to there). Anything it would change that cannot be saved is
/// returned as an error naming it.
pub fn plan(
    file_map: &[FileEntry],
    found: impl Fn(&str) -> Found,
    rewritten_as_is: impl Fn(&str) -> bool,
) -> Result<Vec<Saved>> {
    let mut entries = Vec::new();
    let mut seen = BTreeSet::new();
    let listed = file_map.iter().map(|entry| (entry.path.as_str(), entry.action, entry.blocks.as_slice()));
    let always = ALWAYS_WRITTEN.iter().chain(PGHA_WRITES.iter()).map(|path| (*path, FileAction::Copy, &[][..]));
    for (path, action, blocks) in listed.chain(always) {
        if !plain_relative(path) {
            bail!("pg_rewind's file map names {path:?}, which is not a plain path inside the data directory");
        }
        if !seen.insert(path.to_string()) {
            continue;
        }
        let path = path.to_string();
        let saved = match (action, found(&path)) {
            (FileAction::None, _) if blocks.is_empty() => continue,
            (FileAction::None, Found::File { size, .. }) => Saved::Blocks { path, size, blocks: blocks.to_vec() },
            (FileAction::CopyTail, Found::File { size, .. }) if blocks.is_empty() => Saved::Length { path, size },
            (FileAction::CopyTail, Found::File { size, .. }) => Saved::Blocks { path, size, blocks: blocks.to_vec() },
            (FileAction::Copy, Found::File { .. }) if rewritten_as_is(&path) => continue,
            (FileAction::Remove, Found::File { .. }) => Saved::Link { path },
            (FileAction::Copy | FileAction::Truncate, Found::File { mode, .. }) => Saved::File { path, mode },
            (FileAction::Remove, Found::Dir { mode }) => Saved::Dir { path, mode },
            (FileAction::Create | FileAction::Copy, Found::Dir { .. }) => continue,
            (_, Found::Missing) => Saved::Absent { path },
            (action, found) => {
                bail!("pg_rewind would {action:?} {path}, which is {found:?}: pgha cannot save that to put it back")
            }
        };
        entries.push(saved);
    }
    Ok(entries)
}

/// Bytes a save of `entries` takes, for choosing between rewind and clone.
pub fn planned_bytes(entries: &[Saved], sizes: impl Fn(&str) -> u64, block_size: u64) -> u64 {
    entries
        .iter()
        .map(|entry| match entry {
            Saved::File { path, .. } => sizes(path),
            Saved::Blocks { blocks, .. } => blocks.len() as u64 * block_size,
            _ => 0,
        })
        .sum()
}

/// What is at `path` (not following a final link).
pub fn found_at(path: &Path) -> Found {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_file() => {
            Found::File { size: metadata.len(), mode: metadata.permissions().mode() & 0o7777 }
        }
        Ok(metadata) if metadata.file_type().is_dir() => Found::Dir { mode: metadata.permissions().mode() & 0o7777 },
        Ok(_) => Found::Other,
        Err(_) => Found::Missing,
    }
}

/// Sizes of what is at each path, for `planned_bytes`.
pub fn size_at(data_dir: &Path) -> impl Fn(&str) -> u64 + '_ {
    move |path| fs::symlink_metadata(data_dir.join(path)).map(|metadata| metadata.len()).unwrap_or(0)
}

/// What one save took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveReport {
    pub files: u64,
    pub bytes: u64,
    /// Whole files shared with the original by a reflink (no data copied).
    pub cloned: u64,
}

/// Saves `entries` of `data_dir` into the empty directory `into`, then the manifest. As postgres.
pub fn save(data_dir: &Path, into: &Path, manifest: &Manifest) -> Result<SaveReport> {
    let mut report = SaveReport::default();
    for entry in &manifest.entries {
        let source = data_dir.join(entry.path());
        match entry {
            Saved::File { path, .. } => {
                let target = into.join(FILES).join(path);
                create_parent(&target)?;
                let (bytes, cloned) = copy_file(&source, &target)?;
                report.bytes += bytes;
                report.cloned += u64::from(cloned);
            }
            Saved::Link { path } => {
                let target = into.join(FILES).join(path);
                create_parent(&target)?;
                if let Err(error) = fs::hard_link(&source, &target) {
                    // Another filesystem (a data directory that is a mount point): a copy then.
                    log::debug!("cannot link {}: {error}; copying it", source.display());
                    let (bytes, cloned) = copy_file(&source, &target)?;
                    report.bytes += bytes;
                    report.cloned += u64::from(cloned);
                }
            }
            Saved::Blocks { path, blocks, .. } => {
                let target = into.join(BLOCKS).join(path);
                create_parent(&target)?;
                report.bytes += copy_blocks(&source, &target, blocks, manifest.block_size)?;
            }
            Saved::Length { .. } | Saved::Absent { .. } | Saved::Dir { .. } => continue,
        }
        report.files += 1;
    }
    write_synced(&into.join(MANIFEST), &serde_json::to_vec_pretty(manifest)?)?;
    sync_tree(into)?;
    Ok(report)
}

/// Adds to the saved set in `into` the paths a rewind created beyond its plan, so that a restore
/// removes them too. The manifest is replaced whole by the atomic writer: a crash leaves the old
/// one or the new one. As postgres.
pub fn add_created(into: &Path, paths: &[String]) -> Result<()> {
    let manifest_path = into.join(MANIFEST);
    let text = fs::read(&manifest_path).with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let mut manifest: Manifest =
        serde_json::from_slice(&text).with_context(|| format!("cannot read {}", manifest_path.display()))?;
    for path in paths {
        if !plain_relative(path) {
            bail!("{path:?} is not a plain path inside the data directory");
        }
        if !manifest.entries.iter().any(|entry| entry.path() == path) {
            manifest.entries.push(Saved::Absent { path: path.clone() });
        }
    }
    let own = Ownership { uid: nix::unistd::geteuid().as_raw(), gid: nix::unistd::getegid().as_raw(), mode: 0o600 };
    crate::files::apply::write_atomic(&manifest_path, &serde_json::to_vec_pretty(&manifest)?, own)
}

/// Puts `data_dir` back as the save in `from` found it. As postgres, with the cluster stopped.
pub fn restore(data_dir: &Path, from: &Path) -> Result<Manifest> {
    let text = fs::read(from.join(MANIFEST))
        .with_context(|| format!("{} holds no complete save ({MANIFEST} is missing)", from.display()))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).with_context(|| format!("cannot read {}", from.join(MANIFEST).display()))?;
    if let Some(bad) = manifest.entries.iter().find(|entry| !plain_relative(entry.path())) {
        bail!("{} names {:?}, not a plain path inside the data directory", from.join(MANIFEST).display(), bad.path());
    }
    // Directories first (outermost first), so files that lived in removed ones have a place.
    let mut dirs: Vec<(&str, u32)> = manifest
        .entries
        .iter()
        .filter_map(|entry| match entry {
            Saved::Dir { path, mode } => Some((path.as_str(), *mode)),
            _ => None,
        })
        .collect();
    dirs.sort_by_key(|(path, _)| path.len());
    for (path, mode) in dirs {
        let dir = data_dir.join(path);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))?;
    }
    for entry in &manifest.entries {
        let target = data_dir.join(entry.path());
        match entry {
            Saved::File { path, mode } => {
                remove_if_there(&target)?;
                copy_file(&from.join(FILES).join(path), &target)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(*mode))?;
            }
            Saved::Link { path } => {
                remove_if_there(&target)?;
                let saved = from.join(FILES).join(path);
                if fs::hard_link(&saved, &target).is_err() {
                    copy_file(&saved, &target)?;
                    let mode = fs::metadata(&saved)?.permissions().mode();
                    fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
                }
            }
            Saved::Blocks { path, size, blocks } => {
                put_blocks_back(&from.join(BLOCKS).join(path), &target, blocks, manifest.block_size, *size)?
            }
            Saved::Length { size, .. } => open_existing(&target)?.set_len(*size)?,
            Saved::Absent { .. } | Saved::Dir { .. } => {}
        }
    }
    // What the rewind created goes last, innermost first, so a directory is empty by then.
    let mut absent: Vec<&str> = manifest
        .entries
        .iter()
        .filter_map(|entry| match entry {
            Saved::Absent { path } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    absent.sort_by_key(|path| std::cmp::Reverse(path.len()));
    for path in absent {
        let target = data_dir.join(path);
        match fs::symlink_metadata(&target) {
            Ok(metadata) if metadata.is_dir() => {
                fs::remove_dir(&target).with_context(|| format!("cannot remove {}", target.display()))?
            }
            Ok(_) => fs::remove_file(&target).with_context(|| format!("cannot remove {}", target.display()))?,
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(error).with_context(|| format!("cannot stat {}", target.display())),
        }
    }
    sync_tree(data_dir)?;
    Ok(manifest)
}

fn create_parent(path: &Path) -> Result<()> {
    let parent = path.parent().context("a saved path has no parent")?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))
}

fn remove_if_there(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != ErrorKind::NotFound => {
            Err(error).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn open_existing(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// A copy of `source` at `target` (new, 0600, synced): a reflink where the filesystem shares
/// blocks (XFS, btrfs), the bytes otherwise. Returns its length and whether it was a reflink.
fn copy_file(source: &Path, target: &Path) -> Result<(u64, bool)> {
    let mut input = File::open(source).with_context(|| format!("cannot open {}", source.display()))?;
    let mut output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let length = input.metadata()?.len();
    // FICLONE shares the extents: nothing is copied, and a later write to either file is copy-on-write.
    let cloned = unsafe { nix::libc::ioctl(output.as_raw_fd(), nix::libc::FICLONE, input.as_raw_fd()) } == 0;
    if !cloned {
        io::copy(&mut input, &mut output).with_context(|| format!("cannot copy {}", source.display()))?;
    }
    output.sync_all().with_context(|| format!("cannot sync {}", target.display()))?;
    Ok((length, cloned))
}

/// The listed blocks of `source`, each at its own offset of a sparse `target`.
fn copy_blocks(source: &Path, target: &Path, blocks: &[u32], block_size: u64) -> Result<u64> {
    let input = File::open(source).with_context(|| format!("cannot open {}", source.display()))?;
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let mut buffer = vec![0u8; block_size as usize];
    let mut bytes = 0;
    for &block in blocks {
        let offset = u64::from(block) * block_size;
        let read =
            read_at_most(&input, &mut buffer, offset).with_context(|| format!("cannot read {}", source.display()))?;
        if read > 0 {
            output
                .write_all_at(&buffer[..read], offset)
                .with_context(|| format!("cannot write {}", target.display()))?;
            bytes += read as u64;
        }
    }
    output.sync_all()?;
    Ok(bytes)
}

fn put_blocks_back(saved: &Path, target: &Path, blocks: &[u32], block_size: u64, size: u64) -> Result<()> {
    let input = File::open(saved).with_context(|| format!("cannot open {}", saved.display()))?;
    let output = open_existing(target)?;
    let mut buffer = vec![0u8; block_size as usize];
    for &block in blocks {
        let offset = u64::from(block) * block_size;
        if offset >= size {
            continue;
        }
        let read = read_at_most(&input, &mut buffer, offset)?;
        output.write_all_at(&buffer[..read], offset).with_context(|| format!("cannot write {}", target.display()))?;
    }
    output.set_len(size)?;
    output.sync_all()?;
    Ok(())
}

/// Reads up to a buffer's length at `offset`; fewer bytes at the end of the file.
fn read_at_most(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn write_synced(path: &Path, content: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(content)?;
    file.sync_all()?;
    Ok(())
}

/// Flushes the whole filesystem `dir` is on: one syncfs instead of an fsync per directory.
fn sync_tree(dir: &Path) -> Result<()> {
    let handle = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    nix::unistd::syncfs(&handle).with_context(|| format!("cannot sync the filesystem of {}", dir.display()))
}

/// Every regular file under `dir` with its mode and size, for comparing trees in tests.
#[cfg(test)]
pub fn tree_listing(dir: &Path) -> Vec<(std::path::PathBuf, u32, u64, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).unwrap() {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            let relative = entry.path().strip_prefix(dir).unwrap().to_path_buf();
            if metadata.is_dir() {
                found.push((relative, metadata.mode() & 0o7777, 0, Vec::new()));
                pending.push(entry.path());
            } else {
                found.push((relative, metadata.mode() & 0o7777, metadata.len(), fs::read(entry.path()).unwrap()));
            }
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, action: FileAction, blocks: &[u32]) -> FileEntry {
        FileEntry { path: path.into(), action, blocks: blocks.to_vec() }
    }

    #[test]
    fn the_plan_saves_what_each_action_destroys_and_nothing_else() {
        let map = [
            entry("base/5/100", FileAction::None, &[]),
            entry("base/5/101", FileAction::None, &[0, 7]),
            entry("base/5/102", FileAction::Truncate, &[3]),
            entry("base/5/103", FileAction::CopyTail, &[]),
            entry("pg_xact/0000", FileAction::Copy, &[]),
            entry("base/5/104", FileAction::Copy, &[]),
            entry("pg_wal/000000010000000000000001", FileAction::Remove, &[]),
            entry("pg_wal/000000010000000000000000", FileAction::Copy, &[]),
            entry("base/pgsql_tmp", FileAction::Remove, &[]),
            entry("base/6", FileAction::Create, &[]),
        ];
        let found = |path: &str| match path {
            "base/5/104"
            | "base/6"
            | "backup_label"
            | "standby.signal"
            | "recovery.conf"
            | "recovery.signal"
            | "postgresql.auto.conf" => Found::Missing,
            "base/pgsql_tmp" => Found::Dir { mode: 0o700 },
            _ => Found::File { size: 16384, mode: 0o600 },
        };
        let planned = plan(&map, found, |path| path == "pg_wal/000000010000000000000000").unwrap();
        let file = |path: &str| Saved::File { path: path.into(), mode: 0o600 };
        let absent = |path: &str| Saved::Absent { path: path.into() };
        assert_eq!(
            planned,
            [
                Saved::Blocks { path: "base/5/101".into(), size: 16384, blocks: vec![0, 7] },
                file("base/5/102"),
                Saved::Length { path: "base/5/103".into(), size: 16384 },
                file("pg_xact/0000"),
                absent("base/5/104"),
                Saved::Link { path: "pg_wal/000000010000000000000001".into() },
                Saved::Dir { path: "base/pgsql_tmp".into(), mode: 0o700 },
                absent("base/6"),
                file("global/pg_control"),
                absent("backup_label"),
                absent("standby.signal"),
                absent("recovery.conf"),
                absent("recovery.signal"),
                absent("postgresql.auto.conf"),
            ]
        );
        let sizes = |_: &str| 16384;
        assert_eq!(planned_bytes(&planned, sizes, 8192), 3 * 16384 + 2 * 8192, "a link costs nothing");
    }

    #[test]
    fn a_path_outside_the_data_directory_or_a_link_is_refused() {
        for path in ["../etc/shadow", "/etc/shadow", "base/../../x", ""] {
            assert!(plan(&[entry(path, FileAction::Copy, &[])], |_| Found::Missing, |_| false).is_err(), "{path}");
        }
        let error = plan(&[entry("pg_wal", FileAction::Remove, &[])], |_| Found::Other, |_| false).unwrap_err();
        assert!(error.to_string().contains("cannot save"), "{error}");
    }

    /// A data directory changed the way pg_rewind changes one comes back bit for bit.
    #[test]
    fn a_save_puts_back_every_byte_of_what_the_rewind_changed() {
        let temp = tempfile::tempdir().unwrap();
        let data = temp.path().join("data");
        for dir in ["base/5", "global", "pg_xact", "pg_wal", "base/pgsql_tmp"] {
            fs::create_dir_all(data.join(dir)).unwrap();
        }
        let block = |fill: u8| vec![fill; 8192];
        fs::write(data.join("base/5/101"), [block(1), block(2), block(3)].concat()).unwrap();
        fs::write(data.join("base/5/102"), [block(4), block(5)].concat()).unwrap();
        fs::write(data.join("base/5/103"), block(6)).unwrap();
        fs::write(data.join("pg_xact/0000"), b"xact").unwrap();
        fs::write(data.join("global/pg_control"), b"control").unwrap();
        fs::write(data.join("pg_wal/000000010000000000000001"), b"wal").unwrap();
        fs::write(data.join("base/pgsql_tmp/t"), b"tmp").unwrap();
        fs::set_permissions(data.join("pg_xact/0000"), fs::Permissions::from_mode(0o640)).unwrap();
        let before = tree_listing(&data);

        let map = [
            entry("base/5/101", FileAction::None, &[1, 9]),
            entry("base/5/102", FileAction::Truncate, &[]),
            entry("base/5/103", FileAction::CopyTail, &[]),
            entry("pg_xact/0000", FileAction::Copy, &[]),
            entry("base/5/104", FileAction::Copy, &[]),
            entry("pg_wal/000000010000000000000001", FileAction::Remove, &[]),
            entry("base/pgsql_tmp/t", FileAction::Remove, &[]),
            entry("base/pgsql_tmp", FileAction::Remove, &[]),
            entry("base/6", FileAction::Create, &[]),
        ];
        let entries = plan(&map, |path| found_at(&data.join(path)), |_| false).unwrap();
        let saved = temp.path().join("saved");
        fs::create_dir(&saved).unwrap();
        let manifest = Manifest { block_size: 8192, entries, not_covered: Vec::new() };
        let report = save(&data, &saved, &manifest).unwrap();
        assert_eq!(report.files, 6, "{report:?}");

        // What pg_rewind does.
        let file = OpenOptions::new().write(true).open(data.join("base/5/101")).unwrap();
        file.write_all_at(&block(9), 8192).unwrap();
        file.write_all_at(&block(9), 9 * 8192).unwrap();
        OpenOptions::new().write(true).open(data.join("base/5/102")).unwrap().set_len(8192).unwrap();
        OpenOptions::new().append(true).open(data.join("base/5/103")).unwrap().write_all(&block(7)).unwrap();
        fs::write(data.join("pg_xact/0000"), b"other xact").unwrap();
        fs::write(data.join("base/5/104"), b"new").unwrap();
        fs::remove_file(data.join("pg_wal/000000010000000000000001")).unwrap();
        fs::remove_dir_all(data.join("base/pgsql_tmp")).unwrap();
        fs::create_dir(data.join("base/6")).unwrap();
        fs::write(data.join("global/pg_control"), b"rewound").unwrap();
        fs::write(data.join("backup_label"), b"label").unwrap();
        fs::write(data.join("standby.signal"), b"").unwrap();
        // And beyond its plan: the source gained a segment and a database between the two runs.
        fs::write(data.join("pg_wal/000000020000000000000005"), b"new wal").unwrap();
        fs::create_dir(data.join("base/7")).unwrap();
        fs::write(data.join("base/7/1"), b"new relation").unwrap();
        add_created(&saved, &["pg_wal/000000020000000000000005".into(), "base/7".into(), "base/7/1".into()]).unwrap();
        assert!(add_created(&saved, &["../outside".into()]).is_err(), "only plain paths inside");
        assert_ne!(tree_listing(&data), before);

        restore(&data, &saved).unwrap();
        assert_eq!(tree_listing(&data), before);
    }

    #[test]
    fn restore_refuses_a_manifest_that_leaves_the_data_directory() {
        let temp = tempfile::tempdir().unwrap();
        let manifest = Manifest {
            block_size: 8192,
            entries: vec![Saved::Absent { path: "../victim".into() }],
            not_covered: Vec::new(),
        };
        fs::write(temp.path().join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
        fs::write(temp.path().join("victim"), b"x").unwrap();
        fs::create_dir(temp.path().join("data")).unwrap();
        assert!(restore(&temp.path().join("data"), temp.path()).is_err());
        assert!(temp.path().join("victim").exists());
    }
}
