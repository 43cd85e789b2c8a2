//! Cloning a primary into this host's cluster without losing anything: preflight against the
//! primary, pg_basebackup into a staging directory beside the data directory, standby
//! configuration written into staging (signal file first), then a swap by rename that keeps
//! the old data directory. `pgha standby` drives it; `pgha rejoin` falls back to it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};

use crate::apply::{sync_dir, write_atomic, Transaction};
use crate::config::{Config, Password, SslMode};
use crate::debian::{invoke_pg_ctlcluster, log_tail, Cluster, ClusterAction};
use crate::host::{postgres_account, postgres_command};
use crate::password::passfile_line;
use crate::pg::{conninfo_quote, query, query_value, sql_literal, Target};
use crate::plan::{file_change, FileChange, Ownership};
use crate::render::{render, standby_name, Facts, HotStandbySettings, Role};
use crate::version::PgVersion;

/// Everything on the primary a clone depends on, learnt before this host changes.
#[derive(Clone, Debug)]
pub struct PrimaryFacts {
    pub system_identifier: String,
    pub version: PgVersion,
    pub ssl: bool,
    pub max_wal_senders: u32,
    /// The slot named after this standby, if the primary has one.
    pub slot: Option<SlotState>,
    /// Sum of pg_database_size over all databases; None when the primary would not tell.
    pub database_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotState {
    pub active: bool,
    /// PostgreSQL 13+ invalidated it (max_slot_wal_keep_size): it cannot be reused.
    pub lost: bool,
}

/// What a finished clone did, for the final message.
#[derive(Clone, Debug)]
pub struct CloneReport {
    /// Where the previous data directory was moved, and how many bytes it takes.
    pub old_data_dir: Option<(PathBuf, u64)>,
    pub cloned_bytes: u64,
    pub elapsed: Duration,
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

/// One pg_basebackup `-P` progress line: "12345/67890 kB (18%), 0/1 tablespace (...)".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done_kb: u64,
    pub total_kb: u64,
    pub percent: u32,
}

impl Progress {
    pub fn status_line(&self) -> String {
        format!("cloning {}%, {}/{} MB", self.percent, self.done_kb / 1024, self.total_kb / 1024)
    }
}

pub fn parse_basebackup_progress(line: &str) -> Option<Progress> {
    let (sizes, rest) = line.trim_start().split_once(" kB (")?;
    let (done, total) = sizes.split_once('/')?;
    let percent = rest.split_once("%)")?.0;
    Some(Progress {
        done_kb: done.trim().parse().ok()?,
        total_kb: total.trim().parse().ok()?,
        percent: percent.trim().parse().ok()?,
    })
}

/// `pg_controldata` output as "key" → "value".
pub fn parse_controldata(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// The settings recorded in a fresh clone's pg_control: exactly what the primary ran with, so
/// exactly what the standby must meet. pg_control has max_wal_senders only from PostgreSQL 12;
/// `fallback_wal_senders` (the primary's SHOW) covers older versions.
pub fn controldata_settings(
    controldata: &BTreeMap<String, String>,
    fallback_wal_senders: u32,
) -> Result<HotStandbySettings> {
    let get = |key: &str| -> Result<u32> {
        let value = controldata.get(key).with_context(|| format!("pg_controldata shows no {key:?}"))?;
        value.parse().with_context(|| format!("pg_controldata: {key:?} is {value:?}, not a number"))
    };
    Ok(HotStandbySettings {
        max_connections: get("max_connections setting")?,
        max_worker_processes: get("max_worker_processes setting")?,
        max_wal_senders: get("max_wal_senders setting").unwrap_or(fallback_wal_senders),
        max_prepared_transactions: get("max_prepared_xacts setting")?,
        max_locks_per_transaction: get("max_locks_per_xact setting")?,
    })
}

pub fn invoke_pg_controldata(version: PgVersion, data_dir: &Path) -> Result<String> {
    let program = format!("{}/pg_controldata", version.bin_dir());
    crate::host::run_checked(postgres_command(&program)?.arg(data_dir), "pg_controldata")
}

/// The system identifier of the cluster in `data_dir`: what makes two data directories
/// one primary and its standbys.
pub fn system_identifier(version: PgVersion, data_dir: &Path) -> Result<String> {
    let controldata = parse_controldata(&invoke_pg_controldata(version, data_dir)?);
    controldata
        .get("Database system identifier")
        .cloned()
        .with_context(|| format!("pg_controldata {} shows no system identifier", data_dir.display()))
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

/// The libpq passfile pgha's standbys use: one line per node address, any database, so it keeps
/// working for whichever node is primary after a promote or rejoin. Every node is assumed to
/// listen on `primary.port`.
pub fn passfile_content(config: &Config, password: &Password) -> String {
    let mut content = String::from("# Written by pgha from the replication password file. Do not edit.\n");
    for address in config.node_addresses() {
        content.push_str(&passfile_line(
            &address.to_string(),
            config.primary.port,
            "*",
            &config.replication.user,
            password,
        ));
    }
    content
}

/// The write `replication.passfile` needs (owner postgres, 0600), or None when it is current.
pub fn passfile_change(config: &Config, password: &Password) -> Result<Option<FileChange>> {
    let postgres = postgres_account()?;
    file_change(
        &config.replication.passfile,
        passfile_content(config, password),
        Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o600 },
    )
}

/// Writes `replication.passfile` atomically when it differs; returns whether it changed.
pub fn write_passfile(config: &Config, password: &Password) -> Result<bool> {
    match passfile_change(config, password)? {
        Some(change) => {
            write_atomic(&change.path, change.new.as_bytes(), change.ownership)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// A passfile only this run uses (postgres, 0600), beside `replication.passfile` and removed on
/// drop. Preflight and the clone use it, so a failed or dry run leaves pgha's real passfile as it
/// was. Its name carries the pid, so copies left by a killed run are found and removed next time.
pub struct PrivatePassfile {
    pub path: PathBuf,
}

impl PrivatePassfile {
    pub fn new(config: &Config, password: &Password) -> Result<PrivatePassfile> {
        let postgres = postgres_account()?;
        let real = &config.replication.passfile;
        let dir = real.parent().context("replication.passfile has no directory")?;
        let prefix =
            format!(".{}.pgha-run-", real.file_name().context("replication.passfile has no name")?.to_string_lossy());
        remove_stale_private_passfiles(dir, &prefix);
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let number = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{prefix}{}-{number}", std::process::id()));
        write_atomic(
            &path,
            passfile_content(config, password).as_bytes(),
            Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o600 },
        )?;
        Ok(PrivatePassfile { path })
    }
}

impl Drop for PrivatePassfile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn remove_stale_private_passfiles(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid =
            name.strip_prefix(prefix).and_then(|rest| rest.split('-').next()).and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A conninfo for the primary: the password comes from `passfile`, never from the string.
pub fn primary_client_conninfo(config: &Config, passfile: &Path, sslmode: &str, dbname: &str) -> String {
    format!(
        "host={} port={} user={} dbname={} passfile={} sslmode={sslmode} connect_timeout=10",
        conninfo_quote(&config.primary.address.to_string()),
        config.primary.port,
        conninfo_quote(&config.replication.user),
        conninfo_quote(dbname),
        conninfo_quote(&passfile.display().to_string()),
    )
}

/// sslmode before the primary's `ssl` is known: what the admin chose, or `prefer` for auto.
pub fn preflight_sslmode(config: &Config) -> &'static str {
    match config.replication.sslmode {
        SslMode::Auto => "prefer",
        other => other.as_str(),
    }
}

/// `<datadir>.pgha-staging`: beside the data directory, so the swap is a rename on one filesystem.
pub fn staging_path(data_dir: &Path) -> PathBuf {
    sibling(data_dir, ".pgha-staging")
}

/// `<datadir>.pgha-old-<UTC timestamp>`: where the replaced data directory is kept.
pub fn old_path(data_dir: &Path, now: SystemTime) -> PathBuf {
    let stamp: String =
        humantime::format_rfc3339_seconds(now).to_string().chars().filter(|c| *c != '-' && *c != ':').collect();
    sibling(data_dir, &format!(".pgha-old-{stamp}"))
}

fn sibling(data_dir: &Path, suffix: &str) -> PathBuf {
    let mut name = data_dir.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Disk space a directory tree takes, as `du` counts it.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(metadata) = fs::symlink_metadata(path) else { return 0 };
    let own = metadata.blocks() * 512;
    if !metadata.is_dir() {
        return own;
    }
    let children =
        fs::read_dir(path).map(|entries| entries.flatten().map(|entry| dir_size(&entry.path())).sum()).unwrap_or(0);
    own + children
}

/// Bytes a clone of `database_bytes` needs free: the data, the WAL streamed meanwhile, and margin.
pub fn space_needed(database_bytes: u64) -> u64 {
    database_bytes + database_bytes / 5 + 128 * 1024 * 1024
}

/// The "x86_64-pc-linux-gnu, ..., 64-bit" platform of a `version()` string, architecture first.
pub fn parse_platform(version_string: &str) -> Option<(String, String)> {
    let after_on = version_string.split_once(" on ")?.1;
    let triple = after_on.split([',', ' ']).next()?.to_string();
    let arch = triple.split('-').next()?.to_string();
    let bits = version_string.rsplit(", ").next().filter(|last| last.ends_with("-bit")).unwrap_or("").to_string();
    Some((arch, bits))
}

fn mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

/// Progress for `systemctl status`; the last one sent stays visible after the unit finished.
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]);
}

/// The host-side context of a clone: which cluster, as which standby address.
pub struct StandbyContext<'a> {
    pub config: &'a Config,
    pub cluster: &'a Cluster,
    pub password: &'a Password,
    pub own_address: IpAddr,
}

