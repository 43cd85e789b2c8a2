//! `pgha rejoin`: turn a former primary (or a standby following the wrong node) into a standby
//! of the configured primary: pg_rewind when possible, the full safe clone of `pgha standby`
//! otherwise.
//!
//! What is kept: pg_rewind rewrites the data directory in place, so before a rewind that changes
//! anything pgha copies the whole data directory to `<datadir>.pgha-old-<timestamp>`, as
//! `pgha standby` keeps the directory it replaces: nothing is lost, and a rewind that fails
//! half-way cannot take the only copy with it. `--no-keep-copy` skips that copy for databases too
//! large to copy; pgha then keeps only what the rewind throws away (the WAL this host wrote after
//! the servers diverged, the transactions the new primary never received) in
//! `<datadir>.pgha-fork-<timestamp>/` with pg_rewind's report; inspect it with pg_waldump.
//! The fork is saved in both cases. When pgha falls back to a full clone, the whole old data
//! directory is kept as `pgha standby` does.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::apply::Transaction;
use crate::clone::{
    clone_standby, configure_staging, identify_primary, invoke_pg_controldata, parse_controldata, preflight,
    preflight_sslmode, primary_client_conninfo, wait_for_streaming, wait_streaming_from_primary, write_config_files,
    PrimaryFacts, PrivatePassfile, StandbyContext,
};
use crate::debian::{invoke_pg_ctlcluster, list_clusters, log_tail, Cluster, ClusterAction};
use crate::error::{ConfigError, EXIT_OK};
use crate::host::{postgres_account, postgres_command};
use crate::pg::{query, sql_literal, wait_until_ready, Target};
use crate::plan::Ownership;
use crate::render::standby_name;
use crate::replication::{ensure_slot_sql, Lsn};
use crate::version::PgVersion;

/// How long a running standby of this primary gets to show it streams before rejoin acts.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct RejoinArgs {
    /// Skip pg_rewind and clone the primary in full, even when this standby already streams
    /// (the old data directory is kept)
    #[arg(long)]
    pub full_clone: bool,

    /// Do not copy the data directory aside before pg_rewind; keep only the diverged WAL
    /// (for databases too large to copy; see "What is kept" in pgha(8))
    #[arg(long)]
    pub no_keep_copy: bool,

    /// How long the rejoined standby gets to start streaming (default: standby.streaming_timeout)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

