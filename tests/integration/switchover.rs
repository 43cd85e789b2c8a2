//! `pgha switchover` on three hosts under load: A the primary, B and C its standbys (made by
//! `pgha standby`), pgbench writing to the primary during each switchover. Every transaction
//! pgbench saw committed must be on every node, and C must follow each new primary with no edit.

use std::fs;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use crate::common::*;

const PASSWORD: &str = "sw-s3cret-'q'-\\x";
const WAIT: Duration = Duration::from_secs(60);
const PGBENCH: &str = "/usr/lib/postgresql/15/bin/pgbench";

pub(crate) fn pgbench(cluster: &TestCluster, args: &[&str]) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--", PGBENCH]).args(args);
    command.arg("-h").arg(&cluster.socket_dir).args(["-p", &cluster.port.to_string(), "postgres"]);
    command
}

/// pgbench for `seconds` against `cluster`, logging each transaction it saw commit into `dir`.
pub(crate) fn start_load(cluster: &TestCluster, dir: &Path, seconds: u32) -> Child {
    let prefix = dir.join("tx");
    pgbench(
        cluster,
        &["-n", "-c", "4", "-j", "1", "-T", &seconds.to_string(), "-l", &format!("--log-prefix={}", prefix.display())],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("pgbench starts")
}

/// Transactions pgbench logged as committed (one line each in its per-transaction log).
pub(crate) fn committed(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("tx"))
        .map(|entry| fs::read_to_string(entry.path()).unwrap().lines().count())
        .sum()
}

pub(crate) fn log_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run_ok(Command::new("chown").arg("postgres").arg(dir.path()));
    dir
}

/// TPC-B's invariant: every committed transaction added its delta to one account, teller and
/// branch and one history row, so the four sums agree. Returns the history count.
pub(crate) fn check_balances(cluster: &TestCluster, at_least: usize, when: &str) -> usize {
    let row = cluster.psql(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT coalesce(sum(delta), 0) FROM pgbench_history), \
         (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches), \
         (SELECT count(*) FROM pgbench_history)",
    );
    let fields: Vec<i64> = row.split('|').map(|field| field.parse().unwrap()).collect();
    assert!(
        fields[0] == fields[1] && fields[1] == fields[2] && fields[2] == fields[3],
        "{when}: balances disagree on {}: {row}",
        cluster.name
    );
    let count = fields[4] as usize;
    assert!(count >= at_least, "{when}: {} holds {count} history rows, pgbench saw {at_least} commits", cluster.name);
    count
}

fn role(three: &ThreeHosts, host: usize) -> String {
    let out = three.run(host, &["status", "--json"]);
    let json: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|error| panic!("not JSON ({error}): {}", out.stdout));
    json["role"].as_str().unwrap_or_default().to_string()
}

/// One switchover under load from `from` to `to`; returns the history count all nodes agree on.
fn switch_under_load(three: &ThreeHosts, from: usize, to: usize, before: usize) -> usize {
    let (old, new) = (three.cluster(from), three.cluster(to));
    let logs = log_dir();
    let mut load = start_load(old, logs.path(), 12);
    std::thread::sleep(Duration::from_secs(3));
    let to_ip = [&three.hosts.a_ip, &three.hosts.b_ip, &three.hosts.c_ip][to];
    let out = three.run(from, &["switchover", "--to", to_ip]);
    assert_eq!(out.code, 0, "pgha switchover failed:\n{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(&format!("{to_ip} is the primary now")), "{}", out.stdout);
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(PASSWORD) && !text.contains("PASSWORD '"), "a secret leaked: {text}");
    }
    let _ = load.wait();
    let seen = committed(logs.path());
    assert!(seen > 0, "pgbench committed nothing before the switchover");

    assert_eq!(new.psql("SELECT pg_is_in_recovery()"), "f");
    let count = check_balances(new, before + seen, "on the new primary");
    // Nothing writes now: every node must end with exactly the new primary's rows.
    for host in (0..3).filter(|host| *host != to) {
        let standby = three.cluster(host);
        standby.wait_for("SELECT count(*) FROM pgbench_history", &count.to_string(), WAIT);
        assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
        assert_eq!(check_balances(standby, count, "on a standby"), count);
        standby.wait_for("SELECT sender_host FROM pg_stat_wal_receiver WHERE status = 'streaming'", to_ip, WAIT);
    }
    // status on every host shows the real roles.
    for host in 0..3 {
        assert_eq!(role(three, host), if host == to { "primary" } else { "standby" }, "host {host}");
    }
    count
}

