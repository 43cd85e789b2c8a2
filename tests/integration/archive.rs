//! The WAL archive on a real PostgreSQL 15 primary: archive_command is `pgha archive-wal`, which
//! keeps the archive under archive.max_size, drops segments under archive.min_free instead of
//! failing, and `pgha status` reports a failing archive_command as CRITICAL.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// A primary with `extra` appended to its [archive] section, alone on its host.
struct Primary {
    hosts: HostPair,
    cluster: TestCluster,
    config: TestConfig,
    archive: PathBuf,
    _scratch: tempfile::TempDir,
}

fn primary(extra: &str) -> Option<Primary> {
    if !require_root_and_postgres() {
        return None;
    }
    let hosts = host_pair();
    let cluster = TestCluster::create("15", Some(&hosts.a.name));
    cluster.start();
    let scratch = tempfile::tempdir().unwrap();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let archive = scratch.path().join("archive");
    let text = config_text(&cluster, &hosts.a_ip, cluster.port, &[&hosts.b_ip], &archive)
        .replace("[replication]\n", "[replication]\npassfile = \"@PASSWORD_FILE@.pgpass\"\n")
        .replace("[archive]\n", &format!("[archive]\n{extra}"));
    let config = TestConfig::new(&text, "archive-pw");
    let setup = Primary { hosts, cluster, config, archive, _scratch: scratch };
    let out = setup.run(&["primary"]);
    assert_eq!(out.code, 0, "pgha primary failed: {}\n{}", out.stdout, out.stderr);
    setup.cluster.psql("CREATE TABLE filler (payload text)");
    Some(setup)
}

impl Primary {
    fn run(&self, args: &[&str]) -> PghaOutput {
        pgha_output(pgha(Some(&self.hosts.a.name)).args(["--config", self.config.path_str()]).args(args))
    }

    /// Writes about a segment's worth of WAL and switches to the next segment.
    fn fill_segment(&self) {
        self.cluster.psql("INSERT INTO filler SELECT repeat(md5(g::text), 300) FROM generate_series(1, 1500) g");
        self.cluster.psql("SELECT pg_switch_wal()");
    }

    fn archived_count(&self) -> u64 {
        self.cluster.psql("SELECT archived_count FROM pg_stat_archiver").parse().unwrap()
    }

    fn wait_archived(&self, at_least: u64) {
        self.cluster.wait_for(&format!("SELECT archived_count >= {at_least} FROM pg_stat_archiver"), "t", WAIT);
    }
}

fn entries(dir: &Path) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (entry.file_name().into_string().unwrap(), entry.metadata().unwrap().len())
        })
        .collect();
    found.sort();
    found
}

#[test]
fn the_archive_stays_under_max_size_and_keeps_the_newest_segments() {
    let Some(p) = primary("max_size = \"64MB\"\n") else { return };
    let conf = fs::read_to_string(p.cluster.config_dir().join("conf.d/pgha.conf")).unwrap();
    assert!(conf.contains("archive-wal") && conf.contains("--max-size 67108864"), "{conf}");
    let before = p.archived_count();
    for _ in 0..8 {
        p.fill_segment();
    }
    p.wait_archived(before + 8);
    let newest = p.cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver");
    let found = entries(&p.archive);
    let total: u64 = found.iter().map(|(_, bytes)| bytes).sum();
    assert!(total <= 64 << 20, "the archive holds {total} bytes, more than max_size: {found:?}");
    assert!(found.iter().any(|(name, _)| *name == newest), "the newest segment {newest} went: {found:?}");
    assert!(found.len() >= 3, "{found:?}");
    assert_eq!(p.cluster.psql("SELECT failed_count FROM pg_stat_archiver"), "0");
    let status = p.run(&["status", "--json"]);
    let json = crate::day2::status_json(&status);
    assert_eq!(json["archive"]["failing"].as_bool(), Some(false), "{}", status.stdout);
    assert!(json["archive"]["bytes"].as_u64().unwrap() <= 64 << 20, "{}", status.stdout);
}

#[test]
fn under_the_free_space_floor_segments_are_dropped_and_status_warns() {
    // A floor no test machine reaches: every segment is dropped, none fails.
    let Some(p) = primary("min_free = \"1000TB\"\n") else { return };
    let before = p.archived_count();
    p.fill_segment();
    p.wait_archived(before + 1);
    assert_eq!(p.cluster.psql("SELECT failed_count FROM pg_stat_archiver"), "0");
    let found = entries(&p.archive);
    assert!(
        !found.is_empty() && found.iter().all(|(name, bytes)| name.ends_with(".pgha-dropped") && *bytes == 0),
        "{found:?}"
    );
    assert!(p.cluster.log().contains("dropped WAL segment"), "the server log says why");
    let status = p.run(&["status", "--json"]);
    let json = crate::day2::status_json(&status);
    assert!(json["archive"]["dropped"].as_u64() >= Some(1), "{}", status.stdout);
    let problems = json["problems"].to_string();
    assert!(problems.contains("were dropped instead of archived"), "{problems}");
}

#[test]
fn a_failing_archive_command_is_critical_until_it_succeeds_again() {
    let Some(p) = primary("") else { return };
    // postgres can no longer write into its archive: every archive_command fails.
    fs::set_permissions(&p.archive, fs::Permissions::from_mode(0o500)).unwrap();
    p.fill_segment();
    p.cluster.wait_for("SELECT failed_count > 0 FROM pg_stat_archiver", "t", WAIT);
    let failing = p.run(&["status"]);
    assert_eq!(failing.code, 2, "{}", failing.stdout);
    let first = failing.stdout.lines().next().unwrap_or_default().to_string();
    assert!(first.starts_with("PGHA CRITICAL - "), "{first}");
    assert!(failing.stdout.contains("archive_command fails"), "{}", failing.stdout);
    assert!(first.contains("archive_failed=") && first.contains("archive_ready="), "perfdata: {first}");
    let json = crate::day2::status_json(&p.run(&["status", "--json"]));
    assert_eq!(json["archive"]["failing"].as_bool(), Some(true));
    assert!(json["archive"]["ready_count"].as_u64() >= Some(1), "{json}");

    fs::set_permissions(&p.archive, fs::Permissions::from_mode(0o700)).unwrap();
    p.cluster.wait_for(
        "SELECT last_archived_time > last_failed_time FROM pg_stat_archiver",
        "t",
        Duration::from_secs(120),
    );
    let recovered = p.run(&["status", "--json"]);
    let json = crate::day2::status_json(&recovered);
    assert_eq!(json["archive"]["failing"].as_bool(), Some(false), "{}", recovered.stdout);
    assert!(!json["problems"].to_string().contains("archive_command fails"), "{}", recovered.stdout);
}