impl StandbyContext<'_> {
    pub fn slot_name(&self) -> Option<String> {
        self.config.replication.slots.then(|| standby_name(self.own_address))
    }

    fn remote(&self, passfile: &Path, sslmode: &str) -> Target {
        Target::Remote { conninfo: primary_client_conninfo(self.config, passfile, sslmode, "postgres") }
    }

    fn replication(&self, passfile: &Path, sslmode: &str) -> Target {
        let conninfo = primary_client_conninfo(self.config, passfile, sslmode, "replication");
        Target::Remote { conninfo: format!("{conninfo} replication=true") }
    }
}

/// Explains a failed login to the primary in the admin's terms.
fn login_failure(context: &StandbyContext, what: &str, error: anyhow::Error) -> anyhow::Error {
    let text = format!("{error:#}");
    let user = &context.config.replication.user;
    let primary = context.config.primary.address;
    let hint = if text.contains("password authentication failed") {
        format!(
            "the primary rejects the password of {user:?}: the password in {} differs from the one `pgha primary` set on {primary}",
            context.config.replication.password_file.display()
        )
    } else if text.contains("no pg_hba.conf entry") {
        format!(
            "the primary's pg_hba.conf has no entry for {user:?} from {}: add this address to standby.addresses and run `pgha primary` on {primary}",
            context.own_address
        )
    } else if text.contains("does not exist") && text.contains("role") {
        format!("the primary has no role {user:?}: run `pgha primary` on {primary}")
    } else {
        format!("cannot log in to the primary {primary} as {user:?}")
    };
    anyhow!("preflight: {what}: {hint}\n({})", text.trim())
}

