//! `pgha primary`: make this host's cluster the replication primary.

use std::path::Path;

use anyhow::{bail, Result};
use clap::Args;
use std::net::IpAddr;

use crate::config::Config;
use crate::config::Password;
use crate::debian::Cluster;
use crate::error::EXIT_OK;
use crate::members::find_primary;
use crate::node::{require_member_address, Node};
use crate::primary::{apply, list, prepare};
use crate::tools::psql::{query_bool, Target};
use crate::upstream::PrivatePassfile;

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
        if let Some(fence) = crate::fence::read(cluster)? {
            bail!("cluster {} is {}", cluster.id(), fence.message());
        }
        node.require_online()?;
        let own_address = require_member_address(config, "pgha primary")?;
        if query_bool(&Target::local(cluster), "SELECT pg_is_in_recovery()")? {
            // The unit that made this host the first primary still runs at every boot after a
            // role change: on a standby it has nothing to do.
            println!(
                "nothing to do: cluster {} on {own_address} is a standby; `pgha primary` configures the primary only",
                cluster.id()
            );
            return Ok(EXIT_OK);
        }
        require_the_primary(config, cluster, &password, own_address)?;
        let prepared = prepare(config, cluster, &password, own_address)?;
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
        println!(
            "cluster {} is a replication primary for {}",
            cluster.id(),
            list(&config.node_addresses().into_iter().filter(|address| *address != own_address).collect::<Vec<_>>())
        );
        Ok(EXIT_OK)
    }
}

/// A writable cluster is configured as the primary only when the members agree it is the one:
/// an old primary that came back writable after a failover must not be tended as a primary.
fn require_the_primary(config: &Config, cluster: &Cluster, password: &Password, own_address: IpAddr) -> Result<()> {
    let passfile = PrivatePassfile::new(config, password)?;
    let (primary, survey) = find_primary(config, cluster, &passfile.path, own_address, None)?;
    if primary != own_address {
        bail!(
            "cluster {} on {own_address} is writable, but {primary} is the primary on a timeline that continues \
             this one: this is an old primary. Keep clients away from it and run `pgha rejoin` here\n{}",
            cluster.id(),
            survey.describe()
        );
    }
    Ok(())
}