impl RejoinArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let started = Instant::now();
        let (config, cluster) = crate::cmd::load_config_and_cluster(config_path)?;
        let password = config.read_password()?;
        if crate::cmd::find_local_address(&[config.primary.address])?.is_some() {
            return Err(ConfigError::key(
                config_path,
                "primary.address",
                format!(
                    "{} is this host: rejoin makes this host a standby of the current primary, so [primary] must name \
                     that one; apply the change `pgha promote` printed on the new primary",
                    config.primary.address
                ),
            )
            .into());
        }
        let own_address = crate::cmd::find_local_address(&config.standby.addresses)?.ok_or_else(|| {
            ConfigError::key(config_path, "standby.addresses", "none of them is an address of this host")
        })?;
        let timeout = self.timeout.unwrap_or(config.standby.streaming_timeout);
        let context = StandbyContext { config: &config, cluster: &cluster, password: &password, own_address };
        let passfile = PrivatePassfile::new(&config, &password)?;
        let system_identifier = identify_primary(&context, &passfile.path)?;
        let remote = Target::Remote {
            conninfo: primary_client_conninfo(&config, &passfile.path, preflight_sslmode(&config), "postgres"),
        };
        let primary_in_recovery = query(&remote, "SELECT pg_is_in_recovery()")?;
        if primary_in_recovery.first().and_then(|row| row.first()).map(String::as_str) != Some("f") {
            bail!(
                "the configured primary {} is in recovery: promote it first (`pgha promote` there)",
                config.primary.address
            );
        }
        if !self.full_clone && wait_streaming_from_primary(&context, &system_identifier, RECONNECT_PATIENCE)? {
            println!("nothing to do: cluster {} already streams from {}", cluster.id(), config.primary.address);
            return Ok(EXIT_OK);
        }
        let primary = preflight(&context, &passfile.path, system_identifier)?;
        if config.replication.slots {
            query(&remote, &ensure_slot_sql(&standby_name(own_address)))?;
        }

        let why_not = if self.full_clone {
            Some("--full-clone was given".to_string())
        } else {
            rewind_obstacle(&cluster, &primary)?
        };
        if why_not.is_none() {
            match rewind(&context, &primary, &passfile.path, timeout, !self.no_keep_copy) {
                Ok(fork) => {
                    println!(
                        "cluster {} rejoined as a standby of {} with pg_rewind in {:.1}s",
                        cluster.id(),
                        config.primary.address,
                        started.elapsed().as_secs_f64()
                    );
                    if let Some(fork) = fork {
                        println!("{fork}");
                    }
                    return Ok(EXIT_OK);
                }
                Err(error) => {
                    log::warn!("pg_rewind did not work, falling back to a full clone: {error:#}");
                }
            }
        } else if let Some(reason) = &why_not {
            log::info!("not using pg_rewind: {reason}; cloning in full");
        }

        // The clone decides from the cluster's current state whether to stop it and start it again.
        let cluster = refreshed(&cluster)?;
        let context = StandbyContext { cluster: &cluster, ..context };
        let report = clone_standby(&context, &primary, timeout)?;
        println!(
            "cluster {} rejoined as a standby of {} by a full clone in {:.1}s ({} MB)",
            cluster.id(),
            config.primary.address,
            started.elapsed().as_secs_f64(),
            report.cloned_bytes >> 20
        );
        report.print_kept_data_dir();
        Ok(EXIT_OK)
    }
}

fn refreshed(cluster: &Cluster) -> Result<Cluster> {
    list_clusters()?
        .into_iter()
        .find(|other| other.version == cluster.version && other.name == cluster.name)
        .with_context(|| format!("cluster {} disappeared", cluster.id()))
}

/// Why pg_rewind cannot work here, or None when it can.
fn rewind_obstacle(cluster: &Cluster, primary: &PrimaryFacts) -> Result<Option<String>> {
    let controldata = parse_controldata(&invoke_pg_controldata(cluster.version, &cluster.data_dir)?);
    let local_id = controldata.get("Database system identifier").cloned().unwrap_or_default();
    if local_id != primary.system_identifier {
        return Ok(Some(format!(
            "this cluster (system identifier {local_id}) was never a copy of the primary ({})",
            primary.system_identifier
        )));
    }
    if let Some(reason) = parse_rewind_obstacle(&controldata) {
        return Ok(Some(reason));
    }
    if cluster.version < PgVersion::new(11, 0) {
        // pg_rewind before 11 needs a superuser source connection, and pgha's role is not one.
        return Ok(Some(format!("pg_rewind {} needs a superuser connection to the primary", cluster.version)));
    }
    Ok(None)
}

/// pg_rewind needs wal_log_hints or data checksums on the target (pg_controldata shows both).
pub fn parse_rewind_obstacle(controldata: &std::collections::BTreeMap<String, String>) -> Option<String> {
    let hints = controldata.get("wal_log_hints setting").map(String::as_str) == Some("on");
    let checksums = controldata.get("Data page checksum version").is_some_and(|version| version != "0");
    (!hints && !checksums).then(|| {
        "neither wal_log_hints nor data checksums were on in this cluster (`pgha primary` sets wal_log_hints)".into()
    })
}

/// What `pg_rewind` reported: where the servers diverged, or that no rewind is needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RewindPlan {
    NotNeeded,
    Diverged { lsn: Lsn, timeline: u32 },
}

pub fn parse_rewind_output(output: &str) -> Option<RewindPlan> {
    if output.contains("no rewind required") {
        return Some(RewindPlan::NotNeeded);
    }
    let rest = output.split("servers diverged at WAL location ").nth(1)?;
    let mut words = rest.split_whitespace();
    let lsn = words.next()?.parse().ok()?;
    let timeline = rest.split("on timeline ").nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some(RewindPlan::Diverged { lsn, timeline })
}

