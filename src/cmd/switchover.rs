//! `pgha switchover`: hand the primary role from this host to a standby with no committed
//! transaction lost, no shell on the other hosts and no pgha.conf edit.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::error::EXIT_OK;
use crate::node::{require_member_address, Node};
use crate::standby::streaming::StandbyStarted;
use crate::switchover::{switchover, SwitchoverOptions};

#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    /// The standby to promote (default: the streaming standby that has replayed the most)
    #[arg(long, value_name = "ADDRESS")]
    pub to: Option<IpAddr>,

    /// How long the standby gets to replay this host's last WAL, and each standby to stream again
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,

    /// When another pgha works on this cluster, wait for it instead of exiting 1
    #[arg(long)]
    pub wait: bool,
}

impl SwitchoverArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let node = Node::load(config_path)?;
        let (config, cluster) = (&node.config, &node.cluster);
        let own = require_member_address(config, "pgha switchover")?;
        let password = config.read_password()?;
        crate::lock::take_for_run(&cluster.id(), "pgha switchover", self.wait)?;
        node.require_online()?;
        let options = SwitchoverOptions { to: self.to, timeout: self.timeout };
        let switched = switchover(config, cluster, &password, own, &options)?;
        println!(
            "{} is the primary now: it replayed this host's last WAL ({}) and accepted a write {} ms after this \
             cluster began to stop",
            switched.new_primary,
            switched.final_lsn,
            switched.write_pause.as_millis()
        );
        match switched.rejoined {
            StandbyStarted::Streaming => {
                println!("cluster {} on {own} is its standby and streams from it", cluster.id())
            }
            StandbyStarted::NotStreamingYet => println!(
                "cluster {} on {own} runs as its standby but does not stream yet: `pgha status` shows when it does",
                cluster.id()
            ),
        }
        for (member, follows) in &switched.followers {
            if *follows {
                println!("standby {member} streams from {}", switched.new_primary);
            } else {
                println!(
                    "standby {member} does not stream from {} yet: check `pgha status` there (its wal receiver \
                     finds the new primary by itself; `pgha rejoin` there if it does not)",
                    switched.new_primary
                );
            }
        }
        println!("no pgha.conf needs an edit: every member now finds {} as the primary", switched.new_primary);
        Ok(EXIT_OK)
    }
}
