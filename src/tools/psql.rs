//! psql: the one way pgha talks SQL to a server, local or remote, and the typed reading of
//! its answers (rows, booleans, and why a connection failed).
//!
//! SQL travels on psql's stdin, never in argv, so nothing pgha sends shows in `ps`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::debian::Cluster;
use crate::quote::conninfo_quote;
use crate::tools::{output_tracked, postgres_command, retry_until_ok};

const FIELD_SEPARATOR: char = '\u{1f}';
const RECORD_SEPARATOR: char = '\u{1e}';

/// A connection target for psql: the local cluster over its Unix socket, or a conninfo string.
#[derive(Clone, Debug)]
pub enum Target {
    Local { socket_dir: PathBuf, port: u16, database: String },
    Remote { conninfo: String },
}

impl Target {
    pub fn local(cluster: &Cluster) -> Target {
        Target::Local { socket_dir: cluster.socket_dir.clone(), port: cluster.port, database: "postgres".into() }
    }

    fn conninfo(&self) -> String {
        match self {
            Target::Local { socket_dir, port, database } => format!(
                "host={} port={port} dbname={} connect_timeout=10",
                conninfo_quote(&socket_dir.display().to_string()),
                conninfo_quote(database)
            ),
            Target::Remote { conninfo } => conninfo.clone(),
        }
    }
}

/// Where Debian installs each version's programs, in a directory named after the version.
const CLIENT_ROOT: &str = "/usr/lib/postgresql";

/// The newest psql under `root`, run directly rather than through Debian's pg_wrapper
/// (/usr/bin/psql): pg_wrapper, given no -h/-p, inspects every cluster on the host to choose a
/// default and aborts ("Invalid data directory for cluster ...") while any one of them is being
/// created or dropped, although pgha's conninfo always names host and port. The newest psql is
/// what pg_wrapper would run too; it talks to every server version pgha supports.
pub fn psql_program(root: &Path) -> PathBuf {
    let version_key = |name: &str| -> Option<(u32, u32)> {
        let (major, minor) = name.split_once('.').unwrap_or((name, "0"));
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let key = version_key(&entry.file_name().to_string_lossy())?;
            let program = entry.path().join("bin/psql");
            program.is_file().then_some((key, program))
        })
        .max()
        .map_or_else(|| PathBuf::from("psql"), |(_, program)| program)
}

/// Runs SQL through psql as the postgres user and returns its raw unaligned output.
pub fn invoke_psql(target: &Target, sql: &str) -> Result<String> {
    let mut command = postgres_command(&psql_program(Path::new(CLIENT_ROOT)).to_string_lossy())?;
    command
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(format!("--field-separator={FIELD_SEPARATOR}"))
        .arg(format!("--record-separator={RECORD_SEPARATOR}"))
        .arg(format!("--dbname={}", target.conninfo()));
    let output = output_tracked(&mut command, "psql", Some(sql.as_bytes()))?;
    if !output.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Splits psql's unaligned output into rows of fields.
pub fn parse_rows(output: &str) -> Vec<Vec<String>> {
    // psql ends the last record with a newline instead of the record separator.
    let output = output.strip_suffix('\n').unwrap_or(output);
    output
        .split(RECORD_SEPARATOR)
        .map(|record| record.trim_start_matches('\n'))
        .filter(|record| !record.is_empty())
        .map(|record| record.split(FIELD_SEPARATOR).map(str::to_string).collect())
        .collect()
}

pub fn query(target: &Target, sql: &str) -> Result<Vec<Vec<String>>> {
    Ok(parse_rows(&invoke_psql(target, sql)?))
}

/// The single value of a one-row, one-column query.
pub fn query_value(target: &Target, sql: &str) -> Result<String> {
    let rows = query(target, sql)?;
    match rows.as_slice() {
        [row] if row.len() == 1 => Ok(row[0].clone()),
        _ => bail!("expected one value from {sql:?}, got {rows:?}"),
    }
}

/// A one-row, one-column boolean answer.
pub fn query_bool(target: &Target, sql: &str) -> Result<bool> {
    parse_bool(&query_value(target, sql)?)
}

/// A boolean as psql prints it: `t`/`f` for a bool column, `true`/`false` for its text cast.
pub fn parse_bool(text: &str) -> Result<bool> {
    match text {
        "t" | "true" => Ok(true),
        "f" | "false" => Ok(false),
        other => bail!("expected a boolean from the server, got {other:?}"),
    }
}

/// Polls until the server answers queries, or the timeout passes.
pub fn wait_until_ready(target: &Target, timeout: Duration) -> Result<()> {
    retry_until_ok(timeout, Duration::from_millis(250), || query_value(target, "SELECT 1"))
        .map(|_| ())
        .with_context(|| format!("the server did not accept connections within {}s", timeout.as_secs()))
}

/// Why a connection attempt failed, read from libpq's message (psql prints it to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionFailure {
    /// Nobody answered at that address: refused, timed out, no route.
    Unreachable,
    StartingUp,
    ShuttingDown,
    /// Crash recovery: a server that was not shut down cleanly is replaying its WAL.
    InRecoveryMode,
    /// A standby with hot_standby off (a fenced member): up, in recovery, serving nobody.
    NotAcceptingConnections,
    PasswordRejected,
    NoHbaEntry,
    NoSuchRole,
    /// Anything else: the server answered, or psql failed for another reason.
    Other,
}

