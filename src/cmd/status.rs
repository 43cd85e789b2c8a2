//! `pgha status`: this host's role and replication health, as a table or JSON, with
//! monitoring-plugin exit codes (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
//!
//! Unlike every other command, a config error exits 3 (UNKNOWN), not 2: to a monitoring system 2
//! means CRITICAL, and a broken pgha.conf says nothing about the database.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::config::Config;
use crate::debian::Cluster;
use crate::pg::{query, Target};
use crate::render::standby_name;
use crate::replication::{
    format_bytes, parse_snapshot, sender_lag, snapshot_sql, standby_lag, Health, Lag, LagLimit, Lsn, Snapshot,
};

/// Version of the JSON document; bumped only on incompatible changes (docs/status-schema.json).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON following docs/status-schema.json instead of a table
    #[arg(long)]
    pub json: bool,

    /// WARNING above this lag: bytes ("16MB") or time ("30s"); repeat to set both [default: 16MB]
    #[arg(long, value_name = "LIMIT")]
    pub warn_lag: Vec<LagLimit>,

    /// CRITICAL above this lag: bytes ("1GB") or time ("5min"); repeat to set both [default: 1GB]
    #[arg(long, value_name = "LIMIT")]
    pub crit_lag: Vec<LagLimit>,

    /// Print the raw answer of the status query (for saving parser test samples)
    #[arg(long, hide = true)]
    pub raw: bool,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub severity: Health,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct ClusterReport {
    pub id: Option<String>,
    pub version: Option<String>,
    pub port: Option<u16>,
    pub state: &'static str,
}

#[derive(Debug, Serialize)]
pub struct StandbyReport {
    pub address: Option<String>,
    pub application_name: Option<String>,
    /// Listed in [standby].addresses.
    pub configured: bool,
    /// pg_stat_replication.state, or "disconnected" for a configured standby with no walsender.
    pub state: String,
    pub sync_state: Option<String>,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub lag: Lag,
}

#[derive(Debug, Serialize)]
pub struct SlotReport {
    pub name: String,
    #[serde(rename = "type")]
    pub slot_type: String,
    pub active: bool,
    pub restart_lsn: Option<Lsn>,
    pub retained_bytes: Option<u64>,
    pub wal_status: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ReceiverReport {
    /// pg_stat_wal_receiver.status, "stopped" when no receiver runs, "unknown" on 9.5.
    pub status: String,
    pub primary_host: Option<String>,
    pub primary_port: Option<u16>,
    /// As PostgreSQL shows it: passwords already replaced by asterisks (pgha uses a passfile anyway).
    pub conninfo: Option<String>,
    pub slot_name: Option<String>,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub lag: Lag,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub status: Health,
    pub exit_code: i32,
    pub problems: Vec<Problem>,
    pub host_address: Option<String>,
    /// What pgha.conf says this host is.
    pub configured_role: Option<&'static str>,
    pub cluster: ClusterReport,
    /// What the server says it is: "primary" or "standby"; null when it cannot be asked.
    pub role: Option<&'static str>,
    pub wal_lsn: Option<Lsn>,
    pub standbys: Vec<StandbyReport>,
    pub slots: Vec<SlotReport>,
    pub receiver: Option<ReceiverReport>,
}

impl Report {
    fn empty() -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            status: Health::Ok,
            exit_code: 0,
            problems: Vec::new(),
            host_address: None,
            configured_role: None,
            cluster: ClusterReport { id: None, version: None, port: None, state: "unknown" },
            role: None,
            wal_lsn: None,
            standbys: Vec::new(),
            slots: Vec::new(),
            receiver: None,
        }
    }

    fn problem(&mut self, severity: Health, message: String) {
        self.problems.push(Problem { severity, message });
    }

    fn finish(mut self) -> Report {
        self.status = self.problems.iter().map(|problem| problem.severity).max().unwrap_or(Health::Ok);
        self.exit_code = self.status.exit_code();
        self
    }
}

