//! Talking to PostgreSQL through psql, and quoting for every syntax pgha writes.
//!
//! SQL travels on psql's stdin, never in argv, so nothing pgha sends shows in `ps`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::debian::Cluster;
use crate::host::postgres_command;

pub const SOCKET_DIR: &str = "/var/run/postgresql";

const FIELD_SEPARATOR: char = '\u{1f}';
const RECORD_SEPARATOR: char = '\u{1e}';

/// A connection target for psql: the local cluster over its Unix socket, or a conninfo string.
#[derive(Clone, Debug)]
pub enum Target {
    Local { port: u16, database: String },
    Remote { conninfo: String },
}

impl Target {
    pub fn local(cluster: &Cluster) -> Target {
        Target::Local { port: cluster.port, database: "postgres".into() }
    }

    fn conninfo(&self) -> String {
        match self {
            Target::Local { port, database } => {
                format!("host={SOCKET_DIR} port={port} dbname={} connect_timeout=10", conninfo_quote(database))
            }
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
        .arg(format!("--dbname={}", target.conninfo()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("cannot run psql")?;
    child.stdin.take().expect("stdin is piped").write_all(sql.as_bytes()).context("cannot send SQL to psql")?;
    let output = child.wait_with_output().context("psql did not finish")?;
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

/// Polls until the server answers queries, or the timeout passes.
pub fn wait_until_ready(target: &Target, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match query_value(target, "SELECT 1") {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(
                    error.context(format!("the server did not accept connections within {}s", timeout.as_secs()))
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// An SQL string literal; E'' form when backslashes appear, so the result is the same
/// whatever `standard_conforming_strings` says.
pub fn sql_literal(text: &str) -> String {
    let doubled = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", doubled.replace('\\', "\\\\"))
    } else {
        format!("'{doubled}'")
    }
}

pub fn sql_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string value in postgresql.conf or recovery.conf, where backslash is an escape character.
pub fn conf_quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// A value in a libpq conninfo string, quoted only when it has to be, so the common case stays readable.
pub fn conninfo_quote(text: &str) -> String {
    let plain = !text.is_empty() && text.chars().all(|c| !c.is_whitespace() && c != '\'' && c != '\\' && c != '=');
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// A POSIX shell word, for commands PostgreSQL hands to /bin/sh (archive_command).
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+,".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
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
    fn quoting() {
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_literal("a\\b'"), "E'a\\\\b'''");
        assert_eq!(sql_identifier("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(conf_quote("a'b\\c"), "'a''b\\\\c'");
        assert_eq!(conninfo_quote("o'k\\"), "'o\\'k\\\\'");
        assert_eq!(conninfo_quote("10.0.0.1"), "10.0.0.1");
        assert_eq!(conninfo_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's here"), "'it'\\''s here'");
        assert_eq!(shell_quote("/var/backups/pgsql/archive"), "/var/backups/pgsql/archive");
        assert_eq!(shell_quote("/x/$HOME"), "'/x/$HOME'");
    }
}
