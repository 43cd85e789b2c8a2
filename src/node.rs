//! This host as pgha sees it: its pgha.conf and the Debian cluster that file names, assembled
//! once per command, and the guards that keep a command on the host it is meant for.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Result;

use crate::config::Config;
use crate::debian::{select_cluster, Cluster};
use crate::error::ConfigError;
use crate::host::local_addresses;
use crate::tools::pg_lsclusters;

pub struct Node {
    pub config: Config,
    pub cluster: Cluster,
}

impl Node {
    /// The config and the cluster it names (or the only one there is).
    pub fn load(config_path: &Path) -> Result<Node> {
        let config = Config::load(config_path)?;
        Node::for_config(config)
    }

    pub fn for_config(config: Config) -> Result<Node> {
        let choice = &config.cluster;
        let name = choice.version.and(choice.name.as_deref());
        let listed = match pg_lsclusters::list(choice.version, name) {
            Ok(listed) => listed,
            // A cluster that does not exist is the admin's input: the selection below says so, and
            // which ones do exist when pg_lsclusters can list them.
            Err(error) if name.is_some() && format!("{error:#}").contains("does not exist") => {
                pg_lsclusters::list(choice.version, None).unwrap_or_default()
            }
            Err(error) => return Err(error),
        };
        let listed: Vec<Cluster> = listed.into_iter().map(|listed| listed.cluster).collect();
        let cluster = select_cluster(&config.path, &config.cluster, &listed)?;
        Ok(Node { config, cluster })
    }

    /// A command that works on a running cluster refuses a stopped one as a setup error.
    pub fn require_online(&self) -> Result<()> {
        if pg_lsclusters::is_online(&self.cluster)? {
            return Ok(());
        }
        let cluster = &self.cluster;
        Err(ConfigError::key(
            &self.config.path,
            "cluster",
            format!(
                "cluster {} is down: expected it running; start it with `pg_ctlcluster {} {} start`",
                cluster.id(),
                cluster.version,
                cluster.name
            ),
        )
        .into())
    }
}

/// This host's address among the members (`[primary] address` and `[standby] addresses`): the
/// guard against running `command` on a machine that is not one of them.
pub fn require_member_address(config: &Config, command: &str) -> Result<IpAddr> {
    let local = local_addresses()?;
    if let Some(address) = config.node_addresses().into_iter().find(|address| local.contains(address)) {
        return Ok(address);
    }
    let have: Vec<String> = local.iter().map(ToString::to_string).collect();
    Err(ConfigError::in_file(
        &config.path,
        format!(
            "none of [primary] address and [standby] addresses is an address of this host (it has {}): \
             run `{command}` on a member, or add this host's address to standby.addresses",
            have.join(", ")
        ),
    )
    .into())
}

/// The first of `addresses` configured on this host.
pub fn find_local_address(addresses: &[IpAddr]) -> Result<Option<IpAddr>> {
    let local = local_addresses()?;
    Ok(addresses.iter().copied().find(|address| local.contains(address)))
}
