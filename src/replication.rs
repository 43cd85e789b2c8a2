//! Reading replication state from a running server: version-aware SQL, pure parsers, and
//! the health rules `pgha status` applies. Shared by status, verify, promote and rejoin.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::pg::sql_literal;
use crate::version::PgVersion;

/// A WAL position, printed as PostgreSQL prints pg_lsn ("16/B374D848").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `earlier` to `self`; 0 when `earlier` is ahead.
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a WAL position (expected hex/hex such as 0/3000060)");
        let (high, low) = text.trim().split_once('/').ok_or_else(bad)?;
        let high = u64::from_str_radix(high, 16).map_err(|_| bad())?;
        let low = u64::from_str_radix(low, 16).map_err(|_| bad())?;
        if high > u32::MAX as u64 || low > u32::MAX as u64 {
            return Err(bad());
        }
        Ok(Lsn((high << 32) | low))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Function and column names, which 10 renamed from xlog/location to wal/lsn.
struct WalNames {
    current_lsn: &'static str,
    receive_lsn: &'static str,
    replay_lsn: &'static str,
    column: &'static str,
}

fn wal_names(version: PgVersion) -> WalNames {
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
    for row in rows {
        let fields: Vec<&str> = row.iter().map(String::as_str).collect();
        let width = match fields.first().copied() {
            Some("server" | "progress") => 4,
            Some("slot") => 6,
            Some("receiver") => 7,
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
            _ => bail!("unexpected row from the status query: {row:?}"),
        }
    }
    let Some((version, in_recovery, wal_lsn)) = server else { bail!("the status query returned no server row") };
    senders.sort_by(|a, b| (&a.application_name, a.client_addr).cmp(&(&b.application_name, b.client_addr)));
    slots.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Snapshot { version, in_recovery, wal_lsn, senders, slots, progress, receiver })
}

/// How far a standby is behind, as `pgha status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Lag {
    pub bytes: Option<u64>,
    pub seconds: Option<f64>,
}

/// Lag of a walsender's standby: bytes from its replay position to the primary's WAL, and time
/// from replay_lag, which is 0 once everything is replayed (an idle primary keeps an old value).
pub fn sender_lag(sender: &WalSender, current: Option<Lsn>) -> Lag {
    let bytes = match (current, sender.replay) {
        (Some(current), Some(replay)) => Some(current.bytes_after(replay)),
        _ => None,
    };
    let seconds = if bytes == Some(0) { Some(0.0) } else { sender.replay_lag_seconds };
    Lag { bytes, seconds }
}

/// Lag of this standby: bytes from replay to the newest WAL it knows the primary has, and time
/// since the last replayed commit, except that caught-up means 0 whatever that timestamp says.
pub fn standby_lag(progress: &Progress, receiver: Option<&Receiver>) -> Lag {
    let newest = [progress.receive, receiver.and_then(|r| r.latest_end)].into_iter().flatten().max();
    match (newest, progress.replay) {
        (Some(newest), Some(replay)) if replay >= newest => Lag { bytes: Some(0), seconds: Some(0.0) },
        (Some(newest), Some(replay)) => {
            Lag { bytes: Some(newest.bytes_after(replay)), seconds: progress.seconds_since_replayed_commit }
        }
        _ => Lag { bytes: None, seconds: progress.seconds_since_replayed_commit },
    }
}

/// A lag threshold: bytes ("16MB", "1GB", "500kB", "8192") or time ("30s", "5min").
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LagLimit {
    Bytes(u64),
    Time(Duration),
}

impl FromStr for LagLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let expected =
            || format!("{text:?} is not a lag limit: expected bytes such as \"16MB\" or a duration such as \"30s\"");
        let number: u64 = number.parse().map_err(|_| expected())?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "kB" | "KB" => 1 << 10,
            "MB" => 1 << 20,
            "GB" => 1 << 30,
            "TB" => 1 << 40,
            _ => return humantime::parse_duration(trimmed).map(LagLimit::Time).map_err(|_| expected()),
        };
        number.checked_mul(factor).map(LagLimit::Bytes).ok_or_else(expected)
    }
}