/// Limits in force: the defaults unless the admin gave some of that level.
pub struct Limits {
    pub warn: Vec<LagLimit>,
    pub crit: Vec<LagLimit>,
}

impl Limits {
    fn from_args(args: &StatusArgs) -> Limits {
        let or_default = |given: &Vec<LagLimit>, default: u64| {
            if given.is_empty() {
                vec![LagLimit::Bytes(default)]
            } else {
                given.clone()
            }
        };
        Limits { warn: or_default(&args.warn_lag, 16 << 20), crit: or_default(&args.crit_lag, 1 << 30) }
    }

    fn judge(&self, report: &mut Report, who: &str, lag: Lag) {
        if let Some(limit) = self.crit.iter().find(|limit| limit.exceeded_by(lag)) {
            report.problem(Health::Critical, format!("{who} lags more than {limit} ({})", describe_lag(lag)));
        } else if let Some(limit) = self.warn.iter().find(|limit| limit.exceeded_by(lag)) {
            report.problem(Health::Warning, format!("{who} lags more than {limit} ({})", describe_lag(lag)));
        }
    }
}

fn describe_lag(lag: Lag) -> String {
    let bytes = lag.bytes.map_or("? bytes".to_string(), format_bytes);
    let seconds = lag.seconds.map_or("? s".to_string(), |s| format!("{s:.1} s"));
    format!("{bytes}, {seconds}")
}

impl StatusArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        if self.raw {
            let (_, cluster) = crate::cmd::load_config_and_cluster(config_path)?;
            print!("{}", crate::pg::invoke_psql(&Target::local(&cluster), &snapshot_sql(cluster.version))?);
            return Ok(0);
        }
        let limits = Limits::from_args(&self);
        let report = match gather(config_path, &limits) {
            Ok(report) => report,
            Err(error) => {
                let mut report = Report::empty();
                report.problem(Health::Unknown, format!("{error:#}"));
                report
            }
        }
        .finish();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", format_table(&report));
        }
        Ok(report.exit_code)
    }
}

fn gather(config_path: &Path, limits: &Limits) -> Result<Report> {
    let (config, cluster) = crate::cmd::load_config_and_cluster(config_path)?;
    let mut report = Report::empty();
    let own = crate::cmd::find_local_address(&config.node_addresses())?;
    report.host_address = own.map(|address| address.to_string());
    report.configured_role = own.map(|address| if address == config.primary.address { "primary" } else { "standby" });
    report.cluster = ClusterReport {
        id: Some(cluster.id()),
        version: Some(cluster.version.to_string()),
        port: Some(cluster.port),
        state: if cluster.online { "online" } else { "down" },
    };
    if own.is_none() {
        report.problem(
            Health::Warning,
            format!(
                "none of this host's addresses is in {}: cannot tell which role it should have",
                config_path.display()
            ),
        );
    }
    if !cluster.online {
        report.problem(Health::Critical, format!("cluster {} is down", cluster.id()));
        return Ok(report);
    }
    let snapshot = parse_snapshot(&query(&Target::local(&cluster), &snapshot_sql(cluster.version))?)?;
    describe(&mut report, &config, &cluster, &snapshot, limits);
    Ok(report)
}

