//! pg_rewind for a former primary: bring it to a clean shutdown without ever letting it accept
//! writes, keep what the rewind would destroy, rewind, configure it as a standby, start it and
//! wait for streaming; or clone instead when the rewind would cost more.
//!
//! What is kept, in `<datadir>.pgha-fork-<timestamp>/`: the WAL this host wrote after the servers
//! diverged (the transactions the new primary never received; inspect it with pg_waldump) with
//! pg_rewind's reports, and by default, in its `before-rewind/`, everything pg_rewind is about to
//! overwrite, truncate or remove, as its dry run lists it (`files::rewind_save`): enough to put
//! the data directory back bit for bit until the rewound cluster first starts. A rewind that
//! fails is put back at once, before the full clone it falls back to keeps the directory aside.
//! When the dry run's file map cannot be saved that way, the whole data directory is copied to
//! `<datadir>.pgha-old-<timestamp>` instead, as before.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::debian::{log_tail, Cluster};
use crate::files::datadir::{add_note, copy_aside, create_fork_dir};
use crate::files::rewind_save::{self, Manifest, SaveReport};
use crate::replication::Lsn;
use crate::size::format_bytes;
use crate::standby::clone::configure_in_place;
use crate::standby::preflight::PrimaryFacts;
use crate::standby::slots::drop_stale_slots;
use crate::standby::streaming::{confirm_started_standby, StandbyStarted};
use crate::standby::StandbyContext;
use crate::tools::pg_controldata::{self, ControlData};
use crate::tools::pg_ctlcluster::{invoke_pg_ctlcluster, ClusterAction};
use crate::tools::pg_lsclusters::is_online;
use crate::tools::pg_rewind::{
    self, invoke_pg_rewind, is_debug_listing, parse_file_map, FileAction, FileEntry, RewindPlan, RewindReport,
};
use crate::tools::psql::{query, wait_until_ready, Target};
use crate::tools::{copy_as_postgres, output_tracked, postgres_command};
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
    let (Some(first), Some(last)) = (from.0.checked_div(segment_bytes), to.0.checked_div(segment_bytes)) else {
        return Vec::new();
    };
    let number = |name: &str| segment_number(name, segment_bytes);
    let mut chosen: Vec<String> = names
        .iter()
        .filter(|name| name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit()))
        .filter(|name| number(name).is_some_and(|segment| (first..=last).contains(&segment)))
        .cloned()
        .collect();
    chosen.sort();
    chosen
}

/// Whether `path` is a WAL segment from before the servers diverged at `diverged` on `timeline`:
/// both hold the same bytes there (the standby received them), so pg_rewind's copy of it changes
/// nothing. Segments of earlier timelines are all from before.
pub fn wal_before_divergence(path: &str, diverged: Lsn, timeline: u32, segment_bytes: u64) -> bool {
    let Some(name) = path.strip_prefix("pg_wal/").or_else(|| path.strip_prefix("pg_xlog/")) else { return false };
    if name.len() != 24 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
        return false;
    }
    let Ok(segment_timeline) = u32::from_str_radix(&name[..8], 16) else { return false };
    let Some(number) = segment_number(name, segment_bytes) else { return false };
    let Some(diverged_number) = diverged.0.checked_div(segment_bytes) else { return false };
    segment_timeline < timeline || (segment_timeline == timeline && number < diverged_number)
}

/// A segment file's position in the WAL, counted in segments.
fn segment_number(name: &str, segment_bytes: u64) -> Option<u64> {
    let per_xlogid = 0x1_0000_0000_u64.checked_div(segment_bytes)?;
    let high = u64::from_str_radix(name.get(8..16)?, 16).ok()?;
    let low = u64::from_str_radix(name.get(16..24)?, 16).ok()?;
    high.checked_mul(per_xlogid)?.checked_add(low)
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
    super::wait_for_dead_postmaster(&cluster.data_dir);
    configure_in_place(context, &primary.system_identifier, primary.max_wal_senders)?;
    invoke_pg_ctlcluster(cluster, ClusterAction::Start)
        .and_then(|()| wait_until_ready(&Target::local(cluster), Duration::from_secs(120)))
        .inspect_err(|_| eprintln!("{}", log_tail(cluster, 20)))?;
    invoke_pg_ctlcluster(cluster, ClusterAction::Stop)?;
    Ok(())
}