/// The first preflight checks: the primary answers on TCP and accepts a replication login.
/// Returns its system identifier (IDENTIFY_SYSTEM), which decides whether this host already
/// is its standby. Changes nothing anywhere.
pub fn identify_primary(context: &StandbyContext, passfile: &Path) -> Result<String> {
    let config = context.config;
    let socket = SocketAddr::new(config.primary.address, config.primary.port);
    TcpStream::connect_timeout(&socket, Duration::from_secs(5)).map_err(|error| {
        anyhow!(
            "preflight: the primary {socket} is unreachable over TCP ({error}): check that its cluster runs, \
             listens on that address (`pgha primary` sets listen_addresses) and that no firewall blocks the port"
        )
    })?;
    let identify = query(&context.replication(passfile, preflight_sslmode(config)), "IDENTIFY_SYSTEM")
        .map_err(|error| login_failure(context, "replication login (IDENTIFY_SYSTEM) failed", error))?;
    identify
        .first()
        .and_then(|row| row.first())
        .cloned()
        .with_context(|| format!("IDENTIFY_SYSTEM returned {identify:?}"))
}

/// The rest of issue 3's preflight, for a clone: version, platform, wal_level, walsenders, slot,
/// free space. Changes nothing anywhere.
pub fn preflight(context: &StandbyContext, passfile: &Path, system_identifier: String) -> Result<PrimaryFacts> {
    let config = context.config;
    let cluster = context.cluster;
    let sslmode = preflight_sslmode(config);
    let remote = context.remote(passfile, sslmode);
    let rows = query(
        &remote,
        &format!(
            "SELECT current_setting('server_version_num'), version(), current_setting('ssl'), \
             current_setting('wal_level'), current_setting('max_wal_senders'), \
             (SELECT count(*) FROM pg_stat_replication WHERE client_addr IS DISTINCT FROM {}::inet)",
            sql_literal(&context.own_address.to_string())
        ),
    )
    .map_err(|error| login_failure(context, "SQL login to the primary's postgres database failed", error))?;
    let [version_num, version_string, ssl, wal_level, max_wal_senders, senders_used] =
        rows.first().map(Vec::as_slice).with_context(|| format!("unexpected answer from the primary: {rows:?}"))?
    else {
        bail!("unexpected answer from the primary: {rows:?}");
    };
    let version = PgVersion::from_version_num(version_num.parse().context("server_version_num")?);
    if version != cluster.version {
        bail!(
            "preflight: the primary {} runs PostgreSQL {version} and this host's cluster {} is {}: \
             a standby needs the same major version (create a {version} cluster here, or set cluster.version)",
            config.primary.address,
            cluster.id(),
            cluster.version
        );
    }
    check_platform(context, version_string)?;
    if !matches!(wal_level.as_str(), "replica" | "logical" | "hot_standby") {
        bail!(
            "preflight: the primary's wal_level is {wal_level}: expected replica or logical; run `pgha primary` on {}",
            config.primary.address
        );
    }
    let max_wal_senders: u32 = max_wal_senders.parse().context("max_wal_senders")?;
    let senders_used: u32 = senders_used.parse().context("pg_stat_replication count")?;
    let free = max_wal_senders.saturating_sub(senders_used);
    if free < 2 {
        bail!(
            "preflight: the primary has {free} of max_wal_senders = {max_wal_senders} free and a streaming clone needs 2: \
             raise primary.max_wal_senders and run `pgha primary`, or wait for other clones to finish"
        );
    }

    let slot = match context.slot_name() {
        Some(name) => slot_state(context, &remote, &name)?,
        None => None,
    };

    let database_bytes = match query_value(&remote, "SELECT sum(pg_database_size(oid))::bigint FROM pg_database") {
        Ok(value) => value.parse().ok(),
        Err(error) => {
            log::warn!("cannot learn the primary's database size, so free space is not checked: {error:#}");
            None
        }
    };
    if let Some(bytes) = database_bytes {
        check_space(&cluster.data_dir, bytes)?;
    }
    check_swappable(&cluster.data_dir)?;
    Ok(PrimaryFacts { system_identifier, version, ssl: ssl == "on", max_wal_senders, slot, database_bytes })
}

