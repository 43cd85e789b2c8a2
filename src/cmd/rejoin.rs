//! `pgha rejoin`: turn a former primary (or a standby following the wrong node) into a standby
//! of the configured primary: pg_rewind when possible, the full safe clone of `pgha standby`
//! otherwise. What is kept is described in the rewind workflow and in pgha(8).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::error::EXIT_OK;
use crate::node::{require_member_address, Node};
use crate::standby::rejoin::{rejoin, RejoinOptions, Rejoined};
use crate::standby::rewind::{restore_changed, Keep};
use crate::standby::streaming::not_streaming_yet;
use crate::standby::{find_upstream, StandbyContext, Upstream};
use crate::upstream::PrivatePassfile;

#[derive(Debug, Args)]
pub struct RejoinArgs {
    /// Skip pg_rewind and clone the primary in full, even when this standby already streams
    /// (the old data directory is kept)
    #[arg(long)]
    pub full_clone: bool,

    /// Do not save what pg_rewind changes; keep only the diverged WAL (see "What is kept" in
    /// pgha(8))
    #[arg(long)]
    pub no_keep_copy: bool,

    /// Use pg_rewind even when its dry run shows a full clone would copy less
    #[arg(long, conflicts_with = "full_clone")]
    pub rewind: bool,

    /// Rewind and configure the standby, but leave the cluster stopped: until it first starts,
    /// --undo-rewind can put the data directory back as it was
    #[arg(long, conflicts_with = "full_clone")]
    pub no_start: bool,

    /// Put the data directory back as it was before a rewind whose cluster has not started since,
    /// from the saved set (<datadir>.pgha-fork-<time>/before-rewind) that rejoin named
    #[arg(long, value_name = "DIR", conflicts_with_all = ["full_clone", "no_start", "no_keep_copy", "rewind"])]
    pub undo_rewind: Option<PathBuf>,

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
        if let Some(saved) = &self.undo_rewind {
            return undo_rewind(cluster, saved);
        }
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
            keep: if self.no_keep_copy { Keep::ForkOnly } else { Keep::Changed },
            timeout: self.timeout.unwrap_or(config.standby.streaming_timeout),
            start: !self.no_start,
            always_rewind: self.rewind,
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
                if !rewound.started {
                    println!(
                        "cluster {} is left stopped (--no-start): `pg_ctlcluster {} {} start` starts it as a standby; \
                         until then `pgha rejoin --undo-rewind <the before-rewind directory above>` puts the data \
                         directory back as it was",
                        cluster.id(),
                        cluster.version,
                        cluster.name
                    );
                } else if !rewound.streaming {
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

/// Puts back the saved set of a rewind whose cluster never started: pg_rewind's backup_label is
/// still there then (the first start consumes it), and nothing but pg_rewind and pgha's standby
/// files has changed since the save.
fn undo_rewind(cluster: &crate::debian::Cluster, saved: &Path) -> Result<i32> {
    if crate::tools::pg_lsclusters::is_online(cluster)? {
        bail!(
            "cluster {} is running: --undo-rewind puts back a data directory whose rewind has not started",
            cluster.id()
        );
    }
    if !cluster.data_dir.join("backup_label").exists() {
        bail!(
            "{} has no backup_label: the rewound cluster has started since (or was never rewound), so the saved set \
             no longer matches it; `pgha rejoin` makes it a standby again",
            cluster.data_dir.display()
        );
    }
    if !saved.join(crate::files::rewind_save::MANIFEST).is_file() {
        bail!(
            "{} holds no saved set (no manifest.json): expected the before-rewind directory rejoin named",
            saved.display()
        );
    }
    if let Some(fork) = saved.parent() {
        if fork.join("not-saved.txt").exists() {
            log::warn!(
                "pg_rewind changed paths its dry run had not listed ({}): those stay as the rewind left them",
                fork.join("not-saved.txt").display()
            );
        }
    }
    restore_changed(cluster, saved)?;
    println!(
        "cluster {}: the data directory is back as it was before pg_rewind, from {}, and left stopped; \
         `pgha rejoin` makes it a standby again",
        cluster.id(),
        saved.display()
    );
    Ok(EXIT_OK)
}
