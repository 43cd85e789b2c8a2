//! The fence at start, on real PostgreSQL 15 clusters in two network namespaces: an old primary
//! that comes back after a failover starts fenced and takes no write, status says so, and rejoin
//! makes it a standby of the new primary without any edit of pgha.conf. `pgha fence` is run
//! exactly as the postgresql@.service drop-in runs it (`pgha fence VERSION-NAME`, as root, before
//! the cluster starts); the tests have no systemd, so the start is `pg_ctlcluster start` after it.

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

const PASSWORD: &str = "fence-s3cret";
const WAIT: Duration = Duration::from_secs(60);

fn instance(cluster: &TestCluster) -> String {
    format!("{}-{}", cluster.version, cluster.name)
}

fn fence(netns: &str, config: &TestConfig, cluster: &TestCluster) -> PghaOutput {
    pgha_output(pgha(Some(netns)).args(["--config", config.path_str(), "fence", &instance(cluster)]))
}

fn fence_file(cluster: &TestCluster) -> std::path::PathBuf {
    cluster.config_dir().join("conf.d/zz-pgha-fence.conf")
}

/// A client that tries to write to `cluster` over its socket as fast as it can, from before the
/// server starts until stopped: every answer is kept, and any accepted write is a failure.
struct Writer {
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<String>>>,
    refusals: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(cluster: &TestCluster) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::new(Mutex::new(Vec::new()));
        let (socket, port) = (cluster.socket_dir.clone(), cluster.port.to_string());
        let thread = {
            let (stop, accepted, refusals) = (stop.clone(), accepted.clone(), refusals.clone());
            std::thread::spawn(move || {
                let mut attempt = 0;
                while !stop.load(Ordering::Relaxed) {
                    attempt += 1;
                    let output = Command::new("runuser")
                        .args(["-u", "postgres", "--", "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
                        .arg(&socket)
                        .args(["-p", &port, "-d", "postgres", "-c"])
                        .arg(format!("CREATE TABLE IF NOT EXISTS fence_probe (n int); INSERT INTO fence_probe VALUES ({attempt})"))
                        .env("PGCONNECT_TIMEOUT", "2")
                        .output()
                        .expect("psql runs");
                    if output.status.success() {
                        accepted.lock().unwrap().push(format!("attempt {attempt} accepted"));
                    } else {
                        refusals.lock().unwrap().push(String::from_utf8_lossy(&output.stderr).trim().to_string());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Writer { stop, accepted, refusals, thread: Some(thread) }
    }

    /// Stops the client; returns the accepted writes and the refusals seen.
    fn finish(mut self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let accepted = self.accepted.lock().unwrap().clone();
        let refusals = self.refusals.lock().unwrap().clone();
        (accepted, refusals)
    }
}

fn status_json(out: &PghaOutput) -> serde_json::Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}\n{}", out.stdout, out.stderr))
}

#[test]
fn a_returning_old_primary_starts_fenced_takes_no_write_and_rejoins_without_an_edit() {
    returning_old_primary(false);
}

/// After a crash the fenced start is also its crash recovery, as a standby; rejoin then finds it
/// "shut down in recovery", which pg_rewind accepts.
#[test]
fn an_old_primary_that_crashed_with_a_fork_starts_fenced_and_rewinds() {
    returning_old_primary(true);
}

fn returning_old_primary(crash: bool) {
    let Some(p) = TwoHosts::new("15", PASSWORD) else { return };
    let (a, b) = (&p.a, &p.b);
    let out = p.run_b(&["standby"]);
    assert_eq!(out.code, 0, "pgha standby failed: {}\n{}", out.stdout, out.stderr);
    a.psql("CREATE TABLE rows (stage text)");
    a.psql("INSERT INTO rows SELECT 'before' FROM generate_series(1, 10)");
    b.wait_for("SELECT count(*) FROM rows", "10", WAIT);
    let configs_before = (fs::read(&p.config_a.path).unwrap(), fs::read(&p.config_b.path).unwrap());

    // A powers off (or dies after writing rows B never gets); B is promoted by hand and takes writes.
    if crash {
        let veth = p.hosts.b.veth();
        run_ok(Command::new("ip").args(["-n", &p.hosts.b.name, "link", "set", &veth, "down"]));
        a.psql("INSERT INTO rows SELECT 'fork' FROM generate_series(1, 7)");
        let pid = fs::read_to_string(a.data_dir().join("postmaster.pid")).unwrap();
        run_ok(Command::new("kill").args(["-KILL", pid.lines().next().unwrap().trim()]));
        let promoted = p.run_b(&["promote", "--force"]);
        assert_eq!(promoted.code, 0, "{}\n{}", promoted.stdout, promoted.stderr);
        run_ok(Command::new("ip").args(["-n", &p.hosts.b.name, "link", "set", &veth, "up"]));
        // The killed postmaster's children go when they notice; the start below must find them gone.
        std::thread::sleep(Duration::from_secs(2));
    } else {
        a.stop();
    }
    let promoted_now = if crash { None } else { Some(p.run_b(&["promote", "--force"])) };
    if let Some(promoted) = promoted_now {
        assert_eq!(promoted.code, 0, "{}\n{}", promoted.stdout, promoted.stderr);
    }
    b.psql("INSERT INTO rows SELECT 'after-failover' FROM generate_series(1, 5)");

    // A boots: the drop-in's ExecStartPre, then the start, with a client writing from the first moment.
    let started = Instant::now();
    let fenced = fence(&p.hosts.a.name, &p.config_a, a);
    let fence_took = started.elapsed();
    assert_eq!(fenced.code, 0, "{}\n{}", fenced.stdout, fenced.stderr);
    let said = format!("fenced: {} is the primary; run `pgha rejoin`", p.hosts.b_ip);
    assert!(fenced.stderr.contains(&said), "the journal line: {}", fenced.stderr);
    assert!(fence_file(a).is_file() && a.data_dir().join("standby.signal").is_file());
    eprintln!("the fence took {fence_took:?} with the members answering");
    let writer = Writer::start(a);
    std::thread::sleep(Duration::from_millis(200));
    let start =
        run(Command::new("ip").args(["netns", "exec", &p.hosts.a.name, "pg_ctlcluster", &a.version, &a.name, "start"]));
    assert!(a.is_running(), "A did not start fenced: {}\n{}", String::from_utf8_lossy(&start.stderr), a.log());
    std::thread::sleep(Duration::from_secs(5));
    let (accepted, refusals) = writer.finish();
    assert!(accepted.is_empty(), "the fenced old primary accepted writes: {accepted:?}");
    assert!(
        refusals.iter().any(|refusal| refusal.contains("Hot standby mode is disabled")),
        "the server ran and refused connections as a fenced standby: {:?}",
        refusals.iter().rev().take(3).collect::<Vec<_>>()
    );

    // status and primary on A say it is fenced, not a connection error.
    let status = p.run_a(&["status"]);
    assert_eq!(status.code, 2, "CRITICAL: {}\n{}", status.stdout, status.stderr);
    assert!(status.stdout.contains(&said.replace('`', "")) || status.stdout.contains(&said), "{}", status.stdout);
    let primary = p.run_a(&["primary"]);
    assert_eq!(primary.code, 1, "{}\n{}", primary.stdout, primary.stderr);
    assert!(primary.stderr.contains("fenced"), "{}", primary.stderr);

    // pgha-standby on A (enabled there by hand, say) neither lifts the fence nor clones over the fork.
    let standby = p.run_a(&["standby"]);
    assert_eq!(standby.code, 1, "{}\n{}", standby.stdout, standby.stderr);
    assert!(standby.stderr.contains("is fenced") && standby.stderr.contains("pgha rejoin"), "{}", standby.stderr);
    assert!(fence_file(a).is_file(), "the fence stays up");

    // A second start runs the fence again: it starts in recovery now, so it returns at once.
    let again = fence(&p.hosts.a.name, &p.config_a, a);
    assert_eq!(again.code, 0, "{}", again.stderr);

    let rejoined = p.run_a(&["rejoin", "--rewind"]);
    assert_eq!(rejoined.code, 0, "{}\n{}", rejoined.stdout, rejoined.stderr);
    if crash {
        assert!(
            rejoined.stdout.contains("with pg_rewind") && rejoined.stdout.contains("diverged"),
            "{}",
            rejoined.stdout
        );
    }
    assert!(!fence_file(a).exists(), "rejoin removed the fence");
    b.psql("INSERT INTO rows SELECT 'after-rejoin' FROM generate_series(1, 3)");
    a.wait_for("SELECT count(*) FROM rows", "18", WAIT);
    a.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    assert_eq!(b.psql("SELECT count(*) FROM pg_class WHERE relname = 'fence_probe'"), "0", "no write of A's reached B");
    assert_eq!(
        (fs::read(&p.config_a.path).unwrap(), fs::read(&p.config_b.path).unwrap()),
        configs_before,
        "no pgha.conf was edited"
    );
    for (host, run) in [("A", p.run_a(&["status", "--json"])), ("B", p.run_b(&["status", "--json"]))] {
        let json = status_json(&run);
        assert_eq!(json["primary_address"], p.hosts.b_ip.as_str(), "{host}: {}", run.stdout);
        let expected = if host == "A" { "standby" } else { "primary" };
        assert_eq!(json["role"], expected, "{host}: {}", run.stdout);
        assert!(!run.stdout.contains("fenced"), "{host}: {}", run.stdout);
        assert!(run.code < 2, "{host} status: {}", run.stdout);
    }
}

/// One cluster on A whose only other member (B's address) has no server: nobody answers.
fn lone_member(extra: &str) -> Option<(HostPair, TestCluster, TestConfig)> {
    if !require_root_and_postgres() {
        return None;
    }
    let hosts = host_pair();
    let a = TestCluster::create("15", Some(&hosts.a.name));
    let archive = std::env::temp_dir().join(format!("pgha-fence-archive-{}", unique()));
    let text = config_text(&a, &hosts.a_ip, a.port, &[&hosts.b_ip], &archive)
        .replace("[replication]\n", "[replication]\npassfile = \"@PASSWORD_FILE@.pgpass\"\n");
    let config = TestConfig::new(&format!("{text}\n[fence]\nwait = \"3s\"\n{extra}"), PASSWORD);
    Some((hosts, a, config))
}

#[test]
fn with_no_member_answering_the_cluster_starts_as_before() {
    let Some((hosts, a, config)) = lone_member("") else { return };
    let started = Instant::now();
    let out = fence(&hosts.a.name, &config, &a);
    let took = started.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("no member answered"), "{}", out.stderr);
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(15), "the wait is bounded: {took:?}");
    eprintln!("the fence took {took:?} with no member answering (fence.wait = 3s)");
    assert!(!fence_file(&a).exists() && !a.data_dir().join("standby.signal").exists());
    a.start();
    assert_eq!(a.psql("SELECT pg_is_in_recovery()"), "f");
}

#[test]
fn with_no_member_answering_and_read_only_chosen_the_cluster_starts_fenced() {
    let Some((hosts, a, config)) = lone_member("no_answer = \"read-only\"\n") else { return };
    let out = fence(&hosts.a.name, &config, &a);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("fenced: no member answered"), "{}", out.stderr);
    assert!(fence_file(&a).is_file() && a.data_dir().join("standby.signal").is_file());
    let _ =
        run(Command::new("ip").args(["netns", "exec", &hosts.a.name, "pg_ctlcluster", &a.version, &a.name, "start"]));
    let refused = a.try_psql("CREATE TABLE t (n int)").expect_err("a fenced cluster takes no write");
    assert!(refused.contains("not accepting connections"), "{refused}");
    let status = pgha_output(pgha(Some(&hosts.a.name)).args(["--config", config.path_str(), "status"]));
    assert_eq!(status.code, 2, "{}\n{}", status.stdout, status.stderr);
    assert!(status.stdout.contains("fenced: no member answered"), "{}", status.stdout);
}

#[test]
fn the_fence_returns_at_once_for_a_cluster_pgha_does_not_manage() {
    if !is_root() {
        return;
    }
    let config = TestConfig::new(
        "[cluster]\nversion = 15\nname = \"managed\"\n[primary]\naddress = \"192.0.2.10\"\n[standby]\naddresses = [\"192.0.2.11\"]\n",
        PASSWORD,
    );
    for (path, instance) in [
        (config.path_str().to_string(), "15-another"),
        (config.path_str().to_string(), "16-managed"),
        (config.dir.path().join("absent.conf").display().to_string(), "15-main"),
    ] {
        let started = Instant::now();
        let out = pgha_output(pgha(None).args(["--config", &path, "fence", instance]));
        assert_eq!(out.code, 0, "{instance}: {}", out.stderr);
        assert!(out.stderr.is_empty(), "nothing said for a cluster that is not pgha's: {}", out.stderr);
        assert!(started.elapsed() < Duration::from_secs(2), "{instance}: took {:?}", started.elapsed());
    }
}
