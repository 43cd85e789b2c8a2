//! Preflight against the primary: everything a clone depends on, learnt and checked before this
//! host changes anything, and with nothing changed anywhere.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::files::datadir::{check_swappable, require_space_beside};
use crate::quote::sql_literal;
use crate::standby::StandbyContext;
use crate::tools::pg_lsclusters::is_online;
use crate::tools::psql::{parse_bool, query, query_value, Target};
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
    /// The WAL files the primary keeps, all of which pg_rewind before 19 copies; None when the
    /// version has no pg_ls_waldir, copies less, or the primary would not tell.
    pub kept_wal_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotState {
    pub active: bool,
    /// PostgreSQL 13+ invalidated it (max_slot_wal_keep_size): it cannot be reused.
    pub lost: bool,
}

/// The "x86_64-pc-linux-gnu, ..., 64-bit" platform of a `version()` string, architecture first.
pub fn parse_platform(version_string: &str) -> Option<(String, String)> {
    let after_on = version_string.split_once(" on ")?.1;
    let triple = after_on.split([',', ' ']).next()?.to_string();
    let arch = triple.split('-').next()?.to_string();
    let bits = version_string.rsplit(", ").next().filter(|last| last.ends_with("-bit")).unwrap_or("").to_string();
    Some((arch, bits))
}

/// The first preflight checks: the primary answers on TCP and accepts a replication login.
/// Returns its system identifier (IDENTIFY_SYSTEM), which decides whether this host already
/// is its standby. Changes nothing anywhere.
pub fn identify_primary(context: &StandbyContext, passfile: &Path) -> Result<String> {
    let config = context.config;
    let socket = SocketAddr::new(context.primary, config.primary.port);
    TcpStream::connect_timeout(&socket, Duration::from_secs(5)).map_err(|error| {
        anyhow!(
            "preflight: the primary {socket} is unreachable over TCP ({error}): check that its cluster runs, \
             listens on that address (`pgha primary` sets listen_addresses) and that no firewall blocks the port"
        )
    })?;
    let identify = query(&context.replication(passfile), "IDENTIFY_SYSTEM")
        .map_err(|error| context.login_failure("replication login (IDENTIFY_SYSTEM) failed", error))?;
    identify
        .first()
        .and_then(|row| row.first())
        .cloned()
        .with_context(|| format!("IDENTIFY_SYSTEM returned {identify:?}"))
}

/// What the preflight asks the primary, one query after another over one connection at a
/// time (the replication role has a connection limit), while this host's own questions run
/// beside them: each question costs a process and a connection setup, and asked in a row they
/// were most of the preflight's time.
struct Answers {
    facts: Result<Vec<Vec<String>>>,
    /// The slot named after this standby, with `slot_state_sql`'s answer; None without slots.
    slot: Option<(String, Result<Vec<Vec<String>>>)>,
    database_bytes: Result<String>,
    kept_wal_bytes: Option<Result<String>>,
    local: Result<LocalCluster>,
}

/// This host's cluster: whether it runs, and if so its server's `version()`.
struct LocalCluster {
    online: bool,
    version_string: Option<String>,
}

fn ask_all(context: &StandbyContext, remote: &Target) -> Answers {
    let cluster = context.cluster;
    std::thread::scope(|scope| {
        let primary = scope.spawn(|| {
            let facts = query(remote, &primary_facts_sql(context.own_address));
            let slot = context.slot_name().map(|name| {
                let rows = query(remote, &slot_state_sql(&name, cluster.version));
                (name, rows)
            });
            let database_bytes = query_value(remote, DATABASE_SIZE_SQL);
            let kept_wal_bytes = kept_wal_sql(cluster.version).map(|sql| query_value(remote, sql));
            (facts, slot, database_bytes, kept_wal_bytes)
        });
        let local = is_online(cluster).map(|online| LocalCluster {
            online,
            version_string: online.then(|| query_value(&Target::local(cluster), "SELECT version()").ok()).flatten(),
        });
        let (facts, slot, database_bytes, kept_wal_bytes) = primary.join().expect("the preflight queries panicked");
        Answers { facts, slot, database_bytes, kept_wal_bytes, local }
    })
}

