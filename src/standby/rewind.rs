//! pg_rewind for a former primary: bring it to a clean shutdown without ever letting it accept
//! writes, keep what the rewind would destroy (the diverged WAL, and by default a copy of the
//! whole data directory), rewind, configure it as a standby, start it and wait for streaming.
//!
//! What is kept: pg_rewind rewrites the data directory in place, so before a rewind that changes
//! anything pgha copies the whole data directory to `<datadir>.pgha-old-<timestamp>`, as
//! `pgha standby` keeps the directory it replaces: nothing is lost, and a rewind that fails
//! half-way cannot take the only copy with it. Without that copy pgha keeps only what the rewind
//! throws away (the WAL this host wrote after the servers diverged, the transactions the new
//! primary never received) in `<datadir>.pgha-fork-<timestamp>/` with pg_rewind's report;
//! inspect it with pg_waldump. The fork is saved in both cases.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::debian::{log_tail, Cluster};
use crate::files::datadir::{add_note, copy_aside, create_fork_dir};
use crate::files::secure::read_text_capped;
use crate::replication::Lsn;
use crate::standby::clone::configure_in_place;
use crate::standby::preflight::PrimaryFacts;
use crate::standby::slots::drop_stale_slots;
use crate::standby::streaming::{confirm_started_standby, StandbyStarted};
use crate::standby::StandbyContext;
use crate::tools::pg_controldata::{self, ControlData};
use crate::tools::pg_ctlcluster::{invoke_pg_ctlcluster, ClusterAction};
use crate::tools::pg_lsclusters::is_online;
use crate::tools::pg_rewind::{self, invoke_pg_rewind, RewindPlan};
use crate::tools::psql::{query, wait_until_ready, Target};
use crate::tools::{copy_as_postgres, poll_until};
use crate::upstream::primary_client_conninfo;
use crate::version::PgVersion;

/// Why pg_rewind cannot work here, or None when it can.
pub fn rewind_obstacle(cluster: &Cluster, primary: &PrimaryFacts) -> Result<Option<String>> {
    let control = pg_controldata::read(cluster.version, &cluster.data_dir)?;
    if control.system_identifier != primary.system_identifier {
        return Ok(Some(format!(
            "this cluster (system identifier {}) was never a copy of the primary ({})",
            control.system_identifier, primary.system_identifier
        )));
    }
    if let Some(reason) = parse_rewind_obstacle(&control) {
        return Ok(Some(reason));
    }
    if cluster.version < PgVersion::new(11, 0) {
        // pg_rewind before 11 needs a superuser source connection, and pgha's role is not one.
        return Ok(Some(format!("pg_rewind {} needs a superuser connection to the primary", cluster.version)));
    }
    Ok(None)
}

/// pg_rewind needs wal_log_hints or data checksums on the target (pg_controldata shows both).
pub fn parse_rewind_obstacle(control: &ControlData) -> Option<String> {
    (!control.wal_log_hints && !control.checksums).then(|| {
        "neither wal_log_hints nor data checksums were on in this cluster (`pgha primary` sets wal_log_hints)".into()
    })
}

/// WAL segment files (24 hex digits) from the one holding `from` to the one holding `to`, on any timeline;
/// none for a segment size of 0, which no pg_control holds.
pub fn segments_between(names: &[String], from: Lsn, to: Lsn, segment_bytes: u64) -> Vec<String> {
    let Some(per_xlogid) = 0x1_0000_0000_u64.checked_div(segment_bytes) else { return Vec::new() };
    let (first, last) = (from.0 / segment_bytes, to.0 / segment_bytes);
    let number = |name: &str| {
        let high = u64::from_str_radix(name.get(8..16)?, 16).ok()?;
        let low = u64::from_str_radix(name.get(16..24)?, 16).ok()?;
        high.checked_mul(per_xlogid)?.checked_add(low)
    };
    let mut chosen: Vec<String> = names
        .iter()
        .filter(|name| name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit()))
        .filter(|name| number(name).is_some_and(|segment| (first..=last).contains(&segment)))
        .cloned()
        .collect();
    chosen.sort();
    chosen
}

