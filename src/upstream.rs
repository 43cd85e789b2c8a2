//! Connections from this host to the primary: the conninfo, the sslmode, and the passfiles that
//! carry the replication password (the real one the wal receiver uses, and a private one per
//! run). The password never appears in a conninfo, an argument or the environment.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use crate::config::{Config, Password, SslMode};
use crate::files::apply::write_atomic;
use crate::files::plan::{file_change, FileChange, Ownership};
use crate::files::secure::{open_parent, Dir};
use crate::host::postgres_account;
use crate::password::passfile_line;
use crate::quote::conninfo_quote;
use crate::render::PROMOTE_ROLE;
use crate::tools::psql::{classify_failure, ConnectionFailure, Target};
use crate::version::PgVersion;

/// How pgha's own connections notice a primary that vanished (link down, host powered off)
/// instead of waiting for the kernel's TCP timeout of many minutes: keepalives after 5 s of
/// silence, 3 probes 2 s apart, and unacknowledged data given up after 15 s. The clients are
/// Debian's PostgreSQL 15 tools, whose libpq knows all of these.
const DEAD_PEER_DETECTION: &str =
    "keepalives=1 keepalives_idle=5 keepalives_interval=2 keepalives_count=3 tcp_user_timeout=15000";

/// A conninfo for the primary at `primary` (the member that is primary now, which need not be
/// `[primary] address`): the password comes from `passfile`, never from the string.
/// `server` is the primary's major version (preflight refuses any other than the local
/// cluster's): it decides whether the login can be bound to the TLS session.
pub fn primary_client_conninfo(
    config: &Config,
    primary: IpAddr,
    passfile: &Path,
    server: PgVersion,
    dbname: &str,
) -> String {
    client_conninfo(config, primary, passfile, server, dbname, &config.replication.user)
}

fn client_conninfo(
    config: &Config,
    primary: IpAddr,
    passfile: &Path,
    server: PgVersion,
    dbname: &str,
    user: &str,
) -> String {
    let mut parts = vec![
        format!("host={}", conninfo_quote(&primary.to_string())),
        format!("port={}", config.primary.port),
        format!("user={}", conninfo_quote(user)),
        format!("dbname={}", conninfo_quote(dbname)),
        format!("passfile={}", conninfo_quote(&passfile.display().to_string())),
    ];
    // pgha's psql, pg_basebackup and pg_rewind link a libpq of 13 or later, which knows
    // channel_binding; the server offers it from 11, with SCRAM (pgha stores SCRAM from 10).
    let channel_binding = server >= PgVersion::new(11, 0);
    for (keyword, value) in config.replication.tls_keywords(channel_binding) {
        parts.push(format!("{keyword}={}", conninfo_quote(&value)));
    }
    parts.push("connect_timeout=10".into());
    parts.push(DEAD_PEER_DETECTION.into());
    parts.join(" ")
}

/// An SQL connection to the primary's postgres database.
pub fn sql_target(config: &Config, primary: IpAddr, passfile: &Path, server: PgVersion) -> Target {
    Target::Remote { conninfo: primary_client_conninfo(config, primary, passfile, server, "postgres") }
}

/// An SQL connection to a member as the promote role, whose one-time password is in `passfile`.
pub fn promote_target(config: &Config, member: IpAddr, passfile: &Path, server: PgVersion) -> Target {
    Target::Remote { conninfo: client_conninfo(config, member, passfile, server, "postgres", PROMOTE_ROLE) }
}

/// A physical replication connection to the primary (IDENTIFY_SYSTEM and the like).
pub fn replication_target(config: &Config, primary: IpAddr, passfile: &Path, server: PgVersion) -> Target {
    let conninfo = primary_client_conninfo(config, primary, passfile, server, "replication");
    Target::Remote { conninfo: format!("{conninfo} replication=true") }
}

/// Says so when the admin turned TLS off although the primary offers it: the choice stands,
/// but it should be a known one.
pub fn warn_if_unencrypted(config: &Config, primary: IpAddr, primary_ssl: bool) {
    if config.replication.sslmode == SslMode::Disable && primary_ssl {
        log::warn!(
            "replication.sslmode = \"disable\": the primary {} has ssl on, yet WAL and the replication login \
             cross the network unencrypted",
            primary
        );
    }
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
        PrivatePassfile::with_content(config, &passfile_content(config, password))
    }

    /// For the promote role's one-time password: a line for `member` only.
    pub fn for_promote_role(config: &Config, member: IpAddr, password: &Password) -> Result<PrivatePassfile> {
        let line = passfile_line(&member.to_string(), config.primary.port, "postgres", PROMOTE_ROLE, password);
        PrivatePassfile::with_content(config, &line)
    }

    fn with_content(config: &Config, content: &str) -> Result<PrivatePassfile> {
        let postgres = postgres_account()?;
        let real = &config.replication.passfile;
        let dir = real.parent().context("replication.passfile has no directory")?;
        let prefix =
            format!(".{}.pgha-run-", real.file_name().context("replication.passfile has no name")?.to_string_lossy());
        remove_stale_private_passfiles(dir, &prefix);
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let number = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{prefix}{}-{number}", std::process::id()));
        write_atomic(&path, content.as_bytes(), Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o600 })?;
        Ok(PrivatePassfile { path })
    }
}

