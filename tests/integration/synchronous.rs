//! `replication.synchronous` on two hosts with real PostgreSQL 15: `pgha primary` turns it on with
//! a reload and then changes nothing; status is CRITICAL and says why when the synchronous standby
//! stops, and verify refuses instead of hanging; and under pgbench, a primary killed with SIGKILL
//! and a `pgha promote --force` on the standby lose no commit pgbench saw acknowledged. Then the
//! strict two-node case: the promoted standby, alone, makes writes wait until synchronous is
//! turned off and `pgha primary` runs there.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::switchover::{check_balances, committed, log_dir, pgbench, start_load};

const PASSWORD: &str = "sync-s3cret-'q'-\\x";
const WAIT: Duration = Duration::from_secs(60);

fn set_synchronous(config: &TestConfig, value: &str) {
    let text = fs::read_to_string(&config.path).unwrap();
    let text: String =
        text.lines().filter(|line| !line.starts_with("synchronous = ")).map(|l| format!("{l}\n")).collect();
    fs::write(&config.path, text.replace("[replication]\n", &format!("[replication]\nsynchronous = \"{value}\"\n")))
        .unwrap();
}

/// A's and B's names, as every conf.d/pgha.conf lists them.
fn expected_names(p: &TwoHosts) -> String {
    let name = |ip: &str| format!("\"pgha_{}\"", ip.replace('.', "_"));
    format!("ANY 1 ({}, {})", name(&p.hosts.a_ip), name(&p.hosts.b_ip))
}

