//! The one writer of configuration files. Writes are atomic (temp file in the same directory, fsync,
//! rename, fsync the directory), and every change is recorded so a failed run can be undone.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::files::plan::{existing_ownership, FileChange, Ownership};

/// Writes `content` to `path` atomically with the given owner and mode.
pub fn write_atomic(path: &Path, content: &[u8], ownership: Ownership) -> Result<()> {
    let dir = path.parent().with_context(|| format!("{} has no parent directory", path.display()))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".pgha-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    // Set mode before writing, so a secret is never readable by others, not even briefly.
    temp.as_file().set_permissions(fs::Permissions::from_mode(ownership.mode))?;
    chown(temp.path(), Some(ownership.uid), Some(ownership.gid))
        .with_context(|| format!("cannot set the owner of a temporary file in {}", dir.display()))?;
    temp.write_all(content).with_context(|| format!("cannot write {}", path.display()))?;
    temp.as_file().sync_all()?;
    temp.persist(path).with_context(|| format!("cannot rename into {}", path.display()))?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|handle| handle.sync_all()).with_context(|| format!("cannot fsync {}", dir.display()))
}

pub fn create_dir(path: &Path, ownership: Ownership) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(ownership.mode))?;
    chown(path, Some(ownership.uid), Some(ownership.gid)).with_context(|| format!("cannot chown {}", path.display()))
}

#[derive(Debug)]
enum Undo {
    Restore { path: PathBuf, content: String, ownership: Ownership },
    Remove(PathBuf),
    RemoveEmptyDir(PathBuf),
}

/// Changes applied so far, in order, so they can be put back.
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
        // Remember the outermost directory that did not exist, so undo removes all of what we made.
        let mut created = Vec::new();
        let mut missing = Some(path);
        while let Some(dir) = missing.filter(|dir| !dir.exists()) {
            created.push(dir.to_path_buf());
            missing = dir.parent();
        }
        create_dir(path, ownership)?;
        self.undo.extend(created.into_iter().rev().map(Undo::RemoveEmptyDir));
        Ok(())
    }

    /// Puts every recorded change back, newest first. Keeps going past errors and reports them all.
    pub fn rollback(self) -> Result<()> {
        let mut failures = Vec::new();
        for undo in self.undo.into_iter().rev() {
            let result = match &undo {
                Undo::Restore { path, content, ownership } => write_atomic(path, content.as_bytes(), *ownership),
                Undo::Remove(path) => {
                    fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))
                }
                // remove_dir refuses non-empty directories: anything that arrived meanwhile stays.
                Undo::RemoveEmptyDir(path) => {
                    fs::remove_dir(path).with_context(|| format!("cannot remove {}", path.display()))
                }
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

fn describe_undo(undo: &Undo) -> String {
    match undo {
        Undo::Restore { path, .. } => format!("restored {}", path.display()),
        Undo::Remove(path) => format!("removed {}", path.display()),
        Undo::RemoveEmptyDir(path) => format!("removed directory {}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::plan::file_change;
    use std::os::unix::fs::MetadataExt;

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
}