impl fmt::Display for LagLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LagLimit::Bytes(bytes) => f.write_str(&format_bytes(*bytes)),
            LagLimit::Time(duration) => write!(f, "{}", humantime::format_duration(*duration)),
        }
    }
}

impl LagLimit {
    pub fn exceeded_by(self, lag: Lag) -> bool {
        match self {
            LagLimit::Bytes(limit) => lag.bytes.is_some_and(|bytes| bytes > limit),
            LagLimit::Time(limit) => lag.seconds.is_some_and(|seconds| seconds > limit.as_secs_f64()),
        }
    }
}

pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Monitoring-plugin states, ordered so the worst wins; the discriminant is the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Health {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Health {
    pub fn exit_code(self) -> i32 {
        self as i32
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Warning => "WARNING",
            Health::Critical => "CRITICAL",
            Health::Unknown => "UNKNOWN",
        }
    }
}

/// The SQL that makes a new WAL position without touching user tables, and returns it.
/// 9.6+: a transactional logical message, committed with remote_apply so every standby reports
/// its replay at once instead of at its next wal_receiver_status_interval (remote_apply does not
/// make the commit wait unless a standby is listed in synchronous_standby_names).
/// 9.5: a throwaway transaction that only takes a transaction id, so its commit record is the new
/// position; 9.5 has no remote_apply, so standbys report within wal_receiver_status_interval.
pub fn verify_sql(version: PgVersion, note: &str) -> Vec<String> {
    if version >= PgVersion::new(9, 6) {
        vec![format!(
            "SET synchronous_commit = remote_apply;\nSELECT pg_logical_emit_message(true, 'pgha', {})::text;\n",
            sql_literal(note)
        )]
    } else {
        // Two sessions: the position is read after the throwaway transaction has committed.
        vec![
            "SET synchronous_commit = on;\nSELECT txid_current() IS NULL;\n".to_string(),
            format!("SELECT {}::text;\n", wal_names(version).current_lsn),
        ]
    }
}

/// The position the last of `verify_sql`'s statements returned.
pub fn parse_verify_output(rows: &[Vec<String>]) -> Result<Lsn> {
    let last = rows.last().and_then(|row| row.first()).context("verify: the server returned no WAL position")?;
    last.parse().map_err(|error: String| anyhow::anyhow!(error))
}

/// Creates the physical slot a standby streams from, unless it exists. Reserving at once keeps the
/// WAL from now on, so a node that (re)joins later finds what it needs.
pub fn ensure_slot_sql(name: &str) -> String {
    let name = sql_literal(name);
    format!(
        "SELECT 'created' FROM pg_create_physical_replication_slot({name}, true) \
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {name});\n"
    )
}

