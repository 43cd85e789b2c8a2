//! /etc/pgha/pgha.conf: parsed into raw optional fields, then validated into domain types.
//!
//! Every default lives in `Config::from_raw`, so the example file, the man page and the code
//! can be checked against one place.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::version::PgVersion;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pgha/pgha.conf";
pub const DEFAULT_PASSWORD_FILE: &str = "/etc/pgha/replication.password";
pub const DEFAULT_PASSFILE: &str = "/var/lib/postgresql/.pgha.pgpass";
pub const DEFAULT_ARCHIVE_DIR: &str = "/var/backups/pgsql/archive";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub cluster: Option<RawCluster>,
    pub primary: Option<RawPrimary>,
    pub standby: Option<RawStandby>,
    pub replication: Option<RawReplication>,
    pub archive: Option<RawArchive>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub version: Option<toml::Value>,
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrimary {
    pub address: Option<String>,
    pub port: Option<i64>,
    pub max_wal_senders: Option<i64>,
    pub wal_keep_size: Option<String>,
    pub max_slot_wal_keep_size: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStandby {
    pub addresses: Option<Vec<String>>,
    pub streaming_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplication {
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub passfile: Option<PathBuf>,
    pub slots: Option<bool>,
    pub connection_limit: Option<i64>,
    pub sslmode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArchive {
    pub enabled: Option<bool>,
    pub directory: Option<PathBuf>,
    pub keep: Option<String>,
}

/// Which cluster pgha manages. `None` means: the only one pg_lsclusters lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterChoice {
    pub version: Option<PgVersion>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Primary {
    pub address: IpAddr,
    pub port: u16,
    pub max_wal_senders: u32,
    /// In megabytes: PostgreSQL's own unit for both settings.
    pub wal_keep_mb: u64,
    pub max_slot_wal_keep_mb: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standby {
    pub addresses: Vec<IpAddr>,
    pub streaming_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// `require` when the primary has ssl on, `disable` otherwise.
    Auto,
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Auto => "auto",
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The libpq sslmode for a primary whose `ssl` setting is `server_ssl`.
    pub fn resolve(self, server_ssl: bool) -> &'static str {
        match self {
            SslMode::Auto if server_ssl => "require",
            SslMode::Auto => "disable",
            other => other.as_str(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replication {
    pub user: String,
    pub password_file: PathBuf,
    pub passfile: PathBuf,
    pub slots: bool,
    pub connection_limit: u32,
    pub sslmode: SslMode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archive {
    pub enabled: bool,
    pub directory: PathBuf,
    pub keep: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub cluster: ClusterChoice,
    pub primary: Primary,
    pub standby: Standby,
    pub replication: Replication,
    pub archive: Archive,
}

impl Config {
    /// Reads, parses and validates; every failure is a `ConfigError` naming the file and key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path)
            .map_err(|error| ConfigError::in_file(path, format!("cannot read the config file: {error}")))?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|error| ConfigError::in_file(path, format!("invalid TOML: {}", error.to_string().trim_end())))?;
        Config::from_raw(path, raw)
    }

    pub fn from_raw(path: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
        let bad = |key: &str, message: String| ConfigError::key(path, key, message);

        let raw_cluster = raw.cluster.unwrap_or_default();
        let version = match raw_cluster.version {
            None => None,
            Some(value) => Some(parse_version_value(&value).map_err(|message| bad("cluster.version", message))?),
        };
        if let Some(name) = &raw_cluster.name {
            validate_cluster_name(name).map_err(|message| bad("cluster.name", message))?;
        }
        let cluster = ClusterChoice { version, name: raw_cluster.name };

        let raw_primary = raw.primary.ok_or_else(|| {
            ConfigError::in_file(path, "missing section [primary]: expected at least `address = \"IP\"`")
        })?;
        let address = raw_primary
            .address
            .ok_or_else(|| bad("primary.address", "missing: expected the primary's IPv4 or IPv6 address".into()))?;
        let primary = Primary {
            address: parse_ip(&address).map_err(|message| bad("primary.address", message))?,
            port: parse_port(raw_primary.port.unwrap_or(5432)).map_err(|message| bad("primary.port", message))?,
            max_wal_senders: in_range(raw_primary.max_wal_senders.unwrap_or(10), 2, 1000)
                .map_err(|message| bad("primary.max_wal_senders", message))?,
            wal_keep_mb: parse_size_mb(raw_primary.wal_keep_size.as_deref().unwrap_or("1GB"))
                .map_err(|message| bad("primary.wal_keep_size", message))?,
            max_slot_wal_keep_mb: parse_size_mb(raw_primary.max_slot_wal_keep_size.as_deref().unwrap_or("20GB"))
                .map_err(|message| bad("primary.max_slot_wal_keep_size", message))?,
        };

        let raw_standby = raw.standby.ok_or_else(|| {
            ConfigError::in_file(path, "missing section [standby]: expected `addresses = [\"IP\", ...]`")
        })?;
        let raw_addresses = raw_standby
            .addresses
            .ok_or_else(|| bad("standby.addresses", "missing: expected a list of one or more IP addresses".into()))?;
        if raw_addresses.is_empty() {
            return Err(bad("standby.addresses", "the list is empty: expected one or more IP addresses".into()));
        }
        let mut addresses = Vec::new();
        for text in &raw_addresses {
            let address = parse_ip(text).map_err(|message| bad("standby.addresses", message))?;
            if address == primary.address {
                return Err(bad(
                    "standby.addresses",
                    format!("{address} is also primary.address: a host cannot replicate from itself"),
                ));
            }
            if addresses.contains(&address) {
                return Err(bad("standby.addresses", format!("{address} is listed twice")));
            }
            addresses.push(address);
        }
        let standby = Standby {
            addresses,
            streaming_timeout: parse_duration(raw_standby.streaming_timeout.as_deref().unwrap_or("5min"))
                .map_err(|message| bad("standby.streaming_timeout", message))?,
        };

        let raw_replication = raw.replication.unwrap_or_default();
        let user = raw_replication.user.unwrap_or_else(|| "replicator".to_string());
        validate_role_name(&user).map_err(|message| bad("replication.user", message))?;
        let replication = Replication {
            user,
            password_file: absolute(raw_replication.password_file.unwrap_or_else(|| DEFAULT_PASSWORD_FILE.into()))
                .map_err(|message| bad("replication.password_file", message))?,
            passfile: absolute(raw_replication.passfile.unwrap_or_else(|| DEFAULT_PASSFILE.into()))
                .map_err(|message| bad("replication.passfile", message))?,
            slots: raw_replication.slots.unwrap_or(true),
            connection_limit: in_range(raw_replication.connection_limit.unwrap_or(5), 2, 1000)
                .map_err(|message| bad("replication.connection_limit", message))?,
            sslmode: parse_sslmode(raw_replication.sslmode.as_deref().unwrap_or("auto"))
                .map_err(|message| bad("replication.sslmode", message))?,
        };

        let raw_archive = raw.archive.unwrap_or_default();
        let archive = Archive {
            enabled: raw_archive.enabled.unwrap_or(true),
            directory: absolute(raw_archive.directory.unwrap_or_else(|| DEFAULT_ARCHIVE_DIR.into()))
                .map_err(|message| bad("archive.directory", message))?,
            keep: parse_duration(raw_archive.keep.as_deref().unwrap_or("7d"))
                .map_err(|message| bad("archive.keep", message))?,
        };
        if archive.keep.is_zero() {
            return Err(bad("archive.keep", "must be longer than 0: expected a duration like \"7d\"".into()));
        }

        Ok(Config { path: path.to_path_buf(), cluster, primary, standby, replication, archive })
    }

    /// Every node pgha knows of, primary first.
    pub fn node_addresses(&self) -> Vec<IpAddr> {
        std::iter::once(self.primary.address).chain(self.standby.addresses.iter().copied()).collect()
    }

    /// Reads the replication password. The file must hold the password and nothing else, and
    /// be readable by its owner only, because it is the one place the plaintext lives.
    pub fn read_password(&self) -> Result<Password, ConfigError> {
        read_password_file(&self.path, &self.replication.password_file)
    }
}

/// The replication password. Debug never prints it, so it cannot leak through `{:?}` in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    #[cfg(test)]
    pub fn new(text: String) -> Self {
        Password(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

pub fn read_password_file(config_path: &Path, file: &Path) -> Result<Password, ConfigError> {
    let key = "replication.password_file";
    let problem = |message: String| ConfigError::key(config_path, key, format!("{}: {message}", file.display()));
    let metadata = fs::metadata(file).map_err(|error| problem(format!("cannot read it: {error}")))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(problem(format!(
            "mode is {mode:04o}, readable by group or others: expected 0600 (chmod 600 {})",
            file.display()
        )));
    }
    let bytes = fs::read(file).map_err(|error| problem(format!("cannot read it: {error}")))?;
    let text = String::from_utf8(bytes).map_err(|_| problem("is not valid UTF-8".into()))?;
    // One trailing newline is what every editor and `echo` leave behind; it is not part of the password.
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    validate_password(password).map_err(problem)?;
    Ok(Password(password.to_string()))
}

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

fn parse_version_value(value: &toml::Value) -> Result<PgVersion, String> {
    let text = match value {
        toml::Value::Integer(number) => number.to_string(),
        toml::Value::Float(number) => format!("{number}"),
        toml::Value::String(text) => text.clone(),
        other => return Err(format!("{other} is not a version: expected 9.5, 9.6 or 10 to 18")),
    };
    text.parse()
}

fn validate_cluster_name(name: &str) -> Result<(), String> {
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

/// Role names pgha can put into SQL, pg_hba.conf and a passfile without ambiguity.
pub fn validate_role_name(name: &str) -> Result<(), String> {
    let expected = "expected 1 to 63 bytes of letters, digits, '_', '-', '.', '@' or '$', not starting with pg_";
    if name.is_empty() {
        return Err(format!("the user name is empty: {expected}"));
    }
    if name.len() > 63 {
        return Err(format!("{name:?} is {} bytes long; PostgreSQL truncates names to 63: {expected}", name.len()));
    }
    // pg_hba.conf has no way to escape a double quote, and control characters break every file format involved.
    if let Some(bad) = name.chars().find(|c| c.is_control() || *c == '"' || c.is_whitespace() || *c == ',') {
        return Err(format!("{name:?} contains {bad:?}, which pg_hba.conf cannot express: {expected}"));
    }
    if name.starts_with("pg_") {
        return Err(format!("{name:?}: names starting with pg_ are reserved by PostgreSQL: {expected}"));
    }
    if name.starts_with('+') || name.starts_with('@') {
        return Err(format!("{name:?}: a leading '+' or '@' means a group or a file in pg_hba.conf: {expected}"));
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

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let address: IpAddr = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address: expected an IPv4 or IPv6 literal such as 192.0.2.10"))?;
    if address.is_unspecified() || address.is_multicast() {
        return Err(format!("{text:?} cannot be a host's address: expected a unicast IPv4 or IPv6 address"));
    }
    Ok(address)
}

fn parse_port(port: i64) -> Result<u16, String> {
    match u16::try_from(port) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{port} is not a TCP port: expected 1 to 65535")),
    }
}

fn in_range(value: i64, min: i64, max: i64) -> Result<u32, String> {
    if (min..=max).contains(&value) {
        Ok(value as u32)
    } else {
        Err(format!("{value} is out of range: expected {min} to {max}"))
    }
}

fn parse_sslmode(text: &str) -> Result<SslMode, String> {
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
    let expected = || format!("{text:?} is not a size: expected a number and MB, GB or TB, such as \"1GB\"");
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).ok_or_else(expected)?;
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| expected())?;
    let factor = match unit.trim() {
        "MB" => 1,
        "GB" => 1024,
        "TB" => 1024 * 1024,
        _ => return Err(expected()),
    };
    number.checked_mul(factor).ok_or_else(expected)
}

fn absolute(path: PathBuf) -> Result<PathBuf, String> {
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!("{:?} is relative: expected an absolute path", path.display().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/pgha/pgha.conf"), text)
    }

    const MINIMAL: &str = "[primary]\naddress = \"192.0.2.10\"\n[standby]\naddresses = [\"192.0.2.11\"]\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.primary.port, 5432);
        assert_eq!(config.replication.user, "replicator");
        assert_eq!(config.replication.password_file, Path::new(DEFAULT_PASSWORD_FILE));
        assert!(config.replication.slots);
        assert_eq!(config.archive.directory, Path::new(DEFAULT_ARCHIVE_DIR));
        assert_eq!(config.archive.keep, Duration::from_secs(7 * 86400));
        assert_eq!(config.cluster, ClusterChoice { version: None, name: None });
    }

    #[test]
    fn version_may_be_integer_float_or_string() {
        for (text, expected) in
            [("15", PgVersion::new(15, 0)), ("9.5", PgVersion::new(9, 5)), ("\"9.6\"", PgVersion::new(9, 6))]
        {
            let config = parse(&format!("[cluster]\nversion = {text}\n{MINIMAL}")).unwrap();
            assert_eq!(config.cluster.version, Some(expected));
        }
    }

    #[test]
    fn errors_name_the_key_and_value() {
        let error =
            parse("[primary]\naddress = \"10.0.0.300\"\n[standby]\naddresses = [\"192.0.2.11\"]\n").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("primary.address") && text.contains("10.0.0.300"), "{text}");
    }

    #[test]
    fn role_names_that_break_hba_or_sql_are_refused() {
        for name in ["", "pg_repl", "all", "a\"b", "with space", "new\nline", "postgres", &"x".repeat(64)] {
            assert!(validate_role_name(name).is_err(), "{name:?} should be refused");
        }
        for name in ["replicator", "rep-user.1", "réplique", "o'brien", "a$b;c\\d"] {
            assert!(validate_role_name(name).is_ok(), "{name:?} should be accepted");
        }
    }

    #[test]
    fn sizes_are_megabytes() {
        assert_eq!(parse_size_mb("512MB").unwrap(), 512);
        assert_eq!(parse_size_mb("1GB").unwrap(), 1024);
        assert!(parse_size_mb("1 gigabyte").is_err());
    }
}
