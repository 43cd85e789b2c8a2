//! One query that takes a snapshot of a server's replication state (its role, walsenders,
//! slots, replay progress and WAL receiver) on every version, and its pure parser.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::replication::Lsn;
use crate::version::PgVersion;

/// Function and column names, which 10 renamed from xlog/location to wal/lsn.
pub(crate) struct WalNames {
    pub(crate) current_lsn: &'static str,
    receive_lsn: &'static str,
    replay_lsn: &'static str,
    column: &'static str,
}

pub(crate) fn wal_names(version: PgVersion) -> WalNames {
    if version.has_wal_names() {
        WalNames {
            current_lsn: "pg_current_wal_lsn()",
            receive_lsn: "pg_last_wal_receive_lsn()",
            replay_lsn: "pg_last_wal_replay_lsn()",
            column: "lsn",
        }
    } else {
        WalNames {
            current_lsn: "pg_current_xlog_location()",
            receive_lsn: "pg_last_xlog_receive_location()",
            replay_lsn: "pg_last_xlog_replay_location()",
            column: "location",
        }
    }
}

/// Columns of every row of `snapshot_sql`: rows of different kinds are padded to this width.
const SNAPSHOT_COLUMNS: usize = 10;

/// The SQL for a snapshot of one server: one statement (psql separates the results of several
/// statements with a bare newline, which could not be told apart from data), every row tagged
/// with its kind and padded to the same width, so the parser needs no knowledge of the version.
pub fn snapshot_sql(version: PgVersion) -> String {
    composed_snapshot_sql(version, false)
}

/// `snapshot_sql` plus the archiver's state, for this host's own cluster only: counting the
/// segments waiting in pg_wal takes pg_ls_dir, which only a superuser may call before 12, and
/// pgha asks its own cluster as postgres but the other members as the replication role.
pub fn local_snapshot_sql(version: PgVersion) -> String {
    composed_snapshot_sql(version, true)
}

fn composed_snapshot_sql(version: PgVersion, archiver: bool) -> String {
    let WalNames { current_lsn, receive_lsn, replay_lsn, column } = wal_names(version);
    let replay_lag = if version.has_wal_names() { "extract(epoch FROM replay_lag)::text" } else { "''" };
    let wal_status = if version >= PgVersion::new(13, 0) { "wal_status" } else { "''" };
    let lsn = |expression: &str| format!("coalesce(({expression})::text, '')");
    let mut parts = vec![
        (
            vec![
                "'server'".to_string(),
                "current_setting('server_version_num')".into(),
                "pg_is_in_recovery()::text".into(),
                lsn(&format!("CASE WHEN pg_is_in_recovery() THEN {replay_lsn} ELSE {current_lsn} END")),
            ],
            "",
        ),
        (
            vec![
                "'sender'".to_string(),
                "coalesce(host(client_addr), '')".into(),
                "coalesce(application_name, '')".into(),
                "coalesce(state, '')".into(),
                "coalesce(sync_state, '')".into(),
                lsn(&format!("sent_{column}")),
                lsn(&format!("write_{column}")),
                lsn(&format!("flush_{column}")),
                lsn(&format!("replay_{column}")),
                format!("coalesce({replay_lag}, '')"),
            ],
            "FROM pg_stat_replication",
        ),
        (
            vec![
                "'slot'".to_string(),
                "slot_name::text".into(),
                "slot_type::text".into(),
                "active::text".into(),
                lsn("restart_lsn"),
                format!("coalesce({wal_status}, '')"),
            ],
            "FROM pg_replication_slots",
        ),
        (
            vec![
                "'progress'".to_string(),
                lsn(receive_lsn),
                lsn(replay_lsn),
                "coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::text, '')".into(),
            ],
            "WHERE pg_is_in_recovery()",
        ),
    ];
    // Only a primary archives (archive_mode = on); the .ready files are segments still waiting.
    let wal_dir = if version.has_wal_names() { "pg_wal" } else { "pg_xlog" };
    let age = |column: &str| format!("coalesce(extract(epoch FROM now() - {column})::text, '')");
    if archiver {
        parts.push((
            vec![
                "'archiver'".to_string(),
                "current_setting('archive_mode')".into(),
                "archived_count".into(),
                "coalesce(last_archived_wal, '')".into(),
                age("last_archived_time"),
                "failed_count".into(),
                "coalesce(last_failed_wal, '')".into(),
                age("last_failed_time"),
                format!(
                    "coalesce(array_length(array_remove(ARRAY(SELECT substring(pg_ls_dir('{wal_dir}/archive_status'), \
                 '\\.ready$')), NULL), 1), 0)"
                ),
            ],
            "FROM pg_stat_archiver WHERE NOT pg_is_in_recovery()",
        ));
    }
    // pg_stat_wal_receiver arrived in 9.6; sender_host/sender_port in 11.
    if version >= PgVersion::new(9, 6) {
        let (host, port) = if version >= PgVersion::new(11, 0) {
            ("coalesce(sender_host, '')", "coalesce(sender_port::text, '')")
        } else {
            ("''", "''")
        };
        parts.push((
            vec![
                "'receiver'".to_string(),
                "coalesce(status, '')".into(),
                "coalesce(conninfo, '')".into(),
                host.into(),
                port.into(),
                lsn("latest_end_lsn"),
                "coalesce(slot_name::text, '')".into(),
            ],
            "FROM pg_stat_wal_receiver",
        ));
    }
    let selects: Vec<String> = parts
        .into_iter()
        .map(|(mut columns, from)| {
            columns.resize(SNAPSHOT_COLUMNS, "''".into());
            let columns: Vec<String> = columns.into_iter().map(|c| format!("({c})::text")).collect();
            format!("SELECT {} {from}", columns.join(", "))
        })
        .collect();
    format!("{};\n", selects.join("\nUNION ALL "))
}

