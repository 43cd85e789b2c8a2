//! The safe clone: stop, pg_basebackup into staging beside the data directory, standby
//! configuration written into staging (signal file first), a swap by rename that keeps the old
//! data directory, start, wait for streaming. Every failure puts the host back as it was, and the
//! error says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::debian::{log_tail, Cluster};
use crate::files::apply::{write_atomic, Transaction};
use crate::files::datadir::{dir_size, fresh_staging, remove_staging, swap_back, swap_in};
use crate::files::plan::{file_change, rendered_file_change, FileChange, Ownership, Step};
use crate::files::secure::read_text_capped;
use crate::host::postgres_account;
use crate::notify::notify_status;
use crate::render::{render, standby_name, Facts, HotStandbySettings, RenderedFile, Role};
use crate::standby::preflight::PrimaryFacts;
use crate::standby::slots::{drop_slot_if_created, prepare_slot, SlotPlan};
use crate::standby::streaming::{confirm_started_standby, StandbyStarted};
use crate::standby::StandbyContext;
use crate::tools::pg_basebackup::{invoke_pg_basebackup, Basebackup};
use crate::tools::pg_controldata::{self, RecordedSettings};
use crate::tools::pg_ctlcluster::{invoke_pg_ctlcluster, invoke_start_without_waiting, ClusterAction};
use crate::tools::pg_lsclusters::is_online;
use crate::tools::psql::{query_value, Target};
use crate::upstream::{passfile_change, primary_client_conninfo, sql_target, warn_if_unencrypted, PrivatePassfile};

/// How long a failed start may take to end before the undo stops the cluster: postgresql-common
/// gives up on a server after 30 s of waiting for its port, plus its psql probes.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(45);

/// What a finished clone did, for the final message.
#[derive(Clone, Debug)]
pub struct CloneReport {
    /// Where the previous data directory was moved, and how many bytes it takes.
    pub old_data_dir: Option<(PathBuf, u64)>,
    pub cloned_bytes: u64,
    pub elapsed: Duration,
    /// False when the standby runs in recovery but did not stream within the timeout.
    pub streaming: bool,
}

impl CloneReport {
    /// Tells the admin where the replaced data directory is, because pgha never deletes it.
    pub fn print_kept_data_dir(&self) {
        if let Some((path, bytes)) = &self.old_data_dir {
            println!(
                "the previous data directory is kept at {} ({} MB); delete it when no longer needed",
                path.display(),
                bytes >> 20
            );
        }
    }
}

/// Settings that make a server follow another one. A clone copies the primary's
/// postgresql.auto.conf, which PostgreSQL reads after conf.d: any of these left there would
/// override pgha's standby settings.
fn is_recovery_setting(name: &str) -> bool {
    name.starts_with("recovery_")
        || matches!(
            name,
            "primary_conninfo"
                | "primary_slot_name"
                | "restore_command"
                | "archive_cleanup_command"
                | "promote_trigger_file"
                | "trigger_file"
                | "standby_mode"
        )
}

/// postgresql.auto.conf without recovery settings, and the names of those removed.
pub fn strip_recovery_settings(auto_conf: &str) -> (String, Vec<String>) {
    let mut removed = Vec::new();
    let mut kept = String::new();
    for line in auto_conf.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let name: String = trimmed
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect::<String>()
            .to_ascii_lowercase();
        if !trimmed.starts_with('#') && is_recovery_setting(&name) {
            removed.push(name);
        } else {
            kept.push_str(line);
        }
    }
    (kept, removed)
}

