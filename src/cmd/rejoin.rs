//! `pgha rejoin`: turn a former primary into a standby of the current primary.

use std::path::Path;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct RejoinArgs {}

impl RejoinArgs {
    pub fn run(self, _config_path: &Path) -> Result<i32> {
        anyhow::bail!("not yet")
    }
}
