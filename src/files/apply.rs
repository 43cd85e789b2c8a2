//! The one writer of configuration files. Writes are atomic (an exclusive temporary file in the
//! same directory, owner and mode set on its descriptor before any content, fsync, rename, fsync
//! the directory), go through directory handles that follow no symlink another account could
//! plant (`files::secure`), and every change is recorded so a failed run can be undone, even by a
//! panic: a transaction that was not committed rolls back when it is dropped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::files::plan::{existing_ownership, FileChange, Ownership};
use crate::files::secure::{open_parent, Dir, Kind};

/// Writes `content` to `path` atomically with the given owner and mode.
pub fn write_atomic(path: &Path, content: &[u8], ownership: Ownership) -> Result<()> {
    let (dir, name) = open_parent(path)?;
    dir.write_atomic(&name, content, ownership)
}

/// Makes `path` a directory with this owner and mode, creating missing parents (root, 0755), or
/// sets them on the directory that is there. A symlink anywhere is refused, not followed.
/// Returns the directories it created, outermost first.
pub fn create_dir(path: &Path, ownership: Ownership) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut existing = path;
    while !existing.exists() && existing.symlink_metadata().is_err() {
        missing.push(existing);
        existing = existing.parent().with_context(|| format!("cannot create {}: no parent exists", path.display()))?;
    }
    if existing == path {
        let (parent, name) = open_parent(path)?;
        parent.create_dir_or_open_existing(&name, ownership)?;
        return Ok(Vec::new());
    }
    let mut dir = Dir::open_following_root_links(existing)?;
    let mut created = Vec::new();
    for (index, missing_path) in missing.iter().rev().enumerate() {
        let name =
            missing_path.file_name().with_context(|| format!("{} names no directory", missing_path.display()))?;
        let leaf = index + 1 == missing.len();
        let own = if leaf { ownership } else { Ownership { uid: 0, gid: 0, mode: 0o755 } };
        dir = dir.create_dir(name, own)?;
        created.push(missing_path.to_path_buf());
    }
    Ok(created)
}

#[derive(Debug)]
enum Undo {
    Restore { path: PathBuf, content: String, ownership: Ownership },
    Remove(PathBuf),
    RemoveEmptyDir(PathBuf),
}

/// Changes applied so far, in order, so they can be put back. Call `commit` to keep them;
/// dropping an uncommitted transaction rolls it back.
#[derive(Debug, Default)]
pub struct Transaction {
    undo: Vec<Undo>,
}

impl Transaction {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn write(&mut self, change: &FileChange) -> Result<()> {
        let undo = match &change.old {
            Some(content) => Undo::Restore {
                path: change.path.clone(),
                content: content.clone(),
                ownership: existing_ownership(&change.path)?,
            },
            None => Undo::Remove(change.path.clone()),
        };
        write_atomic(&change.path, change.new.as_bytes(), change.ownership)?;
        self.undo.push(undo);
        Ok(())
    }

    pub fn create_dir(&mut self, path: &Path, ownership: Ownership) -> Result<()> {
        let created = create_dir(path, ownership)?;
        // Outermost first, so undo (newest first) removes the innermost first.
        self.undo.extend(created.into_iter().map(Undo::RemoveEmptyDir));
        Ok(())
    }

    /// Removes the file at `path` (never a directory, never following a link), to be put back
    /// on rollback. Says whether there was one.
    pub fn remove(&mut self, path: &Path) -> Result<bool> {
        let Some(content) = crate::files::secure::read_text_capped(path, 64 << 20)? else { return Ok(false) };
        let ownership = existing_ownership(path)?;
        remove_entry(path, false)?;
        self.undo.push(Undo::Restore { path: path.to_path_buf(), content, ownership });
        Ok(true)
    }

    /// Keeps every change.
    pub fn commit(mut self) {
        self.undo.clear();
    }

    /// Puts every recorded change back, newest first. Keeps going past errors and reports them all.
    pub fn rollback(mut self) -> Result<()> {
        self.undo_all()
    }

