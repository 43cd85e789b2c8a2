//! Waiting for a standby to stream from the primary, and telling whether it already does.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::notify::{notify_progress, notify_status};
use crate::standby::StandbyContext;
use crate::tools::pg_controldata;
use crate::tools::pg_ctlcluster::PendingStart;
use crate::tools::pg_lsclusters::is_online;
use crate::tools::psql::{query, query_bool, Target};
use crate::tools::{poll_until, retry_until_ok};
use crate::version::PgVersion;

/// How a new standby came up. It counts as done once it runs in recovery (the caller checked it
/// holds the primary's system identifier): a standby that streams only later, after replaying the
/// WAL written during a long clone, or after the network comes back, is reported, never undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyStarted {
    Streaming,
    NotStreamingYet,
}

/// The one rule for "the new standby works", for every standby pgha starts: it answers, in
/// recovery (a server that came up writable is an error, and the caller undoes); then up to
/// `timeout` for streaming, which is only reported. This is for a start that has returned;
/// the clone and the rewind do not wait for theirs (`confirm_started_standby`).
pub fn confirm_standby(context: &StandbyContext, timeout: Duration) -> Result<StandbyStarted> {
    let local = Target::local(context.cluster);
    let in_recovery =
        retry_until_ok(ANSWER_TIMEOUT, ANSWER_INTERVAL, || query_bool(&local, "SELECT pg_is_in_recovery()"))
            .with_context(|| format!("cluster {} does not answer after it started", context.cluster.id()))?;
    confirm_in_recovery(context, in_recovery, timeout)
}

/// `confirm_standby` for a start still under way: a start that fails ends the wait for an answer
/// at once, with the reason systemd or pg_ctlcluster gives.
pub fn confirm_started_standby(
    context: &StandbyContext,
    start: &mut PendingStart,
    timeout: Duration,
) -> Result<StandbyStarted> {
    let local = Target::local(context.cluster);
    let mut last_error = None;
    let answer = poll_until(ANSWER_TIMEOUT, ANSWER_INTERVAL, || {
        // pgha bounds this wait itself: the unit's start timeout must not end it first.
        notify_progress();
        match query_bool(&local, "SELECT pg_is_in_recovery()") {
            Ok(in_recovery) => Ok(Some(in_recovery)),
            Err(error) => match start.failure() {
                Some(failure) => Err(failure.context(format!("cluster {} did not start", context.cluster.id()))),
                None => {
                    last_error = Some(error);
                    Ok(None)
                }
            },
        }
    })?;
    let in_recovery = answer.ok_or_else(|| {
        last_error
            .unwrap_or_else(|| anyhow::anyhow!("no answer"))
            .context(format!("cluster {} does not answer after it started", context.cluster.id()))
    })?;
    confirm_in_recovery(context, in_recovery, timeout)
}

/// How long a started server has to answer, and how often it is asked.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
const ANSWER_INTERVAL: Duration = Duration::from_millis(100);
/// How long the wait for streaming asks every 100 ms before it asks every 500 ms.
const EARLY_STREAMING: Duration = Duration::from_secs(5);

fn confirm_in_recovery(context: &StandbyContext, in_recovery: bool, timeout: Duration) -> Result<StandbyStarted> {
    if !in_recovery {
        bail!("the new copy came up as a primary, not in recovery");
    }
    let streaming = match wait_for_streaming(context, timeout) {
        // The standby is done by the rule above: a signal now ends the wait, not the standby.
        Err(error) if crate::signals::is_interrupted(&error) => {
            crate::signals::finish_from_here();
            log::warn!("{error:#} while waiting for the standby to stream; the standby is kept");
            return Ok(StandbyStarted::NotStreamingYet);
        }
        other => other?,
    };
    if streaming {
        Ok(StandbyStarted::Streaming)
    } else {
        log::warn!(
            "the standby did not stream from {} within {}s (standby.streaming_timeout); it is kept: \
             `pgha status` shows when it streams",
            context.primary,
            timeout.as_secs()
        );
        Ok(StandbyStarted::NotStreamingYet)
    }
}