/// The health rules, applied to one snapshot. Kept free of I/O.
pub fn describe(report: &mut Report, config: &Config, cluster: &Cluster, snapshot: &Snapshot, limits: &Limits) {
    let role = if snapshot.in_recovery { "standby" } else { "primary" };
    report.role = Some(role);
    report.wal_lsn = snapshot.wal_lsn;
    if let Some(configured) = report.configured_role {
        if configured != role {
            report.problem(
                Health::Warning,
                format!(
                    "cluster {} runs as a {role} but {} lists this host as the {configured}: \
                     after a promote, update [primary] and [standby] as `pgha promote` printed, or run `pgha rejoin`",
                    cluster.id(),
                    config.path.display()
                ),
            );
        }
    }
    for slot in &snapshot.slots {
        let retained = match (snapshot.wal_lsn, slot.restart_lsn) {
            (Some(current), Some(restart)) => Some(current.bytes_after(restart)),
            _ => None,
        };
        if !slot.active && retained.is_some_and(|bytes| bytes > 0) {
            report.problem(
                Health::Warning,
                format!(
                    "slot {} is inactive and holds {} of WAL: drop it with SELECT pg_drop_replication_slot('{}') if its standby is gone",
                    slot.name,
                    format_bytes(retained.unwrap_or(0)),
                    slot.name
                ),
            );
        }
        if slot.wal_status.as_deref() == Some("lost") {
            report.problem(
                Health::Critical,
                format!("slot {} lost WAL its standby needs: that standby must be cloned again", slot.name),
            );
        }
        report.slots.push(SlotReport {
            name: slot.name.clone(),
            slot_type: slot.slot_type.clone(),
            active: slot.active,
            restart_lsn: slot.restart_lsn,
            retained_bytes: retained,
            wal_status: slot.wal_status.clone(),
        });
    }
    if snapshot.in_recovery {
        describe_standby(report, config, snapshot, limits);
    } else {
        describe_primary(report, config, snapshot, limits);
    }
}

fn describe_primary(report: &mut Report, config: &Config, snapshot: &Snapshot, limits: &Limits) {
    let own: Option<IpAddr> = report.host_address.as_deref().and_then(|text| text.parse().ok());
    let expected: Vec<IpAddr> = config.node_addresses().into_iter().filter(|address| Some(*address) != own).collect();
    for sender in &snapshot.senders {
        let configured = expected
            .iter()
            .any(|address| sender.client_addr == Some(*address) || sender.application_name == standby_name(*address));
        let lag = sender_lag(sender, snapshot.wal_lsn);
        let who = format!(
            "standby {} ({})",
            sender.client_addr.map_or("local".to_string(), |a| a.to_string()),
            sender.application_name
        );
        if configured {
            if sender.state != "streaming" {
                report.problem(Health::Warning, format!("{who} is in state {:?}, not streaming", sender.state));
            }
            limits.judge(report, &who, lag);
        }
        report.standbys.push(StandbyReport {
            address: sender.client_addr.map(|address| address.to_string()),
            application_name: Some(sender.application_name.clone()),
            configured,
            state: sender.state.clone(),
            sync_state: Some(sender.sync_state.clone()),
            sent_lsn: sender.sent,
            write_lsn: sender.write,
            flush_lsn: sender.flush,
            replay_lsn: sender.replay,
            lag,
        });
    }
    for address in expected {
        let connected = snapshot
            .senders
            .iter()
            .any(|sender| sender.client_addr == Some(address) || sender.application_name == standby_name(address));
        if !connected {
            report.problem(Health::Critical, format!("standby {address} is not connected"));
            report.standbys.push(StandbyReport {
                address: Some(address.to_string()),
                application_name: Some(standby_name(address)),
                configured: true,
                state: "disconnected".into(),
                sync_state: None,
                sent_lsn: None,
                write_lsn: None,
                flush_lsn: None,
                replay_lsn: None,
                lag: Lag { bytes: None, seconds: None },
            });
        }
    }
}

