//! The report `pgha status` prints: its JSON form (docs/status-schema.json) and its table.

use serde::Serialize;

use crate::replication::{format_bytes, Health, Lag, Lsn};

/// Version of the JSON document; bumped only on incompatible changes (docs/status-schema.json).
pub const SCHEMA_VERSION: u32 = 1;

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

/// A directory pgha kept beside the data directory.
#[derive(Debug, Serialize)]
pub struct KeptReport {
    pub path: String,
    /// "old" (a replaced data directory) or "fork" (the WAL a rewind threw away).
    pub kind: &'static str,
    pub age_seconds: u64,
    pub bytes: u64,
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

#[cfg(test)]
impl ReceiverReport {
    /// A receiver known only by its status and lag, as tests need one.
    pub fn with_lag(status: &str, lag: Lag) -> ReceiverReport {
        ReceiverReport {
            status: status.into(),
            primary_host: None,
            primary_port: None,
            conninfo: None,
            slot_name: None,
            receive_lsn: None,
            replay_lsn: None,
            lag,
        }
    }
}

/// The filesystem of the data directory: a full one stops the server.
#[derive(Debug, Serialize)]
pub struct FilesystemReport {
    pub path: String,
    /// Bytes available to unprivileged users (statvfs f_bavail).
    pub free_bytes: u64,
    pub size_bytes: u64,
}

/// The WAL archive of a primary: pg_stat_archiver, the segments waiting, the directory.
#[derive(Debug, Serialize)]
pub struct ArchiveReport {
    pub directory: String,
    /// archive_mode as the server runs it.
    pub mode: String,
    /// archive_command failed after its last success: pg_wal grows until it succeeds.
    pub failing: bool,
    pub archived_count: u64,
    pub last_archived_wal: Option<String>,
    pub last_archived_age_seconds: Option<f64>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_failed_age_seconds: Option<f64>,
    /// Segments in pg_wal not archived yet.
    pub ready_count: u64,
    /// What the directory holds; null when it cannot be read.
    pub bytes: Option<u64>,
    pub files: Option<u64>,
    /// Segments dropped under archive.min_free whose markers are still there.
    pub dropped: Option<u64>,
    /// Null when the archive shares the data directory's filesystem.
    pub filesystem: Option<FilesystemReport>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub status: Health,
    pub exit_code: i32,
    pub problems: Vec<Problem>,
    pub host_address: Option<String>,
    /// The role the members give this host: "primary" when they name it, "standby" otherwise.
    pub configured_role: Option<&'static str>,
    /// The member the members name as the primary; null when they name none.
    pub primary_address: Option<String>,
    pub cluster: ClusterReport,
    /// What the server says it is: "primary" or "standby"; null when it cannot be asked.
    pub role: Option<&'static str>,
    pub wal_lsn: Option<Lsn>,
    pub standbys: Vec<StandbyReport>,
    pub slots: Vec<SlotReport>,
    pub receiver: Option<ReceiverReport>,
    pub kept: Vec<KeptReport>,
    /// Null when it cannot be read (no data directory).
    pub data_filesystem: Option<FilesystemReport>,
    /// Null on a standby, or with archive.enabled false.
    pub archive: Option<ArchiveReport>,
}

impl Report {
    pub fn empty() -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            status: Health::Ok,
            exit_code: 0,
            problems: Vec::new(),
            host_address: None,
            configured_role: None,
            primary_address: None,
            cluster: ClusterReport { id: None, version: None, port: None, state: "unknown" },
            role: None,
            wal_lsn: None,
            standbys: Vec::new(),
            slots: Vec::new(),
            receiver: None,
            kept: Vec::new(),
            data_filesystem: None,
            archive: None,
        }
    }

    pub fn problem(&mut self, severity: Health, message: String) {
        self.problems.push(Problem { severity, message });
    }

    pub fn finish(mut self) -> Report {
        self.status = self.problems.iter().map(|problem| problem.severity).max().unwrap_or(Health::Ok);
        self.exit_code = self.status.exit_code();
        self
    }
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

/// The tables, one per kind of thing, then every problem: the long text under the first line
/// (`plugin::format_plugin`).
pub fn format_details(report: &Report) -> String {
    let mut out = String::new();
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
    table(
        &["KEPT", "KIND", "AGE", "SIZE"],
        report
            .kept
            .iter()
            .map(|k| {
                vec![
                    k.path.clone(),
                    k.kind.to_string(),
                    humantime::format_duration(std::time::Duration::from_secs(k.age_seconds / 60 * 60)).to_string(),
                    format_bytes(k.bytes),
                ]
            })
            .collect(),
    );
    table(
        &["ARCHIVE", "MODE", "LAST ARCHIVED", "AGE", "FAILED", "READY", "SIZE", "DROPPED"],
        report
            .archive
            .iter()
            .map(|a| {
                vec![
                    a.directory.clone(),
                    if a.failing { format!("{} (failing)", a.mode) } else { a.mode.clone() },
                    or_dash(a.last_archived_wal.as_ref()),
                    a.last_archived_age_seconds.map_or("-".into(), |s| format!("{s:.0}s")),
                    a.failed_count.to_string(),
                    a.ready_count.to_string(),
                    a.bytes.map_or("-".into(), format_bytes),
                    or_dash(a.dropped),
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
