//! What `pgha standby` does to a standby it made earlier, as pgha-standby.service runs it at every
//! boot: it starts it, checks it and reports, and never replaces its data unasked. Real clusters in
//! two network namespaces; pgha's sd_notify messages are caught on a socket of the test's own.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const PASSWORD: &str = "b00t-'pw'-\\";

/// Stands in for systemd's notify socket: every datagram pgha sends (STATUS=, READY=1, ...).
struct NotifySocket {
    dir: tempfile::TempDir,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let socket = UnixDatagram::bind(dir.path().join("notify")).unwrap();
        socket.set_nonblocking(true).unwrap();
        NotifySocket { dir, socket }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("notify")
    }

    /// Every message received so far, one line per assignment.
    fn messages(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut buffer = vec![0u8; 65536];
        while let Ok(length) = self.socket.recv(&mut buffer) {
            lines.extend(String::from_utf8_lossy(&buffer[..length]).lines().map(str::to_string));
        }
        lines
    }
}

/// A and B, with B made A's standby by a first `pgha standby` (its own cluster kept aside once).
fn cloned() -> Option<TwoHosts> {
    let setup = TwoHosts::new("15", PASSWORD)?;
    setup.b.start();
    setup.b.psql("CREATE TABLE marker (note text); INSERT INTO marker VALUES ('b was here')");
    let out = setup.run_b(&["standby"]);
    assert_eq!(out.code, 0, "the first clone failed:\n{}\n{}", out.stdout, out.stderr);
    setup.b.wait_for("SELECT pg_is_in_recovery()", "t", Duration::from_secs(30));
    assert_eq!(pgha_dirs(&setup.b).len(), 1, "the first clone keeps B's own data aside");
    Some(setup)
}

/// `pgha standby` on B as the unit runs it, with its sd_notify messages.
fn boot_run(setup: &TwoHosts, extra: &[&str]) -> (PghaOutput, Vec<String>) {
    let notify = NotifySocket::new();
    let out = pgha_output(
        pgha(Some(&setup.hosts.b.name))
            .env("NOTIFY_SOCKET", notify.path())
            .args(["--config", setup.config_b.path_str(), "standby"])
            .args(extra),
    );
    (out, notify.messages())
}