/// Whether a psql failure means nobody answered at that address (as opposed to a server that
/// answered and refused us, which proves it is up).
pub fn is_unreachable(error_text: &str) -> bool {
    [
        "Connection refused",
        "timeout expired",
        "No route to host",
        "Network is unreachable",
        "could not connect to server: Connection",
        "the database system is shutting down",
        "the database system is starting up",
        "Host is unreachable",
    ]
    .iter()
    .any(|needle| error_text.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<Vec<String>> {
        crate::pg::parse_rows(text)
    }

    #[test]
    fn lsn_round_trip_and_distance() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/3000060".parse::<Lsn>().unwrap().0, 0x3000060);
        assert_eq!(lsn.bytes_after("16/B374D840".parse().unwrap()), 8);
        assert_eq!("0/10".parse::<Lsn>().unwrap().bytes_after("0/20".parse().unwrap()), 0);
        assert!("3000060".parse::<Lsn>().is_err());
    }

    #[test]
    fn parses_saved_primary_snapshot() {
        let snapshot = parse_snapshot(&rows(include_str!("../tests/data/status-primary-15.txt"))).unwrap();
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
        let snapshot = parse_snapshot(&rows(include_str!("../tests/data/status-standby-15.txt"))).unwrap();
        assert!(snapshot.in_recovery);
        let receiver = snapshot.receiver.as_ref().unwrap();
        assert_eq!(receiver.status, "streaming");
        assert!(!receiver.conninfo.contains("password=") || receiver.conninfo.contains("password=********"));
        assert!(snapshot.progress.as_ref().unwrap().replay.is_some());
    }

    #[test]
    fn idle_standby_has_no_lag_whatever_the_replay_timestamp() {
        let progress =
            Progress { receive: Some(Lsn(100)), replay: Some(Lsn(100)), seconds_since_replayed_commit: Some(86400.0) };
        assert_eq!(standby_lag(&progress, None), Lag { bytes: Some(0), seconds: Some(0.0) });
        let behind = Progress { replay: Some(Lsn(40)), ..progress };
        assert_eq!(standby_lag(&behind, None), Lag { bytes: Some(60), seconds: Some(86400.0) });
    }

    #[test]
    fn caught_up_sender_has_no_lag_even_with_a_stale_replay_lag() {
        let sender = WalSender {
            client_addr: None,
            application_name: "x".into(),
            state: "streaming".into(),
            sync_state: "async".into(),
            sent: Some(Lsn(10)),
            write: Some(Lsn(10)),
            flush: Some(Lsn(10)),
            replay: Some(Lsn(10)),
            replay_lag_seconds: Some(42.0),
        };
        assert_eq!(sender_lag(&sender, Some(Lsn(10))), Lag { bytes: Some(0), seconds: Some(0.0) });
        assert_eq!(sender_lag(&sender, Some(Lsn(30))).bytes, Some(20));
    }

    #[test]
    fn lag_limits_take_bytes_or_time() {
        assert_eq!("16MB".parse::<LagLimit>().unwrap(), LagLimit::Bytes(16 << 20));
        assert_eq!("8192".parse::<LagLimit>().unwrap(), LagLimit::Bytes(8192));
        assert_eq!("30s".parse::<LagLimit>().unwrap(), LagLimit::Time(Duration::from_secs(30)));
        assert_eq!("5min".parse::<LagLimit>().unwrap(), LagLimit::Time(Duration::from_secs(300)));
        assert!("lots".parse::<LagLimit>().is_err());
        let lag = Lag { bytes: Some(2 << 20), seconds: Some(3.0) };
        assert!(LagLimit::Bytes(1 << 20).exceeded_by(lag));
        assert!(!LagLimit::Time(Duration::from_secs(5)).exceeded_by(lag));
    }

    #[test]
    fn verify_sql_uses_a_message_where_it_exists() {
        assert!(verify_sql(PgVersion::new(15, 0), "x")[0].contains("pg_logical_emit_message(true"));
        let old = verify_sql(PgVersion::new(9, 5), "x");
        assert!(old[0].contains("txid_current()") && old[1].contains("pg_current_xlog_location()"));
        assert_eq!(parse_verify_output(&rows("f\u{1e}0/3000060\u{1e}")).unwrap(), Lsn(0x3000060));
    }

    #[test]
    fn unreachable_means_nobody_answered() {
        assert!(is_unreachable(
            "psql: error: connection to server at \"10.0.0.1\", port 5432 failed: Connection refused"
        ));
        assert!(is_unreachable("psql: error: connection to server at \"10.0.0.1\", port 5432 failed: timeout expired"));
        assert!(!is_unreachable("FATAL:  password authentication failed for user \"replicator\""));
        assert!(!is_unreachable("FATAL:  no pg_hba.conf entry for host \"10.0.0.2\""));
    }

    #[test]
    fn snapshot_sql_follows_the_renames() {
        assert!(snapshot_sql(PgVersion::new(9, 5)).contains("replay_location"));
        assert!(!snapshot_sql(PgVersion::new(9, 5)).contains("pg_stat_wal_receiver"));
        assert!(snapshot_sql(PgVersion::new(15, 0)).contains("replay_lsn"));
        assert!(snapshot_sql(PgVersion::new(15, 0)).contains("sender_host"));
    }
}
