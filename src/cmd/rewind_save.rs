//! `pgha rewind-save` and `pgha rewind-restore`: the two halves of the rewind's saved set, run by
//! pgha itself as postgres (see `files::rewind_save`). Not for admins: `pgha rejoin` runs the
//! save, `pgha rejoin --undo-rewind` the restore.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::error::EXIT_OK;
use crate::files::rewind_save::{add_created, restore, save, Manifest};

#[derive(Debug, Args)]
pub struct RewindSaveArgs {
    /// The data directory pg_rewind is about to change
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Where the saved set goes: a directory this run creates
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,

    /// Instead of saving: add to the saved set in --into the paths on stdin (a JSON list) that
    /// the rewind created beyond its plan, for a restore to remove
    #[arg(long)]
    pub created: bool,
}

#[derive(Debug, Args)]
pub struct RewindRestoreArgs {
    /// The data directory to put back
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// The saved set
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
}

/// Both halves follow paths in a tree the postgres account controls: as root they could be led
/// anywhere, as postgres they reach nothing that account could not reach itself.
fn refuse_root(what: &str) -> Result<()> {
    if nix::unistd::Uid::effective().is_root() {
        bail!("pgha {what} runs as the data directory's owner (pgha rejoin starts it as postgres), never as root");
    }
    Ok(())
}

impl RewindSaveArgs {
    /// Reads the planned manifest (JSON) from stdin; prints what it saved as JSON.
    pub fn run(self, _config_path: &Path) -> Result<i32> {
        refuse_root("rewind-save")?;
        let mut input = Vec::new();
        std::io::stdin().read_to_end(&mut input).context("cannot read the plan from stdin")?;
        if self.created {
            let paths: Vec<String> = serde_json::from_slice(&input).context("stdin is not a list of paths")?;
            add_created(&self.into, &paths)?;
            return Ok(EXIT_OK);
        }
        let manifest: Manifest = serde_json::from_slice(&input).context("the plan on stdin is not a manifest")?;
        std::fs::create_dir(&self.into).with_context(|| format!("cannot create {}", self.into.display()))?;
        let report = save(&self.data_dir, &self.into, &manifest)?;
        println!("{}", serde_json::to_string(&report)?);
        Ok(EXIT_OK)
    }
}

impl RewindRestoreArgs {
    pub fn run(self, _config_path: &Path) -> Result<i32> {
        refuse_root("rewind-restore")?;
        let manifest = restore(&self.data_dir, &self.from)?;
        println!("{}", serde_json::json!({ "entries": manifest.entries.len() }));
        Ok(EXIT_OK)
    }
}
