//! Waiting for a standby to stream from the primary, and telling whether it already does.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::notify::{notify_progress, notify_status};
use crate::standby::StandbyContext;
use crate::tools::pg_controldata;
use crate::tools::pg_lsclusters::is_online;
use crate::tools::psql::{query, query_bool, Target};
use crate::tools::{poll_until, retry_until_ok};

/// How a new standby came up. It counts as done once it runs in recovery (the caller checked it
/// holds the primary's system identifier): a standby that streams only later, after replaying the
/// WAL written during a long clone, or after the network comes back, is reported, never undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyStarted {
    Streaming,
    NotStreamingYet,
}

/// The one rule for "the new standby works", for the clone and the rewind alike: it answers, in
/// recovery (a server that came up writable is an error, and the caller undoes); then up to
/// `timeout` for streaming, which is only reported.
pub fn confirm_standby(context: &StandbyContext, timeout: Duration) -> Result<StandbyStarted> {
    let local = Target::local(context.cluster);
    let in_recovery = retry_until_ok(Duration::from_secs(60), Duration::from_millis(250), || {
        query_bool(&local, "SELECT pg_is_in_recovery()")
    })
    .with_context(|| format!("cluster {} does not answer after it started", context.cluster.id()))?;
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
    let streaming = poll_until(timeout, Duration::from_millis(500), || {
        // pgha bounds this wait itself: the unit's start timeout must not end it first.
        notify_progress();
        if query_bool(&local, "SELECT pg_is_in_recovery()").ok() == Some(false) {
            bail!("the new copy came up as a primary, not in recovery");
        }
        Ok(wal_receiver_streaming(context).unwrap_or(false).then_some(()))
    })?;
    if streaming.is_some() {
        log::info!("cluster {} streams from {}", context.cluster.id(), context.primary);
    }
    Ok(streaming.is_some())
}

fn wal_receiver_streaming(context: &StandbyContext) -> Result<bool> {
    let host = format!("host={}", context.primary);
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