fn describe_standby(report: &mut Report, config: &Config, snapshot: &Snapshot, limits: &Limits) {
    let progress = snapshot.progress.clone().unwrap_or(crate::replication::Progress {
        receive: None,
        replay: snapshot.wal_lsn,
        seconds_since_replayed_commit: None,
    });
    let lag = standby_lag(&progress, snapshot.receiver.as_ref());
    let status = match &snapshot.receiver {
        Some(receiver) => receiver.status.clone(),
        None if snapshot.version >= crate::version::PgVersion::new(9, 6) => "stopped".to_string(),
        None => "unknown".to_string(),
    };
    match status.as_str() {
        "streaming" => {}
        "unknown" => report.problem(
            Health::Warning,
            "PostgreSQL 9.5 cannot show the WAL receiver: check the primary with `pgha status` there".into(),
        ),
        other => report.problem(
            Health::Critical,
            format!(
                "the WAL receiver is {other}, not streaming from {}:{}: see the cluster log",
                config.primary.address, config.primary.port
            ),
        ),
    }
    if let Some(host) = snapshot.receiver.as_ref().and_then(|receiver| receiver.sender_host.as_deref()) {
        if host.parse::<IpAddr>().ok() != Some(config.primary.address) && !host.starts_with('/') {
            report.problem(
                Health::Warning,
                format!("this standby follows {host}, but [primary] address is {}", config.primary.address),
            );
        }
    }
    limits.judge(report, "this standby", lag);
    let receiver = snapshot.receiver.as_ref();
    report.receiver = Some(ReceiverReport {
        status,
        primary_host: receiver.and_then(|r| r.sender_host.clone()),
        primary_port: receiver.and_then(|r| r.sender_port),
        conninfo: receiver.map(|r| r.conninfo.clone()).filter(|conninfo| !conninfo.is_empty()),
        slot_name: receiver.and_then(|r| r.slot_name.clone()),
        receive_lsn: progress.receive,
        replay_lsn: progress.replay,
        lag,
    });
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or("-".to_string(), |v| v.to_string())
}

fn lag_cell(lag: Lag) -> String {
    format!(
        "{} / {}",
        lag.bytes.map_or("-".to_string(), format_bytes),
        lag.seconds.map_or("-".to_string(), |s| format!("{s:.1}s"))
    )
}

