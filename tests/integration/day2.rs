//! Day-2 commands across two hosts: status, verify, promote and rejoin, on real PostgreSQL 15
//! clusters in two network namespaces. A starts as the primary (`pgha primary`), B as its
//! standby (`pgha standby`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const PASSWORD: &str = "d2-s3cret-'q'-\\x";
const WAIT: Duration = Duration::from_secs(60);
/// How long pgha waits for a member that does not answer (its MEMBER_CONNECT_TIMEOUT).
const MEMBER_CONNECT_TIMEOUT_MS: u128 = 3000;

type Pair = TwoHosts;

/// A streaming pair: A the primary, B its standby made by `pgha standby`.
fn pair() -> Option<Pair> {
    let pair = TwoHosts::new("15", PASSWORD)?;
    let out = pair.run_b(&["standby"]);
    assert_eq!(out.code, 0, "pgha standby failed: {}\n{}", out.stdout, out.stderr);
    pair.a.psql("CREATE TABLE stages (stage text, n int)");
    Some(pair)
}

fn write(cluster: &TestCluster, stage: &str, rows: u32) {
    cluster.psql(&format!("INSERT INTO stages SELECT '{stage}', g FROM generate_series(1, {rows}) g"));
}

fn stage_counts(cluster: &TestCluster) -> String {
    cluster.psql("SELECT string_agg(stage || '=' || n, ',' ORDER BY stage) FROM (SELECT stage, count(*) n FROM stages GROUP BY stage) s")
}

pub(crate) fn status_json(out: &PghaOutput) -> serde_json::Value {
    let value: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|error| panic!("not JSON ({error}): {}", out.stdout));
    let schema: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(schema_path()).unwrap()).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    let errors: Vec<String> =
        validator.iter_errors(&value).map(|error| format!("{error} at {}", error.instance_path)).collect();
    assert!(errors.is_empty(), "status JSON does not follow docs/status-schema.json: {errors:?}\n{}", out.stdout);
    value
}

fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-schema.json")
}

fn fork_dirs(cluster: &TestCluster) -> Vec<PathBuf> {
    dirs_with_suffix(cluster, ".pgha-fork-")
}