/// Whether the standby streams from the primary within `timeout`; an error if it is writable.
pub fn wait_for_streaming(context: &StandbyContext, timeout: Duration) -> Result<bool> {
    notify_status("waiting for the standby to stream");
    let local = Target::local(context.cluster);
    let mut probe = || {
        // pgha bounds this wait itself: the unit's start timeout must not end it first.
        notify_progress();
        if query_bool(&local, "SELECT pg_is_in_recovery()").ok() == Some(false) {
            bail!("the new copy came up as a primary, not in recovery");
        }
        Ok(wal_receiver_streaming(context).unwrap_or(false).then_some(()))
    };
    // A fresh standby usually streams within a second of answering: asked often at first, the
    // run ends when it streams; a standby that takes longer is asked less often.
    let early = timeout.min(EARLY_STREAMING);
    let mut streaming = poll_until(early, Duration::from_millis(100), &mut probe)?;
    if streaming.is_none() && timeout > early {
        streaming = poll_until(timeout - early, Duration::from_millis(500), &mut probe)?;
    }
    if streaming.is_some() {
        log::info!("cluster {} streams from {}", context.cluster.id(), context.primary);
    }
    Ok(streaming.is_some())
}

/// The wal receiver's status, conninfo and the host it is connected to, one row per receiver.
/// The conninfo lists every member (the receiver picks the writable one); from 11 the server
/// says which one it is connected to (sender_host), before that it is empty and the primary
/// being in the list has to do. 9.5 has no view of its wal receiver (pg_stat_wal_receiver
/// arrived in 9.6): there "streaming" means WAL arrived by streaming since the server started,
/// which stays true after the connection drops, and the conninfo is the primary_conninfo of the
/// recovery.conf that pgha wrote.
pub(crate) fn wal_receiver_sql(version: PgVersion) -> &'static str {
    if version >= PgVersion::new(11, 0) {
        "SELECT status, coalesce(conninfo, ''), coalesce(sender_host, '') FROM pg_stat_wal_receiver"
    } else if version >= PgVersion::new(9, 6) {
        "SELECT status, coalesce(conninfo, ''), '' FROM pg_stat_wal_receiver"
    } else {
        "SELECT CASE WHEN pg_last_xlog_receive_location() IS NULL THEN 'stopped' ELSE 'streaming' END, \
         coalesce(substring(pg_read_file('recovery.conf'), 'primary_conninfo\\s*=\\s*''([^'']*)'), ''), ''"
    }
}

fn wal_receiver_streaming(context: &StandbyContext) -> Result<bool> {
    let rows = query(&Target::local(context.cluster), wal_receiver_sql(context.cluster.version))?;
    Ok(rows.iter().any(|row| match row.as_slice() {
        [status, conninfo, sender] if status == "streaming" => receiver_follows(conninfo, sender, context.primary),
        _ => false,
    }))
}

/// Whether a streaming wal receiver is connected to `primary`: the server's sender_host when it
/// tells (11+), otherwise the primary being one of the conninfo's hosts.
pub fn receiver_follows(conninfo: &str, sender_host: &str, primary: std::net::IpAddr) -> bool {
    if !sender_host.is_empty() {
        return sender_host.parse::<std::net::IpAddr>().ok() == Some(primary);
    }
    conninfo
        .split_whitespace()
        .filter_map(|part| part.strip_prefix("host="))
        .flat_map(|hosts| hosts.trim_matches('\'').split(','))
        .any(|host| host.parse::<std::net::IpAddr>().ok() == Some(primary))
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
    if !is_online(cluster)? {
        return Ok(false);
    }
    let local = Target::local(cluster);
    let answer = poll_until(patience, Duration::from_millis(500), || {
        if !query_bool(&local, "SELECT pg_is_in_recovery()")?
            || pg_controldata::read(cluster.version, &cluster.data_dir)?.system_identifier != primary_system_identifier
        {
            return Ok(Some(false));
        }
        Ok(wal_receiver_streaming(context)?.then_some(true))
    })?;
    Ok(answer.unwrap_or(false))
}

/// The note for a standby that runs in recovery but did not stream within the timeout.
pub fn not_streaming_yet(context: &StandbyContext) -> String {
    format!(
        "cluster {} runs as a standby of {} but does not stream yet: it may still be replaying, or the primary is \
         out of reach; nothing was undone, and `pgha status` shows when it streams",
        context.cluster.id(),
        context.primary
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_follows_the_host_it_is_connected_to() {
        let primary: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let conninfo = "user=replicator host=10.0.0.1,10.0.0.2 port=5432 target_session_attrs=read-write";
        assert!(receiver_follows(conninfo, "10.0.0.2", primary));
        assert!(!receiver_follows(conninfo, "10.0.0.1", primary));
        assert!(receiver_follows(conninfo, "", primary), "10 cannot tell: the list holds the primary");
        assert!(!receiver_follows("host=10.0.0.1 port=5432", "", primary));
    }
}
