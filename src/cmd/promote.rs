//! `pgha promote`: turn this standby into the primary, refusing to make a second writable
//! primary by accident, then rewrite pgha.conf so [primary] names this host.
//!
//! How the config follows the role change: pgha.conf stays one file for every host. After the
//! promote, this host's copy says `[primary] address = <this host>` and lists the old primary
//! under `[standby] addresses` in place of this host; the command prints that diff so the admin
//! applies the same change on every other host (then `pgha rejoin` on the old primary).

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::config::Config;
use crate::debian::{log_tail, Cluster};
use crate::error::{ConfigError, EXIT_OK};
use crate::files::apply::write_atomic;
use crate::files::plan::{describe_file_change, existing_ownership, file_change};
use crate::node::{find_local_address, Node};
use crate::render::standby_name;
use crate::standby::slots::ensure_slot;
use crate::tools::pg_ctlcluster::{invoke_pg_ctlcluster, ClusterAction};
use crate::tools::psql::{classify_failure, query, query_bool, query_value, Target};
use crate::tools::retry_until_ok;
use crate::upstream::primary_client_conninfo;
use crate::version::PgVersion;

const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// Promote even though the configured primary still answers as a writable primary
    /// (only when it is fenced: no client can reach it)
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
        let own = find_local_address(&config.node_addresses())?.ok_or_else(|| {
            ConfigError::in_file(
                config_path,
                "none of this host's addresses is listed: run `pgha promote` on a standby",
            )
        })?;
        crate::lock::take_for_run(&cluster.id(), "pgha promote", self.wait)?;
        node.require_online()?;
        let target = Target::local(cluster);
        let in_recovery = query_bool(&target, "SELECT pg_is_in_recovery()")?;

        if !in_recovery {
            if own == config.primary.address {
                println!(
                    "cluster {} is already the primary and {} says so: nothing to do",
                    cluster.id(),
                    config_path.display()
                );
                return Ok(EXIT_OK);
            }
            // A promote that stopped before rewriting the config: finish that part.
            log::info!("cluster {} is already a primary; updating {}", cluster.id(), config_path.display());
        } else {
            if own == config.primary.address {
                return Err(ConfigError::key(
                    config_path,
                    "primary.address",
                    format!(
                        "{own} is this host, yet cluster {} is a standby: fix [primary] before promoting",
                        cluster.id()
                    ),
                )
                .into());
            }
            if !self.force {
                refuse_if_primary_alive(config, cluster.version, &target)?;
            }
            // From the moment the server is asked to promote there is no way back: a signal from here
            // on lets the promote and the steps after it finish, and is only reported.
            crate::signals::finish_from_here();
            promote(cluster, &target)?;
            wait_for_writes(&target, cluster)?;
            println!(
                "cluster {} on {own} is now the primary: it accepted a write {} ms after the command started",
                cluster.id(),
                started.elapsed().as_millis()
            );
            // The end-of-recovery checkpoint is a spread one: until it ends, pg_control still shows the
            // old timeline, and pg_rewind on the old primary would wrongly find nothing to rewind.
            log::info!("writing a checkpoint so pg_control shows the new timeline");
            query(&target, "CHECKPOINT")?;
        }

        let old_primary = config.primary.address;
        if config.replication.slots {
            for address in config.node_addresses().into_iter().filter(|address| *address != own) {
                if !ensure_slot(&target, &standby_name(address), cluster.version)? {
                    continue;
                }
                log::info!("created replication slot {} for {address}", standby_name(address));
            }
        }
        rewrite_config(config_path, config, own, cluster.port)?;
        println!(
            "\nnext:\n  1. apply the same change to pgha.conf on every other host (copy this file, it is the same everywhere)\n  \
             2. on the old primary {old_primary}: `pgha rejoin` (pg_rewind when possible, a full clone otherwise)\n  \
             3. on other standbys: `pgha rejoin` to follow {own}\n  \
             4. here, at a quiet moment: `pgha primary` writes conf.d/pgha.conf in its primary form \
             (the leftover primary_conninfo is ignored by a primary)\n  5. check with `pgha status` and `pgha verify`"
        );
        Ok(EXIT_OK)
    }
}