/// The whole safe clone after preflight: stop, pg_basebackup into staging, configure staging
/// (signal file first), swap, start, wait for streaming. On any failure the host is put back as
/// it was and the error says so.
pub fn clone_standby(context: &StandbyContext, primary: &PrimaryFacts, timeout: Duration) -> Result<CloneReport> {
    let started = Instant::now();
    let cluster = context.cluster;
    let passfile = PrivatePassfile::new(context.config, context.password)?;
    warn_if_unencrypted(context.config, context.primary, primary.ssl);
    let remote = sql_target(context.config, context.primary, &passfile.path, primary.version);
    let was_running = is_online(cluster)?;
    let staging = crate::files::datadir::staging_path(&cluster.data_dir);

    if was_running {
        log::info!("stopping cluster {}", cluster.id());
        notify_status("stopping the local cluster");
        invoke_pg_ctlcluster(cluster, ClusterAction::Stop)?;
    } else {
        // A killed server's postmaster can still be a zombie, and the clone could not start on
        // its port while the socket's lock file names a live-looking PID.
        crate::standby::wait_for_dead_postmaster(&cluster.data_dir);
    }
    let mut created_slot = false;
    let result = (|| -> Result<u64> {
        let slot_plan = prepare_slot(context, primary, &remote, &mut created_slot)?;
        fresh_staging(&cluster.data_dir)?;
        // Preflight saw no slot of this name, so whatever exists after a failure is this clone's.
        created_slot |= slot_plan == SlotPlan::Create;
        run_basebackup(context, &passfile.path, primary, &staging, slot_plan)?;
        configure_staging(context, &staging)?;
        Ok(dir_size(&staging))
    })();
    let cloned_bytes = match result {
        Ok(bytes) => bytes,
        Err(error) => {
            let undo = undo_before_swap(context, &remote, &staging, created_slot, was_running);
            return Err(failure(
                error,
                undo,
                format!(
                    "nothing was swapped: {} is untouched{}",
                    cluster.data_dir.display(),
                    if was_running { " and the cluster runs again" } else { "" }
                ),
            ));
        }
    };

    let mut transaction = Transaction::new();
    let swapped = (|| -> Result<Option<PathBuf>> {
        write_config_files(context, &primary.system_identifier, primary.max_wal_senders, &staging, &mut transaction)?;
        swap_in(&cluster.data_dir, &staging)
    })();
    let old = match swapped {
        Ok(old) => old,
        Err(error) => {
            crate::signals::finish_from_here();
            let mut undo = transaction.rollback();
            if let Err(more) = undo_before_swap(context, &remote, &staging, created_slot, was_running) {
                undo = Err(more);
            }
            return Err(failure(error, undo, format!("{} is untouched", cluster.data_dir.display())));
        }
    };

    notify_status("starting the standby");
    log::info!("starting cluster {} as a standby of {}", cluster.id(), context.primary);
    // pgha confirms the standby itself (it answers, in recovery, streams), so the clone does not
    // also wait for postgresql-common's start check. Under systemd the start is a job of
    // postgresql@.service that runs on its own: inside pgha-standby.service (After=
    // postgresql.service, which the postgresql@ units are Before=) nothing orders that job after
    // pgha-standby, so it never waits for the clone that waits for the server (nor would a
    // blocking start). When pgha-standby reports ready the server streams; the unit may still
    // run its start check for a moment and then becomes active by itself.
    let mut start = None;
    let came_up = invoke_start_without_waiting(cluster).and_then(|pending| {
        log::info!("cluster {} is starting; waiting for it to stream", cluster.id());
        confirm_started_standby(context, start.insert(pending), timeout)
    });
    let started_as = match came_up {
        Ok(started_as) => started_as,
        Err(error) => {
            if let Some(pending) = start.as_mut() {
                pending.settle(SETTLE_TIMEOUT);
            }
            eprintln!("{}", log_tail(cluster, 30));
            let undo = undo_after_swap(context, &remote, old.as_deref(), transaction, created_slot, was_running);
            return Err(failure(
                error,
                undo,
                format!(
                    "the original data directory is back in {}{}",
                    cluster.data_dir.display(),
                    if was_running { " and runs as before" } else { "" }
                ),
            ));
        }
    };
    transaction.commit();
    let old_data_dir = old.map(|path| {
        let size = dir_size(&path);
        (path, size)
    });
    Ok(CloneReport {
        old_data_dir,
        cloned_bytes,
        elapsed: started.elapsed(),
        streaming: started_as == StandbyStarted::Streaming,
    })
}

fn failure(error: anyhow::Error, undo: Result<()>, restored: String) -> anyhow::Error {
    match undo {
        Ok(()) => error.context(format!("the clone failed; {restored}")),
        Err(undo_error) => error.context(format!(
            "the clone failed, and putting the host back failed as well: {undo_error:#}\ncheck the cluster with pg_lsclusters"
        )),
    }
}

fn run_basebackup(
    context: &StandbyContext,
    passfile: &Path,
    primary: &PrimaryFacts,
    staging: &Path,
    slot_plan: SlotPlan,
) -> Result<()> {
    let cluster = context.cluster;
    let request = Basebackup {
        cluster,
        conninfo: format!(
            "{} application_name={}_clone",
            primary_client_conninfo(context.config, context.primary, passfile, primary.version, "replication"),
            standby_name(context.own_address)
        ),
        pgdata: staging.to_path_buf(),
        slot: context.slot_name(),
        create_slot: slot_plan == SlotPlan::Create && cluster.version.basebackup_can_create_slot(),
    };
    log::info!("cloning {} into {}", context.primary, staging.display());
    notify_status("cloning: waiting for the primary's checkpoint");
    let mut last_logged: Option<(u32, Instant)> = None;
    invoke_pg_basebackup(
        &request,
        |progress| {
            let status = progress.status_line();
            notify_status(&status);
            let due = last_logged.is_none_or(|(percent, at)| {
                progress.percent >= percent + 10
                    || at.elapsed() >= Duration::from_secs(10)
                    || progress.percent == 100 && percent != 100
            });
            if due {
                log::info!("{status}");
                last_logged = Some((progress.percent, Instant::now()));
            }
        },
        |line| log::info!("{line}"),
    )
}

