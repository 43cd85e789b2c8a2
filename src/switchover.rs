//! The switchover workflow: a planned change of primary, run on the primary, with no committed
//! transaction lost and no shell on any other host. This host stops cleanly, the target standby
//! replays up to this host's shutdown checkpoint, pg_promote() promotes it over SQL, and this
//! host comes back as its standby. The other standbys follow by themselves: their
//! primary_conninfo lists every member with `target_session_attrs=read-write`, so their wal
//! receivers reconnect to whichever member is writable.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::{Config, Password};
use crate::debian::{log_tail, Cluster};
use crate::members::find_primary;
use crate::password::verifier_for;
use crate::primary::{local_commit_sql, quiet_session_sql};
use crate::quote::{sql_identifier, sql_literal};
use crate::render::{standby_name, PROMOTE_ROLE};
use crate::replication::Lsn;
use crate::standby::clone::configure_in_place;
use crate::standby::slots::{drop_stale_slots, ensure_slot};
use crate::standby::streaming::{confirm_standby, StandbyStarted};
use crate::standby::StandbyContext;
use crate::tools::pg_controldata;
use crate::tools::pg_ctlcluster::{invoke_pg_ctlcluster, ClusterAction};
use crate::tools::psql::{
    classify_failure, query, query_bool, query_value, wait_until_ready, ConnectionFailure, Target,
};
use crate::tools::{poll_until, retry_until_ok};
use crate::upstream::{promote_target, sql_target, PrivatePassfile};

/// How far behind (replayed WAL) the target may be when the switchover starts: the write pause
/// includes replaying that much, so a target far behind is refused rather than waited for.
pub const MAX_START_LAG: u64 = 16 << 20;

/// How long the promote role's one-time password stays valid if pgha dies before taking it away.
const ARMED_FOR: &str = "15 minutes";

/// How long pg_promote() may take.
const PROMOTE_TIMEOUT_SECS: u32 = 60;

pub struct SwitchoverOptions {
    /// The standby to promote; None: the most caught-up streaming standby.
    pub to: Option<IpAddr>,
    /// How long the target gets to replay this host's last WAL, and each standby to stream again.
    pub timeout: Duration,
}

/// What happened, for the report.
pub struct Switched {
    pub new_primary: IpAddr,
    /// This host's shutdown checkpoint: the last WAL it wrote, which the new primary replayed.
    pub final_lsn: Lsn,
    /// From the stop of this host to the first write the new primary accepted.
    pub write_pause: Duration,
    /// How the old primary came back as a standby.
    pub rejoined: StandbyStarted,
    /// Every other standby, and whether it streams from the new primary.
    pub followers: Vec<(IpAddr, bool)>,
}