#[test]
fn switchover_under_load_loses_no_commit_and_every_standby_follows() {
    let Some(three) = ThreeHosts::new(PASSWORD) else { return };
    let configs: Vec<String> = three.configs.iter().map(|config| fs::read_to_string(&config.path).unwrap()).collect();
    run_ok(&mut pgbench(&three.a, &["-i", "-q", "-s", "1"]));
    three.a.wait_for(
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND replay_lsn = pg_current_wal_lsn()",
        "2",
        WAIT,
    );

    let after_first = switch_under_load(&three, 0, 1, 0);
    let after_second = switch_under_load(&three, 1, 0, after_first);
    assert!(after_second > after_first);

    // Asked on a standby, switchover refuses and changes nothing.
    let refused = three.run(2, &["switchover"]);
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("run `pgha switchover` on the primary"), "{}", refused.stderr);
    // And a --to that is no member is a usage error.
    let stranger = three.run(0, &["switchover", "--to", "192.0.2.99"]);
    assert_eq!(stranger.code, 2, "{}\n{}", stranger.stdout, stranger.stderr);

    let now: Vec<String> = three.configs.iter().map(|config| fs::read_to_string(&config.path).unwrap()).collect();
    assert_eq!(configs, now, "no pgha.conf was edited");
    for cluster in [&three.a, &three.b, &three.c] {
        assert!(!cluster.log().contains(PASSWORD), "the password reached a server log");
    }
}

/// A standby that fell silent just before a switchover (its link cut, as when its host dies)
/// would hold the primary's clean stop until wal_sender_timeout ended its walsender, with writes
/// already refused. The switchover waits that walsender out first, while the primary still
/// takes writes: in the primary's log the walsender's timeout comes before the stop.
#[test]
fn a_standby_gone_silent_is_waited_out_before_the_stop() {
    let Some(three) = ThreeHosts::new(PASSWORD) else { return };
    // Shorter than the default 60 s, which behaves the same only slower; long enough that C's
    // walsender is still there when the switchover looks, a few seconds after the cut.
    three.a.psql("ALTER SYSTEM SET wal_sender_timeout = '15s'");
    three.a.psql("SELECT pg_reload_conf()");
    three.a.wait_for("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", "2", WAIT);
    let veth = three.hosts.c.veth();
    run_ok(Command::new("ip").args(["-n", &three.hosts.c.name, "link", "set", &veth, "down"]));

    let out = three.run(0, &["switchover", "--to", &three.hosts.b_ip, "--timeout", "25s"]);
    run_ok(Command::new("ip").args(["-n", &three.hosts.c.name, "link", "set", &veth, "up"]));
    assert_eq!(out.code, 0, "pgha switchover failed:\n{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!("waiting for the walsender of {}", three.hosts.c_ip)),
        "the silent standby is named: {}",
        out.stderr
    );
    assert_eq!(three.b.psql("SELECT pg_is_in_recovery()"), "f", "B is the primary");
    let log = three.a.log();
    let timed_out = log
        .rfind("terminating walsender process due to replication timeout")
        .unwrap_or_else(|| panic!("C's walsender never timed out:\n{log}"));
    let stopped = log.rfind("received fast shutdown request").expect("the switchover stopped A");
    assert!(timed_out < stopped, "the stop came before C's walsender ended:\n{log}");
}
