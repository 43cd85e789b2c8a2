//! `pgha primary` against a real server of every PostgreSQL major from 10 to 18, each an
//! ordinary Debian cluster on host A with host B standing in for a standby.
//!
//! Where Debian's pg_basebackup can clone the major (10 to 15 on bookworm), a standby made from
//! `pgha render --role standby` must then stream from it.
//!
//! Debian 12 ships only 15; tests/pgversions/install.sh (run by `make deps`) installs the others
//! under /usr/lib/postgresql/<major>. Outside CI a missing major is skipped loudly; under CI it fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{
    config_text, host_pair, identify_system, is_root, pgha, pgha_output, run_ok, write_passfile, HostPair, TestCluster,
    TestConfig,
};

const MAJORS: [u32; 9] = [10, 11, 12, 13, 14, 15, 16, 17, 18];
const PASSWORD: &str = "v3rs:ion's \\ pw";
/// Chosen to differ from pgha's defaults, so the assertions see what pgha.conf asked for.
const WAL_KEEP_MB: u64 = 256;
const MAX_SLOT_WAL_KEEP: &str = "3GB";

/// What pg_createcluster and pg_ctlcluster need of a version: a server, initdb, pg_ctl, and a psql.
fn installed(major: u32) -> bool {
    let bin = format!("/usr/lib/postgresql/{major}/bin");
    ["postgres", "initdb", "pg_ctl", "psql"].iter().all(|program| Path::new(&bin).join(program).exists())
}

fn installed_majors() -> Vec<u32> {
    let (present, missing): (Vec<u32>, Vec<u32>) = MAJORS.iter().partition(|major| installed(**major));
    if !missing.is_empty() {
        let message = format!(
            "PostgreSQL majors {missing:?} are not installed: run tests/pgversions/install.sh (or `make pgversions`)"
        );
        if std::env::var_os("CI").is_some() {
            panic!("CI needs every major: {message}");
        }
        eprintln!("SKIPPED versions: {message}");
    }
    present
}

#[test]
fn primary_works_on_every_installed_major() {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI needs root for this test");
        eprintln!("SKIPPED: needs root");
        return;
    }
    let majors = installed_majors();
    if majors.is_empty() {
        return;
    }
    // One pair of hosts serves every version in turn: each cluster gets its own port.
    let hosts = host_pair();
    let mut failed = Vec::new();
    for major in &majors {
        let began = std::time::Instant::now();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check_primary(*major, &hosts))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_default();
            failed.push(format!("PostgreSQL {major}: {message}"));
        }
        eprintln!("PostgreSQL {major}: checked in {:.1}s", began.elapsed().as_secs_f64());
    }
    eprintln!("versions checked: {majors:?}; failed: {}", failed.len());
    assert!(failed.is_empty(), "`pgha primary` failed on:\n{}", failed.join("\n\n"));
}