pub fn switchover(
    config: &Config,
    cluster: &Cluster,
    password: &Password,
    own: IpAddr,
    options: &SwitchoverOptions,
) -> Result<Switched> {
    let version = cluster.version;
    if !version.has_pg_promote() {
        bail!(
            "pgha switchover needs PostgreSQL 12 or later: it promotes the standby with pg_promote() over SQL, \
             which {version} lacks. On {version}, switch by hand: stop this cluster (`pg_ctlcluster {version} {} \
             stop`), run `pgha promote` on the standby once it has replayed everything, then `pgha rejoin` here",
            cluster.name
        );
    }
    let local = Target::local(cluster);
    if query_bool(&local, "SELECT pg_is_in_recovery()")? {
        bail!("cluster {} on {own} is a standby: run `pgha switchover` on the primary", cluster.id());
    }
    let passfile = PrivatePassfile::new(config, password)?;
    let (primary, survey) = find_primary(config, cluster, &passfile.path, own, None)?;
    if primary != own {
        bail!("the members name {primary} as the primary, not this host ({own}):\n{}", survey.describe());
    }
    let target = choose_target(config, &local, own, options.to)?;
    let remote = sql_target(config, target, &passfile.path, version);
    check_target(&remote, target, version)?;
    if config.replication.slots {
        // Created while the target is still a standby: each standby finds its slot the moment it
        // reconnects to the new primary, and WAL is kept for it from now on.
        for member in config.node_addresses().into_iter().filter(|member| *member != target) {
            if ensure_slot(&remote, &standby_name(member), version)? {
                log::info!("created replication slot {} on {target}", standby_name(member));
            }
        }
    }

    let promote_password = Password::random()?;
    let armed_at = arm_promote_role(config, cluster, &local, &promote_password)?;
    let promote_passfile = PrivatePassfile::for_promote_role(config, target, &promote_password)?;
    let promoter = promote_target(config, target, &promote_passfile.path, version);
    if let Err(error) = wait_replayed(&remote, armed_at, options.timeout)
        .and_then(|()| check_promote_login(&promoter, target, own))
        .and_then(|()| wait_for_other_walsenders(&local, target, armed_at, options.timeout))
    {
        disarm_locally(&local);
        return Err(error);
    }

    log::info!("stopping cluster {} (fast: every client is disconnected, every WAL record sent)", cluster.id());
    let stop_started = Instant::now();
    if let Err(error) = invoke_pg_ctlcluster(cluster, ClusterAction::Stop) {
        return Err(undo(cluster, error, "stopping this cluster failed"));
    }
    let final_lsn = match shutdown_checkpoint(cluster) {
        Ok(lsn) => lsn,
        Err(error) => return Err(undo(cluster, error, "this cluster did not shut down cleanly")),
    };
    log::info!("cluster {} stopped at {final_lsn}; waiting for {target} to replay it", cluster.id());
    if let Err(error) = wait_replayed_past(&remote, final_lsn, options.timeout) {
        return Err(undo(cluster, error, &format!("{target} did not replay this cluster's last WAL")));
    }

    log::info!("promoting {target} with pg_promote()");
    // Once pg_promote() is sent there is no way back: from here on a signal lets the switchover
    // finish and is only reported.
    crate::signals::finish_from_here();
    if let Err(error) = promote(&promoter, &remote, target) {
        return Err(match error {
            PromoteFailure::NotSent(error) => undo(cluster, error, &format!("{target} could not be promoted")),
            PromoteFailure::Unknown(error) => error.context(format!(
                "the switchover stopped after asking {target} to promote: cluster {} stays stopped, so that two \
                 primaries never accept writes. Once {target} is the primary, run `pgha rejoin` here; if it \
                 stays a standby, start this cluster again (`pg_ctlcluster {} {} start`)",
                cluster.id(),
                version,
                cluster.name
            )),
        });
    }
    retry_until_ok(Duration::from_secs(60), Duration::from_millis(10), || query_value(&remote, FIRST_WRITE_SQL))
        .with_context(|| format!("{target} was promoted but accepts no write"))?;
    let write_pause = stop_started.elapsed();
    log::info!("{target} accepted a write {} ms after this cluster began to stop", write_pause.as_millis());
    // The new primary keeps synchronous replication on, and this host becomes its standby only
    // after this: waiting for a standby here would wait for ever.
    if let Err(error) = query(&promoter, &local_commit_sql(&disarm_sql(false))) {
        log::warn!(
            "could not take the one-time password of {PROMOTE_ROLE} away on {target} ({error:#}); it expires by itself"
        );
    }
    drop(promote_passfile);

    let context = StandbyContext { config, cluster, password, own_address: own, primary: target };
    let rejoined = follow(&context, &final_lsn, options.timeout).with_context(|| {
        format!(
            "{target} is the primary now, but this cluster did not come back as its standby: run `pgha rejoin` here"
        )
    })?;
    let followers = wait_for_followers(config, &remote, own, target, options.timeout)?;
    Ok(Switched { new_primary: target, final_lsn, write_pause, rejoined, followers })
}

