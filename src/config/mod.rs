//! /etc/pgha/pgha.conf: parsed into raw optional fields, then validated into domain types.
//!
//! The raw form and every default are in `raw`, the checks of single values in `values`, the
//! password file in `password_file`; this module turns the raw form into the domain types.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ConfigError;

mod password_file;
mod raw;
mod values;

pub use password_file::{read_password_file, Password};
pub use raw::*;

use crate::version::PgVersion;
use values::{
    absolute, check_sslrootcert, in_range, parse_ip, parse_port, parse_size_mb, parse_sslmode, parse_version_value,
    validate_cluster_name,
};
pub use values::{parse_duration, validate_password, validate_role_name};

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
    /// `require`, for preflight and streaming alike. Never `prefer`: whoever sits between the
    /// hosts could answer "no TLS" and have pgha record `disable`. A primary without ssl needs
    /// an explicit `disable`.
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

    /// The libpq sslmode: what the admin chose, `require` for auto.
    pub fn libpq(self) -> &'static str {
        match self {
            SslMode::Auto => "require",
            other => other.as_str(),
        }
    }
}

/// Whether a commit on the primary waits for standbys to confirm it (`replication.synchronous`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// pgha writes neither setting, so PostgreSQL's default (no synchronous standby) or the
    /// admin's own setting applies.
    Off,
    /// A commit returns once `synchronous_count` standbys have flushed it to disk.
    On,
    /// A commit returns once `synchronous_count` standbys have replayed it, so a read there sees
    /// it (9.6 and later).
    RemoteApply,
}

impl Synchronous {
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Off => "off",
            Synchronous::On => "on",
            Synchronous::RemoteApply => "remote_apply",
        }
    }

    /// The synchronous_commit pgha writes, None when it writes none.
    pub fn synchronous_commit(self) -> Option<&'static str> {
        match self {
            Synchronous::Off => None,
            Synchronous::On => Some("on"),
            Synchronous::RemoteApply => Some("remote_apply"),
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
    /// The CA that signed the primary's certificate; None leaves libpq's default
    /// (~postgres/.postgresql/root.crt, used only when it exists).
    pub sslrootcert: Option<PathBuf>,
    pub synchronous: Synchronous,
    /// How many standbys must confirm each commit while `synchronous` is not off.
    pub synchronous_count: u32,
}

