//! A plan: everything a command will change, computed before anything is changed.
//! `--dry-run` prints it; `apply` carries it out.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use similar::TextDiff;

use crate::files::secure::{open_parent, read_text_capped};
use crate::hba::merge_block;
use crate::host::postgres_account;
use crate::render::{FileKind, RenderedFile};

pub use crate::files::secure::Ownership;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChange {
    pub path: PathBuf,
    /// None when the file does not exist yet.
    pub old: Option<String>,
    pub new: String,
    pub ownership: Ownership,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    WriteFile(FileChange),
    CreateDir {
        path: PathBuf,
        ownership: Ownership,
    },
    /// SQL run on the local server. `shown` is what a dry run prints: secrets already redacted.
    Sql {
        shown: String,
        sql: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// The plan as an admin reads it: unified diffs for files, then everything else.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            match step {
                Step::WriteFile(change) => out.push_str(&describe_file_change(change)),
                Step::CreateDir { path, ownership } => {
                    let _ = writeln!(
                        out,
                        "create directory {} (uid {}, mode {:04o})",
                        path.display(),
                        ownership.uid,
                        ownership.mode
                    );
                }
                Step::Sql { shown, .. } => {
                    let _ = writeln!(out, "run SQL: {shown}");
                }
            }
        }
        out
    }
}

pub fn describe_file_change(change: &FileChange) -> String {
    let path = change.path.display().to_string();
    let old = change.old.as_deref().unwrap_or("");
    let old_name = if change.old.is_some() { format!("a{path}") } else { "/dev/null".into() };
    let mut out = TextDiff::from_lines(old, &change.new)
        .unified_diff()
        .context_radius(3)
        .header(&old_name, &format!("b{path}"))
        .to_string();
    if out.is_empty() {
        out = format!(
            "set owner/mode of {path} to uid {} gid {} mode {:04o}\n",
            change.ownership.uid, change.ownership.gid, change.ownership.mode
        );
    }
    out
}

/// Configuration files pgha reads and rewrites are small; anything larger is not one of them.
const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// A write of `new` to `path`, or None when the file already has that content, owner and mode.
/// The current file is read without following a symlink or opening a FIFO.
pub fn file_change(path: &Path, new: String, ownership: Ownership) -> Result<Option<FileChange>> {
    let old = read_text_capped(path, MAX_CONFIG_BYTES)?;
    if let Some(old_text) = &old {
        if *old_text == new && existing_ownership(path)? == ownership {
            return Ok(None);
        }
    }
    Ok(Some(FileChange { path: path.to_path_buf(), old, new, ownership }))
}

/// The current text of a configuration file pgha merges into (pg_hba.conf, postgresql.conf).
pub fn read_config_text(path: &Path) -> Result<String> {
    read_text_capped(path, MAX_CONFIG_BYTES)?
        .with_context(|| format!("cannot read {}: it does not exist", path.display()))
}

/// The change a rendered configuration file needs: whole files owned by postgres (0644), the
/// pg_hba.conf block merged into the admin's file with its owner and mode kept.
pub fn rendered_file_change(file: RenderedFile) -> Result<Option<FileChange>> {
    match file.kind {
        FileKind::Whole => {
            let postgres = postgres_account()?;
            file_change(&file.path, file.content, Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o644 })
        }
        FileKind::HbaBlock => {
            let current = read_config_text(&file.path)?;
            let merged = merge_block(&current, &file.content)
                .map_err(|message| anyhow::anyhow!("{}: {message}", file.path.display()))?;
            file_change(&file.path, merged, existing_ownership(&file.path)?)
        }
    }
}

/// Owner and mode of an existing file, so a rewrite keeps what the admin or Debian chose.
pub fn existing_ownership(path: &Path) -> Result<Ownership> {
    let (dir, name) = open_parent(path)?;
    let stat = dir.stat(&name)?.with_context(|| format!("cannot stat {}: it does not exist", path.display()))?;
    Ok(Ownership { uid: stat.uid, gid: stat.gid, mode: stat.mode & 0o7777 })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;

    #[test]
    fn unchanged_file_needs_no_step_and_changed_file_shows_a_diff() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.conf");
        fs::write(&path, "a = 1\n").unwrap();
        let ownership = existing_ownership(&path).unwrap();
        assert_eq!(file_change(&path, "a = 1\n".into(), ownership).unwrap(), None);
        let change = file_change(&path, "a = 2\n".into(), ownership).unwrap().unwrap();
        let diff = describe_file_change(&change);
        assert!(diff.contains("-a = 1") && diff.contains("+a = 2"), "{diff}");
        let new_file = file_change(&dir.path().join("new.conf"), "x\n".into(), ownership).unwrap().unwrap();
        assert!(describe_file_change(&new_file).starts_with("--- /dev/null"));
    }
}
