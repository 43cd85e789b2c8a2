//! Every file pgha renders from a template, as a pure function of its input: the PostgreSQL
//! configuration from the config and probed facts, and pgha.conf itself from answers. No I/O here.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::{Config, SslMode, Synchronous, DEFAULTS};
use crate::quote::{conf_quote, conninfo_quote, shell_quote};
use crate::version::PgVersion;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// The primary's settings a hot standby must match or exceed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HotStandbySettings {
    pub max_connections: u32,
    pub max_worker_processes: u32,
    pub max_wal_senders: u32,
    pub max_prepared_transactions: u32,
    pub max_locks_per_transaction: u32,
}

/// What pgha learnt about the host and the servers before rendering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub version: PgVersion,
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    /// This node's own address from the config.
    pub own_address: IpAddr,
    /// The member a standby streams from: the primary the members named, which need not be
    /// `[primary] address`. A primary's own address.
    pub upstream_address: IpAddr,
    /// `ssl` on the local server: decides hostssl or host in pg_hba.conf.
    pub local_ssl: bool,
    pub primary_settings: Option<HotStandbySettings>,
    /// The pgha program `archive_command` runs.
    pub pgha_program: PathBuf,
}

impl Facts {
    /// Debian's defaults for a cluster that could not be asked: ssl on, the standard paths.
    pub fn assumed(version: PgVersion, cluster_name: &str, own_address: IpAddr, upstream_address: IpAddr) -> Facts {
        Facts {
            version,
            config_dir: PathBuf::from(format!("/etc/postgresql/{version}/{cluster_name}")),
            data_dir: PathBuf::from(format!("/var/lib/postgresql/{version}/{cluster_name}")),
            own_address,
            upstream_address,
            local_ssl: true,
            primary_settings: None,
            pgha_program: crate::host::INSTALLED_PROGRAM.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// pgha owns the whole file.
    Whole,
    /// pgha owns the `# BEGIN pgha` … `# END pgha` block inside the file.
    HbaBlock,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: PathBuf,
    pub kind: FileKind,
    pub content: String,
}

/// Replication slot and application_name of the standby at `address`: the primary can tell
/// which standby a slot belongs to, and a re-clone of the same host reuses it.
pub fn standby_name(address: IpAddr) -> String {
    let text: String = address
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    format!("pgha_{text}")
}

pub fn conf_fragment_path(config_dir: &Path) -> PathBuf {
    config_dir.join("conf.d").join("pgha.conf")
}

const TEMPLATES: [(&str, &str); 5] = [
    ("header.tera", include_str!("../templates/header.tera")),
    ("postgresql.conf.tera", include_str!("../templates/postgresql.conf.tera")),
    ("pg_hba.tera", include_str!("../templates/pg_hba.tera")),
    ("recovery.conf.tera", include_str!("../templates/recovery.conf.tera")),
    ("standby.signal.tera", include_str!("../templates/standby.signal.tera")),
];

/// The commented pgha.conf for the given answers, with every default shown from `DEFAULTS`;
/// the shipped example is this with example values.
pub fn render_config_file(
    primary_address: &str,
    standby_addresses: &[String],
    user: &str,
    password_file: &Path,
    archive_directory: &Path,
) -> Result<String> {
    let toml_string = |text: &str| toml::Value::String(text.to_string()).to_string();
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    tera.add_raw_template("pgha.conf", include_str!("../templates/pgha.conf.tera"))?;
    let mut context = tera::Context::new();
    context.insert("defaults", &DEFAULTS);
    context.insert("cluster_version", &Option::<String>::None);
    context.insert("cluster_name", &Option::<String>::None);
    context.insert("primary_address", &toml_string(primary_address));
    context.insert("port", &DEFAULTS.port);
    let list: Vec<String> = standby_addresses.iter().map(|a| toml_string(a)).collect();
    context.insert("standby_addresses", &format!("[{}]", list.join(", ")));
    context.insert("user", &toml_string(user));
    context.insert("password_file", &toml_string(&password_file.display().to_string()));
    context.insert("slots", &DEFAULTS.slots);
    context.insert("archive_enabled", &DEFAULTS.archive_enabled);
    context.insert("archive_directory", &toml_string(&archive_directory.display().to_string()));
    context.insert("keep", &toml_string(DEFAULTS.keep));
    Ok(tera.render("pgha.conf", &context)?)
}

fn engine() -> Result<tera::Tera> {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    tera.add_raw_templates(TEMPLATES).context("pgha's built-in templates do not parse")?;
    Ok(tera)
}

/// The role `pgha switchover` logs in as to promote a standby with pg_promote() (12+). It exists
/// without a password; each switchover gives it a one-time one and takes it away again.
pub const PROMOTE_ROLE: &str = "pgha_promote";

/// The hosts a standby's wal receiver tries, in order: the primary the members named first, then
/// every other member. From 10, `target_session_attrs=read-write` makes libpq skip the members
/// that are in recovery, so after a switchover or a promote the receiver finds the new primary by
/// itself on its next reconnect, with no edit and no reload. 9.x walsenders cannot answer the
/// read-write check (SHOW over a replication connection arrived in 10), so they get one host.
pub fn upstream_hosts(config: &Config, facts: &Facts) -> Vec<IpAddr> {
    let mut hosts = vec![facts.upstream_address];
    if facts.version >= PgVersion::new(10, 0) {
        hosts.extend(
            config
                .node_addresses()
                .into_iter()
                .filter(|address| *address != facts.own_address && *address != facts.upstream_address),
        );
    }
    hosts
}

/// The primary_conninfo a standby uses: a passfile, never the password itself.
pub fn primary_conninfo(config: &Config, facts: &Facts) -> String {
    let hosts = upstream_hosts(config, facts);
    let host_list = hosts.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let mut parts = vec![
        format!("host={}", conninfo_quote(&host_list)),
        format!("port={}", config.primary.port),
        format!("user={}", conninfo_quote(&config.replication.user)),
        format!("passfile={}", conninfo_quote(&config.replication.passfile.display().to_string())),
        format!("application_name={}", standby_name(facts.own_address)),
    ];
    // The wal receiver uses the server's own libpq, which knows channel_binding from 13; the
    // primary, of the same major version, then offers it with the SCRAM login pgha sets up.
    let channel_binding = facts.version >= PgVersion::new(13, 0);
    for (keyword, value) in config.replication.tls_keywords(channel_binding) {
        parts.push(format!("{keyword}={}", conninfo_quote(&value)));
    }
    if hosts.len() > 1 {
        parts.push("target_session_attrs=read-write".into());
    }
    // Without it a standby whose primary vanished hangs in connect for the kernel's TCP timeout
    // (per host: libpq moves on to the next member after it).
    parts.push("connect_timeout=10".into());
    parts.join(" ")
}

/// synchronous_standby_names for `replication.synchronous`, None when it is off. Every member is
/// named, this node too: pgha.conf never changes with a role, so the same list must serve
/// whichever member is primary; a server never waits for itself, and a name that is not connected
/// does not count. 10 waits for any `count` of them (quorum); 9.6 for the first `count` connected
/// in list order; 9.5 for the first connected only (`check_synchronous_for` refuses more).
pub fn synchronous_standby_names(config: &Config, version: PgVersion) -> Option<String> {
    if config.replication.synchronous == Synchronous::Off {
        return None;
    }
    let names: Vec<String> =
        config.node_addresses().into_iter().map(|address| format!("\"{}\"", standby_name(address))).collect();
    let list = names.join(", ");
    let count = config.replication.synchronous_count;
    Some(if version >= PgVersion::new(10, 0) {
        format!("ANY {count} ({list})")
    } else if version >= PgVersion::new(9, 6) {
        format!("{count} ({list})")
    } else {
        list
    })
}

fn hba_lines(config: &Config, facts: &Facts) -> Vec<String> {
    let connection_type =
        if facts.local_ssl && config.replication.sslmode != SslMode::Disable { "hostssl" } else { "host" };
    let method = if facts.version.has_scram() { "scram-sha-256" } else { "md5" };
    config
        .node_addresses()
        .into_iter()
        .filter(|address| *address != facts.own_address)
        .flat_map(|address| {
            let prefix = if address.is_ipv4() { 32 } else { 128 };
            let user = &config.replication.user;
            // `replication` streams WAL; `postgres` lets a peer read what the replication protocol
            // cannot tell (sizes, walsenders, slots, lag) for preflight checks, status and verify.
            let mut lines: Vec<String> = ["replication", "postgres"]
                .iter()
                .map(|database| format!("{connection_type:<8} {database:<12} \"{user}\"  {address}/{prefix}  {method}"))
                .collect();
            // A switchover run on that peer promotes this node through pg_promote() (12+).
            if facts.version.has_pg_promote() {
                lines.push(format!(
                    "{connection_type:<8} {:<12} {PROMOTE_ROLE}  {address}/{prefix}  {method}",
                    "postgres"
                ));
            }
            lines
        })
        .collect()
}

/// pgha's own copier (`pgha archive-wal`) with the archive's limits as arguments, so archiving
/// never reads pgha.conf. A `%` in a path would be taken for a placeholder, hence `%%`.
fn archive_command(config: &Config, facts: &Facts) -> String {
    let word = |text: &str| shell_quote(text).replace('%', "%%");
    let mut command = vec![
        word(&facts.pgha_program.display().to_string()),
        "archive-wal".to_string(),
        "--directory".into(),
        word(&config.archive.directory.display().to_string()),
    ];
    if let Some(bytes) = config.archive.max_bytes {
        command.extend(["--max-size".into(), bytes.to_string()]);
    }
    if let Some(bytes) = config.archive.min_free_bytes {
        command.extend(["--min-free".into(), bytes.to_string()]);
    }
    command.extend(["%p".into(), "%f".into()]);
    command.join(" ")
}

/// Every file pgha writes for `role`, in the order they must be written: for a standby the
/// signal file or recovery.conf comes first, so nothing can start the copy as a primary.
pub fn render(role: Role, config: &Config, facts: &Facts) -> Result<Vec<RenderedFile>> {
    let tera = engine()?;
    let version = facts.version;
    config.check_synchronous_for(version)?;
    let slot_name = config.replication.slots.then(|| standby_name(facts.own_address));
    let archive_command = archive_command(config, facts);
    let listen = format!("localhost,{}", facts.own_address);

    let mut context = tera::Context::new();
    context.insert("role", role.as_str());
    context.insert("config_path", &config.path.display().to_string());
    context.insert("version", &version.to_string());
    context.insert("listen_addresses", &conf_quote(&listen));
    context.insert("wal_level", version.wal_level());
    context.insert("max_wal_senders", &config.primary.max_wal_senders);
    context.insert("max_replication_slots", &config.primary.max_wal_senders.max(10));
    context.insert("wal_keep_size", &version.has_wal_keep_size());
    context.insert("wal_keep_mb", &config.primary.wal_keep_mb);
    context.insert("wal_keep_segments", &config.primary.wal_keep_mb.div_ceil(16));
    context.insert("max_slot_wal_keep_size", &(version.has_max_slot_wal_keep_size() && config.replication.slots));
    context.insert("max_slot_wal_keep_mb", &config.primary.max_slot_wal_keep_mb);
    context.insert("archive_enabled", &config.archive.enabled);
    context.insert("archive_command", &conf_quote(&archive_command));
    context.insert("primary_settings", &facts.primary_settings);
    context.insert("recovery_conf", &version.uses_recovery_conf());
    context.insert("primary_conninfo", &conf_quote(&primary_conninfo(config, facts)));
    context.insert("slot_name", &slot_name);
    context.insert("slot_name_quoted", &slot_name.as_deref().map(conf_quote));
    context.insert("lines", &hba_lines(config, facts));
    // Both roles carry the same synchronous settings: a standby ignores them, and once promoted
    // (`pgha promote`, a switchover) it keeps the guarantee with no `pgha primary` run there.
    let synchronous_names = synchronous_standby_names(config, version);
    context.insert("synchronous_standby_names", &synchronous_names.as_deref().map(conf_quote));
    context.insert("synchronous_commit", &config.replication.synchronous.synchronous_commit());
    context.insert("synchronous_count", &config.replication.synchronous_count);
    let form = if version >= PgVersion::new(10, 0) {
        "quorum"
    } else if version >= PgVersion::new(9, 6) {
        "priority"
    } else {
        "single"
    };
    context.insert("synchronous_form", form);
    let verb = if config.replication.synchronous == Synchronous::RemoteApply {
        "replayed (visible to reads)"
    } else {
        "flushed to disk"
    };
    context.insert("synchronous_verb", verb);
    let reason = if facts.local_ssl {
        "hostssl: the server has ssl on, so replication traffic and passwords are encrypted."
    } else {
        "host: the server has ssl off; turn it on to get hostssl lines."
    };
    context.insert("connection_type_reason", reason);

    let render_one =
        |template: &str| tera.render(template, &context).with_context(|| format!("cannot render {template}"));
    let mut files = Vec::new();
    if role == Role::Standby {
        let (name, template) = if version.uses_recovery_conf() {
            ("recovery.conf", "recovery.conf.tera")
        } else {
            ("standby.signal", "standby.signal.tera")
        };
        files.push(RenderedFile {
            path: facts.data_dir.join(name),
            kind: FileKind::Whole,
            content: render_one(template)?,
        });
    }
    files.push(RenderedFile {
        path: conf_fragment_path(&facts.config_dir),
        kind: FileKind::Whole,
        content: render_one("postgresql.conf.tera")?,
    });
    files.push(RenderedFile {
        path: facts.config_dir.join("pg_hba.conf"),
        kind: FileKind::HbaBlock,
        content: render_one("pg_hba.tera")?,
    });
    Ok(files)
}

/// `pgha render` output: each file under a line naming its target.
pub fn format_listing(files: &[RenderedFile]) -> String {
    let mut out = String::new();
    for file in files {
        let note = match file.kind {
            FileKind::Whole => "",
            FileKind::HbaBlock => " (managed block, placed before every other line)",
        };
        out.push_str(&format!("==> {}{note} <==\n{}", file.path.display(), file.content));
        if !file.content.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_lists_every_other_member_from_10_with_its_upstream_first() {
        let text = "[primary]\naddress = \"10.0.0.1\"\n[standby]\naddresses = [\"10.0.0.2\", \"10.0.0.3\"]\n";
        let config = Config::parse(Path::new("/etc/pgha/pgha.conf"), text).unwrap();
        let address = |text: &str| -> IpAddr { text.parse().unwrap() };
        let facts = |version| Facts::assumed(version, "main", address("10.0.0.3"), address("10.0.0.2"));
        let v15 = primary_conninfo(&config, &facts(PgVersion::new(15, 0)));
        assert!(v15.starts_with("host=10.0.0.2,10.0.0.1 "), "{v15}");
        assert!(v15.contains(" target_session_attrs=read-write "), "{v15}");
        let v96 = primary_conninfo(&config, &facts(PgVersion::new(9, 6)));
        assert!(v96.starts_with("host=10.0.0.2 ") && !v96.contains("target_session_attrs"), "{v96}");
    }

    fn sync_config(line: &str) -> Config {
        let text = format!(
            "[primary]\naddress = \"10.0.0.1\"\n[standby]\naddresses = [\"10.0.0.2\", \"2001:db8::3\"]\n[replication]\n{line}\n"
        );
        Config::parse(Path::new("/etc/pgha/pgha.conf"), &text).unwrap()
    }

    /// conf.d/pgha.conf of `role` on 10.0.0.2, a standby of 10.0.0.1.
    fn fragment(config: &Config, role: Role, version: PgVersion) -> Result<String> {
        let facts = Facts::assumed(version, "main", "10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let files = render(role, config, &facts)?;
        Ok(files.into_iter().find(|file| file.path.ends_with("conf.d/pgha.conf")).unwrap().content)
    }

    #[test]
    fn synchronous_off_writes_neither_setting() {
        let config = sync_config("");
        for role in [Role::Primary, Role::Standby] {
            let text = fragment(&config, role, PgVersion::new(15, 0)).unwrap();
            assert!(!text.contains("synchronous_standby_names") && !text.contains("synchronous_commit"), "{text}");
        }
    }

    #[test]
    fn synchronous_names_every_member_in_each_version_form_and_both_roles() {
        let members = r#""pgha_10_0_0_1", "pgha_10_0_0_2", "pgha_2001_db8__3""#;
        let on = sync_config("synchronous = \"on\"\nsynchronous_count = 2");
        for role in [Role::Primary, Role::Standby] {
            for version in [PgVersion::new(10, 0), PgVersion::new(15, 0), PgVersion::new(18, 0)] {
                let text = fragment(&on, role, version).unwrap();
                let expected = format!("synchronous_standby_names = 'ANY 2 ({members})'\nsynchronous_commit = on\n");
                assert!(text.contains(&expected), "{version} {role:?}: {text}");
                assert!(text.contains("# flushed to disk on any 2 of the standbys named below."), "{text}");
            }
            let v96 = fragment(&on, role, PgVersion::new(9, 6)).unwrap();
            assert!(v96.contains(&format!("synchronous_standby_names = '2 ({members})'\n")), "{v96}");
            assert!(v96.contains("on the first 2 connected standby(s) named below, in list order."), "{v96}");
        }
        let apply = sync_config("synchronous = \"remote_apply\"");
        let v96 = fragment(&apply, Role::Primary, PgVersion::new(9, 6)).unwrap();
        assert!(v96.contains(&format!("'1 ({members})'\nsynchronous_commit = remote_apply\n")), "{v96}");
        let v95 = fragment(&sync_config("synchronous = \"on\""), Role::Standby, PgVersion::new(9, 5)).unwrap();
        assert!(v95.contains(&format!("synchronous_standby_names = '{members}'\nsynchronous_commit = on\n")), "{v95}");
        assert!(v95.contains("on the first connected standby named below, in list order."), "{v95}");
    }

    #[test]
    fn synchronous_beyond_9_5_is_a_config_error_at_render_time() {
        for line in ["synchronous = \"remote_apply\"", "synchronous = \"on\"\nsynchronous_count = 2"] {
            let error = fragment(&sync_config(line), Role::Primary, PgVersion::new(9, 5)).unwrap_err();
            assert!(error.downcast_ref::<crate::error::ConfigError>().is_some(), "{error:#}");
            let text = format!("{error:#}");
            assert!(text.contains("/etc/pgha/pgha.conf") && text.contains("replication.synchronous"), "{text}");
        }
    }

    #[test]
    fn slot_names_are_valid_postgresql_slot_names() {
        assert_eq!(standby_name("10.231.0.2".parse().unwrap()), "pgha_10_231_0_2");
        let v6 = standby_name("2001:db8::B".parse().unwrap());
        assert!(v6.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{v6}");
    }
}