/// The rest of the preflight, for a clone: version, platform, wal_level, walsenders, slot,
/// free space. Changes nothing anywhere. The version is checked first: the other answers were
/// asked in this cluster's version's terms.
pub fn preflight(context: &StandbyContext, passfile: &Path, system_identifier: String) -> Result<PrimaryFacts> {
    let cluster = context.cluster;
    let remote = context.remote(passfile);
    let answers = ask_all(context, &remote);
    let rows = answers
        .facts
        .map_err(|error| context.login_failure("SQL login to the primary's postgres database failed", error))?;
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
            context.primary,
            cluster.id(),
            cluster.version
        );
    }
    let local = answers.local?;
    check_platform(version_string, local.version_string.as_deref())?;
    if !matches!(wal_level.as_str(), "replica" | "logical" | "hot_standby") {
        bail!(
            "preflight: the primary's wal_level is {wal_level}: expected replica or logical; run `pgha primary` on {}",
            context.primary
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

    let slot = match answers.slot {
        Some((name, rows)) => slot_state(context, &rows?, &name, local.online)?,
        None => None,
    };

    let database_bytes = match answers.database_bytes {
        Ok(value) => value.parse().ok(),
        Err(error) => {
            log::warn!("cannot learn the primary's database size, so free space is not checked: {error:#}");
            None
        }
    };
    if let Some(bytes) = database_bytes {
        let available = require_space_beside(
            &cluster.data_dir,
            bytes,
            "a clone of the primary's data (the old data directory is kept)",
            "free some space first",
        )
        .context("preflight")?;
        log::info!(
            "preflight: primary holds {} MB, {} MB free beside the data directory",
            bytes >> 20,
            available >> 20
        );
    }
    let kept_wal_bytes = answers.kept_wal_bytes.and_then(|answer| match answer {
        Ok(value) => value.parse().ok(),
        Err(error) => {
            log::info!("cannot learn how much WAL the primary keeps: {error:#}");
            None
        }
    });
    check_swappable(&cluster.data_dir)?;
    Ok(PrimaryFacts {
        system_identifier,
        version,
        ssl: ssl == "on",
        max_wal_senders,
        slot,
        database_bytes,
        kept_wal_bytes,
    })
}

/// The primary's version, platform, TLS, wal_level and walsenders (those not used by this host).
pub(crate) fn primary_facts_sql(own_address: IpAddr) -> String {
    format!(
        "SELECT current_setting('server_version_num'), version(), current_setting('ssl'), \
         current_setting('wal_level'), current_setting('max_wal_senders'), \
         (SELECT count(*) FROM pg_stat_replication WHERE client_addr IS DISTINCT FROM {}::inet)",
        sql_literal(&own_address.to_string())
    )
}

pub(crate) const DATABASE_SIZE_SQL: &str = "SELECT sum(pg_database_size(oid))::bigint FROM pg_database";

/// The bytes in the primary's WAL directory, all of which pg_rewind copies from 10 (pg_ls_waldir,
/// granted through pg_monitor) to 18 (19 skips the WAL from before the divergence).
pub(crate) fn kept_wal_sql(version: PgVersion) -> Option<&'static str> {
    (version.has_wal_names() && version < PgVersion::new(19, 0))
        .then_some("SELECT coalesce(sum(size), 0)::bigint FROM pg_ls_waldir()")
}

/// `local_version`: this host's running server's `version()`; without it, pgha's own platform.
fn check_platform(primary_version: &str, local_version: Option<&str>) -> Result<()> {
    let Some((primary_arch, primary_bits)) = parse_platform(primary_version) else {
        log::warn!("cannot read the primary's platform from {primary_version:?}; not comparing it");
        return Ok(());
    };
    let local = local_version.and_then(parse_platform);
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

/// The slot's state from `slot_state_sql`'s rows; `online`: this host's cluster runs.
fn slot_state(context: &StandbyContext, rows: &[Vec<String>], name: &str, online: bool) -> Result<Option<SlotState>> {
    let Some([active, lost, client]) = rows.first().map(Vec::as_slice) else { return Ok(None) };
    let active = parse_bool(active)?;
    // Our own walreceiver holds it while this cluster streams; stopping the cluster frees it.
    let ours = client == &context.own_address.to_string() && online;
    if active && !ours {
        bail!(
            "preflight: replication slot {name} on the primary is in use by {}: another host streams as {}, \
             or another clone is running",
            if client.is_empty() { "a walsender" } else { client.as_str() },
            context.own_address
        );
    }
    Ok(Some(SlotState { active, lost: parse_bool(lost)? }))
}

/// The slot `name`: whether it is in use, whether the primary invalidated it (13+), and who uses it.
pub(crate) fn slot_state_sql(name: &str, version: PgVersion) -> String {
    let lost = if version >= PgVersion::new(13, 0) { "s.wal_status = 'lost'" } else { "false" };
    format!(
        "SELECT s.active, {lost}, coalesce(host(r.client_addr), '') FROM pg_replication_slots s \
         LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = {}",
        sql_literal(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_of_a_version_string() {
        let v = "PostgreSQL 15.14 (Debian 15.14-0+deb12u1) on x86_64-pc-linux-gnu, compiled by gcc (Debian 12.2.0-14) 12.2.0, 64-bit";
        assert_eq!(parse_platform(v), Some(("x86_64".into(), "64-bit".into())));
        let arm = "PostgreSQL 15.14 on aarch64-unknown-linux-gnu, compiled by gcc, 64-bit";
        assert_eq!(parse_platform(arm).unwrap().0, "aarch64");
    }
}
