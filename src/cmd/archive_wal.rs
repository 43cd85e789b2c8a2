//! `pgha archive-wal`: PostgreSQL's archive_command. Copies one finished WAL file into the
//! archive durably, keeps the archive under archive.max_size, and drops the segment instead of
//! failing when archive.min_free is set and the disk is that full.
//!
//! PostgreSQL runs it as postgres for every segment, with the limits `pgha primary` rendered into
//! the command line: it never reads pgha.conf. Exit 0 tells PostgreSQL the segment is safe (or,
//! under the floor, deliberately dropped) and may be recycled; anything else makes it retry.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::error::EXIT_OK;
use crate::files::archive::{archive_segment, prune_to_size, ArchiveLimits, Archived};
use crate::size::format_bytes;

#[derive(Debug, Args)]
pub struct ArchiveWalArgs {
    /// The archive directory (archive.directory)
    #[arg(long, value_name = "DIR")]
    pub directory: PathBuf,

    /// Delete the oldest archived files once the archive holds more bytes than this (archive.max_size)
    #[arg(long, value_name = "BYTES")]
    pub max_size: Option<u64>,

    /// Drop the segment instead of archiving it when fewer bytes than this would stay free (archive.min_free)
    #[arg(long, value_name = "BYTES")]
    pub min_free: Option<u64>,

    /// The WAL file to archive (%p: relative to the data directory, PostgreSQL's working directory)
    pub source: PathBuf,

    /// Its name in the archive (%f)
    pub name: String,
}

impl ArchiveWalArgs {
    pub fn run(self, _config_path: &Path) -> Result<i32> {
        let limits = ArchiveLimits { max_bytes: self.max_size, min_free_bytes: self.min_free };
        match archive_segment(&self.source, &self.directory, &self.name, limits)? {
            Archived::Stored { .. } | Archived::AlreadyThere => {}
            Archived::Dropped { free } => log::warn!(
                "dropped WAL segment {} instead of archiving it: {} has {} free, below archive.min_free {}; \
                 point-in-time recovery across this segment is impossible (a {} marker file stands in its place)",
                self.name,
                self.directory.display(),
                format_bytes(free),
                format_bytes(self.min_free.unwrap_or(0)),
                crate::files::archive::DROPPED_SUFFIX,
            ),
        }
        if let Some(max_bytes) = self.max_size {
            let pruned = prune_to_size(&self.directory, max_bytes, Some(&self.name), false)?;
            if pruned.count > 0 {
                log::info!(
                    "the archive held more than archive.max_size {}: deleted its {} oldest files ({})",
                    format_bytes(max_bytes),
                    pruned.count,
                    format_bytes(pruned.bytes)
                );
            }
        }
        Ok(EXIT_OK)
    }
}
