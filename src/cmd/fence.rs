//! `pgha fence VERSION-NAME`: the fence at start, run by postgresql@.service (`ExecStartPre=`)
//! before every start of every cluster on the host. Exit 0 whenever the cluster may start, fenced
//! or not; the unit's `-` prefix starts PostgreSQL whatever this exits with.

use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::error::EXIT_OK;
use crate::fence::{fence_at_start, Fence, Outcome};

#[derive(Debug, Args)]
pub struct FenceArgs {
    /// The cluster about to start, as postgresql@.service names it (%i): VERSION-NAME, e.g. 15-main
    #[arg(value_name = "VERSION-NAME")]
    pub instance: String,
}

impl FenceArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        match fence_at_start(config_path, &self.instance)? {
            // Silent: this runs before every cluster's start, most of them none of pgha's business.
            Outcome::NotManaged(why) => log::debug!("cluster {} is not pgha's: {why}", self.instance),
            Outcome::InRecovery => log::debug!("cluster {} starts in recovery: no fence needed", self.instance),
            Outcome::Running => log::info!("cluster {} is running already: nothing to fence", self.instance),
            Outcome::Primary => {
                log::info!("cluster {} is the primary of the members: it starts writable", self.instance)
            }
            Outcome::Alone { waited } => log::warn!(
                "no member answered within {:.0}s: cluster {} starts as before, writable (fence.no_answer = \"start\")",
                waited.as_secs_f64(),
                self.instance
            ),
            Outcome::Fenced { primary, reason } => {
                log::warn!("{}", Fence { primary }.message());
                log::warn!(
                    "cluster {} starts as a standby that takes no writes and serves no reads: {reason}",
                    self.instance
                );
            }
        }
        Ok(EXIT_OK)
    }
}