/// The guard against two writable primaries: our own WAL receiver streaming proves the primary is
/// up; otherwise ask it directly. Only "nobody answers" lets the promote go ahead.
fn refuse_if_primary_alive(config: &Config, version: PgVersion, local: &Target) -> Result<()> {
    let primary = format!("{}:{}", config.primary.address, config.primary.port);
    let consequence = "promoting now would make two primaries that both accept writes: clients still \
                       connected to it would write data this host never receives, and the two copies would fork";
    let advice = "for a switchover, stop it first (`pg_ctlcluster VERSION NAME stop` there); if it is fenced \
                  (no client can reach it) and you accept losing what it did not send, use --force";
    let streaming = receiver_streaming_sql(version)
        .is_some_and(|sql| query(local, sql).map(|rows| !rows.is_empty()).unwrap_or(false));
    if streaming {
        bail!("refusing to promote: this standby is streaming from the configured primary {primary} right now, so it is up; {consequence}; {advice}");
    }
    // A primary that is gone often does not even refuse the connection: keep the wait short
    // (libpq takes the last of a repeated keyword).
    let conninfo =
        primary_client_conninfo(config, config.primary.address, &config.replication.passfile, version, "postgres");
    let remote = Target::Remote { conninfo: format!("{conninfo} connect_timeout=3") };
    match query_bool(&remote, "SELECT pg_is_in_recovery()") {
        Ok(true) => {
            log::info!("the configured primary {primary} answers but is in recovery: not a writable primary");
            Ok(())
        }
        Ok(false) => bail!("refusing to promote: the configured primary {primary} still answers as a writable primary; {consequence}; {advice}"),
        Err(error) if classify_failure(&format!("{error:#}")).is_unreachable() => {
            log::info!("the configured primary {primary} does not answer: {error:#}");
            Ok(())
        }
        Err(error) => bail!(
            "refusing to promote: the configured primary {primary} answers, but pgha cannot tell whether it is writable ({error:#}); {consequence}; {advice}"
        ),
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

fn rewrite_config(config_path: &Path, config: &Config, own: IpAddr, port: u16) -> Result<()> {
    let text =
        std::fs::read_to_string(config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let new_text = swap_primary(&text, own, port, config.primary.address)
        .map_err(|message| ConfigError::in_file(config_path, message))?;
    // The result must still be a valid config, or every later command on this host would fail.
    Config::parse(config_path, &new_text)?;
    let Some(change) = file_change(config_path, new_text, existing_ownership(config_path)?)? else {
        println!("{} already names this host as the primary", config_path.display());
        return Ok(());
    };
    write_atomic(config_path, change.new.as_bytes(), change.ownership)?;
    println!("\nupdated {}:\n{}", config_path.display(), describe_file_change(&change));
    Ok(())
}

/// pgha.conf with `new_primary` as [primary] address (and `port` as its port) and the old primary
/// in its place under [standby] addresses. Comments and layout stay as the admin wrote them.
pub fn swap_primary(text: &str, new_primary: IpAddr, port: u16, old_primary: IpAddr) -> Result<String, String> {
    let mut document: toml_edit::DocumentMut = text.parse().map_err(|error| format!("invalid TOML: {error}"))?;
    let primary = document["primary"].as_table_like_mut().ok_or("no [primary] section")?;
    primary.insert("address", toml_edit::value(new_primary.to_string()));
    let port_set = primary.get("port").and_then(|item| item.as_integer());
    if port_set.is_some() || port != 5432 {
        primary.insert("port", toml_edit::value(i64::from(port)));
    }
    let addresses = document["standby"]["addresses"].as_array_mut().ok_or("no [standby] addresses list")?;
    let mut replaced = false;
    for item in addresses.iter_mut() {
        let is_new_primary = item.as_str().and_then(|text| text.trim().parse::<IpAddr>().ok()) == Some(new_primary);
        if is_new_primary {
            let decor = item.decor().clone();
            *item = toml_edit::Value::from(old_primary.to_string());
            *item.decor_mut() = decor;
            replaced = true;
        }
    }
    if !replaced {
        return Err(format!("{new_primary} is not in [standby] addresses"));
    }
    Ok(document.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "# one file for all hosts\n[primary]\naddress = \"10.0.0.1\" # A\nport = 5432\n\n[standby]\n# both standbys\naddresses = [\"10.0.0.2\", \"10.0.0.3\"]\n";

    #[test]
    fn swaps_roles_and_keeps_comments() {
        let out = swap_primary(CONF, "10.0.0.2".parse().unwrap(), 5432, "10.0.0.1".parse().unwrap()).unwrap();
        assert!(out.contains("address = \"10.0.0.2\""), "{out}");
        assert!(out.contains("addresses = [\"10.0.0.1\", \"10.0.0.3\"]"), "{out}");
        assert!(out.contains("# one file for all hosts") && out.contains("# both standbys"), "{out}");
        let config = Config::parse(Path::new("/x"), &out).unwrap();
        assert_eq!(config.primary.address.to_string(), "10.0.0.2");
        // Swapping back gives the original file: the change is its own inverse.
        let back = swap_primary(&out, "10.0.0.1".parse().unwrap(), 5432, "10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(back.replace(" # A", ""), CONF.replace(" # A", ""));
    }

    #[test]
    fn refuses_a_host_that_is_not_a_standby() {
        assert!(swap_primary(CONF, "10.0.0.9".parse().unwrap(), 5432, "10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn writes_the_port_only_when_needed() {
        let no_port = "[primary]\naddress = \"10.0.0.1\"\n[standby]\naddresses = [\"10.0.0.2\"]\n";
        let same = swap_primary(no_port, "10.0.0.2".parse().unwrap(), 5432, "10.0.0.1".parse().unwrap()).unwrap();
        assert!(!same.contains("port"));
        let other = swap_primary(no_port, "10.0.0.2".parse().unwrap(), 5433, "10.0.0.1".parse().unwrap()).unwrap();
        assert!(other.contains("port = 5433"));
    }
}