/// A primary with synchronous = "on" (turned on after the first `pgha primary`, as an admin
/// would) and B its standby by `pgha standby`, confirming commits.
fn synchronous_pair() -> Option<TwoHosts> {
    let p = TwoHosts::new("15", PASSWORD)?;
    let started = p.a.postmaster_start_time();
    set_synchronous(&p.config_a, "on");
    set_synchronous(&p.config_b, "on");
    let on = p.run_a(&["primary"]);
    assert_eq!(on.code, 0, "{}\n{}", on.stdout, on.stderr);
    assert_eq!(p.a.psql("SHOW synchronous_standby_names"), expected_names(&p));
    assert_eq!(p.a.psql("SHOW synchronous_commit"), "on");
    assert_eq!(p.a.postmaster_start_time(), started, "turning synchronous on restarted the server");
    let again = p.run_a(&["primary"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("no changes"), "second run said: {}", again.stdout);

    // No standby yet, and pgha's own writes do not wait: the clone's checks and slot go through.
    let out = p.run_b(&["standby"]);
    assert_eq!(out.code, 0, "pgha standby failed: {}\n{}", out.stdout, out.stderr);
    p.a.wait_for("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'", "quorum", WAIT);
    // The standby carries the same list, for when it is promoted.
    assert_eq!(p.b.psql("SHOW synchronous_standby_names"), expected_names(&p));
    Some(p)
}

/// `sql` through psql on `cluster`, given `seconds` to finish: Err when it did not (a commit
/// waiting for a synchronous standby) or failed.
fn psql_within(cluster: &TestCluster, sql: &str, seconds: u32) -> Result<String, String> {
    let out = Command::new("timeout")
        .args([&seconds.to_string(), "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1"])
        .arg("-h")
        .arg(&cluster.socket_dir)
        .args(["-p", &cluster.port.to_string(), "-d", "postgres", "-c", sql])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn status_is_critical_and_says_why_when_the_synchronous_standby_stops() {
    let Some(p) = synchronous_pair() else { return };
    let status = p.run_a(&["status"]);
    assert_eq!(status.code, 0, "{}\n{}", status.stdout, status.stderr);
    assert!(status.stdout.contains("quorum"), "the SYNC column shows it: {}", status.stdout);
    let verify = p.run_a(&["verify", "--timeout", "10"]);
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);

    p.b.stop();
    p.a.wait_for("SELECT count(*) FROM pg_stat_replication", "0", WAIT);
    let status = p.run_a(&["status", "--json"]);
    assert_eq!(status.code, 2, "{}", status.stdout);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["status"], "CRITICAL");
    let messages: Vec<String> =
        json["problems"].as_array().unwrap().iter().map(|p| p["message"].as_str().unwrap().to_string()).collect();
    let why = messages.iter().find(|m| m.contains("synchronous replication")).unwrap_or_else(|| panic!("{messages:?}"));
    for words in
        ["needs 1 standby(s)", "but 0 confirm", "every commit waits", "synchronous = \"off\"", "`pgha primary`"]
    {
        assert!(why.contains(words), "{words:?} not in {why}");
    }
    // The write really waits.
    assert!(psql_within(&p.a, "CREATE TABLE waits (n int)", 3).is_err(), "a commit went through with no standby");

    // verify refuses at once, naming the standby, instead of hanging in its commit.
    let started = Instant::now();
    let verify = p.run_a(&["verify", "--timeout", "30"]);
    assert_eq!(verify.code, 1, "{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stderr.contains("synchronous replication needs 1") && verify.stderr.contains(&p.hosts.b_ip));
    assert!(started.elapsed() < Duration::from_secs(20), "verify took {:?}", started.elapsed());

    // Back: the waiting commit completes, status is OK again.
    p.b.start();
    p.a.wait_for("SELECT count(*) FROM pg_class WHERE relname = 'waits'", "1", WAIT);
    p.a.wait_for("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'", "quorum", WAIT);
    let status = p.run_a(&["status"]);
    assert_eq!(status.code, 0, "{}\n{}", status.stdout, status.stderr);
}

#[test]
fn a_killed_synchronous_primary_loses_no_acknowledged_commit() {
    let Some(p) = synchronous_pair() else { return };
    run_ok(&mut pgbench(&p.a, &["-i", "-q", "-s", "1"]));
    p.a.wait_for(
        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum' AND replay_lsn = pg_current_wal_lsn()",
        "1",
        WAIT,
    );

    let logs = log_dir();
    let mut load = start_load(&p.a, logs.path(), 30);
    std::thread::sleep(Duration::from_secs(4));
    // Under load, B is the synchronous standby every commit waited for.
    assert_eq!(p.a.psql("SELECT sync_state FROM pg_stat_replication"), "quorum");
    let pid = fs::read_to_string(p.a.data_dir().join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_string();
    run_ok(Command::new("kill").args(["-KILL", &pid]));
    let _ = load.wait();
    let seen = committed(logs.path());
    assert!(seen > 0, "pgbench committed nothing before the kill");

    let promoted = p.run_b(&["promote", "--force"]);
    assert_eq!(promoted.code, 0, "{}\n{}", promoted.stdout, promoted.stderr);
    assert!(promoted.stdout.contains("replication.synchronous is \"on\""), "{}", promoted.stdout);
    assert_eq!(p.b.psql("SELECT pg_is_in_recovery()"), "f");
    // Every transaction pgbench saw committed is on B, and each one whole (TPC-B's sums agree).
    let count = check_balances(&p.b, seen, "on the promoted standby");
    eprintln!("pgbench saw {seen} commits; the promoted standby holds {count} history rows");

    // Two nodes and strict: B keeps the guarantee, so with A gone its writes wait, and status says why.
    assert_eq!(p.b.psql("SHOW synchronous_standby_names"), expected_names(&p));
    assert!(psql_within(&p.b, "CREATE TABLE after_failover (n int)", 3).is_err(), "B committed with no standby");
    let status = p.run_b(&["status"]);
    assert_eq!(status.code, 2, "{}", status.stdout);
    assert!(status.stdout.contains("synchronous replication"), "{}", status.stdout);

    // The documented way out: synchronous = "off" in B's pgha.conf and `pgha primary` there.
    set_synchronous(&p.config_b, "off");
    let off = p.run_b(&["primary"]);
    assert_eq!(off.code, 0, "{}\n{}", off.stdout, off.stderr);
    assert_eq!(p.b.psql("SHOW synchronous_standby_names"), "");
    p.b.wait_for("SELECT count(*) FROM pg_class WHERE relname = 'after_failover'", "1", WAIT);
    psql_within(&p.b, "INSERT INTO after_failover VALUES (1)", 10).expect("B accepts writes again");
    let status = p.run_b(&["status"]);
    assert!(!status.stdout.contains("synchronous replication"), "{}", status.stdout);
}

#[test]
fn a_synchronous_switchover_completes_and_the_new_primary_keeps_the_guarantee() {
    let Some(p) = synchronous_pair() else { return };
    p.a.psql("CREATE TABLE rows (n int)");
    p.a.psql("INSERT INTO rows SELECT generate_series(1, 10)");
    // The new primary clears the promote role's one-time password before this host follows it:
    // that write must not wait for a standby, or the switchover would wait for itself.
    let started = Instant::now();
    let out = p.run_a(&["switchover"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(started.elapsed() < Duration::from_secs(60), "switchover took {:?}", started.elapsed());
    assert_eq!(p.b.psql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(p.b.psql("SHOW synchronous_standby_names"), expected_names(&p));
    p.b.wait_for("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'", "quorum", WAIT);
    psql_within(&p.b, "INSERT INTO rows VALUES (11)", 20).expect("B commits with A confirming");
    p.a.wait_for("SELECT count(*) FROM rows", "11", WAIT);
    let status = p.run_b(&["status"]);
    assert_eq!(status.code, 0, "{}\n{}", status.stdout, status.stderr);
}
