//! `pgha standby`: make this host's cluster a streaming hot standby of `[primary]`.
//! pgha-standby.service runs it at install time and at every boot: a standby it made is kept
//! (started, repaired, reported), and only `--force-reclone` clones over it.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::error::EXIT_OK;
use crate::files::datadir::{old_path, staging_path};
use crate::node::{require_member_address, Node};
use crate::notify::notify_status;
use crate::standby::clone::clone_standby;
use crate::standby::existing::keep_standby;
use crate::standby::preflight::{identify_primary, preflight};
use crate::standby::streaming::not_streaming_yet;
use crate::standby::{find_upstream, StandbyContext, Upstream};
use crate::upstream::{write_passfile, PrivatePassfile};

/// How long a standby of this primary gets to (re)connect before it is reported as not streaming:
/// at boot the wal receiver connects a moment after the server accepts connections.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(20);

#[derive(Debug, Args)]
pub struct StandbyArgs {
    /// Run every preflight check and print what would happen; change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Clone again even when this cluster already is a standby of the primary, or holds the
    /// primary's data as a writable copy (the old data directory is kept aside)
    #[arg(long)]
    pub force_reclone: bool,

    /// How long the new standby gets to start streaming (default: standby.streaming_timeout)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// When another pgha works on this cluster, wait for it instead of exiting 1
    #[arg(long)]
    pub wait: bool,
}

impl StandbyArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let node = Node::load(config_path)?;
        let (config, cluster) = (&node.config, &node.cluster);
        let password = config.read_password()?;
        let own_address = require_member_address(config, "pgha standby")?;
        if !self.dry_run {
            crate::lock::take_for_run(&cluster.id(), "pgha standby", self.wait)?;
        }
        let passfile = PrivatePassfile::new(config, &password)?;
        // When the members name no primary (none answers, or two are writable), a standby in place is
        // still started and reported; anything else waits until they name one.
        let (primary, unnamed) = match find_upstream(config, cluster, &passfile.path, own_address) {
            Ok(Upstream::Primary(address)) => (address, None),
            Ok(Upstream::ThisHost(_)) => {
                let summary = format!(
                    "nothing to do: cluster {} on {own_address} is the primary of the members; \
                     `pgha standby` leaves it as it is",
                    cluster.id()
                );
                notify_status(&summary);
                println!("{summary}");
                return Ok(EXIT_OK);
            }
            Err(error) => (config.primary.address, Some(error)),
        };
        let context = StandbyContext { config, cluster, password: &password, own_address, primary };
        let identified = match unnamed {
            Some(error) => Err(error),
            None => identify_primary(&context, &passfile.path),
        };
        // The configured password was just proven against the primary, so a rotated password can
        // reach the passfile of an earlier clone now: the wal receiver reconnects with it instead of
        // failing until a re-clone. A first clone writes the passfile inside its own transaction.
        let earlier_clone = config.replication.passfile.exists();
        if identified.is_ok() && !self.dry_run && earlier_clone && write_passfile(config, &password)? {
            log::info!("updated {} with the configured password", config.replication.passfile.display());
        }
        // Before the checks a clone needs (free space, walsenders): a standby is kept, never cloned unasked.
        if !self.force_reclone {
            if let Some(kept) = keep_standby(&context, &identified, RECONNECT_PATIENCE, self.dry_run)? {
                let summary = kept.summary(&context);
                notify_status(&summary);
                println!("{summary}");
                return Ok(EXIT_OK);
            }
        }
        let system_identifier = identified?;

        let primary = preflight(&context, &passfile.path, system_identifier)?;
        let timeout = self.timeout.unwrap_or(config.standby.streaming_timeout);
        if self.dry_run {
            let size = primary.database_bytes.map_or("unknown size".to_string(), |b| format!("{} MB", b >> 20));
            println!("preflight passed: primary {} runs PostgreSQL {}", context.primary, primary.version);
            println!("would stop cluster {} (if running)", cluster.id());
            println!(
                "would clone the primary ({size}) into {} with pg_basebackup -X stream --checkpoint=fast{}",
                staging_path(&cluster.data_dir).display(),
                context.slot_name().map_or(String::new(), |slot| format!(" using slot {slot}"))
            );
            println!(
                "would write the standby configuration, conf.d/pgha.conf, the pg_hba block and {}",
                config.replication.passfile.display()
            );
            println!(
                "would move {} to {} and start the standby, waiting up to {}s for streaming",
                cluster.data_dir.display(),
                old_path(&cluster.data_dir, std::time::SystemTime::now()).display(),
                timeout.as_secs()
            );
            return Ok(EXIT_OK);
        }

        let report = clone_standby(&context, &primary, timeout)?;
        let summary = if report.streaming {
            format!(
                "cluster {} streams from {} ({} MB cloned in {:.1}s)",
                cluster.id(),
                context.primary,
                report.cloned_bytes >> 20,
                report.elapsed.as_secs_f64()
            )
        } else {
            not_streaming_yet(&context)
        };
        notify_status(&summary);
        println!("{summary}");
        report.print_kept_data_dir();
        Ok(EXIT_OK)
    }
}
