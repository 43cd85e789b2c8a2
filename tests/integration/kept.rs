//! What pgha kept beside a data directory (replaced data directories, rewinds' forks): `pgha
//! status` lists it with size and age, and only `pgha cleanup --older-than` removes it, through
//! handles that never follow a link the postgres account planted there.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::day2::status_json;

fn beside(cluster: &TestCluster, suffix: &str) -> PathBuf {
    let data = cluster.data_dir();
    data.with_file_name(format!("{}{suffix}", data.file_name().unwrap().to_str().unwrap()))
}

/// A directory as pgha leaves one: postgres', 0700, with a file of `kib` KiB.
fn kept_dir(path: &Path, kib: usize) {
    fs::create_dir(path).unwrap();
    fs::write(path.join("PG_VERSION"), vec![b'x'; kib << 10]).unwrap();
    run_ok(std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(path));
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn status_lists_what_was_kept_and_cleanup_removes_only_the_old_through_no_link() {
    let Some(setup) = TwoHosts::new("15", "kept-s3cret") else { return };
    let a = &setup.a;
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(['-', ':'], "");
    let old = beside(a, ".pgha-old-20200101T000000Z");
    let old_fork = beside(a, ".pgha-fork-20200102T000000Z");
    let young = beside(a, &format!(".pgha-fork-{now}"));
    kept_dir(&old, 2048);
    kept_dir(&old_fork, 64);
    kept_dir(&young, 64);
    // The postgres account plants a link at a kept name, and another inside an old directory,
    // both to a root-owned canary.
    let canary = tempfile::tempdir().unwrap();
    fs::write(canary.path().join("root-file"), "root's").unwrap();
    let planted = beside(a, ".pgha-old-20200103T000000Z");
    symlink(canary.path(), &planted).unwrap();
    symlink(canary.path(), old.join("link-to-canary")).unwrap();
    let canary_before = (fs::metadata(canary.path()).unwrap().mode(), fs::read_dir(canary.path()).unwrap().count());

    let status = setup.run_a(&["status", "--json"]);
    let value = status_json(&status);
    let kept = value["kept"].as_array().unwrap();
    let paths: Vec<&str> = kept.iter().map(|k| k["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [old.to_str().unwrap(), old_fork.to_str().unwrap(), young.to_str().unwrap()],
        "oldest first, the planted link left out"
    );
    assert_eq!((kept[0]["kind"].as_str(), kept[1]["kind"].as_str()), (Some("old"), Some("fork")));
    assert!(kept[0]["bytes"].as_u64().unwrap() >= 2 << 20, "{}", kept[0]);
    assert!(kept[0]["age_seconds"].as_u64().unwrap() > 365 * 86400, "{}", kept[0]);
    let table = setup.run_a(&["status"]);
    assert!(table.stdout.contains("KEPT") && table.stdout.contains(old.to_str().unwrap()), "{}", table.stdout);

    let dry = setup.run_a(&["cleanup", "--older-than", "30d", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    assert!(dry.stdout.contains(&format!("would remove {}", old.display())), "{}", dry.stdout);
    assert!(old.is_dir() && old_fork.is_dir(), "a dry run removed something");

    let out = setup.run_a(&["cleanup", "--older-than", "30d"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("removed 2 kept directories"), "{}", out.stdout);
    assert!(!old.exists() && !old_fork.exists(), "the old ones are gone");
    assert!(young.is_dir(), "a young fork is kept");
    assert!(fs::symlink_metadata(&planted).unwrap().file_type().is_symlink(), "the planted link is no kept directory");
    assert_eq!(fs::read_to_string(canary.path().join("root-file")).unwrap(), "root's");
    assert_eq!(
        (fs::metadata(canary.path()).unwrap().mode(), fs::read_dir(canary.path()).unwrap().count()),
        canary_before,
        "the canary was touched through a link"
    );
    assert!(a.is_running(), "the cluster itself is untouched");

    let again = setup.run_a(&["cleanup", "--older-than", "30d"]);
    assert_eq!(again.code, 0);
    assert!(again.stdout.starts_with("nothing to do"), "{}", again.stdout);
    let bad = setup.run_a(&["cleanup", "--older-than", "soon"]);
    assert_eq!(bad.code, 2, "a bad duration is a usage error: {}", bad.stderr);

    for path in [&young, &planted] {
        let _ = fs::remove_dir_all(path).or_else(|_| fs::remove_file(path));
    }
}