/// The standby to promote: the one named, which must stream from this host, or else the
/// streaming member that has replayed the most (pgha.conf's order on a tie).
fn choose_target(config: &Config, local: &Target, own: IpAddr, to: Option<IpAddr>) -> Result<IpAddr> {
    let members: Vec<IpAddr> = config.node_addresses().into_iter().filter(|member| *member != own).collect();
    if let Some(to) = to {
        if !members.contains(&to) {
            return Err(crate::error::ConfigError::in_file(
                &config.path,
                format!(
                    "--to {to} is not a standby of this replication set (members: {})",
                    crate::primary::list(&members)
                ),
            )
            .into());
        }
    }
    let rows = query(local, STANDBYS_SQL)?;
    let mut streaming: Vec<(IpAddr, Lsn, Lsn)> = Vec::new();
    for row in &rows {
        let [address, state, replayed, current] = row.as_slice() else {
            bail!("unexpected pg_stat_replication row {row:?}")
        };
        let (Ok(address), Ok(replayed), Ok(current)) =
            (address.parse::<IpAddr>(), replayed.parse::<Lsn>(), current.parse::<Lsn>())
        else {
            continue;
        };
        if state == "streaming" && members.contains(&address) {
            streaming.push((address, replayed, current));
        }
    }
    let candidate = match to {
        Some(to) => streaming.iter().find(|(address, _, _)| *address == to).copied().with_context(|| {
            format!("{to} does not stream from this primary right now: check it with `pgha status` there")
        })?,
        None => members
            .iter()
            .filter_map(|member| streaming.iter().find(|(address, _, _)| address == member))
            .copied()
            .reduce(|best, next| if next.1 > best.1 { next } else { best })
            .with_context(|| {
                format!("no standby streams from this primary; members: {}", crate::primary::list(&members))
            })?,
    };
    let (address, replayed, current) = candidate;
    let behind = current.bytes_after(replayed);
    if behind > MAX_START_LAG {
        bail!(
            "{address} has replayed up to {replayed}, {} behind this primary ({current}): a switchover now would \
             pause writes while it catches up; try again when `pgha status` shows it caught up",
            crate::size::format_bytes(behind)
        );
    }
    log::info!("switching over to {address} ({} behind)", crate::size::format_bytes(behind));
    Ok(address)
}

/// The target is a standby of this system's major version.
fn check_target(remote: &Target, target: IpAddr, version: crate::version::PgVersion) -> Result<()> {
    let rows = query(remote, TARGET_STATE_SQL)?;
    match rows.first().map(Vec::as_slice) {
        Some([recovery, major]) if recovery == "t" && *major == version.major.to_string() => Ok(()),
        Some([recovery, _]) if recovery != "t" => bail!("{target} is not in recovery: it is no standby"),
        Some([_, major]) => bail!("{target} runs PostgreSQL {major}, this host {version}"),
        _ => bail!("unexpected answer from {target}: {rows:?}"),
    }
}

/// Gives the promote role a one-time password that expires by itself; returns the WAL position
/// after the change, which the target must replay before the role can log in there.
fn arm_promote_role(config: &Config, cluster: &Cluster, local: &Target, password: &Password) -> Result<Lsn> {
    if query(local, &promote_role_exists_sql())?.is_empty() {
        return Err(crate::error::ConfigError::in_file(
            &config.path,
            format!("the role {PROMOTE_ROLE} that switchover promotes with is missing: run `pgha primary` here first"),
        )
        .into());
    }
    let until = query_value(local, &armed_until_sql())?;
    let verifier = verifier_for(cluster.version, PROMOTE_ROLE, password);
    let rows = query(local, &local_commit_sql(&arm_sql(cluster.version, &verifier, &until)))?;
    let lsn = rows.last().and_then(|row| row.first()).context("no WAL position after arming the promote role")?;
    lsn.parse().map_err(|error: String| anyhow::anyhow!("{error}"))
}

fn disarm_locally(local: &Target) {
    if let Err(error) = query(local, &local_commit_sql(&disarm_sql(true))) {
        log::warn!("could not take the one-time password of {PROMOTE_ROLE} away ({error:#}); it expires by itself");
    }
}

