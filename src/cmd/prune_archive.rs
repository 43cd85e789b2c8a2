//! `pgha prune-archive`: keep the WAL archive within archive.keep, so it cannot grow forever.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::Config;
use crate::error::EXIT_OK;

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

impl PruneArchiveArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let config = Config::load(config_path)?;
        if !config.archive.enabled {
            println!("archive.enabled is false: nothing to prune");
            return Ok(EXIT_OK);
        }
        let directory = &config.archive.directory;
        let entries = match fs::read_dir(directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                println!("{} does not exist: nothing to prune", directory.display());
                return Ok(EXIT_OK);
            }
            Err(error) => return Err(error).with_context(|| format!("cannot list {}", directory.display())),
        };
        let cutoff = SystemTime::now() - config.archive.keep;
        let (mut count, mut bytes) = (0u64, 0u64);
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let metadata = entry.metadata()?;
            if !metadata.is_file() || !is_prunable_name(&name) || metadata.modified()? >= cutoff {
                continue;
            }
            if self.dry_run {
                println!("would delete {}", entry.path().display());
            } else {
                fs::remove_file(entry.path()).with_context(|| format!("cannot delete {}", entry.path().display()))?;
            }
            count += 1;
            bytes += metadata.len();
        }
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        if count == 0 {
            println!(
                "nothing older than {} in {}: no changes",
                humantime::format_duration(config.archive.keep),
                directory.display()
            );
        } else {
            log::info!(
                "{verb} {count} archived files ({} MB) older than {}",
                bytes / 1_048_576,
                humantime::format_duration(config.archive.keep)
            );
            println!("{verb} {count} files, {} MB", bytes / 1_048_576);
        }
        Ok(EXIT_OK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