fn check_primary(major: u32, hosts: &HostPair) {
    let cluster = TestCluster::create(&major.to_string(), Some(&hosts.a.name));
    cluster.start();
    let server_major: u32 = cluster.psql("SELECT current_setting('server_version_num')::int / 10000").parse().unwrap();
    assert_eq!(server_major, major, "the cluster runs the wrong server");

    let scratch = tempfile::tempdir().unwrap();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let archive = scratch.path().join("archive");
    let standby_passfile = scratch.path().join("standby.pgpass");
    let body = config_text(&cluster, &hosts.a_ip, cluster.port, &[&hosts.b_ip], &archive)
        .replace(
            "\n\n[standby]",
            &format!(
                "\nwal_keep_size = \"{WAL_KEEP_MB}MB\"\nmax_slot_wal_keep_size = \"{MAX_SLOT_WAL_KEEP}\"\n\n[standby]"
            ),
        )
        .replace("[replication]\n", &format!("[replication]\npassfile = \"{}\"\n", standby_passfile.display()));
    let config = TestConfig::new(&body, PASSWORD);
    let run_primary = || pgha_output(pgha(Some(&hosts.a.name)).args(["--config", config.path_str(), "primary"]));
    let identify =
        |password| identify_system(&hosts.b, &hosts.a_ip, cluster.port, "replicator", scratch.path(), password);
    assert!(identify(PASSWORD).is_err(), "B got in before pgha primary");
    // Half the versions start where the manual procedure leaves a host: `createuser --replication -P`
    // under md5 (the default before 14). pgha must turn that into SCRAM, which its hba lines demand.
    let seeded = major % 2 == 0;
    if seeded {
        let escaped = PASSWORD.replace('\\', "\\\\").replace('\'', "\\'");
        cluster.psql(&format!(
            "SET password_encryption = 'md5'; CREATE ROLE replicator LOGIN REPLICATION CONNECTION LIMIT 5 PASSWORD E'{escaped}'"
        ));
        assert!(cluster.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'").starts_with("md5"));
    }

    // pg_file_settings catches a setting that postgresql.auto.conf would override, before anything loads.
    cluster.psql("ALTER SYSTEM SET wal_log_hints = off");
    let hba = cluster.config_dir().join("pg_hba.conf");
    let hba_before = fs::read_to_string(&hba).unwrap();
    let started = cluster.postmaster_start_time();
    let refused = run_primary();
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("wal_log_hints") && refused.stderr.contains("postgresql.auto.conf"),
        "{}",
        refused.stderr
    );
    assert!(!cluster.config_dir().join("conf.d/pgha.conf").exists(), "conf.d/pgha.conf left behind");
    assert_eq!(fs::read_to_string(&hba).unwrap(), hba_before, "pg_hba.conf not restored");
    assert_eq!(cluster.postmaster_start_time(), started, "a refused run restarted the server");
    cluster.psql("ALTER SYSTEM RESET wal_log_hints");

    let first = run_primary();
    assert_eq!(first.code, 0, "pgha primary failed:\n{}\n{}\n{}", first.stdout, first.stderr, cluster.log());

    // Settings that need a restart took effect, so the server was restarted when it had to be.
    assert_eq!(cluster.psql("SHOW wal_level"), "replica");
    assert_eq!(cluster.psql("SHOW wal_log_hints"), "on");
    assert_eq!(cluster.psql("SHOW listen_addresses"), format!("localhost,{}", hosts.a_ip));
    assert_eq!(cluster.psql("SHOW archive_mode"), "on");
    assert_eq!(cluster.psql("SELECT count(*) FROM pg_settings WHERE pending_restart"), "0");
    let setting_exists =
        |name: &str| cluster.psql(&format!("SELECT count(*) FROM pg_settings WHERE name = '{name}'")) == "1";
    if major >= 13 {
        assert_eq!(cluster.psql("SHOW wal_keep_size"), format!("{WAL_KEEP_MB}MB"));
        assert_eq!(cluster.psql("SHOW max_slot_wal_keep_size"), MAX_SLOT_WAL_KEEP);
        assert!(!setting_exists("wal_keep_segments"));
    } else {
        assert_eq!(cluster.psql("SHOW wal_keep_segments"), (WAL_KEEP_MB / 16).to_string());
        assert!(!setting_exists("wal_keep_size") && !setting_exists("max_slot_wal_keep_size"));
    }

    // The role: a SCRAM verifier on every version (10+), also where it was md5 before;
    // replication, pg_monitor, never superuser.
    assert_eq!(
        cluster.psql(
            "SELECT rolcanlogin, rolreplication, rolsuper, pg_has_role(oid, 'pg_monitor', 'MEMBER') \
             FROM pg_roles WHERE rolname = 'replicator'"
        ),
        "t|t|f|t"
    );
    assert!(cluster
        .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'")
        .starts_with("SCRAM-SHA-256$4096:"));

    // Host B, as a standby would: a passfile, TLS, a replication connection.
    let system_id = cluster.psql("SELECT system_identifier FROM pg_control_system()");
    let reply = identify(PASSWORD).unwrap_or_else(|error| panic!("replication connection from B: {error}"));
    assert!(reply.starts_with(&system_id), "IDENTIFY_SYSTEM gave {reply:?}, expected system id {system_id}");
    assert!(identify("wrong").is_err(), "a wrong password must be refused");

    // archive_command really archives.
    let segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
    cluster.wait_for(
        &format!("SELECT count(*) FROM pg_stat_archiver WHERE last_archived_wal >= '{segment}'"),
        "1",
        Duration::from_secs(30),
    );
    assert!(archive.join(&segment).is_file(), "{segment} not archived");

    // Second run: nothing to do, no restart.
    let started = cluster.postmaster_start_time();
    let second = run_primary();
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(second.stdout.contains("no changes"), "second run said: {}\n{}", second.stdout, second.stderr);
    assert_eq!(cluster.postmaster_start_time(), started, "second run restarted the server");
    assert!(!cluster.log().contains("ion's"), "the password is in the server log");

    let standby = check_streaming(major, hosts, &cluster, &config, &standby_passfile);
    check_day2(major, hosts, &cluster, &standby, &config);
}

