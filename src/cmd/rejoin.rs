//! `pgha rejoin`: turn a former primary (or a standby following the wrong node) into a standby
//! of the configured primary: pg_rewind when possible, the full safe clone of `pgha standby`
//! otherwise. What is kept is described in the rewind workflow and in pgha(8).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::error::EXIT_OK;
use crate::node::{require_member_address, Node};
use crate::standby::rejoin::{rejoin, RejoinOptions, Rejoined};
use crate::standby::streaming::not_streaming_yet;
use crate::standby::{find_upstream, StandbyContext, Upstream};
use crate::upstream::PrivatePassfile;

#[derive(Debug, Args)]
pub struct RejoinArgs {
    /// Skip pg_rewind and clone the primary in full, even when this standby already streams
    /// (the old data directory is kept)
    #[arg(long)]
    pub full_clone: bool,

    /// Do not copy the data directory aside before pg_rewind; keep only the diverged WAL
    /// (for databases too large to copy; see "What is kept" in pgha(8))
    #[arg(long)]
    pub no_keep_copy: bool,

    /// How long the rejoined standby gets to start streaming (default: standby.streaming_timeout)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// When another pgha works on this cluster, wait for it instead of exiting 1
    #[arg(long)]
    pub wait: bool,
}

impl RejoinArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let node = Node::load(config_path)?;
        let (config, cluster) = (&node.config, &node.cluster);
        let password = config.read_password()?;
        let own_address = require_member_address(config, "pgha rejoin")?;
        crate::lock::take_for_run(&cluster.id(), "pgha rejoin", self.wait)?;
        let passfile = PrivatePassfile::new(config, &password)?;
        let primary = match find_upstream(config, cluster, &passfile.path, own_address)? {
            Upstream::Primary(address) => address,
            Upstream::ThisHost(members) => bail!(
                "cluster {} on {own_address} is the primary of the members: there is nothing to rejoin; to make \
                 it a standby, promote another member first (`pgha switchover` or `pgha promote` there)\n{members}",
                cluster.id()
            ),
        };
        drop(passfile);
        let context = StandbyContext { config, cluster, password: &password, own_address, primary };
        let options = RejoinOptions {
            full_clone: self.full_clone,
            keep_copy: !self.no_keep_copy,
            timeout: self.timeout.unwrap_or(config.standby.streaming_timeout),
        };
        match rejoin(&context, &options)? {
            Rejoined::AlreadyStreaming => {
                println!("nothing to do: cluster {} already streams from {}", cluster.id(), context.primary);
            }
            Rejoined::Rewound { rewound, elapsed } => {
                println!(
                    "cluster {} rejoined as a standby of {} with pg_rewind in {:.1}s",
                    cluster.id(),
                    context.primary,
                    elapsed.as_secs_f64()
                );
                if let Some(note) = rewound.fork_note {
                    println!("{note}");
                }
                if !rewound.streaming {
                    println!("{}", not_streaming_yet(&context));
                }
            }
            Rejoined::Cloned { report, elapsed } => {
                println!(
                    "cluster {} rejoined as a standby of {} by a full clone in {:.1}s ({} MB)",
                    cluster.id(),
                    context.primary,
                    elapsed.as_secs_f64(),
                    report.cloned_bytes >> 20
                );
                report.print_kept_data_dir();
                if !report.streaming {
                    println!("{}", not_streaming_yet(&context));
                }
            }
        }
        Ok(EXIT_OK)
    }
}
