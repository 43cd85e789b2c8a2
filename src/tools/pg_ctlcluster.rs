//! pg_ctlcluster: starting, stopping, reloading and promoting a Debian cluster, so that under
//! systemd `postgresql@VERSION-NAME.service` stays in charge of the server.

use anyhow::Result;

use crate::debian::Cluster;
use crate::tools::{root_command, run_checked};

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
    run_checked(&mut command, &format!("pg_ctlcluster {} {} {}", cluster.version, cluster.name, action.as_str()))
        .map(|_| ())
}