/// Directories pgha keeps beside the cluster's data directory, such as `<name>.pgha-old-<time>`.
fn dirs_with_suffix(cluster: &TestCluster, suffix: &str) -> Vec<PathBuf> {
    let prefix = format!("{}{suffix}", cluster.name);
    fs::read_dir(cluster.data_dir().parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect()
}

#[test]
fn switchover_keeps_every_row_and_roles_follow() {
    let Some(p) = pair() else { return };
    let (a, b) = (&p.a, &p.b);
    write(a, "1-before", 100);
    b.wait_for("SELECT count(*) FROM stages", "100", WAIT);

    // Healthy pair: status and verify from both hosts, JSON checked against the schema.
    let status_a = p.run_a(&["status", "--json"]);
    assert_eq!(status_a.code, 0, "{}\n{}", status_a.stdout, status_a.stderr);
    let json = status_json(&status_a);
    assert_eq!(json["role"], "primary");
    assert_eq!(json["standbys"][0]["address"], p.hosts.b_ip.as_str());
    assert_eq!(json["standbys"][0]["state"], "streaming");
    assert!(json["slots"].as_array().unwrap().iter().any(|slot| slot["active"] == true));
    let status_b = p.run_b(&["status", "--json"]);
    assert_eq!(status_b.code, 0, "{}", status_b.stdout);
    let json = status_json(&status_b);
    assert_eq!(json["role"], "standby");
    assert_eq!(json["receiver"]["status"], "streaming");
    assert_eq!(json["receiver"]["lag"]["bytes"], 0, "an idle standby has no lag: {}", status_b.stdout);
    assert!(!status_b.stdout.contains(PASSWORD));
    let table = p.run_b(&["status"]);
    assert!(table.stdout.starts_with("PGHA OK - standby "), "{}", table.stdout);
    let first = table.stdout.lines().next().unwrap();
    for label in ["lag_bytes=0B;16777216;1073741824;0 ", "lag_seconds=0s;;;0 ", "data_free_bytes="] {
        assert!(first.contains(label), "perfdata lacks {label:?}: {first}");
    }
    let on_a = p.run_a(&["status", "--warn-lag", "30s"]);
    let first = on_a.stdout.lines().next().unwrap();
    let label = format!("lag_bytes_{}=0B;;1073741824;0 lag_seconds_{}=0s;30;;0 ", p.hosts.b_ip, p.hosts.b_ip);
    assert!(first.starts_with("PGHA OK - primary ") && first.contains(&label), "{first}");
    assert!(first.contains(&format!(" slot_retained_bytes_pgha_{}=", p.hosts.b_ip.replace('.', "_"))), "{first}");
    for out in [p.run_a(&["verify"]), p.run_b(&["verify"])] {
        assert_eq!(out.code, 0, "verify failed:\n{}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(&format!("standby {}", p.hosts.b_ip)), "{}", out.stdout);
    }

    // Refusal: A still accepts writes.
    let refused = p.run_b(&["promote"]);
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("refusing to promote") && refused.stderr.contains("two primaries"),
        "{}",
        refused.stderr
    );
    assert_eq!(b.psql("SELECT pg_is_in_recovery()"), "t");

    write(a, "2-before-stop", 50);
    b.wait_for("SELECT count(*) FROM stages", "150", WAIT);
    a.stop();
    let promoted = p.run_b(&["promote"]);
    assert_eq!(promoted.code, 0, "{}\n{}", promoted.stdout, promoted.stderr);
    assert!(promoted.stdout.contains("is now the primary"), "{}", promoted.stdout);
    assert!(promoted.stdout.contains("pgha rejoin"), "says what to do next: {}", promoted.stdout);
    assert_eq!(b.psql("SELECT pg_is_in_recovery()"), "f");
    // No host's pgha.conf changes: the members say who is primary.
    let configs = (fs::read_to_string(&p.config_a.path).unwrap(), fs::read_to_string(&p.config_b.path).unwrap());
    let again = p.run_b(&["promote"]);
    assert_eq!(again.code, 0);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    write(b, "3-after-promote", 30);
    // B got its archive directory as a standby: the new timeline's first segment is archived there.
    b.psql("SELECT pg_switch_wal()");
    b.wait_for("SELECT last_archived_wal LIKE '000000020%' AND failed_count = 0 FROM pg_stat_archiver", "t", WAIT);
    let archived = fs::read_dir(p.archive_dir("b")).unwrap().filter_map(|entry| entry.ok()).count();
    assert!(archived >= 2, "B's archive holds {archived} files: a segment and 00000002.history expected");

    let rejoined = p.run_a(&["rejoin"]);
    assert_eq!(rejoined.code, 0, "{}\n{}", rejoined.stdout, rejoined.stderr);
    assert!(rejoined.stdout.contains("with pg_rewind"), "{}\n{}", rejoined.stdout, rejoined.stderr);
    write(b, "4-after-rejoin", 20);
    let expected = "1-before=100,2-before-stop=50,3-after-promote=30,4-after-rejoin=20";
    a.wait_for("SELECT count(*) FROM stages", "200", WAIT);
    assert_eq!(stage_counts(a), expected);
    assert_eq!(stage_counts(b), expected);
    let twice = p.run_a(&["rejoin"]);
    assert_eq!(twice.code, 0, "{}", twice.stderr);
    assert!(twice.stdout.contains("nothing to do"), "{}", twice.stdout);

    let status_b = p.run_b(&["status", "--json"]);
    let json = status_json(&status_b);
    assert_eq!((json["role"].as_str(), json["configured_role"].as_str()), (Some("primary"), Some("primary")));
    assert_eq!(status_b.code, 0, "{}", status_b.stdout);
    assert_eq!(json["archive"]["failing"].as_bool(), Some(false), "{}", status_b.stdout);
    assert!(json["archive"]["archived_count"].as_u64() >= Some(1), "{}", status_b.stdout);
    let status_a = p.run_a(&["status", "--json"]);
    let json = status_json(&status_a);
    assert_eq!((json["role"].as_str(), json["configured_role"].as_str()), (Some("standby"), Some("standby")));
    assert_eq!(status_a.code, 0, "{}", status_a.stdout);
    for out in [p.run_b(&["verify"]), p.run_a(&["verify"])] {
        assert_eq!(out.code, 0, "verify failed:\n{}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(&format!("standby {}", p.hosts.a_ip)), "{}", out.stdout);
    }

    // The documented last step on the new primary: `pgha primary` writes conf.d in its primary form.
    let primary = p.run_b(&["primary"]);
    assert_eq!(primary.code, 0, "{}\n{}", primary.stdout, primary.stderr);
    let fragment = fs::read_to_string(b.config_dir().join("conf.d/pgha.conf")).unwrap();
    assert!(!fragment.contains("primary_conninfo"), "{fragment}");
    assert!(p.run_b(&["primary"]).stdout.contains("no changes"));
    assert_eq!(p.run_b(&["verify"]).code, 0);
    assert_eq!(
        configs,
        (fs::read_to_string(&p.config_a.path).unwrap(), fs::read_to_string(&p.config_b.path).unwrap()),
        "no pgha.conf was edited"
    );
    for text in [&promoted.stdout, &promoted.stderr, &rejoined.stdout, &rejoined.stderr, &a.log(), &b.log()] {
        assert!(!text.contains(PASSWORD), "the password leaked");
    }
}

#[test]
fn failover_rewinds_the_old_primary_and_keeps_its_fork_aside() {
    let Some(p) = pair() else { return };
    let (a, b) = (&p.a, &p.b);
    write(a, "1-before", 100);
    b.wait_for("SELECT count(*) FROM stages", "100", WAIT);

    // A commits rows B never receives, then dies. The link is cut on A's side, so that B sees A
    // fall silent, as when a host dies, not "unreachable".
    let veth = p.hosts.a.veth();
    run_ok(Command::new("ip").args(["-n", &p.hosts.a.name, "link", "set", &veth, "down"]));
    write(a, "2-fork", 40);
    a.psql("CHECKPOINT");
    write(a, "2-fork-more", 10);
    let pid = fs::read_to_string(a.data_dir().join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_string();
    run_ok(Command::new("kill").args(["-KILL", &pid]));
    // The link comes back only after B is promoted: A's kernel may still retransmit what its dead
    // walsender had queued, and B must not receive any of the fork.
    let promoted = p.run_b(&["promote", "--force"]);
    assert_eq!(promoted.code, 0, "{}\n{}", promoted.stdout, promoted.stderr);
    // --force overrides whatever A would say, so the promote does not wait for silent A's connect
    // timeout: the first write comes well before that timeout could have run out.
    let promote_ms: u128 = promoted
        .stdout
        .split("accepted a write ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no promote time reported: {}", promoted.stdout));
    assert!(
        promote_ms < MEMBER_CONNECT_TIMEOUT_MS,
        "the promote waited for the silent member ({promote_ms} ms): {}",
        promoted.stderr
    );
    assert!(promoted.stderr.contains("is no primary"), "A was still asked: {}", promoted.stderr);
    run_ok(Command::new("ip").args(["-n", &p.hosts.a.name, "link", "set", &veth, "up"]));
    write(b, "3-after-failover", 30);

    // A test database is smaller than the WAL pg_rewind copies: --rewind keeps rejoin from cloning.
    let rejoined = p.run_a(&["rejoin", "--rewind"]);
    assert_eq!(rejoined.code, 0, "{}\n{}", rejoined.stdout, rejoined.stderr);
    assert!(rejoined.stdout.contains("with pg_rewind"), "{}\n{}", rejoined.stdout, rejoined.stderr);
    assert!(rejoined.stdout.contains("diverged"), "the fork is reported: {}", rejoined.stdout);
    let forks = fork_dirs(a);
    assert_eq!(forks.len(), 1, "the fork's WAL is kept aside: {forks:?}");
    let saved: Vec<String> =
        fs::read_dir(&forks[0]).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(saved.iter().any(|name| name.len() == 24), "WAL segments saved: {saved:?}");
    // What pg_rewind changed is saved in the fork, not a copy of the whole data directory.
    let before = forks[0].join("before-rewind");
    assert!(before.join("manifest.json").is_file(), "the saved set is complete: {saved:?}");
    assert!(before.join("files/global/pg_control").is_file());
    assert!(rejoined.stdout.contains(&before.display().to_string()), "the saved set is reported: {}", rejoined.stdout);
    assert!(dirs_with_suffix(a, ".pgha-old-").is_empty(), "no copy of the whole data directory");

    write(b, "4-after-rejoin", 20);
    a.wait_for("SELECT count(*) FROM stages", "150", WAIT);
    let expected = "1-before=100,3-after-failover=30,4-after-rejoin=20";
    assert_eq!(stage_counts(a), expected, "A must end with B's data and nothing of its fork");
    assert_eq!(stage_counts(b), expected);
    assert_eq!(a.psql("SELECT pg_is_in_recovery()"), "t");
    let verify = p.run_b(&["verify"]);
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
}

#[test]
fn refusals_and_alarms() {
    let Some(p) = pair() else { return };
    let (a, b) = (&p.a, &p.b);

    // The standby is down: verify times out naming it; status on the primary is CRITICAL.
    b.stop();
    let verify = p.run_a(&["verify", "--timeout", "2"]);
    assert_eq!(verify.code, 1, "{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stderr.contains("timed out") && verify.stderr.contains(&p.hosts.b_ip), "{}", verify.stderr);
    let status = p.run_a(&["status", "--json"]);
    assert_eq!(status.code, 2, "{}", status.stdout);
    let json = status_json(&status);
    assert_eq!(json["status"], "CRITICAL");
    assert_eq!(json["standbys"][0]["state"], "disconnected");
    b.start();
    a.wait_for("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", "1", WAIT);

    // Lag thresholds: zero bytes allowed and the primary writes without B replaying.
    b.psql("SELECT pg_wal_replay_pause()");
    write(a, "lagging", 1000);
    a.wait_for("SELECT replay_lsn < pg_current_wal_lsn() FROM pg_stat_replication", "t", WAIT);
    let lagging = p.run_a(&["status", "--warn-lag", "0", "--crit-lag", "1TB"]);
    assert_eq!(lagging.code, 1, "{}", lagging.stdout);
    assert!(lagging.stdout.contains("WARNING: standby"), "{}", lagging.stdout);
    assert!(lagging.stdout.starts_with(&format!("PGHA WARNING - standby {} ", p.hosts.b_ip)), "{}", lagging.stdout);
    b.psql("SELECT pg_wal_replay_resume()");

    // The primary is down: B's receiver stops, so status on B is CRITICAL.
    a.stop();
    let status = p.run_b(&["status"]);
    assert_eq!(status.code, 2, "{}", status.stdout);
    assert!(status.stdout.contains("WAL receiver"), "{}", status.stdout);

    // A broken config is UNKNOWN (3) for a monitoring system, not CRITICAL.
    let broken = TestConfig::new("[primary]\naddress = \"nowhere\"\n", PASSWORD);
    let out = pgha_output(pgha(Some(&p.hosts.b.name)).args(["--config", broken.path_str(), "status", "--json"]));
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(status_json(&out)["status"], "UNKNOWN");
    let out = pgha_output(pgha(Some(&p.hosts.b.name)).args(["--config", broken.path_str(), "status"]));
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("PGHA UNKNOWN - ") && out.stdout.lines().next().unwrap().contains("nowhere"));
}
