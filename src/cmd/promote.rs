//! `pgha promote`: turn this standby into the primary, refusing to make a second writable
//! primary, or to promote a standby that is behind another, by accident.
//!
//! pgha.conf is not touched: it lists the members, and every command asks them who is primary.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;

use crate::config::{Config, Synchronous};
use crate::debian::{log_tail, Cluster};
use crate::error::EXIT_OK;
use crate::files::plan::Step;
use crate::members::{survey, Probe};
use crate::node::{require_member_address, Node};
use crate::render::standby_name;
use crate::replication::Lsn;
use crate::standby::slots::ensure_slot;
use crate::tools::pg_ctlcluster::{invoke_pg_ctlcluster, ClusterAction};
use crate::tools::psql::{query, query_bool, query_value, ConnectionFailure, Target};
use crate::tools::retry_until_ok;
use crate::upstream::{sql_target, PrivatePassfile};
use crate::version::PgVersion;

const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// Promote whatever the other members answer (only when the old primary is fenced: no client
    /// can reach it); they are asked meanwhile and what was overridden is logged
    #[arg(long)]
    pub force: bool,

    /// When another pgha works on this cluster, wait for it instead of exiting 1
    #[arg(long)]
    pub wait: bool,
}

impl PromoteArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let started = Instant::now();
        let node = Node::load(config_path)?;
        let (config, cluster) = (&node.config, &node.cluster);
        let own = require_member_address(config, "pgha promote")?;
        crate::lock::take_for_run(&cluster.id(), "pgha promote", self.wait)?;
        node.require_online()?;
        let target = Target::local(cluster);
        if !query_bool(&target, "SELECT pg_is_in_recovery()")? {
            println!("nothing to do: cluster {} on {own} is already a primary", cluster.id());
            return Ok(EXIT_OK);
        }
        let password = config.read_password()?;
        let passfile = PrivatePassfile::new(config, &password)?;
        let (own_replayed, mut objections) = local_objections(cluster, &target)?;
        if self.force {
            // --force overrides whatever the members say, so asking them must not hold the promote
            // back: a host that died silently answers nothing until the connect timeout. They are
            // asked meanwhile, and what they said is reported once the promote is done.
            let said = std::thread::scope(|scope| -> Result<Vec<String>> {
                let members = scope.spawn(|| member_objections(config, cluster, &passfile.path, own, own_replayed));
                promote_now(config, cluster, &target, own, started)?;
                Ok(members.join().expect("the member survey panicked"))
            })?;
            objections.extend(said);
            if !objections.is_empty() {
                log::warn!("--force overrode: {}", objections.join("; "));
            }
        } else {
            objections.extend(member_objections(config, cluster, &passfile.path, own, own_replayed));
            if !objections.is_empty() {
                bail!("refusing to promote: {}. {CONSEQUENCE}; {ADVICE}", objections.join("; "));
            }
            promote_now(config, cluster, &target, own, started)?;
        }
        drop(passfile);
        // Before the checkpoint below: a slot reserves from the redo point of the last checkpoint
        // begun (the last restartpoint, or the end-of-recovery checkpoint), so the members' slots
        // hold the new timeline from its first segment on, not from after that checkpoint.
        if config.replication.slots {
            for address in config.node_addresses().into_iter().filter(|address| *address != own) {
                if ensure_slot(&target, &standby_name(address), cluster.version)? {
                    log::info!("created replication slot {} for {address}", standby_name(address));
                }
            }
        }
        // The end-of-recovery checkpoint is a spread one: until it ends, pg_control still shows the
        // old timeline, and pg_rewind on the old primary would wrongly find nothing to rewind.
        log::info!("writing a checkpoint so pg_control shows the new timeline");
        query(&target, "CHECKPOINT")?;
        // From 10 a standby's primary_conninfo lists every member with target_session_attrs=read-write.
        let others = if cluster.version.has_wal_names() {
            format!("every other standby follows {own} by itself (its primary_conninfo lists every member)")
        } else {
            format!("on every other standby: `pgha rejoin` to follow {own}")
        };
        println!(
            "\nno pgha.conf needs an edit: every member now finds {own} as the primary.\nnext:\n  \
             1. on the old primary: `pgha rejoin` (pg_rewind when possible, a full clone otherwise)\n  \
             2. {others}\n  \
             3. here, at a quiet moment: `pgha primary` writes conf.d/pgha.conf in its primary form \
             (the leftover primary_conninfo is ignored by a primary)\n  4. check with `pgha status` and `pgha verify`"
        );
        // The standby form of conf.d/pgha.conf carries the synchronous settings, so they hold here
        // from now on; with the old primary gone that may leave too few standbys to confirm.
        if config.replication.synchronous != Synchronous::Off {
            println!(
                "\nreplication.synchronous is {:?}: a commit here returns once {} standby(s) confirm it, so until \
                 enough members stream from {own} (`pgha rejoin` there) writes wait. To accept writes without \
                 them: set replication.synchronous = \"off\" in pgha.conf here and run `pgha primary` (a reload).",
                config.replication.synchronous.as_str(),
                config.replication.synchronous_count
            );
        }
        Ok(EXIT_OK)
    }
}

