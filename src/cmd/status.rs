//! `pgha status`: this host's role and replication health, as a table or JSON, with
//! monitoring-plugin exit codes (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
//!
//! Unlike every other command, a config error exits 3 (UNKNOWN), not 2: to a monitoring system 2
//! means CRITICAL, and a broken pgha.conf says nothing about the database.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Result;
use clap::Args;

use std::net::IpAddr;

use crate::config::Config;
use crate::debian::Cluster;
use crate::files::datadir::{dir_size, filesystem_bytes, free_bytes, kept_beside, Kept};
use crate::health::{describe, describe_kept, fenced, format_plugin, ClusterReport, FilesystemReport, Limits, Report};
use crate::members::find_primary;
use crate::node::{find_local_address, Node};
use crate::replication::{parse_snapshot, snapshot_sql, Health, LagLimit};
use crate::tools::pg_lsclusters;
use crate::tools::psql::{invoke_psql, query, Target};
use crate::upstream::PrivatePassfile;

/// The share of the data directory's filesystem the kept directories may take before WARNING.
pub(crate) const DEFAULT_WARN_KEPT: u8 = 20;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON following docs/status-schema.json instead of a table
    #[arg(long)]
    pub json: bool,

    /// WARNING above this lag: bytes ("16MB") or time ("30s"); repeat to set both [default: 16MB]
    #[arg(long, value_name = "LIMIT")]
    pub warn_lag: Vec<LagLimit>,

    /// CRITICAL above this lag: bytes ("1GB") or time ("5min"); repeat to set both [default: 1GB]
    #[arg(long, value_name = "LIMIT")]
    pub crit_lag: Vec<LagLimit>,

    /// WARNING when the directories pgha kept beside the data directory take more than this
    /// percentage of its filesystem
    #[arg(long, value_name = "PERCENT", default_value_t = DEFAULT_WARN_KEPT, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub warn_kept: u8,

    /// Print the raw answer of the status query (for saving parser test samples)
    #[arg(long, hide = true)]
    pub raw: bool,
}

impl StatusArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        if self.raw {
            let cluster = Node::load(config_path)?.cluster;
            print!("{}", invoke_psql(&Target::local(&cluster), &snapshot_sql(cluster.version))?);
            return Ok(0);
        }
        let limits = Limits::new(&self.warn_lag, &self.crit_lag);
        let report = match gather(config_path, &limits, self.warn_kept) {
            Ok(report) => report,
            Err(error) => {
                let mut report = Report::empty();
                report.problem(Health::Unknown, format!("{error:#}"));
                report
            }
        }
        .finish();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", format_plugin(&report, &limits));
        }
        Ok(report.exit_code)
    }
}

/// Who the members name as the primary (this host's cluster included).
fn ask_members(config: &Config, cluster: &Cluster, own: IpAddr) -> Result<IpAddr> {
    let password = config.read_password()?;
    let passfile = PrivatePassfile::new(config, &password)?;
    Ok(find_primary(config, cluster, &passfile.path, own, None)?.0)
}

/// The report of this host, not yet finished; `pgha metrics` writes the same one.
pub(crate) fn gather(config_path: &Path, limits: &Limits, warn_kept: u8) -> Result<Report> {
    let Node { config, cluster } = Node::load(config_path)?;
    let online = pg_lsclusters::is_online(&cluster)?;
    let mut report = Report::empty();
    let own = find_local_address(&config.node_addresses())?;
    report.host_address = own.map(|address| address.to_string());
    if let Some(own) = own {
        match ask_members(&config, &cluster, own) {
            Ok(primary) => {
                report.primary_address = Some(primary.to_string());
                report.configured_role = Some(if primary == own { "primary" } else { "standby" });
            }
            Err(error) => report.problem(Health::Critical, format!("{error:#}")),
        }
    }
    report.cluster = ClusterReport {
        id: Some(cluster.id()),
        version: Some(cluster.version.to_string()),
        port: Some(cluster.port),
        state: if online { "online" } else { "down" },
    };
    if own.is_none() {
        report.problem(
            Health::Warning,
            format!(
                "none of this host's addresses is in {}: cannot tell which role it should have",
                config_path.display()
            ),
        );
    }
    report.data_filesystem = data_filesystem(&cluster);
    // The kept directories sit beside the data directory, on its filesystem (the swap is a rename).
    let filesystem = report.data_filesystem.as_ref().map_or(0, |filesystem| filesystem.size_bytes);
    match kept_with_sizes(&cluster) {
        Ok(kept) => describe_kept(&mut report, &kept, SystemTime::now(), filesystem, warn_kept),
        Err(error) => report.problem(Health::Warning, format!("cannot list what pgha kept: {error:#}")),
    }
    if let Some(fence) = crate::fence::read(&cluster)? {
        // A fenced server refuses every connection: the fence's own file is what tells.
        fenced(&mut report, &fence);
        return Ok(report);
    }
    if !online {
        report.problem(Health::Critical, format!("cluster {} is down", cluster.id()));
        return Ok(report);
    }
    let snapshot = parse_snapshot(&query(&Target::local(&cluster), &snapshot_sql(cluster.version))?)?;
    describe(&mut report, &config, &cluster, &snapshot, limits);
    Ok(report)
}

/// The kept directories beside the data directory with their sizes (walked without following
/// links).
fn kept_with_sizes(cluster: &Cluster) -> Result<Vec<(Kept, u64)>> {
    Ok(kept_beside(&cluster.data_dir)?
        .into_iter()
        .map(|dir| {
            let bytes = dir_size(&dir.path);
            (dir, bytes)
        })
        .collect())
}

/// Free space and size of the data directory's filesystem; None when it cannot be read, which
/// the cluster's own state already reports.
fn data_filesystem(cluster: &Cluster) -> Option<FilesystemReport> {
    Some(FilesystemReport {
        path: cluster.data_dir.display().to_string(),
        free_bytes: free_bytes(&cluster.data_dir).ok()?,
        size_bytes: filesystem_bytes(&cluster.data_dir).ok()?,
    })
}