/// Proves, before anything stops, that the promote role can log in to the target and call
/// pg_promote() there.
fn check_promote_login(promoter: &Target, target: IpAddr, own: IpAddr) -> Result<()> {
    match query_bool(promoter, MAY_PROMOTE_SQL) {
        Ok(true) => Ok(()),
        Ok(false) => bail!("{PROMOTE_ROLE} may not run pg_promote() on {target}: run `pgha primary` here"),
        Err(error) => {
            let hint = match classify_failure(&format!("{error:#}")) {
                ConnectionFailure::NoHbaEntry => format!(
                    "{target}'s pg_hba.conf has no line for {PROMOTE_ROLE} from {own}; pgha's block has one from \
                     this version on: `pgha standby --force-reclone` (or `pgha rejoin --full-clone`) on {target} \
                     writes it, or add it by hand above the other lines and reload"
                ),
                _ => format!("{PROMOTE_ROLE} cannot log in to {target}"),
            };
            Err(error.context(format!("{hint}; nothing was changed")))
        }
    }
}

/// Waits until the target has replayed `lsn`.
fn wait_replayed(remote: &Target, lsn: Lsn, timeout: Duration) -> Result<()> {
    wait_replay(remote, timeout, |replayed| replayed >= lsn).with_context(|| format!("the target did not replay {lsn}"))
}

/// Waits until the target has replayed the record that starts at `lsn` (the shutdown
/// checkpoint): its replay position is the end of the last record it replayed.
fn wait_replayed_past(remote: &Target, lsn: Lsn, timeout: Duration) -> Result<()> {
    wait_replay(remote, timeout, |replayed| replayed > lsn)
}

fn wait_replay(remote: &Target, timeout: Duration, done: impl Fn(Lsn) -> bool) -> Result<()> {
    let mut last = None;
    let reached = poll_until(timeout, Duration::from_millis(10), || {
        let replayed: Lsn =
            query_value(remote, REPLAYED_SQL)?.parse().map_err(|error: String| anyhow::anyhow!("{error}"))?;
        last = Some(replayed);
        Ok(done(replayed).then_some(()))
    })?;
    match reached {
        Some(()) => Ok(()),
        None => bail!(
            "replay stopped at {} after {} s",
            last.map_or("an unknown position".to_string(), |lsn| lsn.to_string()),
            timeout.as_secs()
        ),
    }
}

/// How long a streaming standby gets to confirm WAL it was just sent before it counts as silent:
/// a wal receiver replies as soon as what it has written or flushed moves.
const CONFIRM_GRACE: Duration = Duration::from_secs(2);

/// A clean stop ends only when every walsender's standby has confirmed the shutdown checkpoint;
/// a standby that fell silent (its host died, its link was cut) holds the stop until
/// wal_sender_timeout ends its walsender, up to a minute with writes already refused, and pg_ctl
/// gives up after a minute too. Each standby was sent `armed_at` moments ago, so one that has not
/// confirmed it is silent or far behind: the stop is held back while this primary still takes
/// writes, until each confirms or its walsender ends. Past `timeout` the stop goes ahead and
/// waits for them itself, as it would have.
fn wait_for_other_walsenders(local: &Target, target: IpAddr, armed_at: Lsn, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let sql = unconfirmed_walsenders_sql(target, armed_at);
    let mut said = false;
    let done = poll_until(timeout, Duration::from_millis(50), || {
        let rows = query(local, &sql)?;
        if rows.is_empty() {
            return Ok(Some(()));
        }
        if !said && started.elapsed() >= CONFIRM_GRACE {
            for row in &rows {
                let [address, name, reply_age] = row.as_slice() else { continue };
                let last = if reply_age.is_empty() { "never".to_string() } else { format!("{reply_age} s ago") };
                log::info!(
                    "waiting for the walsender of {} ({name}), whose standby has not confirmed {armed_at} (last \
                     reply {last}): a clean stop would wait for it with writes refused; until it confirms or \
                     wal_sender_timeout ends it, this primary keeps taking writes",
                    if address.is_empty() { "a local client" } else { address.as_str() },
                );
            }
            said = true;
        }
        Ok(None)
    })?;
    if done.is_none() {
        log::warn!(
            "standbys other than {target} still have not confirmed {armed_at} after {} s; stopping anyway, and \
             the stop waits for them (up to wal_sender_timeout)",
            timeout.as_secs()
        );
    } else if said {
        log::info!("every other standby confirmed or was dropped; stopping");
    }
    Ok(())
}