/// The promote itself, from the archive directory it needs to the first accepted write.
fn promote_now(config: &Config, cluster: &Cluster, target: &Target, own: IpAddr, started: Instant) -> Result<()> {
    // A standby pgha set up has it already; one set up by hand or before pgha made it gets it
    // now, before the first segment of the new timeline needs archiving.
    if config.archive.enabled {
        if let Some(Step::CreateDir { path, ownership }) = crate::primary::archive_dir_step(config)? {
            log::info!("creating the archive directory {}", path.display());
            crate::files::apply::create_dir(&path, ownership)?;
        }
    }
    // From the moment the server is asked to promote there is no way back: a signal from here
    // on lets the promote and the steps after it finish, and is only reported.
    crate::signals::finish_from_here();
    promote(cluster, target)?;
    wait_for_writes(target, cluster)?;
    println!(
        "cluster {} on {own} is now the primary: it accepted a write {} ms after the command started",
        cluster.id(),
        started.elapsed().as_millis()
    );
    Ok(())
}

const CONSEQUENCE: &str = "Promoting now could make two primaries that both accept writes, or lose WAL another \
                           standby holds";
const ADVICE: &str = "for a planned change of primary, use `pgha switchover`; if the old primary is fenced \
                      (no client can reach it) and you accept losing what it did not send, use --force";

/// What this standby itself objects to a promote: it still streams, so its primary is up. Also
/// returns how far it has replayed, which the members' objections compare with.
fn local_objections(cluster: &Cluster, local: &Target) -> Result<(Option<Lsn>, Vec<String>)> {
    let mut objections = Vec::new();
    if wal_receiver_streaming(local, cluster.version).unwrap_or(false) {
        objections.push("this standby is streaming from its primary right now, so that primary is up".to_string());
    }
    let own_replayed: Option<Lsn> = query_value(local, &replayed_sql(cluster.version))?.parse().ok();
    Ok((own_replayed, objections))
}