/// Stopped without a clean shutdown (killed, or its host died): pg_rewind needs a recovery first.
fn needs_crash_recovery(cluster: &Cluster) -> Result<bool> {
    Ok(!is_online(cluster)? && !pg_controldata::read(cluster.version, &cluster.data_dir)?.is_shut_down())
}

/// What a rewind did: a note on the saved fork, if this host had written WAL the primary never
/// received, and whether the standby streams yet.
pub struct Rewound {
    pub fork_note: Option<String>,
    pub streaming: bool,
    /// Left stopped on request (`--no-start`): the saved set can still put it back.
    pub started: bool,
}

/// A rewind done, or the reason a full clone is the cheaper way.
pub enum RewindOutcome {
    Rewound(Rewound),
    CloneCheaper(String),
}

/// How the rewind keeps what it destroys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The files and blocks pg_rewind changes (the default).
    Changed,
    /// Only the diverged WAL.
    ForkOnly,
}

/// The save of what pg_rewind changes, planned from its dry run: what it will cost, and the
/// manifest the save writes. None when the map names something that cannot be saved that way.
fn plan_save(
    cluster: &Cluster,
    dry: &RewindReport,
    control: &ControlData,
    diverged: (Lsn, u32),
) -> Option<(Manifest, u64)> {
    let data_dir = &cluster.data_dir;
    let block_bytes = control.block_bytes;
    if dry.file_map.is_empty() {
        log::warn!("pg_rewind's dry run listed no file map: copying the whole data directory instead");
        return None;
    }
    let as_is = |path: &str| wal_before_divergence(path, diverged.0, diverged.1, control.segment_bytes);
    match rewind_save::plan(&dry.file_map, |path| rewind_save::found_at(&data_dir.join(path)), as_is) {
        Ok(entries) => {
            let bytes = rewind_save::planned_bytes(&entries, rewind_save::size_at(data_dir), block_bytes);
            Some((Manifest { block_size: block_bytes, entries, not_covered: Vec::new() }, bytes))
        }
        Err(error) => {
            log::warn!("{error:#}: copying the whole data directory instead");
            None
        }
    }
}

/// Whether a full clone is cheaper than copying what the dry run lists plus saving what it
/// changes. pg_rewind's figure is its own; a clone copies the databases (the primary's size from
/// preflight), not the WAL the primary keeps, which pg_rewind before 19 copies whole. None: rewind.
pub fn clone_is_cheaper(copy_bytes: Option<u64>, clone_bytes: Option<u64>, save_bytes: u64) -> Option<String> {
    let (copy, clone) = (copy_bytes?, clone_bytes?);
    (copy.saturating_add(save_bytes) > clone).then(|| {
        format!(
            "pg_rewind would copy {} (the primary's WAL included) and pgha would save {} before it, more than the {} \
             a full clone copies (`pgha rejoin --rewind` rewinds anyway)",
            format_bytes(copy),
            format_bytes(save_bytes),
            format_bytes(clone)
        )
    })
}

/// Whether a rewind of a crashed old primary already costs more than a full clone copies by the
/// WAL the primary keeps alone: pg_rewind before 19 copies all of it, and the rewound standby
/// then replays it from the last common checkpoint, two passes over it, before the crash recovery
/// that comes first is even counted. Decided before that recovery and the dry run.
pub fn wal_outweighs_clone(kept_wal_bytes: Option<u64>, clone_bytes: Option<u64>) -> Option<String> {
    let (wal, clone) = (kept_wal_bytes?, clone_bytes?);
    (wal.saturating_mul(2) > clone).then(|| {
        format!(
            "pg_rewind would copy every WAL file the primary keeps, {}, and the rewound standby replay it, more \
             work than the {} a full clone copies (`pgha rejoin --rewind` rewinds anyway)",
            format_bytes(wal),
            format_bytes(clone)
        )
    })
}