/// The shutdown checkpoint of the stopped cluster: the last WAL record it wrote.
fn shutdown_checkpoint(cluster: &Cluster) -> Result<Lsn> {
    let control = pg_controldata::read(cluster.version, &cluster.data_dir)?;
    if control.state != "shut down" {
        bail!("pg_control says {:?}, not \"shut down\"", control.state);
    }
    control.checkpoint.context("pg_control has no checkpoint location")
}

/// Before pg_promote() was sent: this cluster is started again as the primary it was, and the
/// promote role's password taken away. The target never left recovery, so no write is lost.
fn undo(cluster: &Cluster, error: anyhow::Error, what: &str) -> anyhow::Error {
    crate::signals::finish_from_here();
    log::error!("{what}: {error:#}; starting cluster {} again as the primary", cluster.id());
    let local = Target::local(cluster);
    let restarted = invoke_pg_ctlcluster(cluster, ClusterAction::Start)
        .or_else(|_| {
            crate::tools::pg_lsclusters::is_online(cluster)
                .and_then(|online| if online { Ok(()) } else { bail!("not running") })
        })
        .and_then(|()| wait_until_ready(&local, Duration::from_secs(120)));
    match restarted {
        Ok(()) => {
            disarm_locally(&local);
            error.context(format!("{what}; the switchover was undone: cluster {} is the primary again", cluster.id()))
        }
        Err(restart) => error.context(format!(
            "{what}; starting cluster {} again failed too ({restart:#}): start it by hand\n{}",
            cluster.id(),
            log_tail(cluster, 20)
        )),
    }
}

enum PromoteFailure {
    /// The target is still in recovery and was never asked: safe to undo.
    NotSent(anyhow::Error),
    /// The request may have reached the server: neither undo nor go on.
    Unknown(anyhow::Error),
}

fn promote(promoter: &Target, remote: &Target, target: IpAddr) -> Result<(), PromoteFailure> {
    match query_bool(promoter, &pg_promote_sql()) {
        Ok(true) => Ok(()),
        Ok(false) => Err(PromoteFailure::Unknown(anyhow::anyhow!(
            "pg_promote() on {target} did not finish within {PROMOTE_TIMEOUT_SECS} s"
        ))),
        Err(error) => {
            // A connection that never opened sent nothing; anything else may have.
            let never_connected = matches!(
                classify_failure(&format!("{error:#}")),
                ConnectionFailure::Unreachable
                    | ConnectionFailure::PasswordRejected
                    | ConnectionFailure::NoHbaEntry
                    | ConnectionFailure::NoSuchRole
            );
            let in_recovery = query_bool(remote, "SELECT pg_is_in_recovery()").unwrap_or(false);
            if never_connected && in_recovery {
                Err(PromoteFailure::NotSent(error))
            } else {
                Err(PromoteFailure::Unknown(error))
            }
        }
    }
}

/// This host, cleanly stopped at `final_lsn`, which the new primary replayed before its
/// promotion: it is exactly the new primary's history up to the switch, so it becomes a standby
/// with its own data, no rewind and no clone.
fn follow(context: &StandbyContext, final_lsn: &Lsn, timeout: Duration) -> Result<StandbyStarted> {
    let cluster = context.cluster;
    let control = pg_controldata::read(cluster.version, &cluster.data_dir)?;
    log::info!("restarting cluster {} as a standby of {} (it stopped at {final_lsn})", cluster.id(), context.primary);
    configure_in_place(context, &control.system_identifier, context.config.primary.max_wal_senders)?;
    invoke_pg_ctlcluster(cluster, ClusterAction::Start)?;
    let started = confirm_standby(context, timeout).inspect_err(|_| eprintln!("{}", log_tail(cluster, 20)))?;
    drop_stale_slots(context)?;
    Ok(started)
}