#[derive(Clone, Debug, PartialEq)]
pub struct WalSender {
    pub client_addr: Option<IpAddr>,
    pub application_name: String,
    pub state: String,
    pub sync_state: String,
    pub sent: Option<Lsn>,
    pub write: Option<Lsn>,
    pub flush: Option<Lsn>,
    pub replay: Option<Lsn>,
    pub replay_lag_seconds: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub slot_type: String,
    pub active: bool,
    pub restart_lsn: Option<Lsn>,
    pub wal_status: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Receiver {
    pub status: String,
    pub conninfo: String,
    pub sender_host: Option<String>,
    pub sender_port: Option<u16>,
    pub latest_end: Option<Lsn>,
    pub slot_name: Option<String>,
}

/// pg_stat_archiver and the segments waiting for archive_command, on a primary.
#[derive(Clone, Debug, PartialEq)]
pub struct Archiver {
    /// archive_mode: "off", "on" or "always".
    pub mode: String,
    pub archived_count: u64,
    pub last_archived_wal: Option<String>,
    pub seconds_since_archived: Option<f64>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub seconds_since_failed: Option<f64>,
    /// Segments in pg_wal whose archiving has not succeeded yet.
    pub ready: u64,
}

impl Archiver {
    /// archive_command failed after its last success: PostgreSQL keeps every segment from the
    /// failed one on in pg_wal and retries, so pg_wal grows until it succeeds.
    pub fn failing(&self) -> bool {
        match (self.seconds_since_failed, self.seconds_since_archived) {
            (Some(failed), Some(archived)) => failed < archived,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub receive: Option<Lsn>,
    pub replay: Option<Lsn>,
    pub seconds_since_replayed_commit: Option<f64>,
}

/// One server's replication state at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub version: PgVersion,
    pub in_recovery: bool,
    /// The primary's current WAL position, or the standby's replay position.
    pub wal_lsn: Option<Lsn>,
    pub senders: Vec<WalSender>,
    pub slots: Vec<Slot>,
    pub progress: Option<Progress>,
    /// None on a standby whose WAL receiver is not running (and always on 9.5, which cannot tell).
    pub receiver: Option<Receiver>,
    /// None on a standby.
    pub archiver: Option<Archiver>,
}

impl Snapshot {
    /// Walsenders whose standby confirms commits now: `sync` under a priority list (9.5, 9.6),
    /// `quorum` under `ANY n` (10 and later). A `potential` one would only step in for another.
    pub fn synchronous_confirmers(&self) -> Vec<&WalSender> {
        self.senders.iter().filter(|sender| matches!(sender.sync_state.as_str(), "sync" | "quorum")).collect()
    }
}

fn optional<T: FromStr>(text: &str) -> Result<Option<T>>
where
    T::Err: fmt::Display,
{
    if text.is_empty() {
        Ok(None)
    } else {
        text.parse().map(Some).map_err(|error| anyhow::anyhow!("{error}: {text:?}"))
    }
}

/// Parses the rows of `snapshot_sql`.
pub fn parse_snapshot(rows: &[Vec<String>]) -> Result<Snapshot> {
    let mut server = None;
    let mut senders = Vec::new();
    let mut slots = Vec::new();
    let mut progress = None;
    let mut receiver = None;
    let mut archiver = None;
    for row in rows {
        let fields: Vec<&str> = row.iter().map(String::as_str).collect();
        let width = match fields.first().copied() {
            Some("server" | "progress") => 4,
            Some("slot") => 6,
            Some("receiver") => 7,
            Some("archiver") => 9,
            _ => fields.len(),
        };
        match &fields[..width.min(fields.len())] {
            ["server", version_num, in_recovery, lsn] => {
                let version_num: u32 =
                    version_num.parse().with_context(|| format!("bad server_version_num {version_num:?}"))?;
                server = Some((PgVersion::from_version_num(version_num), *in_recovery == "true", optional(lsn)?));
            }
            ["sender", addr, name, state, sync, sent, write, flush, replay, lag] => senders.push(WalSender {
                client_addr: optional(addr)?,
                application_name: name.to_string(),
                state: state.to_string(),
                sync_state: sync.to_string(),
                sent: optional(sent)?,
                write: optional(write)?,
                flush: optional(flush)?,
                replay: optional(replay)?,
                replay_lag_seconds: optional(lag)?,
            }),
            ["slot", name, slot_type, active, restart, wal_status] => slots.push(Slot {
                name: name.to_string(),
                slot_type: slot_type.to_string(),
                active: *active == "true",
                restart_lsn: optional(restart)?,
                wal_status: (!wal_status.is_empty()).then(|| wal_status.to_string()),
            }),
            ["progress", receive, replay, since] => {
                progress = Some(Progress {
                    receive: optional(receive)?,
                    replay: optional(replay)?,
                    seconds_since_replayed_commit: optional(since)?,
                })
            }
            ["receiver", status, conninfo, host, port, latest_end, slot] => {
                receiver = Some(Receiver {
                    status: status.to_string(),
                    conninfo: conninfo.to_string(),
                    sender_host: (!host.is_empty()).then(|| host.to_string()),
                    sender_port: optional(port)?,
                    latest_end: optional(latest_end)?,
                    slot_name: (!slot.is_empty()).then(|| slot.to_string()),
                })
            }
            ["archiver", mode, archived, last_archived, since_archived, failed, last_failed, since_failed, ready] => {
                let count = |text: &str| {
                    text.parse::<u64>().with_context(|| format!("bad count {text:?} from pg_stat_archiver"))
                };
                archiver = Some(Archiver {
                    mode: mode.to_string(),
                    archived_count: count(archived)?,
                    last_archived_wal: (!last_archived.is_empty()).then(|| last_archived.to_string()),
                    seconds_since_archived: optional(since_archived)?,
                    failed_count: count(failed)?,
                    last_failed_wal: (!last_failed.is_empty()).then(|| last_failed.to_string()),
                    seconds_since_failed: optional(since_failed)?,
                    ready: count(ready)?,
                })
            }
            _ => bail!("unexpected row from the status query: {row:?}"),
        }
    }
    let Some((version, in_recovery, wal_lsn)) = server else { bail!("the status query returned no server row") };
    senders.sort_by(|a, b| (&a.application_name, a.client_addr).cmp(&(&b.application_name, b.client_addr)));
    slots.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Snapshot { version, in_recovery, wal_lsn, senders, slots, progress, receiver, archiver })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<Vec<String>> {
        crate::tools::psql::parse_rows(text)
    }

