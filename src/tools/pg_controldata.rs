//! pg_controldata: what a data directory's pg_control says, read without a running server.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use crate::replication::Lsn;
use crate::tools::{postgres_command, run_checked};
use crate::version::PgVersion;

/// The settings the primary ran with when pg_control was last written: a standby must meet each.
/// pg_control has max_wal_senders only from PostgreSQL 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordedSettings {
    pub max_connections: u32,
    pub max_worker_processes: u32,
    pub max_wal_senders: Option<u32>,
    pub max_prepared_transactions: u32,
    pub max_locks_per_transaction: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlData {
    /// What makes two data directories one primary and its standbys.
    pub system_identifier: String,
    /// "in production", "shut down", "shut down in recovery", "in crash recovery", ...
    pub state: String,
    pub timeline: u32,
    pub checkpoint: Option<Lsn>,
    pub min_recovery_end: Option<Lsn>,
    pub settings: RecordedSettings,
    pub wal_log_hints: bool,
    pub checksums: bool,
    pub segment_bytes: u64,
    /// BLCKSZ: the unit pg_rewind's block numbers count in.
    pub block_bytes: u64,
}

impl ControlData {
    /// pg_rewind and a copy need a cluster that was shut down cleanly.
    pub fn is_shut_down(&self) -> bool {
        self.state == "shut down" || self.state == "shut down in recovery"
    }
}

pub fn invoke_pg_controldata(version: PgVersion, data_dir: &Path) -> Result<String> {
    let program = format!("{}/pg_controldata", version.bin_dir());
    run_checked(postgres_command(&program)?.arg(data_dir), "pg_controldata")
}

pub fn read(version: PgVersion, data_dir: &Path) -> Result<ControlData> {
    parse_controldata(&invoke_pg_controldata(version, data_dir)?)
        .with_context(|| format!("pg_controldata {}", data_dir.display()))
}

/// Parses pg_controldata's "key: value" lines (English: pgha runs it with LANG=C.UTF-8).
pub fn parse_controldata(output: &str) -> Result<ControlData> {
    let fields: BTreeMap<&str, &str> =
        output.lines().filter_map(|line| line.split_once(':')).map(|(key, value)| (key.trim(), value.trim())).collect();
    let text = |key: &str| fields.get(key).copied().with_context(|| format!("no {key:?} in the output"));
    let number = |key: &str| -> Result<u32> {
        let value = text(key)?;
        value.parse().with_context(|| format!("{key:?} is {value:?}, not a number"))
    };
    let lsn = |key: &str| fields.get(key).and_then(|value| value.parse::<Lsn>().ok());
    // Segment arithmetic divides by this; PostgreSQL only makes powers of two from 1 MB to 1 GB.
    let segment_bytes = match fields.get("Bytes per WAL segment") {
        None => 16 << 20,
        Some(value) => value
            .parse::<u64>()
            .ok()
            .filter(|bytes| bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(bytes))
            .with_context(|| format!("\"Bytes per WAL segment\" is {value:?}, not a WAL segment size"))?,
    };
    // PostgreSQL builds with a power of two from 1 kB to 32 kB; 8 kB unless configured otherwise.
    let block_bytes = match fields.get("Database block size") {
        None => 8192,
        Some(value) => value
            .parse::<u64>()
            .ok()
            .filter(|bytes| bytes.is_power_of_two() && (1 << 10..=1 << 15).contains(bytes))
            .with_context(|| format!("\"Database block size\" is {value:?}, not a block size"))?,
    };
    Ok(ControlData {
        system_identifier: text("Database system identifier")?.to_string(),
        state: text("Database cluster state")?.to_string(),
        timeline: number("Latest checkpoint's TimeLineID")?,
        checkpoint: lsn("Latest checkpoint location"),
        min_recovery_end: lsn("Minimum recovery ending location"),
        settings: RecordedSettings {
            max_connections: number("max_connections setting")?,
            max_worker_processes: number("max_worker_processes setting")?,
            max_wal_senders: number("max_wal_senders setting").ok(),
            max_prepared_transactions: number("max_prepared_xacts setting")?,
            max_locks_per_transaction: number("max_locks_per_xact setting")?,
        },
        wal_log_hints: fields.get("wal_log_hints setting") == Some(&"on"),
        checksums: fields.get("Data page checksum version").is_some_and(|version| *version != "0"),
        segment_bytes,
        block_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = include_str!("../../tests/data/pg_controldata-15.txt");

    #[test]
    fn reads_saved_controldata() {
        let control = parse_controldata(SAVED).unwrap();
        assert_eq!(control.system_identifier, "7712414678833711826");
        assert_eq!(control.state, "in production");
        assert!(!control.is_shut_down());
        assert_eq!(control.timeline, 1);
        assert_eq!(control.checkpoint, Some("0/9000060".parse().unwrap()));
        assert_eq!(
            control.settings,
            RecordedSettings {
                max_connections: 100,
                max_worker_processes: 8,
                max_wal_senders: Some(10),
                max_prepared_transactions: 0,
                max_locks_per_transaction: 64
            }
        );
        assert!(!control.wal_log_hints && !control.checksums);
        assert_eq!(control.segment_bytes, 16 << 20);
        assert_eq!(control.block_bytes, 8192);
    }

    #[test]
    fn before_12_pg_control_has_no_max_wal_senders() {
        let pre12: String =
            SAVED.lines().filter(|line| !line.starts_with("max_wal_senders")).map(|l| format!("{l}\n")).collect();
        assert_eq!(parse_controldata(&pre12).unwrap().settings.max_wal_senders, None);
    }

    #[test]
    fn missing_identity_is_an_error_naming_the_key() {
        let error = parse_controldata("Database cluster state: shut down\n").unwrap_err();
        assert!(format!("{error:#}").contains("Database system identifier"), "{error:#}");
    }
}