/// pg_rewind into place, standby configuration, start (unless `start` is false), wait for
/// streaming; or, when `choose` and a clone copies less, the reason to clone instead, decided
/// before anything changed.
pub fn rewind(
    context: &StandbyContext,
    primary: &PrimaryFacts,
    passfile: &Path,
    timeout: Duration,
    keep: Keep,
    start: bool,
    choose: bool,
) -> Result<RewindOutcome> {
    let cluster = context.cluster;
    // A crashed former primary replays its WAL before pg_rewind can plan. If it diverged, the
    // rewind copies and then replays at least the primary's WAL, and when that alone outweighs a
    // clone, the recovery and the dry run are wasted. A cleanly stopped one may need no rewind at
    // all (a switchover), which only its dry run, cheap then, can tell.
    if choose && needs_crash_recovery(cluster)? {
        if let Some(reason) = wal_outweighs_clone(primary.kept_wal_bytes, primary.database_bytes) {
            return Ok(RewindOutcome::CloneCheaper(reason));
        }
    }
    shut_down_cleanly(context, primary)?;
    let conninfo = primary_client_conninfo(context.config, context.primary, passfile, primary.version, "postgres");
    log::info!("asking pg_rewind --dry-run what a rewind from {} would copy and change", context.primary);
    let dry = pg_rewind::plan(cluster, &conninfo)?;
    if let (Some(copy), Some(source)) = (dry.copy_bytes, dry.source_bytes) {
        log::info!(
            "pg_rewind would copy {} of the source's {} and change {} paths here",
            format_bytes(copy),
            format_bytes(source),
            dry.file_map.len()
        );
    }
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
        let control = pg_controldata::read(cluster.version, &cluster.data_dir)?;
        let save_plan = match keep {
            Keep::Changed => plan_save(cluster, &dry, &control, (lsn, timeline)),
            Keep::ForkOnly => None,
        };
        let save_bytes = match (&save_plan, keep) {
            (Some((_, bytes)), _) => *bytes,
            (None, Keep::Changed) => crate::files::datadir::dir_size(&cluster.data_dir),
            (None, Keep::ForkOnly) => 0,
        };
        let clone_bytes = primary.database_bytes.or(dry.source_bytes);
        if let Some(reason) = clone_is_cheaper(dry.copy_bytes, clone_bytes, save_bytes).filter(|_| choose) {
            return Ok(RewindOutcome::CloneCheaper(reason));
        }
        let fork = save_diverged_wal(cluster, lsn, &dry.text)?;
        fork_note = Some(format!(
            "this host had diverged from {} at {lsn} on timeline {timeline}; what it wrote after that point is not \
             on the primary and is no longer in this cluster: its WAL is kept in {}",
            context.primary,
            fork.display()
        ));
        let saved = match (save_plan, keep) {
            (Some((manifest, _)), _) => {
                let saved = fork.join(BEFORE_REWIND);
                let report = save_changed(cluster, &saved, &manifest)?;
                fork_note = fork_note.map(|note| {
                    format!(
                        "{note}; what pg_rewind changed is saved in {} ({} files, {}{})",
                        saved.display(),
                        report.files,
                        format_bytes(report.bytes),
                        if report.cloned > 0 {
                            format!(", {} of them reflinked", report.cloned)
                        } else {
                            String::new()
                        }
                    )
                });
                Some(saved)
            }
            (None, Keep::Changed) => {
                let copy = copy_aside(&cluster.data_dir)?;
                fork_note = fork_note
                    .map(|note| format!("{note}; the whole data directory as it was is kept in {}", copy.display()));
                None
            }
            (None, Keep::ForkOnly) => None,
        };
        log::info!("running pg_rewind from {}", context.primary);
        let output = match invoke_pg_rewind(cluster, &conninfo) {
            Ok(output) => output,
            Err(error) => {
                if let Some(saved) = &saved {
                    log::warn!("pg_rewind failed: putting back what it changed, from {}", saved.display());
                    if let Err(restore) = restore_changed(cluster, saved) {
                        return Err(
                            error.context(format!("and putting the data directory back failed too: {restore:#}"))
                        );
                    }
                    return Err(error.context(format!(
                        "pg_rewind failed; the data directory is back as it was before (from {})",
                        saved.display()
                    )));
                }
                return Err(error);
            }
        };
        add_note(&fork, "pg_rewind.log", &output)?;
        for line in output.lines().filter(|line| !line.trim().is_empty() && !is_debug_listing(line)) {
            log::info!("{}", line.trim());
        }
        if let Some(saved_dir) = &saved {
            let (created, changed) = unplanned(&dry.file_map, &output);
            if !created.is_empty() {
                record_created(cluster, saved_dir, &created)?;
                log::info!(
                    "pg_rewind also created {} path(s) its dry run had not listed (the primary changed meanwhile): \
                     an undo removes them too",
                    created.len()
                );
            }
            if !changed.is_empty() {
                log::warn!(
                    "pg_rewind changed {} path(s) its dry run had not listed (the primary changed meanwhile): the \
                     saved set does not cover those: {}",
                    changed.len(),
                    changed.join(", ")
                );
                add_note(&fork, "not-saved.txt", &(changed.join("\n") + "\n"))?;
            }
        }
    } else {
        log::info!("pg_rewind: no rewind required, this cluster is behind the primary's history");
    }
    configure_in_place(context, &primary.system_identifier, primary.max_wal_senders)?;
    if !start {
        return Ok(RewindOutcome::Rewound(Rewound { fork_note, streaming: false, started: false }));
    }
    log::info!("starting cluster {} as a standby of {}", cluster.id(), context.primary);
    // As the clone: pgha confirms the standby itself, not postgresql-common's start check.
    let started_as = crate::tools::pg_ctlcluster::invoke_start_without_waiting(cluster)
        .and_then(|mut start| confirm_started_standby(context, &mut start, timeout))
        .inspect_err(|_| eprintln!("{}", log_tail(cluster, 20)))?;
    drop_stale_slots(context)?;
    Ok(RewindOutcome::Rewound(Rewound { fork_note, streaming: started_as == StandbyStarted::Streaming, started: true }))
}