impl Replication {
    /// libpq's TLS keywords for a connection to the primary, unquoted. `channel_binding` says
    /// whether the libpq making the connection and the server both do SCRAM channel binding;
    /// requiring it then ties the login to the TLS session, so a man in the middle holding
    /// its own certificate cannot relay pgha's login even where the certificate is not checked.
    pub fn tls_keywords(&self, channel_binding: bool) -> Vec<(&'static str, String)> {
        let mut keywords = vec![("sslmode", self.sslmode.libpq().to_string())];
        if let Some(ca) = &self.sslrootcert {
            keywords.push(("sslrootcert", ca.display().to_string()));
        }
        // Without TLS there is no channel to bind to, and libpq would refuse every login.
        if channel_binding && self.sslmode != SslMode::Disable {
            keywords.push(("channel_binding", "require".to_string()));
        }
        keywords
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archive {
    pub enabled: bool,
    pub directory: PathBuf,
    pub keep: Duration,
    /// The oldest files go once the archive holds more; None: no cap ("0").
    pub max_bytes: Option<u64>,
    /// Below this much free space a segment is dropped instead of archived; None: never.
    pub min_free_bytes: Option<u64>,
}

/// An archive limit: a size such as "10GB", or "0" for none.
fn parse_archive_size(text: &str) -> Result<Option<u64>, String> {
    match crate::size::parse_bytes(text, &["", "MB", "GB", "TB"]) {
        Some(0) => Ok(None),
        Some(bytes) if text.trim().chars().all(|c| c.is_ascii_digit()) => {
            Err(format!("{bytes} has no unit: expected a size such as \"10GB\" (MB, GB or TB), or \"0\" for none"))
        }
        Some(bytes) if bytes < 64 << 20 => {
            Err(format!("{text:?} is less than four WAL segments: expected at least \"64MB\", or \"0\" for none"))
        }
        Some(bytes) => Ok(Some(bytes)),
        None => Err(format!(
            "{text:?} is not a size: expected a number and MB, GB or TB, such as \"10GB\", or \"0\" for none"
        )),
    }
}

/// What the fence does at start when no other member answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoAnswer {
    /// Start as before: a lone survivor must come up.
    Start,
    /// Start fenced (in recovery, serving nobody) until a member answers and `pgha rejoin` runs.
    ReadOnly,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub no_answer: NoAnswer,
    /// How long the fence asks again while no member answers (the network may still be coming up).
    pub wait: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub cluster: ClusterChoice,
    pub primary: Primary,
    pub standby: Standby,
    pub replication: Replication,
    pub archive: Archive,
    pub fence: Fence,
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
            port: parse_port(raw_primary.port.unwrap_or(i64::from(DEFAULTS.port)))
                .map_err(|message| bad("primary.port", message))?,
            max_wal_senders: in_range(raw_primary.max_wal_senders.unwrap_or(DEFAULTS.max_wal_senders), 2, 1000)
                .map_err(|message| bad("primary.max_wal_senders", message))?,
            wal_keep_mb: parse_size_mb(raw_primary.wal_keep_size.as_deref().unwrap_or(DEFAULTS.wal_keep_size))
                .map_err(|message| bad("primary.wal_keep_size", message))?,
            max_slot_wal_keep_mb: parse_size_mb(
                raw_primary.max_slot_wal_keep_size.as_deref().unwrap_or(DEFAULTS.max_slot_wal_keep_size),
            )
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
        let streaming_timeout = raw_standby.streaming_timeout.as_deref().unwrap_or(DEFAULTS.streaming_timeout);
        let standby = Standby {
            addresses,
            streaming_timeout: parse_duration(streaming_timeout)
                .map_err(|message| bad("standby.streaming_timeout", message))?,
        };
        // A deadline this far away is "never"; far enough, it is also past what the clock can hold.
        if standby.streaming_timeout > Duration::from_secs(366 * 86400) {
            return Err(bad(
                "standby.streaming_timeout",
                format!("{streaming_timeout:?} is longer than a year: expected a duration such as \"5min\""),
            ));
        }

        let raw_replication = raw.replication.unwrap_or_default();
        let user = raw_replication.user.unwrap_or_else(|| DEFAULTS.user.to_string());
        validate_role_name(&user).map_err(|message| bad("replication.user", message))?;
        let synchronous = match raw_replication.synchronous.as_deref().unwrap_or(DEFAULTS.synchronous) {
            "off" => Synchronous::Off,
            "on" => Synchronous::On,
            "remote_apply" => Synchronous::RemoteApply,
            other => {
                return Err(bad(
                    "replication.synchronous",
                    format!("{other:?}: expected \"off\", \"on\" or \"remote_apply\""),
                ));
            }
        };
        // More than there are standbys could never be met: every commit would wait forever.
        let standbys = standby.addresses.len() as i64;
        let synchronous_count =
            in_range(raw_replication.synchronous_count.unwrap_or(DEFAULTS.synchronous_count), 1, standbys).map_err(
                |message| {
                    bad("replication.synchronous_count", format!("{message} (the standbys in standby.addresses)"))
                },
            )?;
        let replication = Replication {
            user,
            password_file: absolute(raw_replication.password_file.unwrap_or_else(|| DEFAULT_PASSWORD_FILE.into()))
                .map_err(|message| bad("replication.password_file", message))?,
            passfile: absolute(raw_replication.passfile.unwrap_or_else(|| DEFAULT_PASSFILE.into()))
                .map_err(|message| bad("replication.passfile", message))?,
            slots: raw_replication.slots.unwrap_or(DEFAULTS.slots),
            connection_limit: in_range(raw_replication.connection_limit.unwrap_or(DEFAULTS.connection_limit), 2, 1000)
                .map_err(|message| bad("replication.connection_limit", message))?,
            sslmode: parse_sslmode(raw_replication.sslmode.as_deref().unwrap_or(DEFAULTS.sslmode))
                .map_err(|message| bad("replication.sslmode", message))?,
            sslrootcert: match raw_replication.sslrootcert {
                None => None,
                Some(file) => Some(check_sslrootcert(file).map_err(|message| bad("replication.sslrootcert", message))?),
            },
            synchronous,
            synchronous_count,
        };
        if replication.sslmode == SslMode::Disable && replication.sslrootcert.is_some() {
            return Err(bad(
                "replication.sslrootcert",
                "is set, but replication.sslmode = \"disable\" turns TLS off: remove one of the two".into(),
            ));
        }

        let raw_archive = raw.archive.unwrap_or_default();
        let archive = Archive {
            enabled: raw_archive.enabled.unwrap_or(DEFAULTS.archive_enabled),
            directory: absolute(raw_archive.directory.unwrap_or_else(|| DEFAULT_ARCHIVE_DIR.into()))
                .map_err(|message| bad("archive.directory", message))?,
            keep: parse_duration(raw_archive.keep.as_deref().unwrap_or(DEFAULTS.keep))
                .map_err(|message| bad("archive.keep", message))?,
            max_bytes: parse_archive_size(raw_archive.max_size.as_deref().unwrap_or(DEFAULTS.archive_max_size))
                .map_err(|message| bad("archive.max_size", message))?,
            min_free_bytes: match raw_archive.min_free.as_deref() {
                None => None,
                Some(text) => parse_archive_size(text).map_err(|message| bad("archive.min_free", message))?,
            },
        };
        if archive.keep.is_zero() {
            return Err(bad("archive.keep", "must be longer than 0: expected a duration like \"7d\"".into()));
        }

        let raw_fence = raw.fence.unwrap_or_default();
        let no_answer = match raw_fence.no_answer.as_deref().unwrap_or(DEFAULTS.fence_no_answer) {
            "start" => NoAnswer::Start,
            "read-only" => NoAnswer::ReadOnly,
            other => {
                return Err(bad("fence.no_answer", format!("{other:?}: expected \"start\" or \"read-only\"")));
            }
        };
        let wait_text = raw_fence.wait.as_deref().unwrap_or(DEFAULTS.fence_wait);
        let wait = parse_duration(wait_text).map_err(|message| bad("fence.wait", message))?;
        // Every start of the cluster waits this long when no member answers; past that it holds up the boot.
        if wait > Duration::from_secs(600) {
            return Err(bad(
                "fence.wait",
                format!("{wait_text:?} is longer than 10min: expected a duration such as \"30s\""),
            ));
        }
        let fence = Fence { no_answer, wait };

        let config = Config { path: path.to_path_buf(), cluster, primary, standby, replication, archive, fence };
        if let Some(version) = config.cluster.version {
            config.check_synchronous_for(version)?;
        }
        Ok(config)
    }

