//! Connections from this host to the primary: the conninfo, the sslmode, and the passfiles that
//! carry the replication password (the real one the wal receiver uses, and a private one per
//! run). The password never appears in a conninfo, an argument or the environment.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use crate::config::{Config, Password, SslMode};
use crate::files::apply::write_atomic;
use crate::files::plan::{file_change, FileChange, Ownership};
use crate::host::postgres_account;
use crate::password::passfile_line;
use crate::quote::conninfo_quote;
use crate::tools::psql::{classify_failure, ConnectionFailure, Target};

/// How pgha's own connections notice a primary that vanished (link down, host powered off)
/// instead of waiting for the kernel's TCP timeout of many minutes: keepalives after 5 s of
/// silence, 3 probes 2 s apart, and unacknowledged data given up after 15 s. The clients are
/// Debian's PostgreSQL 15 tools, whose libpq knows all of these.
const DEAD_PEER_DETECTION: &str =
    "keepalives=1 keepalives_idle=5 keepalives_interval=2 keepalives_count=3 tcp_user_timeout=15000";

/// A conninfo for the primary: the password comes from `passfile`, never from the string.
pub fn primary_client_conninfo(config: &Config, passfile: &Path, sslmode: &str, dbname: &str) -> String {
    format!(
        "host={} port={} user={} dbname={} passfile={} sslmode={sslmode} connect_timeout=10 {DEAD_PEER_DETECTION}",
        conninfo_quote(&config.primary.address.to_string()),
        config.primary.port,
        conninfo_quote(&config.replication.user),
        conninfo_quote(dbname),
        conninfo_quote(&passfile.display().to_string()),
    )
}

/// sslmode before the primary's `ssl` is known: what the admin chose, or `prefer` for auto.
pub fn preflight_sslmode(config: &Config) -> &'static str {
    match config.replication.sslmode {
        SslMode::Auto => "prefer",
        other => other.as_str(),
    }
}

/// An SQL connection to the primary's postgres database.
pub fn sql_target(config: &Config, passfile: &Path, sslmode: &str) -> Target {
    Target::Remote { conninfo: primary_client_conninfo(config, passfile, sslmode, "postgres") }
}

/// A physical replication connection to the primary (IDENTIFY_SYSTEM and the like).
pub fn replication_target(config: &Config, passfile: &Path, sslmode: &str) -> Target {
    let conninfo = primary_client_conninfo(config, passfile, sslmode, "replication");
    Target::Remote { conninfo: format!("{conninfo} replication=true") }
}

/// The libpq passfile pgha's standbys use: one line per node address, any database, so it keeps
/// working for whichever node is primary after a promote or rejoin. Every node is assumed to
/// listen on `primary.port`.
pub fn passfile_content(config: &Config, password: &Password) -> String {
    let mut content = String::from("# Written by pgha from the replication password file. Do not edit.\n");
    for address in config.node_addresses() {
        content.push_str(&passfile_line(
            &address.to_string(),
            config.primary.port,
            "*",
            &config.replication.user,
            password,
        ));
    }
    content
}

/// The write `replication.passfile` needs (owner postgres, 0600), or None when it is current.
pub fn passfile_change(config: &Config, password: &Password) -> Result<Option<FileChange>> {
    let postgres = postgres_account()?;
    file_change(
        &config.replication.passfile,
        passfile_content(config, password),
        Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o600 },
    )
}

/// Writes `replication.passfile` atomically when it differs; returns whether it changed.
pub fn write_passfile(config: &Config, password: &Password) -> Result<bool> {
    match passfile_change(config, password)? {
        Some(change) => {
            write_atomic(&change.path, change.new.as_bytes(), change.ownership)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// A passfile only this run uses (postgres, 0600), beside `replication.passfile` and removed on
/// drop. Preflight and the clone use it, so a failed or dry run leaves pgha's real passfile as it
/// was. Its name carries the pid, so copies left by a killed run are found and removed next time.
pub struct PrivatePassfile {
    pub path: PathBuf,
}

impl PrivatePassfile {
    pub fn new(config: &Config, password: &Password) -> Result<PrivatePassfile> {
        let postgres = postgres_account()?;
        let real = &config.replication.passfile;
        let dir = real.parent().context("replication.passfile has no directory")?;
        let prefix =
            format!(".{}.pgha-run-", real.file_name().context("replication.passfile has no name")?.to_string_lossy());
        remove_stale_private_passfiles(dir, &prefix);
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let number = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{prefix}{}-{number}", std::process::id()));
        write_atomic(
            &path,
            passfile_content(config, password).as_bytes(),
            Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o600 },
        )?;
        Ok(PrivatePassfile { path })
    }
}

impl Drop for PrivatePassfile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn remove_stale_private_passfiles(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid =
            name.strip_prefix(prefix).and_then(|rest| rest.split('-').next()).and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Explains a failed login to the primary in the admin's terms. `own_address` is the address the
/// primary sees this host as.
pub fn login_failure(
    config: &Config,
    own_address: std::net::IpAddr,
    what: &str,
    error: anyhow::Error,
) -> anyhow::Error {
    let text = format!("{error:#}");
    let user = &config.replication.user;
    let primary = config.primary.address;
    let hint = match classify_failure(&text) {
        ConnectionFailure::PasswordRejected => format!(
            "the primary rejects the password of {user:?}: the password in {} differs from the one `pgha primary` set on {primary}",
            config.replication.password_file.display()
        ),
        ConnectionFailure::NoHbaEntry => format!(
            "the primary's pg_hba.conf has no entry for {user:?} from {own_address}: add this address to standby.addresses and run `pgha primary` on {primary}"
        ),
        ConnectionFailure::NoSuchRole => format!("the primary has no role {user:?}: run `pgha primary` on {primary}"),
        _ => format!("cannot log in to the primary {primary} as {user:?}"),
    };
    anyhow!("preflight: {what}: {hint}\n({})", text.trim())
}
