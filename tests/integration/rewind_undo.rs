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

#[test]
fn a_rewind_left_stopped_is_undone_bit_for_bit_and_rejoins_later() {
    let Some(p) = TwoHosts::new("15", "undo-pw") else { return };
    let (a, b) = (&p.a, &p.b);
    let out = p.run_b(&["standby"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    a.psql("CREATE TABLE rows (stage text, n int)");
    a.psql("INSERT INTO rows SELECT 'before', g FROM generate_series(1, 2000) g");
    b.wait_for("SELECT count(*) FROM rows", "2000", WAIT);

    // A writes what B never receives, then stops; B is promoted and writes too.
    let veth = run_ok(Command::new("ip").args(["-n", &p.hosts.b.name, "-o", "link", "show"]))
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap().to_string())
        .find(|name| name != "lo")
        .unwrap();
    run_ok(Command::new("ip").args(["-n", &p.hosts.b.name, "link", "set", &veth, "down"]));
    a.psql("UPDATE rows SET n = -n WHERE n % 3 = 0");
    a.psql("INSERT INTO rows SELECT 'fork', g FROM generate_series(1, 500) g");
    a.stop();
    let promoted = p.run_b(&["promote", "--force"]);
    assert_eq!(promoted.code, 0, "{}\n{}", promoted.stdout, promoted.stderr);
    run_ok(Command::new("ip").args(["-n", &p.hosts.b.name, "link", "set", &veth, "up"]));
    b.psql("UPDATE rows SET n = n + 1000000 WHERE n % 7 = 0");
    b.psql("CHECKPOINT");

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
    b.psql("INSERT INTO rows VALUES ('after', 1)");
    a.wait_for("SELECT count(*) FROM rows WHERE stage = 'after'", "1", WAIT);
    assert_eq!(a.psql("SELECT count(*) FROM rows WHERE stage = 'fork'"), "0");
    assert_eq!(
        a.psql("SELECT sum(n) FROM rows"),
        b.psql("SELECT sum(n) FROM rows"),
        "A holds exactly B's rows after the rejoin"
    );
}
