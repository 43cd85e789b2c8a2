//! The cluster `pgha standby` finds in place: what it is to this replication set, and, when it is
//! a standby of the primary, keeping it one without ever replacing its data: started when down,
//! its files repaired, whether it streams reported.
//!
//! A standby of the primary holds the primary's system identifier and is a standby: in recovery
//! when it runs, its signal file (standby.signal, or recovery.conf before 12) in the data directory
//! when it is down. A clone replaces unasked only a cluster of another system that is not a
//! standby (a fresh initdb, as on first install); a writable cluster with the primary's system
//! identifier (promoted outside pgha) and a standby of another system are refused.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::debian::{log_tail, Cluster};
use crate::files::apply::Transaction;
use crate::notify::notify_status;
use crate::standby::clone::{signal_file_change, write_config_files};
use crate::standby::streaming::{confirm_standby, StandbyStarted};
use crate::standby::StandbyContext;
use crate::tools::pg_controldata;
use crate::tools::pg_ctlcluster::{invoke_pg_ctlcluster, ClusterAction};
use crate::tools::pg_lsclusters::is_online;
use crate::tools::psql::{query, query_bool, query_value, wait_until_ready, Target};
use crate::tools::retry_until_ok;
use crate::version::PgVersion;

/// How long a cluster that runs gets to say whether it is in recovery, and one pgha started or
/// reloaded to accept connections.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// What the local cluster says about itself, learnt without changing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFacts {
    pub system_identifier: String,
    pub online: bool,
    /// pg_is_in_recovery() of the running server; None when it is down or does not answer.
    pub in_recovery: Option<bool>,
    /// standby.signal (12+) or recovery.conf in the data directory: it starts as a standby.
    pub standby_signal: bool,
    /// The timeline it writes on when it runs writable, else the one pg_control holds.
    pub timeline: u32,
}