fn check_platform(context: &StandbyContext, primary_version: &str) -> Result<()> {
    let Some((primary_arch, primary_bits)) = parse_platform(primary_version) else {
        log::warn!("cannot read the primary's platform from {primary_version:?}; not comparing it");
        return Ok(());
    };
    let local = if context.cluster.online {
        query_value(&Target::local(context.cluster), "SELECT version()").ok().and_then(|v| parse_platform(&v))
    } else {
        None
    };
    let (local_arch, local_bits) =
        local.unwrap_or_else(|| (std::env::consts::ARCH.to_string(), format!("{}-bit", usize::BITS)));
    if primary_arch != local_arch || (!local_bits.is_empty() && !primary_bits.is_empty() && primary_bits != local_bits)
    {
        bail!(
            "preflight: the primary runs on {primary_arch} {primary_bits} and this host on {local_arch} {local_bits}: \
             physical replication needs the same CPU architecture and platform"
        );
    }
    Ok(())
}

fn slot_state(context: &StandbyContext, remote: &Target, name: &str) -> Result<Option<SlotState>> {
    let lost = if context.cluster.version >= PgVersion::new(13, 0) { "s.wal_status = 'lost'" } else { "false" };
    let rows = query(
        remote,
        &format!(
            "SELECT s.active, {lost}, coalesce(host(r.client_addr), '') FROM pg_replication_slots s \
             LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = {}",
            sql_literal(name)
        ),
    )?;
    let Some([active, lost, client]) = rows.first().map(Vec::as_slice) else { return Ok(None) };
    let active = active == "t";
    // Our own walreceiver holds it while this cluster streams; stopping the cluster frees it.
    let ours = client == &context.own_address.to_string() && context.cluster.online;
    if active && !ours {
        bail!(
            "preflight: replication slot {name} on the primary is in use by {}: another host streams as {}, \
             or another clone is running",
            if client.is_empty() { "a walsender" } else { client.as_str() },
            context.own_address
        );
    }
    Ok(Some(SlotState { active, lost: lost == "t" }))
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).with_context(|| format!("cannot statvfs {}", dir.display()))?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

fn check_space(data_dir: &Path, database_bytes: u64) -> Result<()> {
    let parent = data_dir.parent().context("the data directory has no parent")?;
    let available = free_bytes(parent)?;
    let needed = space_needed(database_bytes);
    if available < needed {
        bail!(
            "preflight: {} has {} MB free and a clone of the primary's {} MB needs about {} MB \
             (the old data directory is kept): free some space first",
            parent.display(),
            mib(available),
            mib(database_bytes),
            mib(needed)
        );
    }
    log::info!(
        "preflight: primary holds {} MB, {} has {} MB free",
        mib(database_bytes),
        parent.display(),
        mib(available)
    );
    Ok(())
}

/// The swap is a rename, which a mount point refuses.
fn check_swappable(data_dir: &Path) -> Result<()> {
    let parent = data_dir.parent().context("the data directory has no parent")?;
    if let (Ok(dir), Ok(up)) = (fs::metadata(data_dir), fs::metadata(parent)) {
        if dir.dev() != up.dev() {
            bail!(
                "preflight: {} is a mount point: pgha replaces a data directory by renaming it beside itself; \
                 mount the parent directory instead",
                data_dir.display()
            );
        }
    }
    Ok(())
}