    /// Whether a server of `version` can do what `replication.synchronous` asks. Checked when the
    /// file is read if `cluster.version` is set, and again whenever the files are rendered (the
    /// version is known by then). 9.5 has neither remote_apply nor more than one synchronous
    /// standby; pgha refuses rather than silently promising less than the admin asked for.
    pub fn check_synchronous_for(&self, version: PgVersion) -> Result<(), ConfigError> {
        let replication = &self.replication;
        if replication.synchronous == Synchronous::Off || version >= PgVersion::new(9, 6) {
            return Ok(());
        }
        if replication.synchronous == Synchronous::RemoteApply {
            return Err(ConfigError::key(
                &self.path,
                "replication.synchronous",
                format!(
                    "\"remote_apply\" needs PostgreSQL 9.6 or later, and the cluster runs {version}: expected \"on\" \
                     (a commit waits until the standby flushed it) or \"off\""
                ),
            ));
        }
        if replication.synchronous_count > 1 {
            return Err(ConfigError::key(
                &self.path,
                "replication.synchronous_count",
                format!(
                    "{}: PostgreSQL {version} waits for one synchronous standby only: expected 1",
                    replication.synchronous_count
                ),
            ));
        }
        Ok(())
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
        assert_eq!(config.archive.max_bytes, Some(10 << 30));
        assert_eq!(config.archive.min_free_bytes, None);
        assert_eq!(config.cluster, ClusterChoice { version: None, name: None });
    }

