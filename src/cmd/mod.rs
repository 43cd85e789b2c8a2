//! One module per subcommand, each with an Args struct and `run`.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::debian::{list_clusters, select_cluster, Cluster};
use crate::error::ConfigError;

pub mod generate_docs;
pub mod primary;
pub mod prune_archive;
pub mod render;
pub mod standby;
pub mod write_config;

pub fn run(cli: Cli) -> Result<i32> {
    let config_path = cli.config.as_path();
    match cli.command {
        Command::Render(args) => args.run(config_path),
        Command::Primary(args) => args.run(config_path),
        Command::Standby(args) => args.run(config_path),
        Command::PruneArchive(args) => args.run(config_path),
        Command::WriteConfig(args) => args.run(config_path),
        Command::GenerateDocs(args) => args.run(),
    }
}

/// The config and the Debian cluster it names.
pub fn load_config_and_cluster(config_path: &Path) -> Result<(Config, Cluster)> {
    let config = Config::load(config_path)?;
    let cluster = select_cluster(config_path, &config.cluster, &list_clusters()?)?;
    Ok((config, cluster))
}

/// Refuses to go on unless `address` is configured on this host: the guard against running
/// a role's command on the wrong machine.
pub fn require_local_address(config_path: &Path, key: &str, address: IpAddr) -> Result<()> {
    let local = crate::host::local_addresses()?;
    if local.contains(&address) {
        return Ok(());
    }
    let have: Vec<String> = local.iter().map(ToString::to_string).collect();
    Err(ConfigError::key(
        config_path,
        key,
        format!(
            "{address} is not an address of this host (it has {}): run this command on the host that owns it",
            have.join(", ")
        ),
    )
    .into())
}

/// The first of `addresses` configured on this host.
pub fn find_local_address(addresses: &[IpAddr]) -> Result<Option<IpAddr>> {
    let local = crate::host::local_addresses()?;
    Ok(addresses.iter().copied().find(|address| local.contains(address)))
}

pub fn require_online(config_path: &Path, cluster: &Cluster) -> Result<()> {
    if cluster.online {
        Ok(())
    } else {
        Err(ConfigError::key(
            config_path,
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