fn wal_receiver_streaming(context: &StandbyContext) -> Result<bool> {
    let host = format!("host={}", context.config.primary.address);
    let rows =
        query(&Target::local(context.cluster), "SELECT status, coalesce(conninfo, '') FROM pg_stat_wal_receiver")?;
    Ok(rows.iter().any(|row| {
        row.first().map(String::as_str) == Some("streaming")
            && row.get(1).is_some_and(|conninfo| conninfo.split_whitespace().any(|part| part == host))
    }))
}

/// Whether the local cluster streams from the configured primary: in recovery, the primary's
/// system identifier, and a wal receiver connected to the primary's address. Waits up to
/// `patience` for a cluster that is a standby of this primary to start streaming:
/// at boot, the wal receiver connects a moment after the server accepts connections.
pub fn wait_streaming_from_primary(
    context: &StandbyContext,
    primary_system_identifier: &str,
    patience: Duration,
) -> Result<bool> {
    let cluster = context.cluster;
    if !cluster.online {
        return Ok(false);
    }
    let deadline = Instant::now() + patience;
    loop {
        let local = Target::local(cluster);
        if query_value(&local, "SELECT pg_is_in_recovery()")? != "t"
            || system_identifier(cluster.version, &cluster.data_dir)? != primary_system_identifier
        {
            return Ok(false);
        }
        if wal_receiver_streaming(context)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How the clone gets its slot: reuse the one named after this standby, or create it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotPlan {
    None,
    Reuse,
    /// pg_basebackup `--create-slot` (11+), or pgha creates it first (older).
    Create,
}

/// The whole safe clone after preflight: stop, pg_basebackup into staging, configure staging
/// (signal file first), swap, start, wait for streaming. On any failure the host is put back as
/// it was (see issue 3's failure table) and the error says so.
pub fn clone_standby(context: &StandbyContext, primary: &PrimaryFacts, timeout: Duration) -> Result<CloneReport> {
    let started = Instant::now();
    let cluster = context.cluster;
    let passfile = PrivatePassfile::new(context.config, context.password)?;
    let sslmode = context.config.replication.sslmode.resolve(primary.ssl);
    let remote = context.remote(&passfile.path, sslmode);
    let was_running = cluster.online;
    let staging = staging_path(&cluster.data_dir);

    if was_running {
        log::info!("stopping cluster {}", cluster.id());
        notify_status("stopping the local cluster");
        invoke_pg_ctlcluster(cluster, ClusterAction::Stop)?;
    }
    let mut created_slot = false;
    let result = (|| -> Result<u64> {
        let slot_plan = prepare_slot(context, primary, &remote, &mut created_slot)?;
        if staging.exists() {
            log::warn!("removing {} left by an interrupted clone", staging.display());
            fs::remove_dir_all(&staging).with_context(|| format!("cannot remove {}", staging.display()))?;
        }
        let postgres = postgres_account()?;
        crate::apply::create_dir(&staging, Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o700 })?;
        // Preflight saw no slot of this name, so whatever exists after a failure is this clone's.
        created_slot |= slot_plan == SlotPlan::Create;
        run_basebackup(context, &passfile.path, sslmode, &staging, slot_plan)?;
        configure_staging(context, primary, &staging)?;
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
        write_config_files(context, primary, &staging, &mut transaction)?;
        swap(&cluster.data_dir, &staging)
    })();
    let old = match swapped {
        Ok(old) => old,
        Err(error) => {
            let mut undo = transaction.rollback();
            if let Err(more) = undo_before_swap(context, &remote, &staging, created_slot, was_running) {
                undo = Err(more);
            }
            return Err(failure(error, undo, format!("{} is untouched", cluster.data_dir.display())));
        }
    };

    notify_status("starting the standby");
    log::info!("starting cluster {} as a standby of {}", cluster.id(), context.config.primary.address);
    let came_up = invoke_pg_ctlcluster(cluster, ClusterAction::Start).and_then(|()| {
        log::info!("cluster {} is up; waiting for it to stream", cluster.id());
        wait_for_streaming(context, timeout)
    });
    if let Err(error) = came_up {
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
    let old_data_dir = old.map(|path| {
        let size = dir_size(&path);
        (path, size)
    });
    Ok(CloneReport { old_data_dir, cloned_bytes, elapsed: started.elapsed() })
}

fn failure(error: anyhow::Error, undo: Result<()>, restored: String) -> anyhow::Error {
    match undo {
        Ok(()) => error.context(format!("the clone failed; {restored}")),
        Err(undo_error) => anyhow!(
            "{error:#}\nputting the host back failed as well: {undo_error:#}\ncheck the cluster with pg_lsclusters"
        ),
    }
}

fn prepare_slot(
    context: &StandbyContext,
    primary: &PrimaryFacts,
    remote: &Target,
    created: &mut bool,
) -> Result<SlotPlan> {
    let Some(name) = context.slot_name() else { return Ok(SlotPlan::None) };
    let literal = sql_literal(&name);
    if let Some(state) = &primary.slot {
        if state.active {
            // Our own wal receiver held it; it lets go once the stopped cluster's connection is gone.
            wait_slot_inactive(remote, &literal)?;
        }
        if !state.lost {
            log::info!("reusing replication slot {name} on the primary");
            return Ok(SlotPlan::Reuse);
        }
        log::info!("replacing replication slot {name}: the primary invalidated it");
        query(remote, &format!("SELECT pg_drop_replication_slot({literal})"))?;
    }
    if !context.cluster.version.basebackup_can_create_slot() {
        let reserve = if context.cluster.version >= PgVersion::new(9, 6) { ", true" } else { "" };
        query(remote, &format!("SELECT pg_create_physical_replication_slot({literal}{reserve})"))?;
        *created = true;
    }
    log::info!("creating replication slot {name} on the primary");
    Ok(SlotPlan::Create)
}

fn wait_slot_inactive(remote: &Target, literal: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active = query_value(
            remote,
            &format!("SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = {literal}"),
        )?;
        if active == "f" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("replication slot {literal} on the primary stayed in use after this cluster stopped");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn run_basebackup(
    context: &StandbyContext,
    passfile: &Path,
    sslmode: &str,
    staging: &Path,
    slot_plan: SlotPlan,
) -> Result<()> {
    let cluster = context.cluster;
    let conninfo = format!(
        "{} application_name={}_clone",
        primary_client_conninfo(context.config, passfile, sslmode, "replication"),
        standby_name(context.own_address)
    );
    let mut command = postgres_command(&cluster.bin("pg_basebackup"))?;
    command
        .arg(format!("--dbname={conninfo}"))
        .arg(format!("--pgdata={}", staging.display()))
        .arg(format!("{}=stream", cluster.version.wal_method_flag()))
        .args(["--checkpoint=fast", "--progress", "--verbose", "--no-password"]);
    if let Some(name) = context.slot_name() {
        command.arg(format!("--slot={name}"));
        if slot_plan == SlotPlan::Create && cluster.version.basebackup_can_create_slot() {
            command.arg("--create-slot");
        }
    }
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    log::info!("cloning {} into {}", context.config.primary.address, staging.display());
    notify_status("cloning: waiting for the primary's checkpoint");
    let mut child = command.spawn().context("cannot run pg_basebackup")?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut tail: Vec<String> = Vec::new();
    let mut last_logged: Option<(u32, Instant)> = None;
    let mut reader = BufReader::new(stderr);
    let mut buffer = Vec::new();
    // -P ends its lines with \r on a terminal and \n otherwise: split on both.
    loop {
        buffer.clear();
        let read = read_until_either(&mut reader, &mut buffer)?;
        if read == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buffer).trim_end().to_string();
        if line.trim().is_empty() {
            continue;
        }
        match parse_basebackup_progress(&line) {
            Some(progress) => {
                let status = progress.status_line();
                notify_status(&status);
                let due = last_logged.map_or(true, |(percent, at)| {
                    progress.percent >= percent + 10
                        || at.elapsed() >= Duration::from_secs(10)
                        || progress.percent == 100 && percent != 100
                });
                if due {
                    log::info!("{status}");
                    last_logged = Some((progress.percent, Instant::now()));
                }
            }
            None => {
                log::info!("{}", line.trim());
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
        }
    }
    let status = child.wait().context("pg_basebackup did not finish")?;
    if !status.success() {
        bail!("pg_basebackup failed ({status}):\n{}", tail.join("\n"));
    }
    Ok(())
}

fn read_until_either(reader: &mut impl BufRead, buffer: &mut Vec<u8>) -> Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf().context("cannot read pg_basebackup's output")?;
        if available.is_empty() {
            return Ok(total);
        }
        match available.iter().position(|byte| *byte == b'\n' || *byte == b'\r') {
            Some(end) => {
                buffer.extend_from_slice(&available[..end]);
                reader.consume(end + 1);
                return Ok(total + end + 1);
            }
            None => {
                let length = available.len();
                buffer.extend_from_slice(available);
                reader.consume(length);
                total += length;
            }
        }
    }
}

fn standby_facts(context: &StandbyContext, primary: &PrimaryFacts, settings: Option<HotStandbySettings>) -> Facts {
    let cluster = context.cluster;
    let local_ssl = if cluster.online {
        query_value(&Target::local(cluster), "SHOW ssl").map(|value| value == "on").unwrap_or(true)
    } else {
        // Debian's default for a new cluster; it only picks hostssl or host for peers' hba lines.
        true
    };
    Facts {
        version: cluster.version,
        config_dir: cluster.config_dir(),
        data_dir: cluster.data_dir.clone(),
        own_address: context.own_address,
        local_ssl,
        primary_ssl: primary.ssl,
        primary_settings: settings,
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
pub fn configure_staging(context: &StandbyContext, primary: &PrimaryFacts, staging: &Path) -> Result<()> {
    let postgres = postgres_account()?;
    let config = standby_config(context.config, None);
    let files = render(Role::Standby, &config, &standby_facts(context, primary, None))?;
    let signal = files.first().context("render gave no standby signal file")?;
    let name = signal.path.file_name().context("signal file has no name")?;
    write_atomic(
        &staging.join(name),
        signal.content.as_bytes(),
        Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o600 },
    )?;
    log::info!("wrote {} into staging", name.to_string_lossy());
    let auto_conf = staging.join("postgresql.auto.conf");
    if let Ok(text) = fs::read_to_string(&auto_conf) {
        let (kept, removed) = strip_recovery_settings(&text);
        if !removed.is_empty() {
            log::info!("removing {} copied from the primary's postgresql.auto.conf", removed.join(", "));
            write_atomic(&auto_conf, kept.as_bytes(), Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o600 })?;
        }
    }
    Ok(())
}

/// conf.d/pgha.conf with the clone's pg_control settings, the pg_hba block and the passfile,
/// recorded in `transaction` so a failure puts the old ones back.
pub fn write_config_files(
    context: &StandbyContext,
    primary: &PrimaryFacts,
    staging: &Path,
    transaction: &mut Transaction,
) -> Result<()> {
    let controldata = parse_controldata(&invoke_pg_controldata(context.cluster.version, staging)?);
    // A primary replaced at the same address between preflight and clone would pass unnoticed otherwise.
    let cloned = controldata.get("Database system identifier").map(String::as_str).unwrap_or("");
    if cloned != primary.system_identifier {
        bail!(
            "the clone has system identifier {cloned:?} but preflight identified the primary as {}: \
             was the primary replaced meanwhile?",
            primary.system_identifier
        );
    }
    let settings = controldata_settings(&controldata, primary.max_wal_senders)?;
    let config = standby_config(context.config, Some(&settings));
    let facts = standby_facts(context, primary, Some(settings));
    let conf_d = context.cluster.config_dir().join("conf.d");
    if !conf_d.is_dir() {
        let postgres = postgres_account()?;
        transaction.create_dir(&conf_d, Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o755 })?;
    }
    // The first file is the signal file, already in staging.
    for file in render(Role::Standby, &config, &facts)?.into_iter().skip(1) {
        if let Some(change) = crate::cmd::primary::config_file_change(file)? {
            log::info!("writing {}", change.path.display());
            transaction.write(&change)?;
        }
    }
    if let Some(change) = passfile_change(context.config, context.password)? {
        log::info!("writing {}", change.path.display());
        transaction.write(&change)?;
    }
    Ok(())
}