    #[test]
    fn archive_limits_are_sizes_or_zero_and_bad_ones_are_named() {
        let archive = |body: &str| parse(&format!("{MINIMAL}[archive]\n{body}\n")).map(|config| config.archive);
        let set = archive("max_size = \"2GB\"\nmin_free = \"512MB\"").unwrap();
        assert_eq!((set.max_bytes, set.min_free_bytes), (Some(2 << 30), Some(512 << 20)));
        let off = archive("max_size = \"0\"\nmin_free = \"0\"").unwrap();
        assert_eq!((off.max_bytes, off.min_free_bytes), (None, None));
        for (body, key, words) in [
            ("max_size = \"lots\"", "archive.max_size", "\"lots\" is not a size"),
            ("max_size = \"100\"", "archive.max_size", "has no unit"),
            ("max_size = \"16MB\"", "archive.max_size", "at least \"64MB\""),
            ("min_free = \"5%\"", "archive.min_free", "\"5%\" is not a size"),
        ] {
            let error = archive(body).unwrap_err().to_string();
            assert!(error.contains(key) && error.contains(words), "{body}: {error}");
        }
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
        let refused = ["", "pg_repl", "all", "a\"b", "with space", "new\nline", "postgres", &"x".repeat(64)];
        let outside_the_whitelist =
            ["/.*", "/^rep", "réplique", "o'brien", "a$b;c\\d", "rép'l$;x:1", "@file", "a\u{7f}"];
        for name in refused.into_iter().chain(outside_the_whitelist) {
            assert!(validate_role_name(name).is_err(), "{name:?} should be refused");
        }
        for name in ["replicator", "rep-user.1", "Repl.x$-1@a", "_x", &"x".repeat(63)] {
            assert!(validate_role_name(name).is_ok(), "{name:?} should be accepted");
        }
    }