    #[test]
    fn parses_saved_primary_snapshot() {
        let snapshot = parse_snapshot(&rows(include_str!("../../tests/data/status-primary-15.txt"))).unwrap();
        assert!(!snapshot.in_recovery);
        assert_eq!(snapshot.version, PgVersion::new(15, 0));
        assert_eq!(snapshot.senders.len(), 1);
        let sender = &snapshot.senders[0];
        assert_eq!(sender.state, "streaming");
        assert!(sender.application_name.starts_with("pgha_10_231_"));
        assert!(snapshot.slots.iter().any(|slot| slot.active && slot.slot_type == "physical"));
        assert!(snapshot.receiver.is_none() && snapshot.progress.is_none());
    }

    #[test]
    fn parses_saved_standby_snapshot() {
        let snapshot = parse_snapshot(&rows(include_str!("../../tests/data/status-standby-15.txt"))).unwrap();
        assert!(snapshot.in_recovery);
        let receiver = snapshot.receiver.as_ref().unwrap();
        assert_eq!(receiver.status, "streaming");
        assert!(!receiver.conninfo.contains("password=") || receiver.conninfo.contains("password=********"));
        assert!(snapshot.progress.as_ref().unwrap().replay.is_some());
    }

    #[test]
    fn parses_saved_primary_snapshot_with_a_failing_archive() {
        let text = include_str!("../../tests/data/status-primary-archive-failing-15.txt");
        let archiver = parse_snapshot(&rows(text)).unwrap().archiver.unwrap();
        assert_eq!(archiver.mode, "on");
        assert_eq!((archiver.archived_count, archiver.failed_count, archiver.ready), (1, 3, 1));
        assert_eq!(archiver.last_failed_wal.as_deref(), Some("000000010000000000000002"));
        assert!(archiver.failing(), "{archiver:?}");
        let standby = parse_snapshot(&rows(include_str!("../../tests/data/status-standby-15.txt"))).unwrap();
        assert!(standby.archiver.is_none());
    }

    #[test]
    fn snapshot_sql_follows_the_renames() {
        assert!(snapshot_sql(PgVersion::new(9, 5)).contains("replay_location"));
        assert!(!snapshot_sql(PgVersion::new(9, 5)).contains("pg_stat_wal_receiver"));
        assert!(snapshot_sql(PgVersion::new(15, 0)).contains("replay_lsn"));
        assert!(snapshot_sql(PgVersion::new(15, 0)).contains("sender_host"));
        assert!(local_snapshot_sql(PgVersion::new(9, 6)).contains("'pg_xlog/archive_status'"));
        assert!(local_snapshot_sql(PgVersion::new(10, 0)).contains("'pg_wal/archive_status'"));
        assert!(
            !snapshot_sql(PgVersion::new(15, 0)).contains("pg_ls_dir"),
            "the other members answer the replication role"
        );
    }
}