/// Moves the data directory aside and staging into its place. Returns where the old one went.
fn swap(data_dir: &Path, staging: &Path) -> Result<Option<PathBuf>> {
    let parent = data_dir.parent().context("the data directory has no parent")?;
    let old = if data_dir.exists() {
        let old = old_path(data_dir, SystemTime::now());
        fs::rename(data_dir, &old)
            .with_context(|| format!("cannot move {} to {}", data_dir.display(), old.display()))?;
        log::info!("moved the old data directory to {}", old.display());
        Some(old)
    } else {
        None
    };
    if let Err(error) = fs::rename(staging, data_dir) {
        if let Some(old) = &old {
            fs::rename(old, data_dir).with_context(|| format!("cannot move {} back", old.display()))?;
        }
        return Err(error).with_context(|| format!("cannot move {} to {}", staging.display(), data_dir.display()));
    }
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))?;
    sync_dir(parent)?;
    Ok(old)
}

pub fn wait_for_streaming(context: &StandbyContext, timeout: Duration) -> Result<()> {
    notify_status("waiting for the standby to stream");
    let deadline = Instant::now() + timeout;
    let local = Target::local(context.cluster);
    loop {
        if query_value(&local, "SELECT pg_is_in_recovery()").ok().as_deref() == Some("f") {
            bail!("the new copy came up as a primary, not in recovery");
        }
        if wal_receiver_streaming(context).unwrap_or(false) {
            log::info!("cluster {} streams from {}", context.cluster.id(), context.config.primary.address);
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the standby did not stream from {} within {}s (standby.streaming_timeout)",
                context.config.primary.address,
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn drop_slot_if_created(context: &StandbyContext, remote: &Target, created: bool) -> Result<()> {
    match context.slot_name() {
        Some(name) if created => {
            let literal = sql_literal(&name);
            // The killed client's walsender lets go of the slot only once it notices.
            wait_slot_inactive(remote, &literal)?;
            query(
                remote,
                &format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {literal}"
                ),
            )?;
            log::info!("dropped replication slot {name}, which this failed clone created");
            Ok(())
        }
        _ => Ok(()),
    }
}

fn undo_before_swap(
    context: &StandbyContext,
    remote: &Target,
    staging: &Path,
    created_slot: bool,
    was_running: bool,
) -> Result<()> {
    let mut problems = Vec::new();
    if staging.exists() {
        match fs::remove_dir_all(staging) {
            Ok(()) => log::info!("removed the staging directory {}", staging.display()),
            Err(error) => problems.push(format!("cannot remove {}: {error}", staging.display())),
        }
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
    let cluster = context.cluster;
    let _ = crate::host::run_checked(
        crate::host::root_command("pg_ctlcluster")
            .args(["-m", "immediate"])
            .arg(cluster.version.to_string())
            .arg(&cluster.name)
            .arg("stop"),
        "pg_ctlcluster stop",
    );
    let failed_copy = sibling(&cluster.data_dir, ".pgha-failed");
    let _ = fs::remove_dir_all(&failed_copy);
    fs::rename(&cluster.data_dir, &failed_copy)
        .with_context(|| format!("cannot move the failed copy out of {}", cluster.data_dir.display()))?;
    if let Some(old) = old {
        fs::rename(old, &cluster.data_dir)
            .with_context(|| format!("cannot move {} back to {}", old.display(), cluster.data_dir.display()))?;
        log::info!("moved {} back to {}", old.display(), cluster.data_dir.display());
    }
    // The failed copy is the primary's data, not this host's: nothing of the admin's is lost.
    fs::remove_dir_all(&failed_copy).with_context(|| format!("cannot remove {}", failed_copy.display()))?;
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
    fn parses_saved_basebackup_progress() {
        let output = include_str!("../tests/data/pg_basebackup-15-progress.txt");
        let progress: Vec<Progress> = output.lines().filter_map(parse_basebackup_progress).collect();
        assert_eq!(progress.len(), 6);
        assert_eq!(progress[0], Progress { done_kb: 30760, total_kb: 129586, percent: 23 });
        assert_eq!(progress[0].status_line(), "cloning 23%, 30/126 MB");
        assert_eq!(progress.last().unwrap().percent, 100);
        assert!(parse_basebackup_progress("pg_basebackup: checkpoint completed").is_none());
    }

    #[test]
    fn reads_hot_standby_settings_from_saved_controldata() {
        let controldata = parse_controldata(include_str!("../tests/data/pg_controldata-15.txt"));
        assert_eq!(controldata["Database system identifier"], "7712414678833711826");
        let settings = controldata_settings(&controldata, 99).unwrap();
        assert_eq!(
            settings,
            HotStandbySettings {
                max_connections: 100,
                max_worker_processes: 8,
                max_wal_senders: 10,
                max_prepared_transactions: 0,
                max_locks_per_transaction: 64
            }
        );
        let mut pre12 = controldata.clone();
        pre12.remove("max_wal_senders setting");
        assert_eq!(controldata_settings(&pre12, 7).unwrap().max_wal_senders, 7);
    }

    #[test]
    fn strips_only_recovery_settings() {
        let text = "# Do not edit this file manually!\nwork_mem = '8MB'\nprimary_conninfo = 'host=x password=p'\n\
                    primary_slot_name = 's'\nrecovery_target_timeline = 'latest'\n# primary_conninfo in a comment\n";
        let (kept, removed) = strip_recovery_settings(text);
        assert_eq!(kept, "# Do not edit this file manually!\nwork_mem = '8MB'\n# primary_conninfo in a comment\n");
        assert_eq!(removed, ["primary_conninfo", "primary_slot_name", "recovery_target_timeline"]);
    }

    #[test]
    fn platform_of_a_version_string() {
        let v = "PostgreSQL 15.14 (Debian 15.14-0+deb12u1) on x86_64-pc-linux-gnu, compiled by gcc (Debian 12.2.0-14) 12.2.0, 64-bit";
        assert_eq!(parse_platform(v), Some(("x86_64".into(), "64-bit".into())));
        let arm = "PostgreSQL 15.14 on aarch64-unknown-linux-gnu, compiled by gcc, 64-bit";
        assert_eq!(parse_platform(arm).unwrap().0, "aarch64");
    }

    #[test]
    fn staging_and_old_copies_sit_beside_the_data_directory() {
        let data = Path::new("/var/lib/postgresql/15/main");
        assert_eq!(staging_path(data), Path::new("/var/lib/postgresql/15/main.pgha-staging"));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(old_path(data, at), Path::new("/var/lib/postgresql/15/main.pgha-old-20270115T080000Z"));
    }

    #[test]
    fn space_includes_margin() {
        assert!(space_needed(1 << 30) > (1 << 30) + (200 << 20));
    }
}
