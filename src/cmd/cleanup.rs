//! `pgha cleanup`: removes what pgha kept beside the data directory (replaced data directories,
//! the forks rewinds saved) once it is older than the admin asks. Nothing else in pgha removes
//! them: they are the "moved aside, never deleted" of every clone and rejoin.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::Args;

use crate::error::EXIT_OK;
use crate::files::datadir::{dir_size, kept_beside, remove_kept};
use crate::node::Node;
use crate::size::format_bytes;

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Remove the kept directories made longer ago than this ("7d", "12h"); `pgha status` lists them
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub older_than: Duration,

    /// Print what would be removed and remove nothing
    #[arg(long)]
    pub dry_run: bool,

    /// When another pgha works on this cluster, wait for it instead of exiting 1
    #[arg(long)]
    pub wait: bool,
}

impl CleanupArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let node = Node::load(config_path)?;
        let cluster = &node.cluster;
        // A clone or rejoin in progress may be making a kept directory right now.
        if !self.dry_run {
            crate::lock::take_for_run(&cluster.id(), "pgha cleanup", self.wait)?;
        }
        let now = SystemTime::now();
        let (old, young): (Vec<_>, Vec<_>) = kept_beside(&cluster.data_dir)?
            .into_iter()
            .partition(|kept| now.duration_since(kept.made).is_ok_and(|age| age >= self.older_than));
        let limit = humantime::format_duration(self.older_than);
        if old.is_empty() {
            println!(
                "nothing to do: {} kept beside {}, none older than {limit}",
                young.len(),
                cluster.data_dir.display()
            );
            return Ok(EXIT_OK);
        }
        let mut freed = 0;
        for kept in &old {
            let bytes = dir_size(&kept.path);
            let made = humantime::format_rfc3339_seconds(kept.made);
            if self.dry_run {
                println!(
                    "would remove {} ({}, {}, made {made})",
                    kept.path.display(),
                    kept.kind.as_str(),
                    format_bytes(bytes)
                );
                continue;
            }
            remove_kept(kept)?;
            freed += bytes;
            println!("removed {} ({}, {}, made {made})", kept.path.display(), kept.kind.as_str(), format_bytes(bytes));
        }
        if !self.dry_run {
            println!(
                "removed {} kept {}, freed {}; {} younger than {limit} left",
                old.len(),
                if old.len() == 1 { "directory" } else { "directories" },
                format_bytes(freed),
                young.len()
            );
        }
        Ok(EXIT_OK)
    }
}