/// The saved set's directory inside the fork.
pub const BEFORE_REWIND: &str = "before-rewind";

/// What the real run did to paths its dry run had not listed (the primary changed in between):
/// those it created, and those it changed. A file copied whole, or a directory created, at a
/// path the dry run did not list was not in the target then: pg_rewind copies a file the target
/// has only when it is no relation file, and lists that, and removes one the source lacks,
/// listing that too. Pure.
pub fn unplanned(planned: &[FileEntry], real_run: &str) -> (Vec<String>, Vec<String>) {
    let listed: std::collections::BTreeSet<&str> = planned.iter().map(|entry| entry.path.as_str()).collect();
    let (mut created, mut changed) = (Vec::new(), Vec::new());
    for entry in parse_file_map(real_run) {
        if listed.contains(entry.path.as_str()) {
            continue;
        }
        match entry.action {
            FileAction::None if entry.blocks.is_empty() => {}
            FileAction::Copy | FileAction::Create => created.push(entry.path),
            _ => changed.push(entry.path),
        }
    }
    created.dedup();
    changed.dedup();
    (created, changed)
}

/// Adds `created` to the saved set in `saved_dir`, as postgres, for an undo to remove.
fn record_created(cluster: &Cluster, saved_dir: &Path, created: &[String]) -> Result<()> {
    let args = [
        "rewind-save".as_ref(),
        "--created".as_ref(),
        "--data-dir".as_ref(),
        cluster.data_dir.as_os_str(),
        "--into".as_ref(),
        saved_dir.as_os_str(),
    ];
    pgha_as_postgres(&args, Some(&serde_json::to_vec(created)?), "recording what pg_rewind created")?;
    Ok(())
}

/// Runs pgha itself as postgres with `args` (and `stdin`), for the work in postgres' own data
/// directory that root must not do by following its paths; its stdout when it succeeds.
fn pgha_as_postgres(args: &[&std::ffi::OsStr], stdin: Option<&[u8]>, what: &str) -> Result<Vec<u8>> {
    let mut command = postgres_command(&crate::host::pgha_program().display().to_string())?;
    command.args(args);
    let output = output_tracked(&mut command, what, stdin)?;
    if !output.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output.stdout)
}

/// Saves `manifest`'s entries of the data directory into `into` (see `files::rewind_save`).
fn save_changed(cluster: &Cluster, into: &Path, manifest: &Manifest) -> Result<SaveReport> {
    let args = [
        "rewind-save".as_ref(),
        "--data-dir".as_ref(),
        cluster.data_dir.as_os_str(),
        "--into".as_ref(),
        into.as_os_str(),
    ];
    let stdout = pgha_as_postgres(&args, Some(&serde_json::to_vec(manifest)?), "saving what pg_rewind changes")?;
    let report: SaveReport = serde_json::from_slice(&stdout).context("pgha rewind-save answered no report")?;
    log::info!(
        "saved what pg_rewind will change in {}: {} files, {}",
        into.display(),
        report.files,
        format_bytes(report.bytes)
    );
    Ok(report)
}