/// The settings the standby must meet, from the fresh clone's pg_control: exactly what the
/// primary ran with. Before 12 pg_control lacks max_wal_senders; the primary's SHOW covers it.
pub fn hot_standby_settings(recorded: &RecordedSettings, fallback_wal_senders: u32) -> HotStandbySettings {
    HotStandbySettings {
        max_connections: recorded.max_connections,
        max_worker_processes: recorded.max_worker_processes,
        max_wal_senders: recorded.max_wal_senders.unwrap_or(fallback_wal_senders),
        max_prepared_transactions: recorded.max_prepared_transactions,
        max_locks_per_transaction: recorded.max_locks_per_transaction,
    }
}

/// Whether this host's server has TLS on, which picks hostssl or host for the peers' hba lines.
fn local_ssl(cluster: &Cluster) -> bool {
    if is_online(cluster).unwrap_or(false) {
        query_value(&Target::local(cluster), "SHOW ssl").map(|value| value == "on").unwrap_or(true)
    } else {
        // Debian's default for a new cluster.
        true
    }
}

/// The facts to render a standby's files with; `local_ssl` from `local_ssl()`.
fn standby_facts(context: &StandbyContext, settings: Option<HotStandbySettings>, local_ssl: bool) -> Facts {
    let cluster = context.cluster;
    Facts {
        version: cluster.version,
        config_dir: cluster.config_dir.clone(),
        data_dir: cluster.data_dir.clone(),
        own_address: context.own_address,
        upstream_address: context.primary,
        local_ssl,
        primary_settings: settings,
        pgha_program: crate::host::pgha_program(),
    }
}

/// A config whose max_wal_senders is at least the primary's: the standby refuses to start below it.
fn standby_config(config: &Config, settings: Option<&HotStandbySettings>) -> Config {
    let mut config = config.clone();
    if let Some(settings) = settings {
        config.primary.max_wal_senders = config.primary.max_wal_senders.max(settings.max_wal_senders);
    }
    config
}

/// Signal file (or recovery.conf) first, then postgresql.auto.conf without recovery settings:
/// from here on nothing can start the copy as a primary.
pub fn configure_staging(context: &StandbyContext, staging: &Path) -> Result<()> {
    let postgres = postgres_account()?;
    let signal = rendered_signal_file(context)?;
    let name = signal.path.file_name().context("signal file has no name")?;
    write_atomic(
        &staging.join(name),
        signal.content.as_bytes(),
        Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o600 },
    )?;
    log::info!("wrote {} into staging", name.to_string_lossy());
    let auto_conf = staging.join("postgresql.auto.conf");
    if let Some(text) = read_text_capped(&auto_conf, 16 << 20)? {
        let (kept, removed) = strip_recovery_settings(&text);
        if !removed.is_empty() {
            log::info!("removing {} copied from the primary's postgresql.auto.conf", removed.join(", "));
            write_atomic(&auto_conf, kept.as_bytes(), Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o600 })?;
        }
    }
    Ok(())
}

/// Makes the data directory in place a standby's (signal file, postgresql.auto.conf, conf.d
/// fragment, pg_hba block, passfile) for a cluster that already holds the primary's data: after a
/// rewind, or an old primary that stopped exactly where the new one took over. The files stay
/// whatever happens next: the caller either starts the standby or clones, which rewrites them.
pub fn configure_in_place(context: &StandbyContext, system_identifier: &str, fallback_wal_senders: u32) -> Result<()> {
    let data_dir = &context.cluster.data_dir;
    configure_staging(context, data_dir)?;
    let mut transaction = Transaction::new();
    write_config_files(context, system_identifier, fallback_wal_senders, data_dir, &mut transaction)?;
    transaction.commit();
    Ok(())
}

/// The signal file (or recovery.conf) a standby needs in `data_dir`, when it is missing or differs.
pub fn signal_file_change(context: &StandbyContext, data_dir: &Path) -> Result<Option<FileChange>> {
    let postgres = postgres_account()?;
    let signal = rendered_signal_file(context)?;
    let name = signal.path.file_name().context("signal file has no name")?;
    file_change(&data_dir.join(name), signal.content, Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o600 })
}

/// The standby's signal file (or recovery.conf), the first file render gives. It does not
/// depend on the server's TLS setting, so the server is not asked.
fn rendered_signal_file(context: &StandbyContext) -> Result<RenderedFile> {
    let files = render(Role::Standby, &standby_config(context.config, None), &standby_facts(context, None, true))?;
    files.into_iter().next().context("render gave no standby signal file")
}