/// Brings the local cluster to a clean shutdown, the state pg_rewind needs, without ever letting
/// it accept writes: a crashed former primary is started as a standby (signal file first), which
/// replays its own WAL, and is then stopped.
fn shut_down_cleanly(context: &StandbyContext, primary: &PrimaryFacts) -> Result<()> {
    let cluster = context.cluster;
    if is_online(cluster)? {
        log::info!("stopping cluster {}", cluster.id());
        invoke_pg_ctlcluster(cluster, ClusterAction::Stop)?;
    }
    let control = pg_controldata::read(cluster.version, &cluster.data_dir)?;
    if control.is_shut_down() {
        return Ok(());
    }
    log::info!(
        "cluster {} was not shut down cleanly ({}): recovering it as a standby first",
        cluster.id(),
        control.state
    );
    wait_for_dead_postmaster(&cluster.data_dir);
    configure_in_place(context, &primary.system_identifier, primary.max_wal_senders)?;
    invoke_pg_ctlcluster(cluster, ClusterAction::Start)
        .and_then(|()| wait_until_ready(&Target::local(cluster), Duration::from_secs(120)))
        .inspect_err(|_| eprintln!("{}", log_tail(cluster, 20)))?;
    invoke_pg_ctlcluster(cluster, ClusterAction::Stop)?;
    Ok(())
}

/// A killed postmaster stays a zombie until its parent (init) reaps it, and PostgreSQL takes a
/// zombie's PID in the socket lock file for a live server and refuses to start. Wait for the reaping.
fn wait_for_dead_postmaster(data_dir: &Path) {
    let Ok(Some(pid_file)) = read_text_capped(&data_dir.join("postmaster.pid"), 4096) else { return };
    let Some(pid) = pid_file.lines().next().and_then(|line| line.trim().parse::<u32>().ok()) else { return };
    let mut said = false;
    let _ = poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) if parse_proc_state(&stat) == Some('Z') => {
                if !said {
                    log::info!("waiting for the killed postmaster (PID {pid}) to be reaped");
                    said = true;
                }
                Ok(None)
            }
            _ => Ok(Some(())),
        }
    });
}

/// The state letter of /proc/PID/stat ("1234 (postgres) Z ..."); the name may contain spaces.
pub fn parse_proc_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// What a rewind did: a note on the saved fork, if this host had written WAL the primary never
/// received, and whether the standby streams yet.
pub struct Rewound {
    pub fork_note: Option<String>,
    pub streaming: bool,
}

/// pg_rewind into place, standby configuration, start, wait for streaming.
pub fn rewind(
    context: &StandbyContext,
    primary: &PrimaryFacts,
    passfile: &Path,
    timeout: Duration,
    keep_copy: bool,
) -> Result<Rewound> {
    let cluster = context.cluster;
    shut_down_cleanly(context, primary)?;
    let conninfo = primary_client_conninfo(context.config, context.primary, passfile, primary.version, "postgres");
    let dry = pg_rewind::plan(cluster, &conninfo)?;
    if dry.same_timeline {
        let local_timeline = pg_controldata::read(cluster.version, &cluster.data_dir)?.timeline.to_string();
        let identify = query(&context.replication(passfile), "IDENTIFY_SYSTEM")?;
        let primary_timeline = identify.first().and_then(|row| row.get(1)).cloned().unwrap_or_default();
        if primary_timeline != local_timeline {
            bail!(
                "pg_rewind reads timeline {local_timeline} from the primary's pg_control, but it runs on timeline \
                 {primary_timeline}: it has not finished a checkpoint since its promotion (`pgha promote` writes one; \
                 run CHECKPOINT there to use pg_rewind next time)"
            );
        }
    }
    let mut fork_note = None;
    if let RewindPlan::Diverged { lsn, timeline } = dry.plan {
        let fork = save_diverged_wal(cluster, lsn, &dry.text)?;
        fork_note = Some(format!(
            "this host had diverged from {} at {lsn} on timeline {timeline}; what it wrote after that point is not \
             on the primary and is no longer in this cluster: its WAL is kept in {}",
            context.primary,
            fork.display()
        ));
        if keep_copy {
            let copy = copy_aside(&cluster.data_dir)?;
            fork_note = fork_note
                .map(|note| format!("{note}; the whole data directory as it was is kept in {}", copy.display()));
        }
        log::info!("running pg_rewind from {}", context.primary);
        let output = invoke_pg_rewind(cluster, &conninfo, false)?;
        add_note(&fork, "pg_rewind.log", &output)?;
        for line in output.lines().filter(|line| !line.trim().is_empty()) {
            log::info!("{}", line.trim());
        }
    } else {
        log::info!("pg_rewind: no rewind required, this cluster is behind the primary's history");
    }
    configure_in_place(context, &primary.system_identifier, primary.max_wal_senders)?;
    log::info!("starting cluster {} as a standby of {}", cluster.id(), context.primary);
    // As the clone: pgha confirms the standby itself, not postgresql-common's start check.
    let started_as = crate::tools::pg_ctlcluster::invoke_start_without_waiting(cluster)
        .and_then(|mut start| confirm_started_standby(context, &mut start, timeout))
        .inspect_err(|_| eprintln!("{}", log_tail(cluster, 20)))?;
    drop_stale_slots(context)?;
    Ok(Rewound { fork_note, streaming: started_as == StandbyStarted::Streaming })
}