/// Waits for every other standby to stream from the new primary (their receivers reconnect by
/// themselves); reports, never fails, on those that do not.
fn wait_for_followers(
    config: &Config,
    remote: &Target,
    own: IpAddr,
    target: IpAddr,
    timeout: Duration,
) -> Result<Vec<(IpAddr, bool)>> {
    let others: Vec<IpAddr> =
        config.node_addresses().into_iter().filter(|member| *member != own && *member != target).collect();
    let streaming = || -> Result<Vec<IpAddr>> {
        Ok(query(remote, FOLLOWERS_SQL)?
            .iter()
            .filter_map(|row| row.first().and_then(|address| address.parse().ok()))
            .collect())
    };
    let _ = poll_until(timeout, Duration::from_millis(250), || {
        let now = streaming()?;
        Ok(others.iter().all(|member| now.contains(member)).then_some(()))
    })?;
    let now = streaming()?;
    Ok(others.iter().map(|member| (*member, now.contains(member))).collect())
}

// The statements, all for PostgreSQL 12 and later (switchover refuses older servers first).

/// This primary's standbys: address, state, how far each replayed, and this primary's position.
pub(crate) const STANDBYS_SQL: &str = "SELECT host(client_addr), state, coalesce(replay_lsn::text, ''), \
     pg_current_wal_lsn()::text FROM pg_stat_replication WHERE client_addr IS NOT NULL";

/// The walsenders other than the target's whose client has not confirmed `lsn`: address,
/// application name, seconds since its last reply. A client that reports no flush position
/// (pg_basebackup's WAL stream) is judged by what it wrote, as the server's shutdown judges it.
pub(crate) fn unconfirmed_walsenders_sql(target: IpAddr, lsn: Lsn) -> String {
    format!(
        "SELECT coalesce(host(client_addr), ''), application_name, \
         coalesce(extract(epoch FROM now() - reply_time)::bigint::text, '') FROM pg_stat_replication \
         WHERE state IN ('streaming', 'catchup') AND client_addr IS DISTINCT FROM {}::inet \
         AND (coalesce(flush_lsn, write_lsn) IS NULL OR coalesce(flush_lsn, write_lsn) < {}::pg_lsn)",
        sql_literal(&target.to_string()),
        sql_literal(&lsn.to_string())
    )
}

pub(crate) const TARGET_STATE_SQL: &str =
    "SELECT pg_is_in_recovery(), current_setting('server_version_num')::int / 10000";

pub(crate) const REPLAYED_SQL: &str = "SELECT coalesce(pg_last_wal_replay_lsn()::text, '0/0')";

pub(crate) const MAY_PROMOTE_SQL: &str =
    "SELECT has_function_privilege('pg_catalog.pg_promote(boolean, integer)', 'EXECUTE')";

/// A transaction id is only handed out by a server that accepts writes.
pub(crate) const FIRST_WRITE_SQL: &str = "SELECT txid_current()";

pub(crate) const FOLLOWERS_SQL: &str = "SELECT host(client_addr) FROM pg_stat_replication WHERE state = 'streaming'";

pub(crate) fn promote_role_exists_sql() -> String {
    format!("SELECT 1 FROM pg_roles WHERE rolname = {}", sql_literal(PROMOTE_ROLE))
}

pub(crate) fn armed_until_sql() -> String {
    format!("SELECT (now() + interval '{ARMED_FOR}')::text")
}

/// The one-time password, as a verifier on psql's stdin with logging off (like the replication
/// role's), and the WAL position after it.
pub(crate) fn arm_sql(version: crate::version::PgVersion, verifier: &str, until: &str) -> String {
    format!(
        "{}ALTER ROLE {} LOGIN PASSWORD {} VALID UNTIL {};\nSELECT pg_current_wal_lsn();\n",
        quiet_session_sql(version),
        sql_identifier(PROMOTE_ROLE),
        sql_literal(verifier),
        sql_literal(until)
    )
}

/// The role itself may only change its own password; the primary's superuser also takes LOGIN.
pub(crate) fn disarm_sql(superuser: bool) -> String {
    format!("ALTER ROLE {}{} PASSWORD NULL", sql_identifier(PROMOTE_ROLE), if superuser { " NOLOGIN" } else { "" })
}

pub(crate) fn pg_promote_sql() -> String {
    format!("SELECT pg_promote(true, {PROMOTE_TIMEOUT_SECS})")
}