    #[test]
    fn auto_means_require_whatever_the_primary_says() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.replication.sslmode, SslMode::Auto);
        assert_eq!(SslMode::Auto.libpq(), "require");
        let keywords = config.replication.tls_keywords(true);
        assert_eq!(keywords, [("sslmode", "require".to_string()), ("channel_binding", "require".to_string())]);
        assert_eq!(config.replication.tls_keywords(false), [("sslmode", "require".to_string())]);
    }

    #[test]
    fn no_channel_binding_without_tls() {
        let config = parse(&format!("{MINIMAL}[replication]\nsslmode = \"disable\"\n")).unwrap();
        assert_eq!(config.replication.tls_keywords(true), [("sslmode", "disable".to_string())]);
    }

    #[test]
    fn sslrootcert_must_be_an_absolute_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let with = |mode: &str, file: &str| {
            parse(&format!("{MINIMAL}[replication]\nsslmode = \"{mode}\"\nsslrootcert = \"{file}\"\n"))
        };
        let config = with("verify-full", ca.to_str().unwrap()).unwrap();
        assert_eq!(config.replication.sslrootcert.as_deref(), Some(ca.as_path()));
        assert_eq!(
            config.replication.tls_keywords(true),
            [
                ("sslmode", "verify-full".to_string()),
                ("sslrootcert", ca.display().to_string()),
                ("channel_binding", "require".to_string())
            ]
        );
        let missing = dir.path().join("missing.crt");
        for (mode, file, expected) in [
            ("verify-full", "ca.crt", "absolute path"),
            ("verify-full", missing.to_str().unwrap(), "cannot read it"),
            ("verify-ca", dir.path().to_str().unwrap(), "not a regular file"),
            ("disable", ca.to_str().unwrap(), "sslmode = \"disable\""),
        ] {
            let text = with(mode, file).unwrap_err().to_string();
            assert!(text.contains("replication.sslrootcert") && text.contains(expected), "{file}: {text}");
        }
    }

    #[test]
    fn control_characters_and_endless_waits_are_refused() {
        for (key, line) in [
            ("replication.password_file", "[replication]\npassword_file = \"/etc/pgha/pw\\nx\""),
            ("replication.passfile", "[replication]\npassfile = \"/var/lib/postgresql/\\u0001p\""),
            ("archive.directory", "[archive]\ndirectory = \"/srv/a\\rb\""),
            ("archive.directory", "[archive]\ndirectory = \"/srv/a\\u0085b\""),
            ("cluster.name", "[cluster]\nname = \"ma\\tin\""),
            ("replication.sslrootcert", "[replication]\nsslrootcert = \"/etc/pgha/ca\\u0001.crt\""),
            (
                "standby.streaming_timeout",
                "[standby]\naddresses = [\"192.0.2.11\"]\nstreaming_timeout = \"500000000000y\"",
            ),
        ] {
            let text = if line.starts_with("[standby]") {
                format!("[primary]\naddress = \"192.0.2.10\"\n{line}\n")
            } else {
                format!("{MINIMAL}{line}\n")
            };
            let error = parse(&text).expect_err(line).to_string();
            assert!(error.contains(key), "{line:?}: {error}");
        }
    }

    #[test]
    fn the_fence_starts_alone_by_default_and_stays_read_only_when_asked() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.fence, Fence { no_answer: NoAnswer::Start, wait: Duration::from_secs(30) });
        let config = parse(&format!("{MINIMAL}[fence]\nno_answer = \"read-only\"\nwait = \"5s\"\n")).unwrap();
        assert_eq!(config.fence, Fence { no_answer: NoAnswer::ReadOnly, wait: Duration::from_secs(5) });
        for (line, key) in [
            ("no_answer = \"fence\"", "fence.no_answer"),
            ("wait = \"soon\"", "fence.wait"),
            ("wait = \"1h\"", "fence.wait"),
        ] {
            let error = parse(&format!("{MINIMAL}[fence]\n{line}\n")).unwrap_err().to_string();
            assert!(error.contains(key), "{line}: {error}");
        }
    }

    #[test]
    fn synchronous_is_off_by_default_and_checked() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!((config.replication.synchronous, config.replication.synchronous_count), (Synchronous::Off, 1));
        let two = "[primary]\naddress = \"192.0.2.10\"\n[standby]\naddresses = [\"192.0.2.11\", \"192.0.2.12\"]\n";
        let config =
            parse(&format!("{two}[replication]\nsynchronous = \"remote_apply\"\nsynchronous_count = 2\n")).unwrap();
        assert_eq!(
            (config.replication.synchronous, config.replication.synchronous_count),
            (Synchronous::RemoteApply, 2)
        );
        assert_eq!(config.replication.synchronous.synchronous_commit(), Some("remote_apply"));
        for (text, key, expected) in [
            (format!("{MINIMAL}[replication]\nsynchronous = \"yes\"\n"), "replication.synchronous", "\"yes\""),
            (format!("{MINIMAL}[replication]\nsynchronous = true\n"), "", "invalid TOML"),
            (format!("{MINIMAL}[replication]\nsynchronous_count = 0\n"), "replication.synchronous_count", "1 to 1"),
            (format!("{two}[replication]\nsynchronous_count = 3\n"), "replication.synchronous_count", "1 to 2"),
        ] {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(key) && error.contains(expected), "{text}: {error}");
            assert!(error.contains("/etc/pgha/pgha.conf"), "{error}");
        }
    }

    #[test]
    fn synchronous_asks_only_what_the_version_has() {
        let two = "[primary]\naddress = \"192.0.2.10\"\n[standby]\naddresses = [\"192.0.2.11\", \"192.0.2.12\"]\n";
        let with =
            |version: &str, line: &str| parse(&format!("[cluster]\nversion = {version}\n{two}[replication]\n{line}\n"));
        let error = with("9.5", "synchronous = \"remote_apply\"").unwrap_err().to_string();
        assert!(error.contains("replication.synchronous") && error.contains("9.6 or later"), "{error}");
        let error = with("9.5", "synchronous = \"on\"\nsynchronous_count = 2").unwrap_err().to_string();
        assert!(error.contains("replication.synchronous_count") && error.contains("expected 1"), "{error}");
        assert!(with("9.5", "synchronous = \"on\"").is_ok());
        assert!(with("9.6", "synchronous = \"remote_apply\"\nsynchronous_count = 2").is_ok());
        // Off asks nothing of the server, whatever the count says.
        assert!(with("9.5", "synchronous_count = 2").is_ok());
        // Without [cluster] version the check waits for the render, where the version is known.
        let config = parse(&format!("{two}[replication]\nsynchronous = \"remote_apply\"\n")).unwrap();
        assert!(config.check_synchronous_for(PgVersion::new(9, 5)).is_err());
        assert!(config.check_synchronous_for(PgVersion::new(9, 6)).is_ok());
    }

    #[test]
    fn sizes_are_megabytes() {
        assert_eq!(parse_size_mb("512MB").unwrap(), 512);
        assert_eq!(parse_size_mb("1GB").unwrap(), 1024);
        assert!(parse_size_mb("1 gigabyte").is_err());
    }
}