/// The guard against two writable primaries and against promoting the wrong standby, from the
/// other members: objects when any answers as a primary, or as a server starting up, shutting
/// down or in crash recovery (alive, and maybe about to accept writes); when another standby
/// still streams from a primary; and when another standby has replayed further than this one
/// (`own_replayed`). Each objection is a sentence; none means the promote is safe.
fn member_objections(
    config: &Config,
    cluster: &Cluster,
    passfile: &Path,
    own: IpAddr,
    own_replayed: Option<Lsn>,
) -> Vec<String> {
    let mut objections = Vec::new();
    let survey = survey(config, passfile, cluster.version, Some(own));
    for (address, probe) in &survey.probes {
        match probe {
            Probe::Answered(state) if state.writable => {
                objections.push(format!("{address} answers as a writable primary"));
            }
            Probe::Answered(_) => {
                let remote = sql_target(config, *address, passfile, cluster.version);
                if wal_receiver_streaming(&remote, cluster.version).unwrap_or(false) {
                    objections.push(format!("the standby {address} still streams from a primary, so a primary is up"));
                }
                let replayed: Option<Lsn> =
                    query_value(&remote, &replayed_sql(cluster.version)).ok().and_then(|text| text.parse().ok());
                if let (Some(theirs), Some(ours)) = (replayed, own_replayed) {
                    if theirs > ours {
                        objections.push(format!(
                            "the standby {address} has replayed up to {theirs} and this one only up to {ours}: \
                             promote {address} instead, or lose {} of committed WAL",
                            crate::size::format_bytes(theirs.bytes_after(ours))
                        ));
                    }
                }
            }
            Probe::NoAnswer { failure, message } => {
                let said = message.lines().last().unwrap_or("").trim();
                match failure {
                    ConnectionFailure::StartingUp
                    | ConnectionFailure::ShuttingDown
                    | ConnectionFailure::InRecoveryMode => {
                        objections.push(format!("{address} is alive ({said}) and may accept writes in a moment"));
                    }
                    ConnectionFailure::Unreachable | ConnectionFailure::NotAcceptingConnections => {
                        log::info!("{address} is no primary: {said}");
                    }
                    _ => objections
                        .push(format!("{address} answers, but pgha cannot tell whether it is writable ({said})")),
                }
            }
        }
    }
    objections
}

/// Whether a standby's WAL receiver streams (9.5 cannot tell: no).
fn wal_receiver_streaming(target: &Target, version: PgVersion) -> Result<bool> {
    match receiver_streaming_sql(version) {
        Some(sql) => Ok(!query(target, sql)?.is_empty()),
        None => Ok(false),
    }
}

/// How far a standby has replayed.
pub(crate) fn replayed_sql(version: PgVersion) -> String {
    if version.has_wal_names() {
        "SELECT coalesce(pg_last_wal_replay_lsn()::text, '')".into()
    } else {
        "SELECT coalesce(pg_last_xlog_replay_location()::text, '')".into()
    }
}

/// None on 9.5, which cannot show its wal receiver: the primary is then asked directly.
pub(crate) fn receiver_streaming_sql(version: PgVersion) -> Option<&'static str> {
    (version >= PgVersion::new(9, 6)).then_some("SELECT status FROM pg_stat_wal_receiver WHERE status = 'streaming'")
}

/// 12 and later; `wait => true` returns once the server left recovery, or false after the timeout.
pub(crate) fn promote_sql() -> String {
    format!("SELECT pg_promote(true, {})", PROMOTE_TIMEOUT.as_secs())
}

fn promote(cluster: &Cluster, target: &Target) -> Result<()> {
    if cluster.version.has_pg_promote() {
        let done = query_bool(target, &promote_sql())?;
        if !done {
            bail!("pg_promote() did not finish within {} s\n{}", PROMOTE_TIMEOUT.as_secs(), log_tail(cluster, 20));
        }
        Ok(())
    } else {
        invoke_pg_ctlcluster(cluster, ClusterAction::Promote)
    }
}

/// Waits for the first write: a transaction id is only handed out by a server that accepts writes.
fn wait_for_writes(target: &Target, cluster: &Cluster) -> Result<()> {
    match retry_until_ok(PROMOTE_TIMEOUT, Duration::from_millis(10), || query_value(target, "SELECT txid_current()")) {
        Ok(_) => Ok(()),
        Err(error) => bail!(
            "cluster {} did not accept writes after the promote: {error:#}\n{}",
            cluster.id(),
            log_tail(cluster, 20)
        ),
    }
}