impl LocalFacts {
    /// Takes writes now, or would once started.
    pub fn is_writable(&self) -> bool {
        match self.in_recovery {
            Some(in_recovery) => !in_recovery,
            None => !self.standby_signal,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Another system, never a standby: not part of this replication set, a clone may replace it.
    Unrelated,
    /// The primary's system identifier, a standby: kept, never cloned over unasked.
    StandbyOfPrimary,
    /// The primary's system identifier, writable: promoted outside pgha, or a former primary.
    WritableCopy,
    /// A standby of another system (the primary was re-created, or this host followed another set).
    StandbyOfAnotherSystem,
}

pub fn classify(local: &LocalFacts, primary_system_identifier: &str) -> Kind {
    match (local.system_identifier == primary_system_identifier, local.is_writable()) {
        (true, false) => Kind::StandbyOfPrimary,
        (true, true) => Kind::WritableCopy,
        (false, false) => Kind::StandbyOfAnotherSystem,
        (false, true) => Kind::Unrelated,
    }
}

pub fn inspect(cluster: &Cluster) -> Result<LocalFacts> {
    let control = pg_controldata::read(cluster.version, &cluster.data_dir).with_context(|| {
        format!(
            "cannot tell what cluster {} holds (`pgha standby --force-reclone` clones over it anyway)",
            cluster.id()
        )
    })?;
    let online = is_online(cluster)?;
    let local = Target::local(cluster);
    // A standby that replays a long way at boot refuses connections until it is consistent; its
    // signal file then says what it is.
    let in_recovery = if online {
        retry_until_ok(Duration::from_secs(10), Duration::from_millis(250), || {
            query_bool(&local, "SELECT pg_is_in_recovery()")
        })
        .ok()
    } else {
        None
    };
    let timeline = match in_recovery {
        Some(false) => current_timeline(cluster).unwrap_or(control.timeline),
        _ => control.timeline,
    };
    let signal =
        cluster.data_dir.join(if cluster.version.uses_recovery_conf() { "recovery.conf" } else { "standby.signal" });
    // lstat: the data directory belongs to postgres, and a link there is no signal file.
    let standby_signal = std::fs::symlink_metadata(&signal).is_ok_and(|meta| meta.is_file());
    Ok(LocalFacts { system_identifier: control.system_identifier, online, in_recovery, standby_signal, timeline })
}

/// pg_control holds a promoted server's new timeline only after its next checkpoint; the WAL
/// file it writes has it at once.
fn current_timeline(cluster: &Cluster) -> Result<u32> {
    let name = query_value(&Target::local(cluster), current_walfile_sql(cluster.version))?;
    u32::from_str_radix(name.get(..8).context("WAL file name")?, 16).context("WAL file name")
}

pub(crate) fn current_walfile_sql(version: PgVersion) -> &'static str {
    if version.has_wal_names() {
        "SELECT pg_walfile_name(pg_current_wal_lsn())"
    } else {
        "SELECT pg_xlogfile_name(pg_current_xlog_location())"
    }
}

/// What `pgha standby` did to a standby it kept.
#[derive(Clone, Debug)]
pub struct KeptStandby {
    pub dry_run: bool,
    pub started: bool,
    pub repaired: bool,
    pub streaming: bool,
    /// Why the primary could not be asked (unreachable, login refused): nothing was checked against it.
    pub primary_error: Option<String>,
    pub patience: Duration,
}

impl KeptStandby {
    pub fn summary(&self, context: &StandbyContext) -> String {
        let (id, primary) = (context.cluster.id(), context.primary);
        if self.dry_run {
            return format!(
                "dry run: cluster {id} is a standby of {primary}: `pgha standby` keeps it (starts it when it is down, \
                 repairs its files, reports whether it streams) and clones it only with --force-reclone"
            );
        }
        let done: Vec<&str> = [(self.started, "started it"), (self.repaired, "repaired its files")]
            .iter()
            .filter(|d| d.0)
            .map(|d| d.1)
            .collect();
        let did = if done.is_empty() { String::new() } else { format!(" ({})", done.join(", ")) };
        let aftermath = "nothing was cloned or moved aside: `pgha status` shows when it streams, and `pgha rejoin` or \
                         `pgha standby --force-reclone` make a new copy";
        match (&self.primary_error, self.streaming) {
            (None, true) if done.is_empty() => format!("nothing to do: cluster {id} already streams from {primary}"),
            (None, true) => format!("cluster {id} streams from {primary}{did}"),
            (None, false) => format!(
                "cluster {id} runs as a standby of {primary}{did} but does not stream: it did not start streaming \
                 within {}s; {aftermath}",
                self.patience.as_secs()
            ),
            // A connection that died with the link looks alive until the wal receiver's timeout.
            (Some(error), true) => format!(
                "cluster {id} runs as a standby of {primary}{did} and its wal receiver still reports a connection, \
                 but pgha cannot reach the primary: {error}; {aftermath}"
            ),
            (Some(error), false) => {
                format!("cluster {id} runs as a standby of {primary}{did} but does not stream: {error}; {aftermath}")
            }
        }
    }
}

/// `pgha standby` without --force-reclone, before any clone: None for a cluster that is not part of
/// this replication set (a clone may replace it); an error for one that must not be replaced
/// unasked; otherwise the standby, kept. `primary` is the primary's system identifier, or why it
/// could not be learnt; then a standby is only started, and anything else is left to the caller.
pub fn keep_standby(
    context: &StandbyContext,
    primary: &Result<String>,
    patience: Duration,
    dry_run: bool,
) -> Result<Option<KeptStandby>> {
    let cluster = context.cluster;
    // Its own WAL goes past the point where the primary's timeline left it: only a rewind or a new
    // clone makes it a standby that streams, and lifting the fence here would serve stale reads.
    if let Some(fence) = crate::fence::read(cluster)? {
        let primary = fence.primary.map_or_else(|| context.primary.to_string(), |address| address.to_string());
        bail!(
            "cluster {} is fenced: it ran as a primary while {primary} took over, and starts in recovery serving \
             nobody. `pgha standby` leaves it so: run `pgha rejoin` to make it a standby of {primary} (what it wrote \
             after the failover is kept beside the data directory), or `pgha standby --force-reclone`",
            cluster.id()
        );
    }
    let local = inspect(cluster)?;
    match primary {
        Ok(system_identifier) => match classify(&local, system_identifier) {
            Kind::Unrelated => return Ok(None),
            Kind::StandbyOfPrimary => {}
            Kind::WritableCopy => bail!(
                "cluster {} holds the primary's data (system identifier {}, timeline {}) but {}: it was promoted \
                 outside pgha, or ran as a primary, and may hold writes {} never received. `pgha standby` never \
                 clones over it unasked: run `pgha rejoin` to make it a standby of {} again (pg_rewind keeps what \
                 it wrote beside the data directory), or `pgha standby --force-reclone` to replace it with a new \
                 clone (the data directory is kept aside)",
                cluster.id(),
                local.system_identifier,
                local.timeline,
                if local.online {
                    "is writable, not in recovery"
                } else {
                    "is down without a standby signal file and would start writable"
                },
                context.primary,
                context.primary
            ),
            Kind::StandbyOfAnotherSystem => bail!(
                "cluster {} is a standby of another system (system identifier {}) than the primary {} ({}): was the \
                 primary re-created? `pgha standby` never replaces a standby's data unasked: \
                 `pgha standby --force-reclone` clones {} over it (the data directory is kept aside)",
                cluster.id(),
                local.system_identifier,
                context.primary,
                system_identifier,
                context.primary
            ),
        },
        // Starting a standby cannot make it writable; anything else waits for the primary.
        Err(_) if !local.is_writable() => {}
        Err(_) => return Ok(None),
    }
    let primary_error = primary.as_ref().err().map(|error| format!("{error:#}"));
    let mut kept = KeptStandby { dry_run, started: false, repaired: false, streaming: false, primary_error, patience };
    if dry_run {
        return Ok(Some(kept));
    }
    if !local.online {
        log::info!("cluster {} is a standby of {} and is down: starting it", cluster.id(), context.primary);
        notify_status("starting the standby");
        invoke_pg_ctlcluster(cluster, ClusterAction::Start).inspect_err(|_| eprintln!("{}", log_tail(cluster, 20)))?;
        kept.started = true;
    }
    if let Ok(system_identifier) = primary {
        kept.repaired = repair(context, system_identifier)?;
    }
    // The wal receiver cannot reach a primary pgha could not: no point holding the boot for it.
    let patience = if kept.primary_error.is_some() { Duration::ZERO } else { patience };
    kept.streaming = confirm_standby(context, patience)? == StandbyStarted::Streaming;
    if let (Some(error), false) = (&kept.primary_error, kept.streaming) {
        log::warn!("cluster {} is kept as a standby of {}, not streaming: {error}", cluster.id(), context.primary);
    }
    Ok(Some(kept))
}

/// Rewrites what `pgha standby` writes for a standby (signal file or recovery.conf, conf.d
/// fragment, pg_hba block, passfile) where it differs, then reloads, and restarts when a changed
/// setting needs it. Returns whether anything changed; on failure the old files are back.
fn repair(context: &StandbyContext, system_identifier: &str) -> Result<bool> {
    let cluster = context.cluster;
    let local = Target::local(cluster);
    wait_until_ready(&local, ANSWER_TIMEOUT).with_context(|| format!("cluster {} does not answer", cluster.id()))?;
    // Before 12 pg_control lacks max_wal_senders; a hot standby that runs already meets the primary's.
    let wal_senders: u32 = query_value(&local, "SHOW max_wal_senders")?.parse().context("max_wal_senders")?;
    let mut transaction = Transaction::new();
    let mut reloaded = false;
    let result = (|| -> Result<bool> {
        let signal = signal_file_change(context, &cluster.data_dir)?;
        // recovery.conf is read only at start.
        let restart = signal.is_some() && cluster.version.uses_recovery_conf();
        if let Some(change) = &signal {
            log::info!("writing {}", change.path.display());
            transaction.write(change)?;
        }
        let changed = write_config_files(context, system_identifier, wal_senders, &cluster.data_dir, &mut transaction)?;
        if !changed && signal.is_none() {
            return Ok(false);
        }
        crate::primary::check_files_parse(cluster, &local)?;
        log::info!("reloading cluster {}", cluster.id());
        reloaded = true;
        invoke_pg_ctlcluster(cluster, ClusterAction::Reload)?;
        wait_until_ready(&local, ANSWER_TIMEOUT)?;
        let pending: Vec<String> = query(&local, crate::primary::PENDING_RESTART_SQL)?
            .into_iter()
            .filter_map(|row| row.into_iter().next())
            .collect();
        if restart || !pending.is_empty() {
            log::info!("restarting cluster {}: {} only change at a restart", cluster.id(), {
                let mut what = pending;
                if restart {
                    what.push("recovery.conf".into());
                }
                what.join(", ")
            });
            invoke_pg_ctlcluster(cluster, ClusterAction::Restart)
                .and_then(|()| wait_until_ready(&local, ANSWER_TIMEOUT))
                .with_context(|| format!("cluster {} did not restart\n{}", cluster.id(), log_tail(cluster, 20)))?;
        }
        Ok(true)
    })();
    match result {
        Ok(changed) => {
            transaction.commit();
            Ok(changed)
        }
        Err(error) => {
            crate::signals::finish_from_here();
            let undo = transaction.rollback().and_then(|()| {
                if !is_online(cluster)? {
                    invoke_pg_ctlcluster(cluster, ClusterAction::Start)
                } else if reloaded {
                    invoke_pg_ctlcluster(cluster, ClusterAction::Reload)
                } else {
                    Ok(())
                }
            });
            Err(match undo {
                Ok(()) => error.context(format!(
                    "repairing the standby's files failed; the old files are back and cluster {} runs with them",
                    cluster.id()
                )),
                Err(undo_error) => error.context(format!(
                    "repairing the standby's files failed, and putting them back failed as well: {undo_error:#}"
                )),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(system_identifier: &str, online: bool, in_recovery: Option<bool>, standby_signal: bool) -> LocalFacts {
        LocalFacts { system_identifier: system_identifier.into(), online, in_recovery, standby_signal, timeline: 1 }
    }

    #[test]
    fn only_a_cluster_of_another_system_that_is_no_standby_may_be_cloned_over() {
        let primary = "7300000000000000001";
        // A fresh initdb, running or not.
        assert_eq!(classify(&facts("42", true, Some(false), false), primary), Kind::Unrelated);
        assert_eq!(classify(&facts("42", false, None, false), primary), Kind::Unrelated);
        // pgha's standby: running in recovery, down with its signal file, or up but still replaying.
        assert_eq!(classify(&facts(primary, true, Some(true), true), primary), Kind::StandbyOfPrimary);
        assert_eq!(classify(&facts(primary, false, None, true), primary), Kind::StandbyOfPrimary);
        assert_eq!(classify(&facts(primary, true, None, true), primary), Kind::StandbyOfPrimary);
        // Promoted by hand: writable, or down without the signal file (promotion removed it).
        assert_eq!(classify(&facts(primary, true, Some(false), false), primary), Kind::WritableCopy);
        assert_eq!(classify(&facts(primary, false, None, false), primary), Kind::WritableCopy);
        // The live answer wins over a stale signal file.
        assert_eq!(classify(&facts(primary, true, Some(false), true), primary), Kind::WritableCopy);
        assert_eq!(classify(&facts("42", false, None, true), primary), Kind::StandbyOfAnotherSystem);
    }
}