    fn undo_all(&mut self) -> Result<()> {
        let mut failures = Vec::new();
        for undo in std::mem::take(&mut self.undo).into_iter().rev() {
            let result = match &undo {
                Undo::Restore { path, content, ownership } => write_atomic(path, content.as_bytes(), *ownership),
                Undo::Remove(path) => remove_entry(path, false),
                // remove_dir refuses non-empty directories: anything that arrived meanwhile stays.
                Undo::RemoveEmptyDir(path) => remove_entry(path, true),
            };
            if let Err(error) = result {
                failures.push(format!("{error:#}"));
            } else {
                log::info!("rolled back: {}", describe_undo(&undo));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("rollback incomplete: {}", failures.join("; "))
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if !self.undo.is_empty() {
            log::warn!("putting back the files changed so far: the run stopped before it finished");
            if let Err(error) = self.undo_all() {
                log::error!("{error:#}");
            }
        }
    }
}

fn remove_entry(path: &Path, directory: bool) -> Result<()> {
    let (dir, name) = open_parent(path)?;
    match dir.stat(&name)? {
        Some(stat) if directory && stat.kind == Kind::Dir => dir.remove_dir(&name),
        Some(stat) if !directory && stat.kind != Kind::Dir => dir.remove_file(&name),
        Some(stat) => anyhow::bail!("cannot remove {}: it is {} now", path.display(), stat.kind),
        None => Ok(()),
    }
}

fn describe_undo(undo: &Undo) -> String {
    match undo {
        Undo::Restore { path, .. } => format!("restored {}", path.display()),
        Undo::Remove(path) => format!("removed {}", path.display()),
        Undo::RemoveEmptyDir(path) => format!("removed directory {}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::files::plan::file_change;

    fn mine(mode: u32) -> Ownership {
        Ownership { uid: nix::unistd::getuid().as_raw(), gid: nix::unistd::getgid().as_raw(), mode }
    }

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_atomic(&path, b"x", mine(0o600)).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn rollback_restores_old_content_and_removes_new_things() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("existing");
        fs::write(&existing, "old\n").unwrap();
        let mut transaction = Transaction::new();
        transaction.write(&file_change(&existing, "new\n".into(), mine(0o644)).unwrap().unwrap()).unwrap();
        let created = dir.path().join("made/deeper");
        transaction.create_dir(&created, mine(0o700)).unwrap();
        let fresh = created.join("fresh");
        transaction.write(&file_change(&fresh, "x".into(), mine(0o600)).unwrap().unwrap()).unwrap();
        transaction.rollback().unwrap();
        assert_eq!(fs::read_to_string(&existing).unwrap(), "old\n");
        assert!(!dir.path().join("made").exists());
    }

    #[test]
    fn a_removed_file_comes_back_on_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fence.conf");
        fs::write(&path, "hot_standby = off\n").unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let mut transaction = Transaction::new();
        assert!(transaction.remove(&path).unwrap());
        assert!(!path.exists());
        assert!(!transaction.remove(&dir.path().join("absent")).unwrap());
        transaction.rollback().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "hot_standby = off\n");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
    }

    #[test]
    fn a_dropped_transaction_rolls_back_and_a_committed_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "old\n").unwrap();
        let change = || file_change(&path, "new\n".into(), mine(0o644)).unwrap().unwrap();
        let result = std::panic::catch_unwind(|| {
            let mut transaction = Transaction::new();
            transaction.write(&change()).unwrap();
            panic!("a bug in the middle of a run");
        });
        assert!(result.is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "old\n", "the panic skipped the undo");
        let mut transaction = Transaction::new();
        transaction.write(&change()).unwrap();
        transaction.commit();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
    }

    #[test]
    fn a_symlink_planted_at_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let canary = tempfile::tempdir().unwrap();
        fs::set_permissions(canary.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(canary.path(), dir.path().join("archive")).unwrap();
        let error = create_dir(&dir.path().join("archive"), mine(0o700)).unwrap_err();
        assert!(format!("{error:#}").contains("symbolic link"), "{error:#}");
        assert_eq!(fs::metadata(canary.path()).unwrap().mode() & 0o777, 0o755, "the canary's mode changed");
    }
}
