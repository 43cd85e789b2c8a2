//! promote's guard on three hosts (A the primary, B and C its standbys): a primary that answers
//! "shutting down" is alive; a primary B cannot reach while C still streams from it is alive; a
//! standby behind another is not the one to promote. Each refusal changes nothing, and --force
//! says what it overrode.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const PASSWORD: &str = "guard-s3cret";
const WAIT: Duration = Duration::from_secs(60);
const STREAMING: &str = "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'";

fn caught_up(three: &ThreeHosts) {
    three.a.wait_for(
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND replay_lsn = pg_current_wal_lsn()",
        "2",
        WAIT,
    );
}

fn assert_refused(out: &PghaOutput, objection: &str) {
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("refusing to promote"), "{}", out.stderr);
    assert!(out.stderr.contains(objection), "the refusal names {objection:?}: {}", out.stderr);
}

#[test]
fn a_primary_that_is_shutting_down_counts_as_alive() {
    let Some(three) = ThreeHosts::new(PASSWORD) else { return };
    caught_up(&three);
    // A smart shutdown waits for every session; meanwhile A refuses new ones as "shutting down".
    let mut holder = Command::new("ip")
        .args(["netns", "exec", &three.hosts.a.name, "runuser", "-u", "postgres", "--", "psql", "-X", "-h"])
        .arg(three.a.try_psql("SHOW unix_socket_directories").unwrap().split(',').next().unwrap().trim())
        .args(["-p", &three.a.psql("SHOW port"), "-c", "SELECT pg_sleep(120)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    three.a.wait_for("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(120)'", "1", WAIT);
    // SIGTERM to the postmaster is PostgreSQL's smart shutdown.
    let pid = std::fs::read_to_string(three.a.data_dir().join("postmaster.pid")).unwrap();
    run_ok(Command::new("kill").args(["-TERM", pid.lines().next().unwrap().trim()]));
    let deadline = std::time::Instant::now() + WAIT;
    while !three.a.try_psql("SELECT 1").is_err_and(|error| error.contains("shutting down")) {
        assert!(std::time::Instant::now() < deadline, "A never said it is shutting down");
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = three.run(1, &["promote"]);
    assert_refused(&out, &format!("{} is alive", three.hosts.a_ip));
    assert!(out.stderr.contains("shutting down"), "{}", out.stderr);
    assert_eq!(three.b.psql("SELECT pg_is_in_recovery()"), "t", "B was promoted");

    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn a_primary_this_standby_cannot_reach_is_alive_while_another_standby_streams_from_it() {
    let Some(three) = ThreeHosts::new(PASSWORD) else { return };
    caught_up(&three);
    // B loses its route to A, and its own receiver with it (a restart drops the old connection);
    // C still streams from A.
    run_ok(Command::new("ip").args(["-n", &three.hosts.b.name, "route", "add", "unreachable", &three.hosts.a_ip]));
    three.b.stop();
    three.b.start();
    three.b.wait_for("SELECT pg_is_in_recovery()", "t", WAIT);
    three.b.wait_for(STREAMING, "0", WAIT);
    three.c.wait_for(STREAMING, "1", WAIT);

    let out = three.run(1, &["promote"]);
    assert_refused(&out, &format!("the standby {} still streams from a primary", three.hosts.c_ip));
    assert_eq!(three.b.psql("SELECT pg_is_in_recovery()"), "t", "B was promoted");
    assert_eq!(three.a.psql("SELECT pg_is_in_recovery()"), "f");
}

#[test]
fn a_standby_behind_another_is_not_promoted_unless_forced() {
    let Some(three) = ThreeHosts::new(PASSWORD) else { return };
    caught_up(&three);
    three.b.psql("SELECT pg_wal_replay_pause()");
    three.a.psql("CREATE TABLE only_c_has_it AS SELECT generate_series(1, 1000) AS x");
    let written = three.a.psql("SELECT pg_current_wal_lsn()");
    three.c.wait_for(&format!("SELECT pg_last_wal_replay_lsn() >= '{written}'"), "t", WAIT);
    three.a.stop();
    for standby in [&three.b, &three.c] {
        standby.wait_for(STREAMING, "0", WAIT);
    }

    let out = three.run(1, &["promote"]);
    assert_refused(&out, &format!("the standby {} has replayed up to", three.hosts.c_ip));
    assert!(out.stderr.contains(&format!("promote {} instead", three.hosts.c_ip)), "{}", out.stderr);
    assert_eq!(three.b.psql("SELECT pg_is_in_recovery()"), "t", "B was promoted");

    // C is the one to promote: nothing objects.
    let out = three.run(2, &["promote"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    eprintln!("{}", out.stdout.lines().next().unwrap_or_default());
    assert_eq!(three.c.psql("SELECT count(*) FROM only_c_has_it"), "1000");

    // --force on B overrides, and says afterwards what it overrode: C answers as a writable primary now.
    let out = three.run(1, &["promote", "--force"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("--force overrode")
            && out.stderr.contains(&format!("{} answers as a writable primary", three.hosts.c_ip)),
        "{}",
        out.stderr
    );
}