/// The compact human form: a header line, then one table per kind of thing.
pub fn format_table(report: &Report) -> String {
    let mut out = format!(
        "{}: {} {} on {} ({}), {}{}\n",
        report.status.as_str(),
        report.role.unwrap_or("?"),
        report.cluster.id.as_deref().unwrap_or("?"),
        report.host_address.as_deref().unwrap_or("?"),
        report.cluster.state,
        report.wal_lsn.map_or("no WAL position".to_string(), |lsn| format!("WAL at {lsn}")),
        report.configured_role.map_or(String::new(), |role| format!(", configured as {role}"))
    );
    let mut table = |header: &[&str], rows: Vec<Vec<String>>| {
        if rows.is_empty() {
            return;
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        out.push('\n');
        for row in std::iter::once(header.iter().map(|h| h.to_string()).collect::<Vec<_>>()).chain(rows) {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
    };
    table(
        &["STANDBY", "NAME", "STATE", "SYNC", "SENT", "WRITE", "FLUSH", "REPLAY", "LAG"],
        report
            .standbys
            .iter()
            .map(|s| {
                vec![
                    or_dash(s.address.as_ref()),
                    or_dash(s.application_name.as_ref()),
                    s.state.clone(),
                    or_dash(s.sync_state.as_ref()),
                    or_dash(s.sent_lsn),
                    or_dash(s.write_lsn),
                    or_dash(s.flush_lsn),
                    or_dash(s.replay_lsn),
                    lag_cell(s.lag),
                ]
            })
            .collect(),
    );
    table(
        &["RECEIVER", "PRIMARY", "SLOT", "RECEIVED", "REPLAYED", "LAG"],
        report
            .receiver
            .iter()
            .map(|r| {
                vec![
                    r.status.clone(),
                    match (&r.primary_host, r.primary_port) {
                        (Some(host), Some(port)) => format!("{host}:{port}"),
                        (Some(host), None) => host.clone(),
                        _ => "-".into(),
                    },
                    or_dash(r.slot_name.as_ref()),
                    or_dash(r.receive_lsn),
                    or_dash(r.replay_lsn),
                    lag_cell(r.lag),
                ]
            })
            .collect(),
    );
    table(
        &["SLOT", "TYPE", "ACTIVE", "RESTART", "RETAINED"],
        report
            .slots
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.slot_type.clone(),
                    if s.active { "yes" } else { "no" }.into(),
                    or_dash(s.restart_lsn),
                    s.retained_bytes.map_or("-".into(), format_bytes),
                ]
            })
            .collect(),
    );
    if !report.problems.is_empty() {
        out.push('\n');
        for problem in &report.problems {
            out.push_str(&format!("{}: {}\n", problem.severity.as_str(), problem.message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debian::parse_pg_lsclusters;

    fn report_for(sample: &str, own: &str, config_text: &str) -> Report {
        let config = Config::parse(Path::new("/etc/pgha/pgha.conf"), config_text).unwrap();
        let cluster =
            parse_pg_lsclusters("15 main 5432 online postgres /var/lib/postgresql/15/main\n").unwrap().remove(0);
        let snapshot = parse_snapshot(&crate::pg::parse_rows(sample)).unwrap();
        let mut report = Report::empty();
        report.host_address = Some(own.into());
        report.configured_role = Some(if config.primary.address.to_string() == own { "primary" } else { "standby" });
        let limits = Limits { warn: vec![LagLimit::Bytes(16 << 20)], crit: vec![LagLimit::Bytes(1 << 30)] };
        describe(&mut report, &config, &cluster, &snapshot, &limits);
        report.finish()
    }

    const PRIMARY: &str = include_str!("../../tests/data/status-primary-15.txt");
    const STANDBY: &str = include_str!("../../tests/data/status-standby-15.txt");

    #[test]
    fn healthy_primary_and_standby_are_ok() {
        let conf = "[primary]\naddress = \"10.231.245.1\"\n[standby]\naddresses = [\"10.231.245.2\"]\n";
        let primary = report_for(PRIMARY, "10.231.245.1", conf);
        assert_eq!(primary.status, Health::Ok, "{:?}", primary.problems);
        assert_eq!(primary.standbys[0].lag.bytes, Some(0));
        let standby = report_for(STANDBY, "10.231.245.2", conf);
        assert_eq!(standby.status, Health::Ok, "{:?}", standby.problems);
        assert_eq!(standby.receiver.as_ref().unwrap().status, "streaming");
        assert!(format_table(&standby).starts_with("OK: standby"));
    }

    #[test]
    fn a_missing_standby_is_critical_and_a_role_mismatch_warns() {
        let two =
            "[primary]\naddress = \"10.231.245.1\"\n[standby]\naddresses = [\"10.231.245.2\", \"10.231.245.3\"]\n";
        let report = report_for(PRIMARY, "10.231.245.1", two);
        assert_eq!(report.status, Health::Critical);
        assert!(report
            .standbys
            .iter()
            .any(|s| s.state == "disconnected" && s.address.as_deref() == Some("10.231.245.3")));
        // After a promote, before the config changed: B runs as primary, pgha.conf still calls it a standby.
        let stale = "[primary]\naddress = \"10.231.245.2\"\n[standby]\naddresses = [\"10.231.245.1\"]\n";
        let report = report_for(PRIMARY, "10.231.245.1", stale);
        assert!(report
            .problems
            .iter()
            .any(|p| p.severity == Health::Warning && p.message.contains("runs as a primary")));
    }

    #[test]
    fn a_stopped_receiver_is_critical() {
        let conf = "[primary]\naddress = \"10.231.245.1\"\n[standby]\naddresses = [\"10.231.245.2\"]\n";
        let without_receiver: String = STANDBY
            .split('\u{1e}')
            .filter(|row| !row.trim_start().starts_with("receiver"))
            .collect::<Vec<_>>()
            .join("\u{1e}");
        let report = report_for(&without_receiver, "10.231.245.2", conf);
        assert_eq!(report.status, Health::Critical);
        assert_eq!(report.receiver.as_ref().unwrap().status, "stopped");
    }
}
