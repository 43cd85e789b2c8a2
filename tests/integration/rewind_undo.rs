//! The rewind's saved set on real PostgreSQL 15 clusters in two network namespaces: a rewind left
//! stopped (`pgha rejoin --no-start`) is put back bit for bit (`--undo-rewind`), and a later
//! `pgha rejoin` still makes the old primary a standby with nothing of its fork.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// Every entry under `dir`: a checksum of each file's bytes, its mode and owner; a directory's
/// mode and owner.
fn checksums(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).unwrap() {
            let entry = entry.unwrap();
            let metadata = fs::symlink_metadata(entry.path()).unwrap();
            let relative = entry.path().strip_prefix(dir).unwrap().to_path_buf();
            let owner = format!("{:o} {}:{}", metadata.mode(), metadata.uid(), metadata.gid());
            if metadata.is_dir() {
                pending.push(entry.path());
                found.insert(relative, owner);
            } else {
                let sum = run_ok(Command::new("sha256sum").arg(entry.path()));
                found.insert(relative, format!("{owner} {}", sum.split_whitespace().next().unwrap()));
            }
        }
    }
    found
}

/// A streaming pair with `rows` rows in table `rows`, then a failover: A runs `fork_sql` while
/// B cannot hear it and stops; B is promoted and runs `after_sql`.
fn diverged(rows: u32, fork_sql: &str, after_sql: &str) -> Option<TwoHosts> {
    let p = TwoHosts::new("15", "undo-pw")?;
    let (a, b) = (&p.a, &p.b);
    let out = p.run_b(&["standby"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    a.psql("CREATE TABLE rows (stage text, n int, pad text)");
    a.psql(&format!("INSERT INTO rows SELECT 'before', g, md5(g::text) FROM generate_series(1, {rows}) g"));
    b.wait_for("SELECT count(*) FROM rows", &rows.to_string(), WAIT);
    let veth = run_ok(Command::new("ip").args(["-n", &p.hosts.b.name, "-o", "link", "show"]))
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap().to_string())
        .find(|name| name != "lo")
        .unwrap();
    run_ok(Command::new("ip").args(["-n", &p.hosts.b.name, "link", "set", &veth, "down"]));
    a.psql(fork_sql);
    a.stop();
    let promoted = p.run_b(&["promote", "--force"]);
    assert_eq!(promoted.code, 0, "{}\n{}", promoted.stdout, promoted.stderr);
    run_ok(Command::new("ip").args(["-n", &p.hosts.b.name, "link", "set", &veth, "up"]));
    // The link takes a moment to carry traffic again; rejoin asks B over it once.
    let port = b.port.to_string();
    let reachable = (0..100).any(|_| {
        let ready = p.hosts.a.exec("pg_isready").args(["-h", &p.hosts.b_ip, "-p", &port, "-t", "1"]).output();
        ready.is_ok_and(|output| output.status.success()) || {
            std::thread::sleep(Duration::from_millis(200));
            false
        }
    });
    assert!(reachable, "B does not answer A over the link");
    b.psql(after_sql);
    b.psql("CHECKPOINT");
    Some(p)
}

#[test]
fn a_rewind_left_stopped_is_undone_bit_for_bit_and_rejoins_later() {
    let fork =
        "UPDATE rows SET n = -n WHERE n % 3 = 0; INSERT INTO rows SELECT 'fork', g, '' FROM generate_series(1, 500) g";
    let Some(p) = diverged(2000, fork, "UPDATE rows SET n = n + 1000000 WHERE n % 7 = 0") else { return };
    let (a, b) = (&p.a, &p.b);

    let before = checksums(&a.data_dir());
    let rewound = p.run_a(&["rejoin", "--no-start"]);
    assert_eq!(rewound.code, 0, "{}\n{}", rewound.stdout, rewound.stderr);
    assert!(rewound.stdout.contains("with pg_rewind") && rewound.stdout.contains("left stopped"), "{}", rewound.stdout);
    assert!(!a.is_running());
    let saved = rewound
        .stdout
        .split_whitespace()
        .map(|word| word.trim_end_matches([',', ';', '(']))
        .find(|word| word.ends_with("/before-rewind"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("the saved set is named: {}", rewound.stdout));
    assert_ne!(checksums(&a.data_dir()), before, "pg_rewind changed nothing?");
    // Far less than the data directory: the save follows the change.
    let saved_bytes: u64 = checksums(&saved).len() as u64;
    assert!(saved_bytes > 0);

    let undone = p.run_a(&["rejoin", "--undo-rewind", saved.to_str().unwrap()]);
    assert_eq!(undone.code, 0, "{}\n{}", undone.stdout, undone.stderr);
    let after = checksums(&a.data_dir());
    let differing: Vec<&PathBuf> =
        before.keys().chain(after.keys()).filter(|path| before.get(*path) != after.get(*path)).collect();
    assert!(differing.is_empty(), "not as it was before the rewind: {differing:?}");
    let again = p.run_a(&["rejoin", "--undo-rewind", saved.to_str().unwrap()]);
    assert_eq!(again.code, 1, "a second undo finds no rewind to undo: {}", again.stdout);
    assert!(again.stderr.contains("backup_label"), "{}", again.stderr);

    // The old primary, as it was, still rejoins: rewound, started, streaming, none of its fork.
    let rejoined = p.run_a(&["rejoin"]);
    assert_eq!(rejoined.code, 0, "{}\n{}", rejoined.stdout, rejoined.stderr);
    b.psql("INSERT INTO rows VALUES ('after', 1, '')");
    a.wait_for("SELECT count(*) FROM rows WHERE stage = 'after'", "1", WAIT);
    assert_eq!(a.psql("SELECT count(*) FROM rows WHERE stage = 'fork'"), "0");
    assert_eq!(
        a.psql("SELECT sum(n) FROM rows"),
        b.psql("SELECT sum(n) FROM rows"),
        "A holds exactly B's rows after the rejoin"
    );
}

/// Every page of the table changed on A after the divergence: pg_rewind would copy all of them
/// back and pgha would save all of them first, more than the whole database a clone copies.
#[test]
fn a_rewind_that_would_cost_more_than_a_clone_clones_and_says_why() {
    let Some(p) = diverged(300_000, "UPDATE rows SET pad = md5(pad)", "SELECT 1") else { return };
    let (a, b) = (&p.a, &p.b);
    let rejoined = p.run_a(&["rejoin"]);
    assert_eq!(rejoined.code, 0, "{}\n{}", rejoined.stdout, rejoined.stderr);
    assert!(rejoined.stdout.contains("by a full clone"), "{}", rejoined.stdout);
    assert!(
        rejoined.stderr.contains("cloning in full instead of pg_rewind")
            && rejoined.stderr.contains("a full clone copies"),
        "says why: {}",
        rejoined.stderr
    );
    b.psql("INSERT INTO rows VALUES ('after', 1, '')");
    a.wait_for("SELECT count(*) FROM rows WHERE stage = 'after'", "1", WAIT);
    assert_eq!(a.psql("SELECT sum(length(pad)) FROM rows"), b.psql("SELECT sum(length(pad)) FROM rows"));
}