/// Everything pgha keeps beside a data directory: old copies, staging, forks.
fn pgha_dirs(cluster: &TestCluster) -> Vec<String> {
    let prefix = format!("{}.pgha-", cluster.name);
    let mut names: Vec<String> = fs::read_dir(cluster.data_dir().parent().unwrap())
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

fn wait_streaming(setup: &TwoHosts) {
    setup.a.wait_for(
        &format!("SELECT state FROM pg_stat_replication WHERE client_addr = '{}'", setup.hosts.b_ip),
        "streaming",
        Duration::from_secs(60),
    );
}

fn last_status(messages: &[String]) -> String {
    messages.iter().rev().find_map(|line| line.strip_prefix("STATUS=")).unwrap_or_default().to_string()
}

/// The primary is out of reach when the boot run starts: B stays the standby it is, with its
/// data, nothing is moved aside, and the run says so (stdout, STATUS=, `pgha status`).
#[test]
fn a_standby_whose_primary_is_unreachable_is_kept_and_reported() {
    let Some(setup) = cloned() else { return };
    let b = &setup.b;
    let kept = pgha_dirs(b);
    let inode = fs::metadata(b.data_dir()).unwrap().ino();
    // As at boot: the link is down, and the standby comes up without its primary.
    let link = setup.hosts.b.veth();
    run_ok(Command::new("ip").args(["-n", &setup.hosts.b.name, "link", "set", &link, "down"]));
    b.stop();
    b.start();
    b.wait_for("SELECT pg_is_in_recovery()", "t", Duration::from_secs(30));
    let started = b.postmaster_start_time();

    let (out, messages) = boot_run(&setup, &[]);
    assert_eq!(out.code, 0, "a standby kept running is not a failure:\n{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("does not stream"), "the run reports it: {}", out.stdout);
    assert!(out.stdout.contains("unreachable"), "and says why: {}", out.stdout);
    assert!(last_status(&messages).contains("does not stream"), "STATUS= reports it: {messages:?}");
    assert!(messages.iter().any(|line| line == "READY=1"), "the notify unit is told the run is done: {messages:?}");
    assert_eq!(b.psql("SELECT pg_is_in_recovery()"), "t", "B stays a standby");
    assert_eq!(b.postmaster_start_time(), started, "B was restarted");
    assert_eq!(fs::metadata(b.data_dir()).unwrap().ino(), inode, "B's data directory was replaced");
    assert_eq!(pgha_dirs(b), kept, "nothing is moved aside or staged");
    let status = setup.run_b(&["status"]);
    assert_eq!(status.code, 2, "`pgha status` shows the standby does not stream: {}", status.stdout);

    run_ok(Command::new("ip").args(["-n", &setup.hosts.b.name, "link", "set", &link, "up"]));
    wait_streaming(&setup);
}

/// A standby promoted by hand is a failover the members see: B is the primary now, and A, the
/// old primary still writable on the timeline B left, holds writes B never received. `pgha
/// standby` clones over neither: on B it has nothing to do; on A, running or stopped, it refuses
/// and names both ways out.
#[test]
fn a_standby_promoted_by_hand_is_never_cloned_over_nor_the_old_primary() {
    let Some(setup) = cloned() else { return };
    let (a, b) = (&setup.a, &setup.b);
    run_ok(setup.hosts.b.exec("pg_ctlcluster").args([&b.version, &b.name, "promote"]));
    b.wait_for("SELECT pg_is_in_recovery()", "f", Duration::from_secs(30));
    b.psql("CREATE TABLE written_after_promote AS SELECT 1 AS x");
    a.psql("CREATE TABLE written_on_the_old_primary AS SELECT 1 AS x");
    let (b_kept, a_kept) = (pgha_dirs(b), pgha_dirs(a));
    let (b_inode, a_inode) = (fs::metadata(b.data_dir()).unwrap().ino(), fs::metadata(a.data_dir()).unwrap().ino());
    let (b_started, a_started) = (b.postmaster_start_time(), a.postmaster_start_time());

    let (out, _) = boot_run(&setup, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("is the primary of the members"), "{}", out.stdout);
    assert_eq!(b.postmaster_start_time(), b_started, "B was restarted");
    assert_eq!(b.psql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(b.psql("SELECT count(*) FROM written_after_promote"), "1");
    assert_eq!(fs::metadata(b.data_dir()).unwrap().ino(), b_inode, "B's data directory was replaced");
    assert_eq!(pgha_dirs(b), b_kept, "nothing is moved aside or staged on B");

    let out = setup.run_a(&["standby"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    for words in ["writable", "system identifier", "pgha rejoin", "--force-reclone"] {
        assert!(out.stderr.contains(words), "the refusal names {words:?}: {}", out.stderr);
    }
    assert_eq!(a.postmaster_start_time(), a_started, "A was restarted");
    assert_eq!(a.psql("SELECT count(*) FROM written_on_the_old_primary"), "1");
    assert_eq!(fs::metadata(a.data_dir()).unwrap().ino(), a_inode, "A's data directory was replaced");
    assert_eq!(pgha_dirs(a), a_kept, "nothing is moved aside or staged on A");

    // Stopped, A would come up writable: refused the same way, and left stopped.
    a.stop();
    let out = setup.run_a(&["standby"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("--force-reclone"), "{}", out.stderr);
    assert!(!a.is_running(), "an old primary is not started by pgha standby");
    assert_eq!(fs::metadata(a.data_dir()).unwrap().ino(), a_inode);
    assert_eq!(pgha_dirs(a), a_kept);
}

/// A standby that is down at boot is started as the standby it is, not cloned again.
#[test]
fn a_stopped_standby_is_started_not_cloned() {
    let Some(setup) = cloned() else { return };
    let b = &setup.b;
    setup.a.psql("CREATE TABLE before_stop AS SELECT 1 AS x");
    b.wait_for("SELECT count(*) FROM before_stop", "1", Duration::from_secs(30));
    let kept = pgha_dirs(b);
    let inode = fs::metadata(b.data_dir()).unwrap().ino();
    b.stop();

    let (out, messages) = boot_run(&setup, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(b.is_running(), "the standby is started");
    assert_eq!(b.psql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(fs::metadata(b.data_dir()).unwrap().ino(), inode, "B's data directory was replaced");
    assert_eq!(pgha_dirs(b), kept, "nothing is moved aside or staged");
    assert!(out.stdout.contains("started"), "the run says it started the standby: {}", out.stdout);
    assert!(messages.iter().any(|line| line == "READY=1"), "{messages:?}");
    wait_streaming(&setup);
    setup.a.psql("CREATE TABLE after_start AS SELECT 1 AS x");
    b.wait_for("SELECT count(*) FROM after_start", "1", Duration::from_secs(30));
}

/// The files a clone wrote are checked at every run: a standby that lost its conf.d fragment
/// gets it back (and a reload), with its data and its server process as they were.
#[test]
fn a_standby_that_lost_its_files_is_repaired_not_cloned() {
    let Some(setup) = cloned() else { return };
    let b = &setup.b;
    let fragment = b.config_dir().join("conf.d/pgha.conf");
    let written = fs::read_to_string(&fragment).unwrap();
    let kept = pgha_dirs(b);
    let inode = fs::metadata(b.data_dir()).unwrap().ino();
    let started = b.postmaster_start_time();
    fs::remove_file(&fragment).unwrap();

    let (out, _) = boot_run(&setup, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("repaired its files"), "{}", out.stdout);
    assert_eq!(fs::read_to_string(&fragment).unwrap(), written, "the fragment is written as the clone wrote it");
    assert_eq!(b.postmaster_start_time(), started, "a reload is enough: B was restarted");
    assert_eq!(fs::metadata(b.data_dir()).unwrap().ino(), inode, "B's data directory was replaced");
    assert_eq!(pgha_dirs(b), kept, "nothing is moved aside or staged");

    let again = setup.run_b(&["standby"]);
    assert!(again.stdout.contains("nothing to do"), "a repaired standby needs nothing more: {}", again.stdout);
}