impl Drop for PrivatePassfile {
    fn drop(&mut self) {
        if let Ok((dir, name)) = open_parent(&self.path) {
            let _ = dir.remove_file(name);
        }
    }
}

/// Removes the private passfiles of runs that are gone. The directory may be postgres', so it is
/// read and changed through a handle, never by path.
fn remove_stale_private_passfiles(dir: &Path, prefix: &str) {
    let Ok(dir) = Dir::open_following_root_links(dir) else { return };
    for name in dir.list().unwrap_or_default() {
        let text = name.to_string_lossy();
        let pid =
            text.strip_prefix(prefix).and_then(|rest| rest.split('-').next()).and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = dir.remove_file(&name);
        }
    }
}

/// Explains a failed login to the primary in the admin's terms. `own_address` is the address the
/// primary sees this host as.
pub fn login_failure(
    config: &Config,
    primary: IpAddr,
    own_address: IpAddr,
    what: &str,
    error: anyhow::Error,
) -> anyhow::Error {
    let text = format!("{error:#}");
    let user = &config.replication.user;
    if let Some(hint) = tls_failure(config, primary, &text) {
        return anyhow!("preflight: {what}: {hint}\n({})", text.trim());
    }
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

/// libpq's own words when TLS or channel binding stopped the login, explained with the key the
/// admin can change. None when the failure is about something else.
fn tls_failure(config: &Config, primary: IpAddr, text: &str) -> Option<String> {
    let sslmode = config.replication.sslmode.as_str();
    let ca = match &config.replication.sslrootcert {
        Some(file) => format!("the CA in replication.sslrootcert ({})", file.display()),
        None => "libpq's default CA file, ~postgres/.postgresql/root.crt (replication.sslrootcert is not set)".into(),
    };
    if text.contains("server does not support SSL") {
        Some(format!(
            "the primary {primary} refuses TLS, and replication.sslmode = {sslmode:?} requires it: turn ssl on \
             there (Debian's default), or set replication.sslmode = \"disable\" in {} to replicate unencrypted. \
             If the primary has ssl on, something between the hosts answered in its place",
            config.path.display()
        ))
    } else if text.contains("does not match host name") {
        Some(format!(
            "the primary's certificate is not made out to {primary}, and replication.sslmode = {sslmode:?} checks \
             the name: give the primary a certificate whose subjectAltName holds IP:{primary}, or use \
             \"verify-ca\". Or something between the hosts answered in its place"
        ))
    } else if text.contains("certificate verify failed") {
        Some(format!(
            "the primary's certificate is not signed by {ca} (replication.sslmode = {sslmode:?}): \
             name the CA that signed ssl_cert_file on {primary}, or something between the hosts answered in its place"
        ))
    } else if text.contains("root certificate file") {
        Some(format!(
            "replication.sslmode = {sslmode:?} needs a CA, and the postgres account cannot read {ca}: make it \
             readable by postgres (a CA certificate is public, mode 0644)"
        ))
    } else if text.contains("channel binding") {
        Some(format!(
            "the primary {primary} did not bind the login to the TLS session (SCRAM channel binding, which pgha \
             requires from PostgreSQL 11 on): it runs an older PostgreSQL than this host (a standby needs the same \
             major version), it does not ask for a SCRAM password for this role (run `pgha primary` there), or \
             something between the hosts answered in its place"
        ))
    } else if text.contains("no encryption") && config.replication.sslmode == SslMode::Disable {
        Some(format!(
            "replication.sslmode = \"disable\", but the primary {primary} only accepts this role over TLS \
             (hostssl in pg_hba.conf): remove the sslmode line, or run `pgha primary` there after turning ssl off"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!("[primary]\naddress = \"192.0.2.10\"\n[standby]\naddresses = [\"192.0.2.11\"]\n{extra}");
        Config::parse(Path::new("/etc/pgha/pgha.conf"), &text).unwrap()
    }

    #[test]
    fn auto_connects_with_tls_required_and_binds_the_login_from_11() {
        let config = config("");
        let passfile = Path::new("/var/lib/postgresql/.pgha.pgpass");
        let v15 = primary_client_conninfo(&config, config.primary.address, passfile, PgVersion::new(15, 0), "postgres");
        assert!(v15.contains(" sslmode=require channel_binding=require "), "{v15}");
        assert!(!v15.contains("prefer"), "{v15}");
        let v10 = primary_client_conninfo(&config, config.primary.address, passfile, PgVersion::new(10, 0), "postgres");
        assert!(v10.contains(" sslmode=require ") && !v10.contains("channel_binding"), "{v10}");
    }

    #[test]
    fn tls_failures_name_the_key_to_change() {
        let config = config("");
        let refused = tls_failure(
            &config,
            config.primary.address,
            "psql: error: server does not support SSL, but SSL was required",
        )
        .unwrap();
        assert!(refused.contains("replication.sslmode = \"disable\"") && refused.contains("192.0.2.10"), "{refused}");
        let unknown_ca = tls_failure(&config, config.primary.address, "SSL error: certificate verify failed").unwrap();
        assert!(unknown_ca.contains("replication.sslrootcert"), "{unknown_ca}");
        let name = tls_failure(
            &config,
            config.primary.address,
            "server certificate for \"db\" does not match host name \"192.0.2.10\"",
        );
        assert!(name.unwrap().contains("subjectAltName"));
        assert!(tls_failure(&config, config.primary.address, "password authentication failed for user").is_none());
    }
}