/// Puts back what `save_changed` saved in `from`.
pub fn restore_changed(cluster: &Cluster, from: &Path) -> Result<()> {
    let args = [
        "rewind-restore".as_ref(),
        "--data-dir".as_ref(),
        cluster.data_dir.as_os_str(),
        "--from".as_ref(),
        from.as_os_str(),
    ];
    pgha_as_postgres(&args, None, &format!("putting back {}", from.display()))?;
    Ok(())
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
    fn only_wal_from_before_the_divergence_is_rewritten_as_is() {
        let segment = 16 << 20;
        let diverged: Lsn = "0/4000060".parse().unwrap();
        let before = |path: &str| wal_before_divergence(path, diverged, 2, segment);
        assert!(before("pg_wal/000000020000000000000003"));
        assert!(before("pg_wal/000000010000000000000009"), "an earlier timeline");
        assert!(!before("pg_wal/000000020000000000000004"), "the segment it diverged in");
        assert!(!before("pg_wal/000000020000000000000005"));
        assert!(!before("pg_wal/000000030000000000000001"), "a later timeline");
        assert!(!before("pg_wal/00000002.history"));
        assert!(!before("base/1/000000010000000000000001"));
        assert!(!wal_before_divergence("pg_wal/000000020000000000000003", diverged, 2, 0));
    }

    #[test]
    fn what_the_real_run_did_beyond_the_plan_is_created_or_changed() {
        let planned = [
            FileEntry { path: "pg_wal/000000010000000000000003".into(), action: FileAction::Copy, blocks: vec![] },
            FileEntry { path: "base/5/100".into(), action: FileAction::None, blocks: vec![7] },
        ];
        let real_run = "pg_rewind: debug: pg_wal/000000010000000000000003 (COPY)\n\
                        base/5/100 (NONE)\n  block 7\n\
                        pg_wal/000000020000000000000009 (COPY)\n\
                        base/16400 (CREATE)\n\
                        base/16400/1259 (COPY)\n\
                        base/5/200 (COPY_TAIL)\n\
                        base/5/300 (NONE)\n  block 2\n\
                        base/5/400 (REMOVE)\n\
                        base/5/500 (NONE)\n";
        let (created, changed) = unplanned(&planned, real_run);
        assert_eq!(created, ["pg_wal/000000020000000000000009", "base/16400", "base/16400/1259"]);
        assert_eq!(changed, ["base/5/200", "base/5/300", "base/5/400"]);
    }

    #[test]
    fn the_primary_s_wal_alone_can_decide_for_a_clone() {
        let gb = 1 << 30;
        assert!(wal_outweighs_clone(Some(2 * gb), Some(gb)).unwrap().contains("2.0 GB"));
        // Copied, then replayed: 0.75 GB of WAL is more work than a 1 GB clone.
        assert!(wal_outweighs_clone(Some(3 * gb / 4), Some(gb)).is_some());
        assert_eq!(wal_outweighs_clone(Some(gb), Some(3 * gb)), None);
        assert_eq!(wal_outweighs_clone(Some(gb), Some(2 * gb)), None, "equal: the dry run decides");
        assert_eq!(wal_outweighs_clone(None, Some(gb)), None);
        assert_eq!(wal_outweighs_clone(Some(2 * gb), None), None);
    }

    #[test]
    fn a_clone_is_chosen_only_when_it_copies_less() {
        let gb = 1 << 30;
        assert_eq!(clone_is_cheaper(Some(gb), Some(4 * gb), gb), None);
        let reason = clone_is_cheaper(Some(2 * gb), Some(gb), 0).unwrap();
        assert!(reason.contains("2.0 GB") && reason.contains("--rewind"), "{reason}");
        assert!(clone_is_cheaper(Some(gb), Some(gb + 10), 20).is_some(), "the save counts");
        assert_eq!(clone_is_cheaper(None, Some(gb), 0), None, "without pg_rewind's figure it rewinds");
        assert_eq!(clone_is_cheaper(Some(gb), None, 0), None);
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
