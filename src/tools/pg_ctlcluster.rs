//! pg_ctlcluster: starting, stopping, reloading and promoting a Debian cluster, so that under
//! systemd `postgresql@VERSION-NAME.service` stays in charge of the server.

use anyhow::Result;

use anyhow::{bail, Context};

use crate::debian::Cluster;
use crate::signals;
use crate::tools::root_command;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterAction {
    Start,
    /// Fast mode: a stop never waits on clients.
    Stop,
    /// Immediate mode: for a copy pgha is throwing away, where nothing needs to be flushed.
    StopImmediately,
    Restart,
    Reload,
    Promote,
}

impl ClusterAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterAction::Start => "start",
            ClusterAction::Stop | ClusterAction::StopImmediately => "stop",
            ClusterAction::Restart => "restart",
            ClusterAction::Reload => "reload",
            ClusterAction::Promote => "promote",
        }
    }

    fn mode(self) -> Option<&'static str> {
        match self {
            ClusterAction::Stop => Some("fast"),
            ClusterAction::StopImmediately => Some("immediate"),
            _ => None,
        }
    }
}

/// `pg_ctlcluster [-m MODE] VERSION NAME ACTION`.
pub fn invoke_pg_ctlcluster(cluster: &Cluster, action: ClusterAction) -> Result<()> {
    let mut command = root_command("pg_ctlcluster");
    if let Some(mode) = action.mode() {
        command.args(["-m", mode]);
    }
    command.arg(cluster.version.to_string()).arg(&cluster.name).arg(action.as_str());
    let what = format!("pg_ctlcluster {} {} {}", cluster.version, cluster.name, action.as_str());
    // Not stopped by a signal: a server half started or half stopped is worse than either.
    signals::check()?;
    let output = command.output().with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!("{what} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