/// The primary pgha configured really feeds a hot standby on host B: a clone by pg_basebackup
/// (where this machine has it for the major; a copy of the stopped primary otherwise), then the
/// files `pgha render --role standby` writes (recovery.conf on 10/11, standby.signal from 12),
/// started as an ordinary Debian cluster, streaming through the slot pgha names.
fn check_streaming(
    major: u32,
    hosts: &HostPair,
    primary: &TestCluster,
    config: &TestConfig,
    passfile: &Path,
) -> TestCluster {
    let postgres = uzers::get_user_by_name("postgres").unwrap();
    write_passfile(passfile, &hosts.a_ip, primary.port, "replicator", PASSWORD);
    std::os::unix::fs::chown(passfile, Some(postgres.uid()), Some(postgres.primary_group_id())).unwrap();
    let slot = format!("pgha_{}", hosts.b_ip.replace('.', "_"));
    primary.psql(&format!("SELECT pg_create_physical_replication_slot('{slot}')"));

    // Members share a port, as on real hosts: promote and status ask the other member there.
    let standby = TestCluster::create_on_port(&major.to_string(), Some(&hosts.b.name), primary.port);
    fs::remove_dir_all(standby.data_dir()).unwrap();
    if Path::new(&format!("/usr/lib/postgresql/{major}/bin/pg_basebackup")).exists() {
        let conninfo = format!(
            "host={} port={} user=replicator passfile={} sslmode=require",
            hosts.a_ip,
            primary.port,
            passfile.display()
        );
        run_ok(hosts.b.exec("runuser").args(["-u", "postgres", "--"]).args([
            &format!("/usr/lib/postgresql/{major}/bin/pg_basebackup"),
            "-d",
            &conninfo,
            "-D",
            standby.data_dir().to_str().unwrap(),
            "-X",
            "stream",
            "--checkpoint=fast",
        ]));
    } else {
        // A cold copy is as good a base backup as any: the slot exists first, so the WAL after
        // the shutdown checkpoint is kept for the standby.
        primary.stop();
        run_ok(Command::new("cp").arg("-a").arg(primary.data_dir()).arg(standby.data_dir()));
        let _ = fs::remove_file(standby.data_dir().join("postmaster.pid"));
        primary.start();
    }

    let rendered = tempfile::tempdir().unwrap();
    let root = rendered.path().to_str().unwrap();
    run_ok(pgha(Some(&hosts.b.name)).args([
        "--config",
        config.path_str(),
        "render",
        "--role",
        "standby",
        "--root",
        root,
    ]));
    // Rendered for the config's cluster name; the standby cluster has its own.
    let rendered_config = rendered.path().join(format!("etc/postgresql/{major}/{}", primary.name));
    let rendered_data = rendered.path().join(format!("var/lib/postgresql/{major}/{}", primary.name));
    let signal = if major < 12 { "recovery.conf" } else { "standby.signal" };
    if major < 12 {
        assert!(!rendered_data.join("standby.signal").exists(), "standby.signal rendered for {major}");
    } else {
        assert!(!rendered_data.join("recovery.conf").exists(), "recovery.conf rendered for {major}");
    }
    let copies = [
        (rendered_config.join("conf.d/pgha.conf"), standby.config_dir().join("conf.d/pgha.conf")),
        (rendered_data.join(signal), standby.data_dir().join(signal)),
    ];
    for (from, to) in copies {
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&from, &to).unwrap_or_else(|error| panic!("{} -> {}: {error}", from.display(), to.display()));
        std::os::unix::fs::chown(&to, Some(postgres.uid()), Some(postgres.primary_group_id())).unwrap();
    }
    standby.start();

    primary.wait_for(
        &format!("SELECT state FROM pg_stat_replication WHERE application_name = '{slot}'"),
        "streaming",
        Duration::from_secs(30),
    );
    assert_eq!(primary.psql(&format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'")), "t");
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    primary.psql("CREATE TABLE pgha_version_probe AS SELECT 42 AS answer");
    standby.wait_for("SELECT answer FROM pgha_version_probe", "42", Duration::from_secs(30));
    standby
}

/// status, verify and promote, live: both members report their roles, a change made on A
/// reaches B, promote refuses while A is up and makes B the primary once A is down, and the
/// members then name B, with no pgha.conf edited.
fn check_day2(major: u32, hosts: &HostPair, primary: &TestCluster, standby: &TestCluster, config_a: &TestConfig) {
    let text_a = fs::read_to_string(&config_a.path).unwrap();
    let config_b = TestConfig::new(
        &text_a
            .replace(&format!("name = \"{}\"", primary.name), &format!("name = \"{}\"", standby.name))
            .replace(&config_a.password_file.display().to_string(), "@PASSWORD_FILE@"),
        PASSWORD,
    );
    let run_a =
        |args: &[&str]| pgha_output(pgha(Some(&hosts.a.name)).args(["--config", config_a.path_str()]).args(args));
    let run_b =
        |args: &[&str]| pgha_output(pgha(Some(&hosts.b.name)).args(["--config", config_b.path_str()]).args(args));
    let json = |out: &crate::common::PghaOutput| -> serde_json::Value {
        serde_json::from_str(&out.stdout).unwrap_or_else(|error| panic!("{major}: not JSON ({error}): {}", out.stdout))
    };

    let status_a = run_a(&["status", "--json"]);
    assert_eq!(status_a.code, 0, "{major}: status on A: {}\n{}", status_a.stdout, status_a.stderr);
    let value = json(&status_a);
    assert_eq!((value["role"].as_str(), value["standbys"][0]["state"].as_str()), (Some("primary"), Some("streaming")));
    let status_b = run_b(&["status", "--json"]);
    assert_eq!(status_b.code, 0, "{major}: status on B: {}\n{}", status_b.stdout, status_b.stderr);
    let value = json(&status_b);
    assert_eq!(value["role"], "standby", "{major}: {}", status_b.stdout);
    assert_eq!(value["primary_address"], hosts.a_ip.as_str(), "{major}: {}", status_b.stdout);
    for out in [run_a(&["verify"]), run_b(&["verify"])] {
        assert_eq!(out.code, 0, "{major}: verify: {}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(&format!("standby {}", hosts.b_ip)), "{major}: {}", out.stdout);
    }

    let refused = run_b(&["promote"]);
    assert_eq!(refused.code, 1, "{major}: promote while A is up: {}\n{}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("refusing to promote"), "{major}: {}", refused.stderr);
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    primary.stop();
    let promoted = run_b(&["promote"]);
    assert_eq!(promoted.code, 0, "{major}: promote: {}\n{}", promoted.stdout, promoted.stderr);
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "f");
    let after = run_b(&["status", "--json"]);
    let value = json(&after);
    assert_eq!(
        (value["role"].as_str(), value["configured_role"].as_str(), value["primary_address"].as_str()),
        (Some("primary"), Some("primary"), Some(hosts.b_ip.as_str())),
        "{major}: {}",
        after.stdout
    );
    assert_eq!(fs::read_to_string(&config_a.path).unwrap(), text_a, "{major}: pgha.conf was edited");

    // The old primary comes back: the fence, run as postgresql@.service runs it, starts it fenced
    // (recovery.conf on 10 and 11, standby.signal from 12; hot_standby off on all). It reads the
    // stopped cluster's pg_control with the major's own pg_controldata, which Debian's server
    // packages ship and the servers tests/pgversions installs lack.
    if !Path::new(&format!("/usr/lib/postgresql/{major}/bin/pg_controldata")).exists() {
        eprintln!("SKIPPED the fence on {major}: no pg_controldata {major} on this machine");
        return;
    }
    // B's pg_hba.conf is Debian's own here (pgha standby would have added A's lines): let A ask B.
    let hba_b = standby.config_dir().join("pg_hba.conf");
    let mut hba = fs::read_to_string(&hba_b).unwrap();
    for database in ["replication", "postgres"] {
        hba.insert_str(0, &format!("hostssl {database} replicator {}/32 scram-sha-256\n", hosts.a_ip));
    }
    fs::write(&hba_b, hba).unwrap();
    standby.psql("SELECT pg_reload_conf()");
    let fenced = run_a(&["fence", &format!("{}-{}", primary.version, primary.name)]);
    assert_eq!(fenced.code, 0, "{major}: fence: {}", fenced.stderr);
    assert!(fenced.stderr.contains(&format!("fenced: {} is the primary", hosts.b_ip)), "{major}: {}", fenced.stderr);
    let _ = crate::common::run(Command::new("ip").args([
        "netns",
        "exec",
        &hosts.a.name,
        "pg_ctlcluster",
        &primary.version,
        &primary.name,
        "start",
    ]));
    assert!(primary.is_running(), "{major}: the fenced cluster did not start: {}", primary.log());
    let refused =
        primary.try_psql("CREATE TABLE written_while_fenced (n int)").expect_err("a fenced cluster takes no write");
    assert!(refused.contains("not accepting connections"), "{major}: {refused}");
    let status = run_a(&["status"]);
    assert_eq!(status.code, 2, "{major}: status on the fenced A: {}\n{}", status.stdout, status.stderr);
    assert!(status.stdout.contains("fenced:"), "{major}: {}", status.stdout);
}
