//! pg_ctlcluster: starting (waiting for postgresql-common's start check, or not), stopping,
//! reloading and promoting a Debian cluster, so that under systemd
//! `postgresql@VERSION-NAME.service` stays in charge of the server.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

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

/// The systemd unit that runs `cluster` under postgresql-common.
pub fn unit_name(cluster: &Cluster) -> String {
    format!("postgresql@{}-{}.service", cluster.version, cluster.name)
}

/// What `systemctl show --property=LoadState,ActiveState,Result UNIT` says about a unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitStatus {
    pub load_state: String,
    pub active_state: String,
    /// Why the unit's last run ended: `success`, `exit-code`, `protocol` (postgresql@.service
    /// ignores pg_ctlcluster's exit status, so a server that died shows up as no PID file)...
    pub result: String,
}

impl UnitStatus {
    pub fn is_failed(&self) -> bool {
        self.active_state == "failed"
    }

    /// Its start job is still running (postgresql-common's start check, under systemd).
    pub fn is_starting(&self) -> bool {
        self.active_state == "activating"
    }
}

/// `systemctl show` prints one `KEY=VALUE` per line, in its own order.
pub fn parse_unit_status(show_output: &str) -> Result<UnitStatus> {
    let value = |key: &str| {
        show_output
            .lines()
            .find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
            .map(|value| value.trim().to_string())
            .with_context(|| format!("systemctl show printed no {key}: {show_output:?}"))
    };
    Ok(UnitStatus { load_state: value("LoadState")?, active_state: value("ActiveState")?, result: value("Result")? })
}

/// How a cluster is started when pgha confirms the server itself and does not wait for
/// postgresql-common's start check (about two seconds of psql probes after the server answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMethod {
    /// `systemctl start --no-block`: systemd runs the start check and supervises the server, as
    /// with the waiting start. A unit left failed by an earlier run is reset first, so that its
    /// old state is not taken for this start's failure.
    SystemdNoBlock { reset_failed: bool },
    /// `pg_ctlcluster VERSION NAME start` as a child pgha does not wait for. Passing pg_ctl's
    /// `-W` after `--` would not help: pg_ctlcluster waits for the port and probes it with psql
    /// itself, whatever pg_ctl does.
    PgCtlclusterInBackground,
}

/// The start method from what the host says: pg_ctlcluster itself hands a root start to systemctl
/// exactly when systemd runs (`/run/systemd/system` exists), and only a loaded unit can start.
pub fn choose_start_method(systemd_runs: bool, unit: Option<&UnitStatus>) -> StartMethod {
    match unit {
        Some(status) if systemd_runs && status.load_state == "loaded" => {
            StartMethod::SystemdNoBlock { reset_failed: status.is_failed() }
        }
        _ => StartMethod::PgCtlclusterInBackground,
    }
}

