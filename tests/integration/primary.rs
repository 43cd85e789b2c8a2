//! `pgha primary` against a real PostgreSQL 15 cluster on host A, with a client on host B
//! (network namespaces) standing in for a standby.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::common::{
    config_text, host_pair, identify_system, pgha, pgha_output, require_root_and_postgres, HostPair, TestCluster,
    TestConfig,
};

/// Every character class that breaks naive quoting: quotes, backslash, dollar, semicolon, space, unicode.
const AWKWARD_PASSWORD: &str = "it's \"q\" \\ $HOME; ünï cødé";
/// A role name needing SQL identifier quoting (upper case, '.', '$', '-', '@'), within the names pgha
/// accepts; names with quotes, ':' or non-ASCII letters are refused (cli::config_errors_name_file_key_and_value).
const AWKWARD_USER: &str = "Repl.x$-1@b";

struct Primary {
    hosts: HostPair,
    cluster: TestCluster,
    config: TestConfig,
    archive: std::path::PathBuf,
    user: String,
}

fn primary_setup(password: &str) -> Primary {
    primary_setup_for("replicator", password)
}

fn primary_setup_for(user: &str, password: &str) -> Primary {
    let hosts = host_pair();
    let cluster = TestCluster::create("15", Some(&hosts.a.name));
    cluster.start();
    let scratch = tempfile::tempdir().unwrap().keep();
    fs::set_permissions(&scratch, fs::Permissions::from_mode(0o755)).unwrap();
    // A space and a quote in the archive path: archive_command must survive both.
    let archive = scratch.join("wal 'archive'");
    let text = config_text(&cluster, &hosts.a_ip, cluster.port, &[&hosts.b_ip], &archive)
        .replace("user = \"replicator\"", &format!("user = {}", toml_string(user)));
    let config = TestConfig::new(&text, password);
    Primary { hosts, cluster, config, archive, user: user.to_string() }
}

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn run_primary(setup: &Primary, extra: &[&str]) -> crate::common::PghaOutput {
    pgha_output(pgha(Some(&setup.hosts.a.name)).args(["--config", setup.config.path_str(), "primary"]).args(extra))
}

/// A replication connection from host B, authenticated through a passfile as a standby's would be.
fn identify_system_from_b(setup: &Primary, password: &str) -> Result<String, String> {
    let (hosts, cluster) = (&setup.hosts, &setup.cluster);
    identify_system(&hosts.b, &hosts.a_ip, cluster.port, &setup.user, setup.config.dir.path(), password)
}

fn file_state(path: &Path) -> Option<(String, u32)> {
    fs::read_to_string(path).ok().map(|text| (text, fs::metadata(path).unwrap().mode()))
}

