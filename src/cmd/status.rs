//! `pgha status`: this host's role and replication health, as a table or JSON, with
//! monitoring-plugin exit codes (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
//!
//! Unlike every other command, a config error exits 3 (UNKNOWN), not 2: to a monitoring system 2
//! means CRITICAL, and a broken pgha.conf says nothing about the database. Run by anyone but root
//! (a monitoring agent without its sudo rule) it exits 3 as well, for the same reason.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::unistd::{Uid, User};

use std::net::IpAddr;

use crate::config::Config;
use crate::debian::Cluster;
use crate::files::datadir::{dir_size, filesystem_bytes, free_bytes, kept_beside, Kept};
use crate::health::{
    describe, describe_archive, describe_kept, fenced, format_plugin, judge_free_space, ArchiveFacts, ClusterReport,
    FilesystemReport, FreeLimits, Limits, Report,
};
use crate::members::find_primary;
use crate::node::{find_local_address, Node};
use crate::replication::{local_snapshot_sql, parse_snapshot, Health, LagLimit};
use crate::tools::pg_lsclusters;
use crate::tools::psql::{invoke_psql, query, Target};
use crate::upstream::PrivatePassfile;

/// The share of the data directory's filesystem the kept directories may take before WARNING.
const DEFAULT_WARN_KEPT: u8 = 20;

/// The limits that turn a report's figures into WARNING and CRITICAL: one set of flags, so that
/// `pgha metrics` judges with the same limits a `pgha status` check is given.
#[derive(Debug, Args)]
pub struct HealthLimitArgs {
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

    /// WARNING when the data directory's or the archive's filesystem has less than this
    /// percentage free
    #[arg(long, value_name = "PERCENT", default_value_t = FreeLimits::default().warn_percent, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub warn_free: u8,

    /// CRITICAL when the data directory's or the archive's filesystem has less than this
    /// percentage free
    #[arg(long, value_name = "PERCENT", default_value_t = FreeLimits::default().crit_percent, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub crit_free: u8,
}

impl HealthLimitArgs {
    pub fn lag(&self) -> Limits {
        Limits::new(&self.warn_lag, &self.crit_lag)
    }

    pub fn free(&self) -> FreeLimits {
        FreeLimits { warn_percent: self.warn_free, crit_percent: self.crit_free }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON following docs/status-schema.json instead of a table
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub limits: HealthLimitArgs,

    /// Print the raw answer of the status query (for saving parser test samples)
    #[arg(long, hide = true)]
    pub raw: bool,
}

impl StatusArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        if self.raw {
            let cluster = Node::load(config_path)?.cluster;
            print!("{}", invoke_psql(&Target::local(&cluster), &local_snapshot_sql(cluster.version))?);
            return Ok(0);
        }
        let limits = self.limits.lag();
        let report = match gather(config_path, &limits, self.limits.free(), self.limits.warn_kept) {
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

/// Where a monitoring agent's sudo rule is shown, for the message that refuses anyone but root.
const SUDO_EXAMPLE: &str = "/usr/share/doc/pgha/examples/sudoers.d-pgha-monitoring";

/// Run by another account, status would get half-way (pg_lsclusters answers anyone) and then
/// fail on the password file or on becoming postgres, with an error that hides why. Refused first,
/// as UNKNOWN, naming the file that account cannot read and the way out: an agent sees that its
/// own setup is wrong, not the database.
fn require_root(config_path: &Path) -> Result<()> {
    let uid = Uid::effective();
    if uid.is_root() {
        return Ok(());
    }
    let account = match User::from_uid(uid) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    };
    let way_out = format!("run it through sudo with the exact command line allowed, as {SUDO_EXAMPLE} shows");
    let config = Config::load(config_path)
        .with_context(|| format!("pgha status needs root and runs as {account}; {way_out}"))?;
    let password_file = config.replication.password_file.display();
    let unreadable = match std::fs::File::open(&config.replication.password_file) {
        Err(error) => format!("cannot read the replication password file {password_file}: {error}"),
        Ok(_) => {
            format!("can read the replication password file {password_file} but cannot ask the cluster as postgres")
        }
    };
    bail!("pgha status needs root and runs as {account}: it {unreadable}; {way_out}")
}

/// The report of this host, not yet finished; `pgha metrics` writes the same one.
pub(crate) fn gather(config_path: &Path, limits: &Limits, free: FreeLimits, warn_kept: u8) -> Result<Report> {
    require_root(config_path)?;
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
    let data_filesystem = filesystem_of(&cluster.data_dir);
    if let Some(filesystem) = &data_filesystem {
        judge_free_space(&mut report, "the data directory", filesystem, free);
    }
    report.data_filesystem = data_filesystem;
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
    let snapshot = parse_snapshot(&query(&Target::local(&cluster), &local_snapshot_sql(cluster.version))?)?;
    describe(&mut report, &config, &cluster, &snapshot, limits);
    if let (Some(archiver), true) = (&snapshot.archiver, config.archive.enabled) {
        describe_archive(&mut report, archiver, archive_facts(&config.archive.directory, &cluster.data_dir), free);
    }
    Ok(report)
}

/// The archive directory measured from metadata (never following a link), and its filesystem
/// when it is not the data directory's.
fn archive_facts(directory: &Path, data_dir: &Path) -> ArchiveFacts {
    let usage = crate::files::archive::usage(directory);
    let device = |path: &Path| std::fs::metadata(path).map(|metadata| metadata.dev()).ok();
    let shared = device(directory).is_some() && device(directory) == device(data_dir);
    ArchiveFacts {
        directory: directory.display().to_string(),
        usage,
        own_filesystem: if shared { None } else { filesystem_of(directory) },
    }
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

/// Free space and size of the filesystem `path` is on; None when it cannot be read, which the
/// cluster's own state, or the archive's, already reports.
fn filesystem_of(path: &Path) -> Option<FilesystemReport> {
    Some(FilesystemReport {
        path: path.display().to_string(),
        free_bytes: free_bytes(path).ok()?,
        size_bytes: filesystem_bytes(path).ok()?,
    })
}
