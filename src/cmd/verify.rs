//! `pgha verify`: prove that a change on the primary reaches every standby, without touching
//! user tables, and print each standby's round trip.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::config::{Config, Synchronous};
use crate::error::EXIT_OK;
use crate::members::find_primary;
use crate::node::{require_member_address, Node};
use crate::render::standby_name;
use crate::replication::{parse_snapshot, parse_verify_output, snapshot_sql, verify_sql, Lsn};
use crate::tools::poll_until;
use crate::tools::psql::{parse_bool, query, Target};
use crate::upstream::{sql_target, PrivatePassfile};
use crate::version::PgVersion;

const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Before the version is known, so it must hold on every version.
pub(crate) const HEADER_SQL: &str = "SELECT current_setting('server_version_num'), pg_is_in_recovery()::text";

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Seconds to wait for every standby to replay the new WAL position
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub timeout: u64,
}

impl VerifyArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let config = Config::load(config_path)?;
        let (target, primary, where_, _passfile) = primary_target(&config)?;
        let header = query(&target, HEADER_SQL).with_context(|| format!("cannot reach the primary ({where_})"))?;
        let [version_num, in_recovery] = header.first().map(Vec::as_slice).unwrap_or_default() else {
            bail!("unexpected answer from the primary: {header:?}");
        };
        if parse_bool(in_recovery)? {
            bail!("{where_} went into recovery while verify ran: run it again");
        }
        let version = PgVersion::from_version_num(version_num.parse().context("bad server_version_num")?);
        let standbys: Vec<IpAddr> = config.node_addresses().into_iter().filter(|address| *address != primary).collect();

        if config.replication.synchronous != Synchronous::Off {
            refuse_unconfirmable_commit(&config, &target, version, &standbys)?;
        }

        let note = format!("pgha verify {}", humantime::format_rfc3339_seconds(std::time::SystemTime::now()));
        let started = Instant::now();
        let mut answer = Vec::new();
        for statement in verify_sql(version, &note) {
            answer = query(&target, &statement)?;
        }
        let target_lsn = parse_verify_output(&answer)?;
        println!("wrote WAL position {target_lsn} on the primary ({where_})");

        // A deadline past what the clock can represent would panic; a century is "wait forever" here.
        let timeout = Duration::from_secs(self.timeout.min(100 * 365 * 86400));
        let remaining = timeout.saturating_sub(started.elapsed());
        let mut arrived: BTreeMap<IpAddr, Duration> = BTreeMap::new();
        let mut last_seen: BTreeMap<IpAddr, Option<Lsn>> = BTreeMap::new();
        let all_arrived = poll_until(remaining, POLL_INTERVAL, || {
            let snapshot = parse_snapshot(&query(&target, &snapshot_sql(version))?)?;
            for address in &standbys {
                if arrived.contains_key(address) {
                    continue;
                }
                let sender = snapshot.senders.iter().find(|sender| {
                    sender.application_name == standby_name(*address) || sender.client_addr == Some(*address)
                });
                let replay = sender.and_then(|sender| sender.replay);
                last_seen.insert(*address, replay);
                if replay.is_some_and(|replay| replay >= target_lsn) {
                    let elapsed = started.elapsed();
                    println!(
                        "standby {address} ({}): replayed it after {} ms",
                        standby_name(*address),
                        elapsed.as_millis()
                    );
                    arrived.insert(*address, elapsed);
                }
            }
            Ok((arrived.len() == standbys.len()).then_some(()))
        })?;
        if all_arrived.is_some() {
            println!("OK: all {} standby(s) replayed the change", standbys.len());
            return Ok(EXIT_OK);
        }
        let lagging: Vec<String> = standbys
            .iter()
            .filter(|address| !arrived.contains_key(address))
            .map(|address| match last_seen.get(address).copied().flatten() {
                Some(replay) => format!(
                    "standby {address} ({}) has replayed only up to {replay}, {} bytes short",
                    standby_name(*address),
                    target_lsn.bytes_after(replay)
                ),
                None => format!("standby {address} ({}) is not connected to the primary", standby_name(*address)),
            })
            .collect();
        bail!("timed out after {} s waiting for {target_lsn}: {}", self.timeout, lagging.join("; "));
    }
}

/// verify's commit is an ordinary one: with replication.synchronous on and fewer standbys
/// confirming than synchronous_count, it would wait past --timeout until enough came back. Say
/// so instead of writing.
fn refuse_unconfirmable_commit(
    config: &Config,
    target: &Target,
    version: PgVersion,
    standbys: &[IpAddr],
) -> Result<()> {
    let snapshot = parse_snapshot(&query(target, &snapshot_sql(version))?)?;
    let confirming = snapshot.synchronous_confirmers().len();
    let needed = config.replication.synchronous_count as usize;
    if confirming >= needed {
        return Ok(());
    }
    let missing: Vec<String> = standbys
        .iter()
        .filter(|address| {
            !snapshot.synchronous_confirmers().iter().any(|sender| {
                sender.application_name == standby_name(**address) || sender.client_addr == Some(**address)
            })
        })
        .map(|address| format!("{address} ({})", standby_name(*address)))
        .collect();
    bail!(
        "synchronous replication needs {needed} standby(s) to confirm each commit, but {confirming} confirm; not \
         confirming: {}. A commit on the primary waits until enough do, so verify writes nothing: see `pgha status`",
        missing.join(", ")
    )
}

/// The primary the members name: the local cluster when it is this host, otherwise a connection
/// to it through a passfile of this run (kept alive with the target).
pub fn primary_target(config: &Config) -> Result<(Target, IpAddr, String, PrivatePassfile)> {
    let own = require_member_address(config, "pgha verify")?;
    let node = Node::for_config(config.clone())?;
    let password = config.read_password()?;
    let passfile = PrivatePassfile::new(config, &password)?;
    let (primary, _) = find_primary(config, &node.cluster, &passfile.path, own, None)?;
    if primary == own {
        node.require_online()?;
        return Ok((Target::local(&node.cluster), primary, format!("local cluster {}", node.cluster.id()), passfile));
    }
    // The local cluster's version is the primary's: it decides whether the login is bound to TLS.
    let target = sql_target(config, primary, &passfile.path, node.cluster.version);
    Ok((target, primary, format!("{primary}:{}", config.primary.port), passfile))
}