/// WAL segment files (24 hex digits) from the one holding `from` to the one holding `to`, on any timeline.
pub fn segments_between(names: &[String], from: Lsn, to: Lsn, segment_bytes: u64) -> Vec<String> {
    let per_xlogid = 0x1_0000_0000 / segment_bytes;
    let (first, last) = (from.0 / segment_bytes, to.0 / segment_bytes);
    let mut chosen: Vec<String> = names
        .iter()
        .filter(|name| name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit()))
        .filter(|name| {
            let high = u64::from_str_radix(&name[8..16], 16).unwrap_or(0);
            let low = u64::from_str_radix(&name[16..24], 16).unwrap_or(0);
            (first..=last).contains(&(high * per_xlogid + low))
        })
        .cloned()
        .collect();
    chosen.sort();
    chosen
}

fn run_pg_rewind(cluster: &Cluster, conninfo: &str, dry_run: bool) -> Result<String> {
    let mut command = postgres_command(&cluster.bin("pg_rewind"))?;
    command
        .arg(format!("--target-pgdata={}", cluster.data_dir.display()))
        .arg(format!("--source-server={conninfo}"))
        .stdin(Stdio::null());
    if dry_run {
        command.arg("--dry-run");
    } else {
        command.arg("--progress");
    }
    let output = command.output().context("cannot run pg_rewind")?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("pg_rewind{} failed ({}):\n{}", if dry_run { " --dry-run" } else { "" }, output.status, text.trim());
    }
    Ok(text)
}

/// Brings the local cluster to a clean shutdown, the state pg_rewind needs, without ever letting
/// it accept writes: a crashed former primary is started as a standby (signal file first), which
/// replays its own WAL, and is then stopped.
fn shut_down_cleanly(context: &StandbyContext, primary: &PrimaryFacts) -> Result<()> {
    let cluster = refreshed(context.cluster)?;
    if cluster.online {
        log::info!("stopping cluster {}", cluster.id());
        invoke_pg_ctlcluster(&cluster, ClusterAction::Stop)?;
    }
    let controldata = parse_controldata(&invoke_pg_controldata(cluster.version, &cluster.data_dir)?);
    let state = controldata.get("Database cluster state").cloned().unwrap_or_default();
    if state == "shut down" || state == "shut down in recovery" {
        return Ok(());
    }
    log::info!("cluster {} was not shut down cleanly ({state}): recovering it as a standby first", cluster.id());
    wait_for_dead_postmaster(&cluster.data_dir);
    configure_staging(context, primary, &cluster.data_dir)?;
    let mut transaction = Transaction::new();
    write_config_files(context, primary, &cluster.data_dir, &mut transaction)?;
    invoke_pg_ctlcluster(&cluster, ClusterAction::Start)
        .and_then(|()| wait_until_ready(&Target::local(&cluster), Duration::from_secs(120)))
        .map_err(|error| anyhow::anyhow!("{error:#}\n{}", log_tail(&cluster, 20)))?;
    invoke_pg_ctlcluster(&cluster, ClusterAction::Stop)?;
    Ok(())
}

/// A killed postmaster stays a zombie until its parent (init) reaps it, and PostgreSQL takes a
/// zombie's PID in the socket lock file for a live server and refuses to start. Wait for the reaping.
fn wait_for_dead_postmaster(data_dir: &Path) {
    let Ok(pid_file) = fs::read_to_string(data_dir.join("postmaster.pid")) else { return };
    let Some(pid) = pid_file.lines().next().and_then(|line| line.trim().parse::<u32>().ok()) else { return };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) if parse_proc_state(&stat) == Some('Z') => {
                log::info!("waiting for the killed postmaster (PID {pid}) to be reaped");
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => return,
        }
    }
}