/// libpq's messages are English whatever the server's lc_messages: psql runs with LANG=C.UTF-8.
pub fn classify_failure(error_text: &str) -> ConnectionFailure {
    const UNREACHABLE: [&str; 6] = [
        "Connection refused",
        "timeout expired",
        "No route to host",
        "Network is unreachable",
        "could not connect to server: Connection",
        "Host is unreachable",
    ];
    if error_text.contains("the database system is starting up") {
        ConnectionFailure::StartingUp
    } else if error_text.contains("the database system is shutting down") {
        ConnectionFailure::ShuttingDown
    } else if error_text.contains("the database system is in recovery mode") {
        ConnectionFailure::InRecoveryMode
    } else if error_text.contains("the database system is not accepting connections") {
        ConnectionFailure::NotAcceptingConnections
    } else if UNREACHABLE.iter().any(|needle| error_text.contains(needle)) {
        ConnectionFailure::Unreachable
    } else if error_text.contains("password authentication failed") {
        ConnectionFailure::PasswordRejected
    } else if error_text.contains("no pg_hba.conf entry") {
        ConnectionFailure::NoHbaEntry
    } else if error_text.contains("does not exist") && error_text.contains("role") {
        ConnectionFailure::NoSuchRole
    } else {
        ConnectionFailure::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_saved_psql_output() {
        // psql 15: printf 'SELECT 1, 2 UNION ALL SELECT 3, 4' | psql -XqAt -F $'\x1f' -R $'\x1e'
        assert_eq!(parse_rows("1\u{1f}2\u{1e}3\u{1f}4\n"), vec![vec!["1", "2"], vec!["3", "4"]]);
        // SHOW ssl
        assert_eq!(parse_rows("on\n"), vec![vec!["on"]]);
    }

    #[test]
    fn parses_unaligned_rows_with_embedded_newlines() {
        let output = "a\u{1f}b\u{1e}\nmulti\nline\u{1f}\u{1e}";
        assert_eq!(parse_rows(output), vec![vec!["a", "b"], vec!["multi\nline", ""]]);
        assert!(parse_rows("").is_empty());
        // Saved from psql 15: two rows of (1, 2) with -A -t and these separators.
        assert_eq!(parse_rows("1\u{1f}2\u{1e}1\u{1f}2\n"), vec![vec!["1", "2"], vec!["1", "2"]]);
    }

    #[test]
    fn picks_the_newest_psql_by_version_number() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "17", "100-not-a-version"] {
            std::fs::create_dir_all(root.path().join(version).join("bin")).unwrap();
            std::fs::write(root.path().join(version).join("bin/psql"), "").unwrap();
        }
        std::fs::create_dir_all(root.path().join("18/bin")).unwrap(); // a server without psql
        assert_eq!(psql_program(root.path()), root.path().join("17/bin/psql"));
        assert_eq!(psql_program(&root.path().join("missing")), PathBuf::from("psql"));
    }

    #[test]
    fn booleans_in_both_spellings() {
        assert!(parse_bool("t").unwrap() && parse_bool("true").unwrap());
        assert!(!parse_bool("f").unwrap() && !parse_bool("false").unwrap());
        assert!(parse_bool("").is_err() && parse_bool("yes").is_err());
    }

    #[test]
    fn unreachable_means_nobody_answered() {
        let unreachable = |text| classify_failure(text) == ConnectionFailure::Unreachable;
        assert!(unreachable("psql: error: connection to server at \"10.0.0.1\", port 5432 failed: Connection refused"));
        assert!(unreachable("psql: error: connection to server at \"10.0.0.1\", port 5432 failed: timeout expired"));
        assert!(!unreachable("FATAL:  password authentication failed for user \"replicator\""));
        assert!(!unreachable("FATAL:  no pg_hba.conf entry for host \"10.0.0.2\""));
        assert_eq!(classify_failure("FATAL:  the database system is starting up"), ConnectionFailure::StartingUp);
        assert_eq!(
            classify_failure("FATAL:  no pg_hba.conf entry for host \"10.0.0.2\""),
            ConnectionFailure::NoHbaEntry
        );
        assert_eq!(classify_failure("FATAL:  role \"x\" does not exist"), ConnectionFailure::NoSuchRole);
        // Saved from PostgreSQL 15 with hot_standby = off.
        assert_eq!(
            classify_failure(
                "FATAL:  the database system is not accepting connections\nDETAIL:  Hot standby mode is disabled."
            ),
            ConnectionFailure::NotAcceptingConnections
        );
        assert_eq!(
            classify_failure("FATAL:  the database system is in recovery mode"),
            ConnectionFailure::InRecoveryMode
        );
    }
}
