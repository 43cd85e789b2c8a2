//! pgha.conf as TOML gives it (every key optional, unknown keys refused), and every default in
//! one place: `Config::from_raw` applies them, the example file and pgha.conf(5) show them.

use std::path::PathBuf;

use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pgha/pgha.conf";
pub const DEFAULT_PASSWORD_FILE: &str = "/etc/pgha/replication.password";
pub const DEFAULT_PASSFILE: &str = "/var/lib/postgresql/.pgha.pgpass";
pub const DEFAULT_ARCHIVE_DIR: &str = "/var/backups/pgsql/archive";

/// Every other default, in one place: `Config::from_raw` applies them, and the example pgha.conf
/// and pgha.conf(5) show them (the template reads them from here).
#[derive(Debug, serde::Serialize)]
pub struct Defaults {
    pub port: u16,
    pub max_wal_senders: i64,
    pub wal_keep_size: &'static str,
    pub max_slot_wal_keep_size: &'static str,
    pub streaming_timeout: &'static str,
    pub user: &'static str,
    pub password_file: &'static str,
    pub passfile: &'static str,
    pub slots: bool,
    pub connection_limit: i64,
    pub sslmode: &'static str,
    pub synchronous: &'static str,
    pub synchronous_count: i64,
    pub archive_enabled: bool,
    pub archive_directory: &'static str,
    pub keep: &'static str,
    pub archive_max_size: &'static str,
    pub fence_no_answer: &'static str,
    pub fence_wait: &'static str,
}

pub const DEFAULTS: Defaults = Defaults {
    port: 5432,
    max_wal_senders: 10,
    wal_keep_size: "1GB",
    max_slot_wal_keep_size: "20GB",
    streaming_timeout: "5min",
    user: "replicator",
    password_file: DEFAULT_PASSWORD_FILE,
    passfile: DEFAULT_PASSFILE,
    slots: true,
    connection_limit: 5,
    sslmode: "auto",
    synchronous: "off",
    synchronous_count: 1,
    archive_enabled: true,
    archive_directory: DEFAULT_ARCHIVE_DIR,
    keep: "7d",
    archive_max_size: "10GB",
    fence_no_answer: "start",
    fence_wait: "30s",
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub cluster: Option<RawCluster>,
    pub primary: Option<RawPrimary>,
    pub standby: Option<RawStandby>,
    pub replication: Option<RawReplication>,
    pub archive: Option<RawArchive>,
    pub fence: Option<RawFence>,
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
    pub sslrootcert: Option<PathBuf>,
    pub synchronous: Option<String>,
    pub synchronous_count: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArchive {
    pub enabled: Option<bool>,
    pub directory: Option<PathBuf>,
    pub keep: Option<String>,
    pub max_size: Option<String>,
    pub min_free: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFence {
    pub no_answer: Option<String>,
    pub wait: Option<String>,
}