/// The state letter of /proc/PID/stat ("1234 (postgres) Z ..."); the name may contain spaces.
pub fn parse_proc_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// pg_rewind into place, standby configuration, start, wait for streaming. Returns a note on the
/// saved fork, if this host had written WAL the primary never received.
fn rewind(
    context: &StandbyContext,
    primary: &PrimaryFacts,
    passfile: &Path,
    timeout: Duration,
    keep_copy: bool,
) -> Result<Option<String>> {
    let cluster = context.cluster;
    shut_down_cleanly(context, primary)?;
    let sslmode = context.config.replication.sslmode.resolve(primary.ssl);
    let conninfo = primary_client_conninfo(context.config, passfile, sslmode, "postgres");
    let dry = run_pg_rewind(cluster, &conninfo, true)?;
    let plan = parse_rewind_output(&dry).with_context(|| format!("cannot read pg_rewind's plan:\n{dry}"))?;
    if dry.contains("same timeline") {
        let local = parse_controldata(&invoke_pg_controldata(cluster.version, &cluster.data_dir)?);
        let local_timeline = local.get("Latest checkpoint's TimeLineID").cloned().unwrap_or_default();
        let replication = Target::Remote {
            conninfo: format!(
                "{} replication=true",
                primary_client_conninfo(context.config, passfile, sslmode, "replication")
            ),
        };
        let identify = query(&replication, "IDENTIFY_SYSTEM")?;
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
    if let RewindPlan::Diverged { lsn, timeline } = plan {
        let fork = save_fork(cluster, lsn, &dry)?;
        fork_note = Some(format!(
            "this host had diverged from {} at {lsn} on timeline {timeline}; what it wrote after that point is not \
             on the primary and is no longer in this cluster: its WAL is kept in {}",
            context.config.primary.address,
            fork.display()
        ));
        if keep_copy {
            let copy = copy_aside(cluster)?;
            fork_note = fork_note
                .map(|note| format!("{note}; the whole data directory as it was is kept in {}", copy.display()));
        }
        log::info!("running pg_rewind from {}", context.config.primary.address);
        let output = run_pg_rewind(cluster, &conninfo, false)?;
        fs::write(fork.join("pg_rewind.log"), &output)?;
        for line in output.lines().filter(|line| !line.trim().is_empty()) {
            log::info!("{}", line.trim());
        }
    } else {
        log::info!("pg_rewind: no rewind required, this cluster is behind the primary's history");
    }
    configure_staging(context, primary, &cluster.data_dir)?;
    let mut transaction = Transaction::new();
    write_config_files(context, primary, &cluster.data_dir, &mut transaction)?;
    log::info!("starting cluster {} as a standby of {}", cluster.id(), context.config.primary.address);
    let online = Cluster { online: true, ..cluster.clone() };
    let context = StandbyContext { cluster: &online, ..*context };
    invoke_pg_ctlcluster(cluster, ClusterAction::Start)
        .and_then(|()| wait_for_streaming(&context, timeout))
        .map_err(|error| anyhow::anyhow!("{error:#}\n{}", log_tail(cluster, 20)))?;
    drop_stale_slots(&context)?;
    Ok(fork_note)
}

/// Copies the cleanly shut-down data directory to `<datadir>.pgha-old-<ts>` before pg_rewind
/// changes it, after checking it fits; refuses (leaving everything as it was) when it does not.
fn copy_aside(cluster: &Cluster) -> Result<PathBuf> {
    let copy = crate::clone::old_path(&cluster.data_dir, SystemTime::now());
    let size = crate::clone::dir_size(&cluster.data_dir);
    let parent = cluster.data_dir.parent().context("the data directory has no parent")?;
    let available = crate::clone::free_bytes(parent)?;
    if available < crate::clone::space_needed(size) {
        bail!(
            "{} has {} MB free, too little to keep a copy of the {} MB data directory before pg_rewind changes it: \
             free some space, or run `pgha rejoin --no-keep-copy` to keep only the diverged WAL",
            parent.display(),
            available >> 20,
            size >> 20
        );
    }
    log::info!("copying {} ({} MB) to {} before pg_rewind", cluster.data_dir.display(), size >> 20, copy.display());
    let mut command = crate::host::root_command("cp");
    command.arg("-a").arg("--reflink=auto").arg(&cluster.data_dir).arg(&copy);
    if let Err(error) = crate::host::run_checked(&mut command, "cp -a") {
        let _ = fs::remove_dir_all(&copy);
        return Err(error);
    }
    Ok(copy)
}

/// The slots this host kept for its standbys while it was the primary: on a standby nothing uses
/// them, and they would hold WAL here forever. Only pgha's own, inactive, physical slots go.
fn drop_stale_slots(context: &StandbyContext) -> Result<()> {
    let names: Vec<String> =
        context.config.node_addresses().into_iter().map(|address| sql_literal(&standby_name(address))).collect();
    let dropped = query(
        &Target::local(context.cluster),
        &format!(
            "SELECT slot_name, pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_type = 'physical' AND NOT active AND slot_name IN ({})",
            names.join(", ")
        ),
    )?;
    for row in dropped {
        log::info!("dropped replication slot {} kept from this host's time as primary", row[0]);
    }
    Ok(())
}

/// Copies this host's WAL from the divergence point to its end into `<datadir>.pgha-fork-<ts>`.
fn save_fork(cluster: &Cluster, diverged: Lsn, dry_run_output: &str) -> Result<PathBuf> {
    let controldata = parse_controldata(&invoke_pg_controldata(cluster.version, &cluster.data_dir)?);
    let segment_bytes: u64 =
        controldata.get("Bytes per WAL segment").and_then(|value| value.parse().ok()).unwrap_or(16 << 20);
    let end = ["Latest checkpoint location", "Minimum recovery ending location"]
        .iter()
        .filter_map(|key| controldata.get(*key).and_then(|value| value.parse::<Lsn>().ok()))
        .max()
        .unwrap_or(diverged)
        .max(diverged);
    let wal_dir = cluster.data_dir.join(if cluster.version.has_wal_names() { "pg_wal" } else { "pg_xlog" });
    let names: Vec<String> = fs::read_dir(&wal_dir)
        .with_context(|| format!("cannot list {}", wal_dir.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let stamp: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let mut fork = cluster.data_dir.as_os_str().to_os_string();
    fork.push(format!(".pgha-fork-{stamp}"));
    let fork = PathBuf::from(fork);
    let postgres = postgres_account()?;
    crate::apply::create_dir(&fork, Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o700 })?;
    let mut saved = 0;
    for name in segments_between(&names, diverged, end, segment_bytes)
        .into_iter()
        .chain(names.iter().filter(|name| name.ends_with(".history")).cloned())
    {
        fs::copy(wal_dir.join(&name), fork.join(&name)).with_context(|| format!("cannot save {name}"))?;
        std::os::unix::fs::chown(fork.join(&name), Some(postgres.uid), Some(postgres.gid))?;
        saved += 1;
    }
    fs::write(fork.join("pg_rewind-dry-run.log"), dry_run_output)?;
    log::info!("saved {saved} WAL files written after the divergence at {diverged} into {}", fork.display());
    Ok(fork)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_saved_pg_rewind_output() {
        let diverged = parse_rewind_output(include_str!("../../tests/data/pg_rewind-15-dry-run.txt")).unwrap();
        assert!(matches!(diverged, RewindPlan::Diverged { timeline: 1, .. }), "{diverged:?}");
        assert_eq!(
            parse_rewind_output(
                "pg_rewind: source and target cluster are on the same timeline\npg_rewind: no rewind required\n"
            ),
            Some(RewindPlan::NotNeeded)
        );
        assert_eq!(parse_rewind_output("pg_rewind: fatal: could not connect"), None);
    }

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
        let mut controldata = parse_controldata(include_str!("../../tests/data/pg_controldata-15.txt"));
        controldata.insert("wal_log_hints setting".into(), "off".into());
        controldata.insert("Data page checksum version".into(), "0".into());
        assert!(parse_rewind_obstacle(&controldata).is_some());
        controldata.insert("Data page checksum version".into(), "1".into());
        assert!(parse_rewind_obstacle(&controldata).is_none());
    }
}
