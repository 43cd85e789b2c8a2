//! `pgha primary`: make this host's cluster the replication primary.

use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::config::Config;
use crate::error::EXIT_OK;
use crate::node::{require_local_address, Node};
use crate::primary::{apply, list, prepare};

#[derive(Debug, Args)]
pub struct PrimaryArgs {
    /// Print the plan (a diff of each file, the SQL and commands) and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// When another pgha works on this cluster, wait for it instead of exiting 1
    #[arg(long)]
    pub wait: bool,
}

impl PrimaryArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        // All of the admin's input is checked before the host is even looked at.
        let config = Config::load(config_path)?;
        let password = config.read_password()?;
        let node = Node::for_config(config)?;
        let (config, cluster) = (&node.config, &node.cluster);
        if !self.dry_run {
            crate::lock::take_for_run(&cluster.id(), "pgha primary", self.wait)?;
        }
        node.require_online()?;
        require_local_address(config_path, "primary.address", config.primary.address)?;
        let prepared = prepare(config, cluster, &password)?;
        if prepared.plan.is_empty() {
            log::info!("cluster {} is already a configured primary: no changes", cluster.id());
            println!("no changes");
            return Ok(EXIT_OK);
        }
        if self.dry_run {
            print!("{}", prepared.plan.describe());
            println!("then: reload cluster {}, and restart it only if a changed setting requires it", cluster.id());
            return Ok(EXIT_OK);
        }
        apply(&prepared.plan, cluster, &prepared.target)?;
        println!("cluster {} is a replication primary for {}", cluster.id(), list(&config.standby.addresses));
        Ok(EXIT_OK)
    }
}
