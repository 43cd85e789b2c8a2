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

/// How the old primary ends after its fork.
#[derive(PartialEq)]
enum End {
    Stopped,
    Killed,
}

/// A streaming pair with `rows` rows in table `rows`, then a failover: A runs `fork_sql` while
/// B cannot hear it and ends as `end` says; B is promoted and runs `after_sql`.
fn diverged(rows: u32, fork_sql: &str, end: End, after_sql: &str) -> Option<TwoHosts> {
    let p = TwoHosts::new("15", "undo-pw")?;
    let (a, b) = (&p.a, &p.b);
    let out = p.run_b(&["standby"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    a.psql("CREATE TABLE rows (stage text, n int, pad text)");
    a.psql(&format!("INSERT INTO rows SELECT 'before', g, md5(g::text) FROM generate_series(1, {rows}) g"));
    b.wait_for("SELECT count(*) FROM rows", &rows.to_string(), WAIT);
    let veth = p.hosts.b.veth();
    run_ok(Command::new("ip").args(["-n", &p.hosts.b.name, "link", "set", &veth, "down"]));
    // A clean shutdown waits until each standby confirms the last WAL, up to wal_sender_timeout:
    // by default 60 s with B cut off, as long as pg_ctl waits. A short timeout ends the walsender
    // as soon as it notices, without writing to the dead link (a terminated walsender would block
    // on its farewell message until TCP gives up).
    a.psql("ALTER SYSTEM SET wal_sender_timeout = '1s'");
    a.psql("SELECT pg_reload_conf()");
    a.psql(fork_sql);
    if end == End::Killed {
        let pid = fs::read_to_string(a.data_dir().join("postmaster.pid")).unwrap();
        run_ok(Command::new("kill").args(["-KILL", pid.lines().next().unwrap().trim()]));
    } else {
        a.stop();
    }
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
    let Some(p) = diverged(2000, fork, End::Stopped, "UPDATE rows SET n = n + 1000000 WHERE n % 7 = 0") else { return };
    let (a, b) = (&p.a, &p.b);

    let before = checksums(&a.data_dir());
    let rewound = p.run_a(&["rejoin", "--no-start", "--rewind"]);
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

/// `pgha rejoin` on A, which must clone instead of rewinding and give `reason`; then A streams:
/// a row B writes afterwards reaches it.
fn rejoin_by_clone(p: &TwoHosts, reason: &str) -> PghaOutput {
    let rejoined = p.run_a(&["rejoin"]);
    assert_eq!(rejoined.code, 0, "{}\n{}", rejoined.stdout, rejoined.stderr);
    assert!(rejoined.stdout.contains("by a full clone"), "{}", rejoined.stdout);
    assert!(
        rejoined.stderr.contains("cloning in full instead of pg_rewind") && rejoined.stderr.contains(reason),
        "says why: {}",
        rejoined.stderr
    );
    p.b.psql("INSERT INTO rows VALUES ('after', 1, '')");
    p.a.wait_for("SELECT count(*) FROM rows WHERE stage = 'after'", "1", WAIT);
    rejoined
}

/// Every page of the table changed on A after the divergence: pg_rewind would copy all of them
/// back and pgha would save all of them first, more than the whole database a clone copies.
/// A stopped cleanly, so only the dry run can tell.
#[test]
fn a_rewind_that_would_cost_more_than_a_clone_clones_and_says_why() {
    let Some(p) = diverged(300_000, "UPDATE rows SET pad = md5(pad)", End::Stopped, "SELECT 1") else { return };
    let (a, b) = (&p.a, &p.b);
    rejoin_by_clone(&p, "a full clone copies");
    assert_eq!(a.psql("SELECT sum(length(pad)) FROM rows"), b.psql("SELECT sum(length(pad)) FROM rows"));
}

/// The new primary keeps more WAL than its whole database (ten switched segments), all of which
/// pg_rewind before 19 copies, and the old primary crashed: rejoin clones at once, without the
/// crash recovery and dry run it would otherwise pay to find that out.
#[test]
fn a_primary_keeping_more_wal_than_its_data_is_cloned_without_a_dry_run() {
    let switches = "CREATE TABLE switches (n int); \
                    DO $$ BEGIN FOR i IN 1..10 LOOP INSERT INTO switches VALUES (i); PERFORM pg_switch_wal(); END LOOP; END $$";
    let Some(p) =
        diverged(1000, "INSERT INTO rows SELECT 'fork', g, '' FROM generate_series(1, 100) g", End::Killed, switches)
    else {
        return;
    };
    let rejoined = rejoin_by_clone(&p, "every WAL file the primary keeps");
    assert!(
        !rejoined.stderr.contains("pg_rewind --dry-run") && !rejoined.stderr.contains("recovering it"),
        "neither a recovery nor a dry run was needed: {}",
        rejoined.stderr
    );
    assert_eq!(p.a.psql("SELECT count(*) FROM rows WHERE stage = 'fork'"), "0", "A has B's data");
}

/// A loop-mounted XFS filesystem with reflinks, unmounted (and its loop device freed) on drop.
struct ReflinkFs {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl ReflinkFs {
    fn new() -> ReflinkFs {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("xfs.img");
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).unwrap();
        run_ok(Command::new("truncate").args(["-s", "300M"]).arg(&image));
        run_ok(Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&image));
        run_ok(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount));
        ReflinkFs { _dir: dir, mount }
    }
}

impl Drop for ReflinkFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// The save, run as postgres the way rejoin runs it, shares whole files on a filesystem that can
/// (no data copied, and the original stays free to change), links removed ones, and refuses root.
#[test]
fn on_a_reflink_filesystem_the_save_shares_files_instead_of_copying() {
    if !require_root_and_postgres() {
        return;
    }
    let xfs = ReflinkFs::new();
    let data = xfs.mount.join("data");
    fs::create_dir_all(data.join("base/1")).unwrap();
    fs::create_dir_all(data.join("pg_wal")).unwrap();
    let content: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(data.join("base/1/100"), &content).unwrap();
    fs::write(data.join("pg_wal/000000010000000000000009"), b"wal").unwrap();
    run_ok(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&xfs.mount));
    let manifest = r#"{"block_size":8192,"entries":[{"kind":"file","path":"base/1/100","mode":384},{"kind":"link","path":"pg_wal/000000010000000000000009"}],"not_covered":[]}"#;
    let saved = xfs.mount.join("saved");
    let save = |as_postgres: bool| {
        let mut command = if as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", env!("CARGO_BIN_EXE_pgha")]);
            command
        } else {
            Command::new(env!("CARGO_BIN_EXE_pgha"))
        };
        command.args(["rewind-save", "--data-dir"]).arg(&data).arg("--into").arg(&saved);
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        use std::io::Write;
        // Run as root, pgha refuses before it reads: the pipe may be closed already.
        let _ = child.stdin.take().unwrap().write_all(manifest.as_bytes());
        child.wait_with_output().unwrap()
    };
    let as_root = save(false);
    assert_eq!(as_root.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&as_root.stderr).contains("never as root"));
    assert!(!saved.exists());

    let out = save(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["files"].as_u64(), report["cloned"].as_u64()), (Some(2), Some(1)), "{report}");
    assert_eq!(fs::read(saved.join("files/base/1/100")).unwrap(), content);
    assert_eq!(
        fs::metadata(saved.join("files/pg_wal/000000010000000000000009")).unwrap().ino(),
        fs::metadata(data.join("pg_wal/000000010000000000000009")).unwrap().ino(),
        "a file pg_rewind removes is kept by a hard link"
    );
    // Copy on write: the original changes, the saved file does not.
    fs::write(data.join("base/1/100"), b"rewound").unwrap();
    assert_eq!(fs::read(saved.join("files/base/1/100")).unwrap(), content);
}