/// Copies this host's WAL from the divergence point to its end into `<datadir>.pgha-fork-<ts>`.
fn save_diverged_wal(cluster: &Cluster, diverged: Lsn, dry_run_output: &str) -> Result<std::path::PathBuf> {
    let control = pg_controldata::read(cluster.version, &cluster.data_dir)?;
    let end =
        [control.checkpoint, control.min_recovery_end].into_iter().flatten().max().unwrap_or(diverged).max(diverged);
    let wal_dir = cluster.data_dir.join(if cluster.version.has_wal_names() { "pg_wal" } else { "pg_xlog" });
    let names: Vec<String> = fs::read_dir(&wal_dir)
        .map_err(|error| anyhow::anyhow!("cannot list {}: {error}", wal_dir.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let saved: Vec<String> = segments_between(&names, diverged, end, control.segment_bytes)
        .into_iter()
        .chain(names.iter().filter(|name| name.ends_with(".history")).cloned())
        .collect();
    let fork = create_fork_dir(&cluster.data_dir)?;
    // As postgres: pg_wal may be a link to another disk, which root must not follow.
    copy_as_postgres(&saved.iter().map(|name| wal_dir.join(name)).collect::<Vec<_>>(), &fork)?;
    add_note(&fork, "pg_rewind-dry-run.log", dry_run_output)?;
    log::info!("saved {} WAL files written after the divergence at {diverged} into {}", saved.len(), fork.display());
    Ok(fork)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_fork_segments_by_position() {
        let names: Vec<String> = [
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000100000000",
            "00000002.history",
            "archive_status",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let segment = 16 << 20;
        let picked = segments_between(&names, "0/3000060".parse().unwrap(), "0/4100000".parse().unwrap(), segment);
        assert_eq!(picked, ["000000010000000000000003", "000000010000000000000004"]);
        let far = segments_between(&names, "0/FF000000".parse().unwrap(), "1/10".parse().unwrap(), segment);
        assert_eq!(far, ["000000010000000100000000"]);
    }

    #[test]
    fn reads_the_process_state() {
        assert_eq!(parse_proc_state("28247 (postgres) Z 1 28247 28247 0 -1"), Some('Z'));
        assert_eq!(parse_proc_state("7 (a (b) c) S 1"), Some('S'));
        assert_eq!(parse_proc_state("garbage"), None);
    }

    #[test]
    fn rewind_needs_hints_or_checksums() {
        let mut control =
            pg_controldata::parse_controldata(include_str!("../../tests/data/pg_controldata-15.txt")).unwrap();
        control.wal_log_hints = false;
        control.checksums = false;
        assert!(parse_rewind_obstacle(&control).is_some());
        control.checksums = true;
        assert!(parse_rewind_obstacle(&control).is_none());
    }
}