/// `systemctl show` for `unit`.
pub fn invoke_systemctl_show(unit: &str) -> Result<UnitStatus> {
    let output = root_command("systemctl")
        .args(["show", "--property=LoadState,ActiveState,Result", unit])
        .stdin(Stdio::null())
        .output()
        .context("cannot run systemctl show")?;
    if !output.status.success() {
        bail!("systemctl show {unit} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    parse_unit_status(&String::from_utf8_lossy(&output.stdout))
}

fn invoke_systemctl(args: &[&str]) -> Result<()> {
    let what = format!("systemctl {}", args.join(" "));
    let output = root_command("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!("{what} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Starts `cluster` and returns while the server is still coming up: the caller confirms it
/// (it answers, in recovery, streams) and asks the returned start whether it failed meanwhile.
pub fn invoke_start_without_waiting(cluster: &Cluster) -> Result<PendingStart> {
    let unit = unit_name(cluster);
    let systemd_runs = Path::new("/run/systemd/system").is_dir();
    let status = if systemd_runs { invoke_systemctl_show(&unit).ok() } else { None };
    // Not stopped by a signal: a server half started or half stopped is worse than either.
    signals::check()?;
    match choose_start_method(systemd_runs, status.as_ref()) {
        StartMethod::SystemdNoBlock { reset_failed } => {
            if reset_failed {
                invoke_systemctl(&["reset-failed", &unit])?;
            }
            invoke_systemctl(&["start", "--no-block", &unit])?;
            Ok(PendingStart { watched: Watched::Unit(unit), failure: None })
        }
        StartMethod::PgCtlclusterInBackground => {
            let what = format!("pg_ctlcluster {} {} start", cluster.version, cluster.name);
            // A file, not a pipe: the server pg_ctlcluster leaves behind may hold its stderr open.
            let stderr = tempfile::tempfile().context("cannot create a file for pg_ctlcluster's errors")?;
            let child = root_command("pg_ctlcluster")
                .arg(cluster.version.to_string())
                .arg(&cluster.name)
                .arg("start")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr.try_clone()?)
                // Its own process group: Ctrl-C on pgha must not stop the start half way.
                .process_group(0)
                .spawn()
                .with_context(|| format!("cannot run {what}"))?;
            Ok(PendingStart { watched: Watched::Child { child, stderr, what }, failure: None })
        }
    }
}

/// A start that runs on its own. Dropping it leaves the start running: under systemd the unit
/// finishes it; a pg_ctlcluster child finishes its start check after pgha exits.
pub struct PendingStart {
    watched: Watched,
    /// The failure once seen: a finished child cannot be asked twice.
    failure: Option<String>,
}

enum Watched {
    Unit(String),
    Child {
        child: Child,
        stderr: File,
        what: String,
    },
    /// The child exited successfully.
    Done,
}

impl PendingStart {
    /// Why the start failed, once that is known; `None` while it runs, after it succeeded, or when
    /// systemd cannot be asked (the caller's own wait for the server bounds that case).
    pub fn failure(&mut self) -> Option<anyhow::Error> {
        if self.failure.is_none() {
            self.failure = self.check();
        }
        self.failure.as_ref().map(|failure| anyhow::anyhow!("{failure}"))
    }

    fn check(&mut self) -> Option<String> {
        match &mut self.watched {
            Watched::Unit(unit) => {
                let status = invoke_systemctl_show(unit).ok()?;
                status
                    .is_failed()
                    .then(|| format!("{unit} failed (result: {}); `journalctl -u {unit}` tells why", status.result))
            }
            Watched::Child { child, stderr, what } => {
                let status = child.try_wait().ok()??;
                if status.success() {
                    self.watched = Watched::Done;
                    return None;
                }
                let mut text = String::new();
                let _ = stderr.seek(SeekFrom::Start(0));
                let _ = stderr.take(64 << 10).read_to_string(&mut text);
                Some(format!("{what} failed ({status}): {}", text.trim()))
            }
            Watched::Done => None,
        }
    }

    /// Waits up to `timeout` for the start to end, failed or not, so that whatever comes next
    /// (stopping the cluster to put the old data directory back) finds it settled: a stop during
    /// the unit's start check would bypass systemd and leave the unit failed.
    pub fn settle(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.failure().is_none() && self.is_running() {
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn is_running(&mut self) -> bool {
        match &mut self.watched {
            Watched::Unit(unit) => invoke_systemctl_show(unit).map(|status| status.is_starting()).unwrap_or(false),
            Watched::Child { child, .. } => matches!(child.try_wait(), Ok(None)),
            Watched::Done => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // As systemd 252 (Debian 12) prints them: the service's own properties first, then the unit's.
    const STARTING: &str = "Result=success\nLoadState=loaded\nActiveState=activating\n";
    const FAILED: &str = "Result=protocol\nLoadState=loaded\nActiveState=failed\n";
    const MISSING: &str = "Result=success\nLoadState=not-found\nActiveState=inactive\n";

    #[test]
    fn reads_the_unit_status() {
        let starting = parse_unit_status(STARTING).unwrap();
        assert!(starting.is_starting() && !starting.is_failed());
        let failed = parse_unit_status(FAILED).unwrap();
        assert!(failed.is_failed() && !failed.is_starting());
        assert_eq!(failed.result, "protocol");
        assert_eq!(parse_unit_status(MISSING).unwrap().load_state, "not-found");
        assert!(parse_unit_status("LoadState=loaded\n").is_err(), "a missing property is an error, not a state");
    }

    #[test]
    fn starts_through_systemd_only_where_pg_ctlcluster_would() {
        let inactive = parse_unit_status("Result=success\nLoadState=loaded\nActiveState=inactive\n").unwrap();
        let failed = parse_unit_status(FAILED).unwrap();
        let missing = parse_unit_status(MISSING).unwrap();
        assert_eq!(choose_start_method(true, Some(&inactive)), StartMethod::SystemdNoBlock { reset_failed: false });
        assert_eq!(choose_start_method(true, Some(&failed)), StartMethod::SystemdNoBlock { reset_failed: true });
        assert_eq!(choose_start_method(true, Some(&missing)), StartMethod::PgCtlclusterInBackground);
        assert_eq!(choose_start_method(true, None), StartMethod::PgCtlclusterInBackground);
        assert_eq!(choose_start_method(false, Some(&inactive)), StartMethod::PgCtlclusterInBackground);
    }
}