/// conf.d/pgha.conf with the clone's pg_control settings, the pg_hba block and the passfile,
/// recorded in `transaction` so a failure puts the old ones back.
/// `system_identifier` is the primary's, `fallback_wal_senders` its max_wal_senders for pg_control
/// before 12; `data_dir` is the copy being configured (staging, or the data directory itself).
/// Returns whether anything changed.
pub fn write_config_files(
    context: &StandbyContext,
    system_identifier: &str,
    fallback_wal_senders: u32,
    data_dir: &Path,
    transaction: &mut Transaction,
) -> Result<bool> {
    let controldata = pg_controldata::read(context.cluster.version, data_dir)?;
    // A primary replaced at the same address between preflight and clone would pass unnoticed otherwise.
    let cloned = &controldata.system_identifier;
    if cloned != system_identifier {
        bail!(
            "the clone has system identifier {cloned:?} but preflight identified the primary as {system_identifier}: \
             was the primary replaced meanwhile?"
        );
    }
    let settings = hot_standby_settings(&controldata.settings, fallback_wal_senders);
    let config = standby_config(context.config, Some(&settings));
    let facts = standby_facts(context, Some(settings), local_ssl(context.cluster));
    let conf_d = context.cluster.config_dir.join("conf.d");
    if !conf_d.is_dir() {
        let postgres = postgres_account()?;
        transaction.create_dir(&conf_d, Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o755 })?;
    }
    let mut changed = false;
    if context.config.archive.enabled {
        if let Some(Step::CreateDir { path, ownership }) = crate::primary::archive_dir_step(context.config)? {
            log::info!("creating the archive directory {}, for the day this standby is promoted", path.display());
            transaction.create_dir(&path, ownership)?;
            changed = true;
        }
    }
    // The first file is the signal file, already in staging.
    for file in render(Role::Standby, &config, &facts)?.into_iter().skip(1) {
        if let Some(change) = rendered_file_change(file)? {
            log::info!("writing {}", change.path.display());
            transaction.write(&change)?;
            changed = true;
        }
    }
    if let Some(change) = passfile_change(context.config, context.password)? {
        log::info!("writing {}", change.path.display());
        transaction.write(&change)?;
        changed = true;
    }
    // The cluster is a proper standby of the primary from here: a fence must not keep it from serving reads.
    crate::fence::take_down(context.cluster, transaction)?;
    Ok(changed)
}

fn undo_before_swap(
    context: &StandbyContext,
    remote: &Target,
    staging: &Path,
    created_slot: bool,
    was_running: bool,
) -> Result<()> {
    crate::signals::finish_from_here();
    let mut problems = Vec::new();
    if let Err(error) = remove_staging(staging) {
        problems.push(format!("{error:#}"));
    }
    if let Err(error) = drop_slot_if_created(context, remote, created_slot) {
        problems.push(format!("{error:#}"));
    }
    if was_running {
        if let Err(error) = invoke_pg_ctlcluster(context.cluster, ClusterAction::Start) {
            problems.push(format!("{error:#}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("; "))
    }
}

fn undo_after_swap(
    context: &StandbyContext,
    remote: &Target,
    old: Option<&Path>,
    transaction: Transaction,
    created_slot: bool,
    was_running: bool,
) -> Result<()> {
    crate::signals::finish_from_here();
    let cluster = context.cluster;
    let _ = invoke_pg_ctlcluster(cluster, ClusterAction::StopImmediately);
    swap_back(&cluster.data_dir, old)?;
    transaction.rollback()?;
    drop_slot_if_created(context, remote, created_slot)?;
    if was_running {
        invoke_pg_ctlcluster(cluster, ClusterAction::Start)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_recovery_settings() {
        let text = "# Do not edit this file manually!\nwork_mem = '8MB'\nprimary_conninfo = 'host=x password=p'\n\
                    primary_slot_name = 's'\nrecovery_target_timeline = 'latest'\n# primary_conninfo in a comment\n";
        let (kept, removed) = strip_recovery_settings(text);
        assert_eq!(kept, "# Do not edit this file manually!\nwork_mem = '8MB'\n# primary_conninfo in a comment\n");
        assert_eq!(removed, ["primary_conninfo", "primary_slot_name", "recovery_target_timeline"]);
    }

    #[test]
    fn hot_standby_settings_come_from_pg_control_or_the_primary() {
        let control =
            pg_controldata::parse_controldata(include_str!("../../tests/data/pg_controldata-15.txt")).unwrap();
        assert_eq!(
            hot_standby_settings(&control.settings, 99),
            HotStandbySettings {
                max_connections: 100,
                max_worker_processes: 8,
                max_wal_senders: 10,
                max_prepared_transactions: 0,
                max_locks_per_transaction: 64
            }
        );
        let pre12 = RecordedSettings { max_wal_senders: None, ..control.settings };
        assert_eq!(hot_standby_settings(&pre12, 7).max_wal_senders, 7);
    }
}
