//! The values a pgha.conf key may take, each checked with an error that says what was expected.

use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::SslMode;
use crate::version::PgVersion;

pub fn validate_password(password: &str) -> Result<(), String> {
    if password.is_empty() {
        return Err("the password is empty: expected the replication password on one line".into());
    }
    // A libpq passfile is line-based, so a line break cannot be stored in one.
    if password.contains('\n') || password.contains('\r') {
        return Err("the password contains a line break: expected a single line (a passfile cannot hold one)".into());
    }
    if password.contains('\0') {
        return Err("the password contains a NUL byte".into());
    }
    Ok(())
}

pub fn parse_version_value(value: &toml::Value) -> Result<PgVersion, String> {
    let text = match value {
        toml::Value::Integer(number) => number.to_string(),
        toml::Value::Float(number) => format!("{number}"),
        toml::Value::String(text) => text.clone(),
        other => return Err(format!("{other} is not a version: expected 9.5, 9.6 or 10 to 18")),
    };
    text.parse()
}

pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    // pg_createcluster's own rule: the name becomes a path component and a systemd instance name.
    let ok = !name.is_empty()
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a cluster name: expected letters, digits, '_', '-' or '.' as pg_lsclusters shows it"
        ))
    }
}

/// Role names pgha can put into SQL, pg_hba.conf and a passfile without ambiguity: the set the
/// package's debconf questions accept, so an answer that passes there passes here.
pub fn validate_role_name(name: &str) -> Result<(), String> {
    let expected = "expected 1 to 63 bytes of letters, digits, '_', '-', '.', '@' or '$', not starting with pg_";
    if name.is_empty() {
        return Err(format!("the user name is empty: {expected}"));
    }
    if name.len() > 63 {
        return Err(format!("{name:?} is {} bytes long; PostgreSQL truncates names to 63: {expected}", name.len()));
    }
    // PostgreSQL 16+ reads a pg_hba.conf user starting with '/' as a regular expression, quoted or not.
    if name.starts_with('/') {
        return Err(format!("{name:?}: a leading '/' makes it a regular expression in pg_hba.conf: {expected}"));
    }
    // A whitelist: every character outside it has a meaning somewhere (hba, conninfo, passfile, shell).
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_-.@$".contains(*c))) {
        return Err(format!("{name:?} contains {bad:?}: {expected}"));
    }
    if name.starts_with("pg_") {
        return Err(format!("{name:?}: names starting with pg_ are reserved by PostgreSQL: {expected}"));
    }
    if name.starts_with('@') {
        return Err(format!("{name:?}: a leading '@' means a file in pg_hba.conf: {expected}"));
    }
    let reserved = [
        "all",
        "replication",
        "samerole",
        "samegroup",
        "sameuser",
        "public",
        "none",
        "current_role",
        "current_user",
        "session_user",
        "postgres",
    ];
    if reserved.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "{name:?} is reserved (a pg_hba.conf keyword, an SQL keyword or the superuser): expected a dedicated replication role such as \"replicator\""
        ));
    }
    Ok(())
}

pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let address: IpAddr = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address: expected an IPv4 or IPv6 literal such as 192.0.2.10"))?;
    if address.is_unspecified() || address.is_multicast() {
        return Err(format!("{text:?} cannot be a host's address: expected a unicast IPv4 or IPv6 address"));
    }
    Ok(address)
}

pub fn parse_port(port: i64) -> Result<u16, String> {
    match u16::try_from(port) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{port} is not a TCP port: expected 1 to 65535")),
    }
}

pub fn in_range(value: i64, min: i64, max: i64) -> Result<u32, String> {
    if (min..=max).contains(&value) {
        Ok(value as u32)
    } else {
        Err(format!("{value} is out of range: expected {min} to {max}"))
    }
}

pub fn parse_sslmode(text: &str) -> Result<SslMode, String> {
    Ok(match text {
        "auto" => SslMode::Auto,
        "disable" => SslMode::Disable,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => {
            return Err(format!("{text:?} is not supported: expected auto, require, verify-ca, verify-full or disable"))
        }
    })
}

/// Durations such as "7d", "12h", "90s" or "5min".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| {
        format!("{text:?} is not a duration: expected a number and a unit, such as \"7d\", \"12h\" or \"90s\"")
    })
}

/// Sizes in PostgreSQL's notation ("512MB", "1GB", "2TB"), returned in megabytes.
pub fn parse_size_mb(text: &str) -> Result<u64, String> {
    crate::size::parse_bytes(text, &["MB", "GB", "TB"])
        .map(|bytes| bytes >> 20)
        .ok_or_else(|| format!("{text:?} is not a size: expected a number and MB, GB or TB, such as \"1GB\""))
}

/// An absolute path that can be written into a config file, a conninfo or a shell command:
/// a control character (a line break above all) would end the line or the word it stands in.
pub fn absolute(path: PathBuf) -> Result<PathBuf, String> {
    let text = path.display().to_string();
    if let Some(bad) = text.chars().find(|c| c.is_control()) {
        return Err(format!("{text:?} contains the control character {bad:?}: expected a plain absolute path"));
    }
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!("{text:?} is relative: expected an absolute path"))
    }
}

/// The CA file must be there when the config is read: otherwise the first sign of a typo would
/// be a clone failing on the primary's certificate, or a standby that no longer reconnects.
pub fn check_sslrootcert(file: PathBuf) -> Result<PathBuf, String> {
    let file = absolute(file)?;
    let shown = file.display();
    let metadata = fs::metadata(&file).map_err(|error| format!("{shown}: cannot read it: {error}"))?;
    if !metadata.is_file() {
        return Err(format!("{shown} is not a regular file: expected the CA certificate (PEM) of the primary"));
    }
    fs::File::open(&file).map_err(|error| format!("{shown}: cannot read it: {error}"))?;
    Ok(file)
}
