//! Replication as the servers see it: WAL positions, the snapshot of a server's replication
//! state (`snapshot`), lag and its limits (`lag`), and the version-aware SQL that verify and the
//! slots send. Shared by status, verify, promote and rejoin.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::quote::sql_literal;
use crate::version::PgVersion;

mod lag;
mod snapshot;

pub use crate::size::format_bytes;
pub use lag::{sender_lag, standby_lag, Health, Lag, LagLimit};
use snapshot::wal_names;
pub use snapshot::{
    local_snapshot_sql, parse_snapshot, snapshot_sql, Archiver, Progress, Receiver, Snapshot, WalSender,
};

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
/// 9.5's function takes the name only (and cannot reserve WAL at creation); the second argument
/// arrived in 9.6.
pub fn ensure_slot_sql(name: &str, version: PgVersion) -> String {
    let name = sql_literal(name);
    let reserve = if version >= PgVersion::new(9, 6) { ", true" } else { "" };
    format!(
        "SELECT 'created' FROM pg_create_physical_replication_slot({name}{reserve}) \
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {name});\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_creation_follows_the_9_5_signature() {
        assert!(ensure_slot_sql("s", PgVersion::new(9, 5)).contains("pg_create_physical_replication_slot('s')"));
        assert!(ensure_slot_sql("s", PgVersion::new(9, 6)).contains("pg_create_physical_replication_slot('s', true)"));
    }

    fn rows(text: &str) -> Vec<Vec<String>> {
        crate::tools::psql::parse_rows(text)
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
    fn verify_sql_uses_a_message_where_it_exists() {
        assert!(verify_sql(PgVersion::new(15, 0), "x")[0].contains("pg_logical_emit_message(true"));
        let old = verify_sql(PgVersion::new(9, 5), "x");
        assert!(old[0].contains("txid_current()") && old[1].contains("pg_current_xlog_location()"));
        assert_eq!(parse_verify_output(&rows("f\u{1e}0/3000060\u{1e}")).unwrap(), Lsn(0x3000060));
    }
}