#[test]
fn primary_configures_replication_once_and_then_changes_nothing() {
    if !require_root_and_postgres() {
        return;
    }
    let setup = primary_setup_for(AWKWARD_USER, AWKWARD_PASSWORD);
    let role = AWKWARD_USER.replace('\'', "''");
    // Log every statement, so a plaintext or verifier sent as SQL text would land in the log.
    setup.cluster.psql("ALTER SYSTEM SET log_statement = 'all'");
    setup.cluster.psql("SELECT pg_reload_conf()");
    assert!(identify_system_from_b(&setup, AWKWARD_PASSWORD).is_err(), "B must not get in before pgha primary");

    let first = run_primary(&setup, &[]);
    assert_eq!(first.code, 0, "pgha primary failed:\n{}\n{}", first.stdout, first.stderr);
    let cluster = &setup.cluster;

    // The settings took effect, which needed a restart (wal_log_hints, listen_addresses).
    assert_eq!(cluster.psql("SHOW wal_level"), "replica");
    assert_eq!(cluster.psql("SHOW wal_log_hints"), "on");
    assert_eq!(cluster.psql("SHOW listen_addresses"), format!("localhost,{}", setup.hosts.a_ip));
    assert_eq!(cluster.psql("SHOW archive_mode"), "on");

    // The role: login, replication, a connection limit, never superuser.
    assert_eq!(
        cluster.psql(&format!(
            "SELECT rolcanlogin, rolreplication, rolsuper, rolconnlimit FROM pg_roles WHERE rolname = '{role}'"
        )),
        "t|t|f|5"
    );
    assert!(cluster
        .psql(&format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"))
        .starts_with("SCRAM-SHA-256$"));

    // A standby's address gets in with the awkward password over TLS; the system id comes back.
    let identify = identify_system_from_b(&setup, AWKWARD_PASSWORD).expect("replication connection from B");
    let system_id = cluster.psql("SELECT system_identifier FROM pg_control_system()");
    assert!(identify.starts_with(&system_id), "IDENTIFY_SYSTEM gave {identify:?}, expected system id {system_id}");
    assert!(identify_system_from_b(&setup, "wrong").is_err(), "a wrong password must be refused");

    // pg_hba.conf: one block, before Debian's own lines, hostssl with the exact /32.
    let hba = fs::read_to_string(cluster.config_dir().join("pg_hba.conf")).unwrap();
    assert_eq!(hba.matches("# BEGIN pgha").count(), 1);
    assert!(hba.find("# BEGIN pgha").unwrap() < hba.find("\nlocal ").expect("Debian's local lines"));
    let expected_line = format!("hostssl  replication  \"{AWKWARD_USER}\"  {}/32  scram-sha-256", setup.hosts.b_ip);
    assert!(hba.contains(&expected_line), "{expected_line:?} not in:\n{hba}");

    // The archive directory belongs to postgres, mode 0700, and archiving into it works.
    let archive = fs::metadata(&setup.archive).unwrap();
    assert_eq!((archive.uid(), archive.mode() & 0o777), (uzers::get_user_by_name("postgres").unwrap().uid(), 0o700));
    let segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
    cluster.wait_for(
        &format!("SELECT count(*) FROM pg_stat_archiver WHERE last_archived_wal >= '{segment}'"),
        "1",
        std::time::Duration::from_secs(30),
    );
    assert!(setup.archive.join(&segment).is_file(), "{segment} not archived into {}", setup.archive.display());

    // Second run: nothing changes, no restart, and it says so.
    let started = cluster.postmaster_start_time();
    let conf_before = file_state(&cluster.config_dir().join("conf.d/pgha.conf"));
    let hba_before = file_state(&cluster.config_dir().join("pg_hba.conf"));
    let second = run_primary(&setup, &[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(second.stdout.contains("no changes"), "second run said: {}", second.stdout);
    assert_eq!(cluster.postmaster_start_time(), started, "second run restarted the server");
    assert_eq!(file_state(&cluster.config_dir().join("conf.d/pgha.conf")), conf_before);
    assert_eq!(file_state(&cluster.config_dir().join("pg_hba.conf")), hba_before);

    // The plaintext never reached the server log (log_statement=all would have shown it).
    let log = cluster.log();
    assert!(log.contains("LOG:  statement: SELECT pg_walfile_name"), "log_statement=all did not take effect");
    assert!(!log.contains(AWKWARD_PASSWORD), "the password is in the cluster log");
    assert!(!log.contains("SCRAM-SHA-256$"), "the verifier is in the cluster log");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    if !require_root_and_postgres() {
        return;
    }
    let setup = primary_setup("pw");
    let cluster = &setup.cluster;
    let hba_before = file_state(&cluster.config_dir().join("pg_hba.conf"));
    let started = cluster.postmaster_start_time();

    let out = run_primary(&setup, &["--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("+wal_log_hints = on"), "no diff in the plan:\n{}", out.stdout);
    assert!(out.stdout.contains("+# BEGIN pgha"), "no hba diff in the plan:\n{}", out.stdout);
    assert!(out.stdout.contains("CREATE ROLE \"replicator\"") && out.stdout.contains("<SCRAM-SHA-256 verifier>"));
    assert!(!out.stdout.contains("SCRAM-SHA-256$"), "the dry run printed a verifier");

    assert!(!cluster.config_dir().join("conf.d/pgha.conf").exists());
    assert_eq!(file_state(&cluster.config_dir().join("pg_hba.conf")), hba_before);
    assert!(!setup.archive.exists());
    assert_eq!(cluster.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'replicator'"), "0");
    assert_eq!(cluster.postmaster_start_time(), started);
}

/// A setting pgha needs is overridden by postgresql.auto.conf: pgha must notice before
/// loading anything, put every file back, and leave the server running untouched.
#[test]
fn a_failed_apply_puts_every_file_back() {
    if !require_root_and_postgres() {
        return;
    }
    let setup = primary_setup("pw");
    let cluster = &setup.cluster;
    cluster.psql("ALTER SYSTEM SET wal_log_hints = off");
    let hba_before = file_state(&cluster.config_dir().join("pg_hba.conf"));
    let started = cluster.postmaster_start_time();

    let out = run_primary(&setup, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("wal_log_hints") && out.stderr.contains("postgresql.auto.conf"), "{}", out.stderr);
    assert!(out.stderr.contains("ALTER SYSTEM RESET"), "the message should say how to fix it: {}", out.stderr);
    assert!(!cluster.config_dir().join("conf.d/pgha.conf").exists(), "conf.d/pgha.conf left behind");
    assert_eq!(file_state(&cluster.config_dir().join("pg_hba.conf")), hba_before);
    assert!(!setup.archive.exists(), "archive directory left behind");
    assert_eq!(cluster.postmaster_start_time(), started);

    cluster.psql("ALTER SYSTEM RESET wal_log_hints");
    let out = run_primary(&setup, &[]);
    assert_eq!(out.code, 0, "after the fix: {}", out.stderr);
}

#[test]
fn refuses_a_config_without_conf_d_and_an_archive_path_that_is_a_file() {
    if !require_root_and_postgres() {
        return;
    }
    let setup = primary_setup("pw");
    let cluster = &setup.cluster;
    fs::write(setup.archive.as_path(), "not a directory").unwrap();
    let out = run_primary(&setup, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("archive.directory") && out.stderr.contains("not a directory"), "{}", out.stderr);
    fs::remove_file(&setup.archive).unwrap();

    let conf = cluster.config_dir().join("postgresql.conf");
    let original = fs::read_to_string(&conf).unwrap();
    fs::write(&conf, original.replace("include_dir = 'conf.d'", "#include_dir = 'conf.d'")).unwrap();
    let out = run_primary(&setup, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("postgresql.conf") && out.stderr.contains("include_dir"), "{}", out.stderr);
    assert!(!cluster.config_dir().join("conf.d/pgha.conf").exists());
}

#[test]
fn refuses_to_demote_an_existing_superuser() {
    if !require_root_and_postgres() {
        return;
    }
    let setup = primary_setup("pw");
    setup.cluster.psql("CREATE ROLE replicator SUPERUSER LOGIN");
    let out = run_primary(&setup, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("replication.user") && out.stderr.contains("superuser"), "{}", out.stderr);
    assert_eq!(setup.cluster.psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'replicator'"), "t");
}

#[test]
fn refuses_to_run_on_a_host_that_is_not_a_member() {
    if !require_root_and_postgres() {
        return;
    }
    let setup = primary_setup("pw");
    // Host B owns none of the members' addresses once its own is taken out of [standby].
    let text = fs::read_to_string(&setup.config.path)
        .unwrap()
        .replace(&format!("\"{}\"", setup.hosts.b_ip), "\"192.0.2.77\"")
        .replace(&setup.config.password_file.display().to_string(), "@PASSWORD_FILE@");
    let config = TestConfig::new(&text, "pw");
    let out = pgha_output(pgha(Some(&setup.hosts.b.name)).args(["--config", config.path_str(), "primary"]));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("none of [primary] address and [standby] addresses is an address of this host"),
        "{}",
        out.stderr
    );
    assert_eq!(setup.cluster.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'replicator'"), "0");
}
