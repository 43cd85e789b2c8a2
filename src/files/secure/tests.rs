//! The attacker holds the account that owns `pg/` (nobody here, postgres in real life) and
//! plants symlinks, hard links and FIFOs where pgha works; `canary/` is root's, outside the
//! tree, and must come through every test exactly as it was.

use super::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
const AS_POSTGRES: Ownership = Ownership { uid: NOBODY, gid: NOBODY, mode: 0o640 };
const POSTGRES_DIR: Ownership = Ownership { uid: NOBODY, gid: NOBODY, mode: 0o700 };
/// Far longer than any of these operations takes; reaching it means pgha hung.
const HANG: Duration = Duration::from_secs(20);

struct Tree {
    _temp: tempfile::TempDir,
    pg: PathBuf,
    canary: PathBuf,
}

impl Tree {
    fn pg(&self) -> Dir {
        Dir::open(&self.pg).unwrap()
    }
}

/// None (and the test passes without checking anything) unless run as root, as `make test` does.
fn tree() -> Option<Tree> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the hostile file tests need root");
        return None;
    }
    let temp = tempfile::tempdir().unwrap();
    fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let pg = temp.path().join("pg");
    fs::create_dir(&pg).unwrap();
    std::os::unix::fs::chown(&pg, Some(NOBODY), Some(NOBODY)).unwrap();
    fs::set_permissions(&pg, fs::Permissions::from_mode(0o700)).unwrap();
    let canary = temp.path().join("canary");
    fs::create_dir_all(canary.join("dir")).unwrap();
    fs::write(canary.join("secret"), "root's secret\n").unwrap();
    fs::set_permissions(canary.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(canary.join("dir/inside"), "inside\n").unwrap();
    for path in [&canary, &canary.join("dir")] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    Some(Tree { _temp: temp, pg, canary })
}

/// Everything observable about a tree: per entry its type, owner, mode and content (or link target).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, u32, u32, u32, Vec<u8>)> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = fs::symlink_metadata(&path).unwrap();
        let kind = format!("{:?}", metadata.file_type());
        let content = if metadata.is_file() {
            fs::read(&path).unwrap()
        } else if metadata.is_symlink() {
            fs::read_link(&path).unwrap().into_os_string().into_vec()
        } else {
            Vec::new()
        };
        if metadata.is_dir() {
            pending.extend(fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        }
        entries.insert(path, (kind, metadata.uid(), metadata.gid(), metadata.mode(), content));
    }
    entries
}

/// Runs a command as the account that owns `pg/`, as an attacker holding it would.
fn as_owner(program: &str, args: &[&OsStr]) {
    let status = Command::new(program).args(args).uid(NOBODY).gid(NOBODY).status().unwrap();
    assert!(status.success(), "{program} {args:?} as uid {NOBODY}: {status}");
}

fn plant_symlink(target: &Path, link: &Path) {
    as_owner("ln", &["-s".as_ref(), target.as_os_str(), link.as_os_str()]);
}

/// What root set up in pg/ for a test becomes the attacker's, as everything in pg/ is in real life.
fn give_to_owner(path: &Path) {
    let status = Command::new("chown").args(["-Rh", "65534:65534"]).arg(path).status().unwrap();
    assert!(status.success());
}

fn plant_fifo(path: &Path) {
    as_owner("mkfifo", &[path.as_os_str()]);
}

/// Runs `work` on another thread and fails the test if it has not finished within [`HANG`].
fn bounded<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || sender.send(work()));
    receiver.recv_timeout(HANG).expect("the operation blocked")
}

fn message(result: Result<impl fmt::Debug>) -> String {
    format!("{:#}", result.expect_err("expected a refusal"))
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn open_refuses_a_symlink_at_any_component_and_names_it() {
    let Some(t) = tree() else { return };
    let before = snapshot(&t.canary);
    let link = t.pg.join("conf.d");
    plant_symlink(&t.canary.join("dir"), &link);
    for path in [link.clone(), link.join("inner")] {
        let error = message(Dir::open(&path));
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains(&format!("{} is a symbolic link", link.display())), "{error}");
    }
    assert!(message(t.pg().open_dir("conf.d")).contains("symbolic link"));
    assert!(message(Dir::open("relative/path")).contains("absolute"));
    assert!(message(Dir::open(t.pg.join("../canary"))).contains(".."));
    assert_eq!(Dir::open(&t.pg).unwrap().path(), t.pg);
    assert_eq!(snapshot(&t.canary), before);
}

#[test]
fn only_links_root_alone_controls_are_followed_on_request() {
    let Some(t) = tree() else { return };
    let base = t.pg.parent().unwrap();
    // base is root's and 0755: a link there could only be root's doing.
    fs::create_dir_all(base.join("disk/15/main")).unwrap();
    symlink(base.join("disk"), base.join("postgresql")).unwrap();
    symlink("main", base.join("disk/15/relative")).unwrap();
    let opened = Dir::open_following_root_links(base.join("postgresql/15/main")).unwrap();
    assert_eq!(opened.metadata().unwrap().ino, fs::metadata(base.join("disk/15/main")).unwrap().ino());
    Dir::open_following_root_links(base.join("postgresql/15/relative")).unwrap();
    assert!(message(Dir::open(base.join("postgresql/15/main"))).contains("symbolic link"));
    // In a directory another account can write, or owned by another account: refused.
    plant_symlink(&t.canary.join("dir"), &t.pg.join("conf.d"));
    let error = message(Dir::open_following_root_links(t.pg.join("conf.d")));
    assert!(error.contains(&format!("{} is a symbolic link", t.pg.join("conf.d").display())), "{error}");
    symlink(&t.canary, base.join("nobodys")).unwrap();
    std::os::unix::fs::lchown(base.join("nobodys"), Some(NOBODY), Some(NOBODY)).unwrap();
    assert!(message(Dir::open_following_root_links(base.join("nobodys"))).contains("symbolic link"));
    fs::set_permissions(base, fs::Permissions::from_mode(0o775)).unwrap();
    assert!(message(Dir::open_following_root_links(base.join("postgresql/15/main"))).contains("symbolic link"));
    symlink("../canary", base.join("disk/up")).unwrap();
    fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(message(Dir::open_following_root_links(base.join("disk/up"))).contains(".."));
}

#[test]
fn names_that_are_not_a_single_entry_are_refused() {
    let Some(t) = tree() else { return };
    let pg = t.pg();
    for name in ["", ".", "..", "../canary", "a/b", "a\0b"] {
        assert!(pg.write_atomic(name, b"x", AS_POSTGRES).is_err(), "{name:?}");
        assert!(pg.create_dir(name, POSTGRES_DIR).is_err(), "{name:?}");
        assert!(pg.read_capped(name, 10).is_err(), "{name:?}");
    }
    assert!(names(&t.pg).is_empty());
}

#[test]
fn write_atomic_replaces_a_planted_symlink_instead_of_following_it() {
    let Some(t) = tree() else { return };
    let before = snapshot(&t.canary);
    plant_symlink(&t.canary.join("secret"), &t.pg.join("pgha.conf"));
    t.pg().write_atomic("pgha.conf", b"new\n", AS_POSTGRES).unwrap();
    let written = fs::symlink_metadata(t.pg.join("pgha.conf")).unwrap();
    assert!(written.is_file());
    assert_eq!((written.uid(), written.gid(), written.mode() & 0o7777), (NOBODY, NOBODY, 0o640));
    assert_eq!(fs::read(t.pg.join("pgha.conf")).unwrap(), b"new\n");
    assert_eq!(names(&t.pg), ["pgha.conf"], "no temporary file left");
    assert_eq!(snapshot(&t.canary), before);
}

#[test]
fn write_atomic_replaces_a_hard_link_instead_of_writing_through_it() {
    let Some(t) = tree() else { return };
    // The kernel's protected_hardlinks stops the owner of pg/ from linking root's file;
    // root plants it, to prove the writer does not depend on that setting.
    fs::hard_link(t.canary.join("secret"), t.pg.join("passfile")).unwrap();
    let before = snapshot(&t.canary);
    t.pg().write_atomic("passfile", b"*:*:*:u:pw\n", AS_POSTGRES).unwrap();
    assert_eq!(snapshot(&t.canary), before);
    assert_eq!(fs::metadata(t.canary.join("secret")).unwrap().nlink(), 1);
    assert_eq!(fs::read(t.pg.join("passfile")).unwrap(), b"*:*:*:u:pw\n");
}

#[test]
fn write_atomic_sets_owner_and_mode_on_an_existing_file() {
    let Some(t) = tree() else { return };
    let pg = t.pg();
    pg.write_atomic("f", b"one", Ownership { uid: 0, gid: 0, mode: 0o644 }).unwrap();
    pg.write_atomic("f", b"two", Ownership { uid: NOBODY, gid: NOBODY, mode: 0o600 }).unwrap();
    let metadata = fs::metadata(t.pg.join("f")).unwrap();
    assert_eq!((metadata.uid(), metadata.gid(), metadata.mode() & 0o7777), (NOBODY, NOBODY, 0o600));
    assert_eq!(fs::read(t.pg.join("f")).unwrap(), b"two");
    assert_eq!(names(&t.pg), ["f"]);
}

#[test]
fn write_atomic_removes_its_temporary_file_when_it_fails() {
    let Some(t) = tree() else { return };
    fs::create_dir_all(t.pg.join("pgha.conf/full")).unwrap();
    let error = message(t.pg().write_atomic("pgha.conf", b"x", AS_POSTGRES));
    assert!(error.contains(&t.pg.join("pgha.conf").display().to_string()), "{error}");
    assert_eq!(names(&t.pg), ["pgha.conf"]);
}

#[test]
fn create_dir_refuses_a_symlink_at_its_name() {
    let Some(t) = tree() else { return };
    let before = snapshot(&t.canary);
    plant_symlink(&t.canary.join("dir"), &t.pg.join("archive"));
    let pg = t.pg();
    for error in [
        message(pg.create_dir("archive", POSTGRES_DIR)),
        message(pg.create_dir_or_open_existing("archive", POSTGRES_DIR)),
    ] {
        assert!(error.contains(&t.pg.join("archive").display().to_string()), "{error}");
        assert!(error.contains("symbolic link"), "{error}");
    }
    assert_eq!(snapshot(&t.canary), before);
}

#[test]
fn create_dir_makes_a_new_directory_with_owner_and_mode() {
    let Some(t) = tree() else { return };
    let pg = t.pg();
    let made = pg.create_dir("staging", Ownership { uid: NOBODY, gid: NOBODY, mode: 0o750 }).unwrap();
    let metadata = fs::symlink_metadata(t.pg.join("staging")).unwrap();
    assert!(metadata.is_dir());
    assert_eq!((metadata.uid(), metadata.gid(), metadata.mode() & 0o7777), (NOBODY, NOBODY, 0o750));
    made.write_atomic("inside", b"x", AS_POSTGRES).unwrap();
    assert!(t.pg.join("staging/inside").is_file());
    let error = pg.create_dir("staging", POSTGRES_DIR).unwrap_err();
    assert_eq!(io_error_kind(&error), Some(io::ErrorKind::AlreadyExists), "{error:#}");
}

#[test]
fn create_dir_or_open_existing_accepts_a_real_directory_and_fixes_it() {
    let Some(t) = tree() else { return };
    fs::create_dir(t.pg.join("conf.d")).unwrap();
    fs::set_permissions(t.pg.join("conf.d"), fs::Permissions::from_mode(0o777)).unwrap();
    let (_, created) = t.pg().create_dir_or_open_existing("conf.d", POSTGRES_DIR).unwrap();
    assert!(!created);
    let metadata = fs::metadata(t.pg.join("conf.d")).unwrap();
    assert_eq!((metadata.uid(), metadata.mode() & 0o7777), (NOBODY, 0o700));
    let (_, created) = t.pg().create_dir_or_open_existing("new", POSTGRES_DIR).unwrap();
    assert!(created);
}

#[test]
fn create_unique_dir_makes_a_new_name_each_time() {
    let Some(t) = tree() else { return };
    let pg = t.pg();
    let (first, _) = pg.create_unique_dir("main.pgha-fork-20250101T000000Z-", POSTGRES_DIR).unwrap();
    let (second, _) = pg.create_unique_dir("main.pgha-fork-20250101T000000Z-", POSTGRES_DIR).unwrap();
    assert_ne!(first, second);
    assert!(first.starts_with("main.pgha-fork-20250101T000000Z-") && first.len() > 32, "{first}");
    for name in [&first, &second] {
        assert_eq!(fs::metadata(t.pg.join(name)).unwrap().uid(), NOBODY);
    }
}

#[test]
fn read_capped_refuses_a_fifo_without_blocking() {
    let Some(t) = tree() else { return };
    plant_fifo(&t.pg.join("passfile"));
    let pg = t.pg();
    let error = bounded(move || message(pg.read_capped("passfile", 4096)));
    assert!(error.contains(&t.pg.join("passfile").display().to_string()), "{error}");
    assert!(error.contains("a FIFO, expected a regular file"), "{error}");
}

#[test]
fn read_capped_refuses_symlinks_links_directories_and_big_files() {
    let Some(t) = tree() else { return };
    let before = snapshot(&t.canary);
    plant_symlink(&t.canary.join("secret"), &t.pg.join("auto.conf"));
    fs::hard_link(t.canary.join("secret"), t.pg.join("linked")).unwrap();
    fs::create_dir(t.pg.join("dir")).unwrap();
    fs::write(t.pg.join("big"), vec![b'x'; 100]).unwrap();
    fs::write(t.pg.join("fine"), b"k = v\n").unwrap();
    let pg = t.pg();
    let error = message(pg.read_capped("auto.conf", 4096));
    assert!(error.contains(&format!("{} is a symbolic link", t.pg.join("auto.conf").display())), "{error}");
    assert!(message(pg.read_capped("linked", 4096)).contains("2 hard links"));
    assert!(message(pg.read_capped("dir", 4096)).contains("is a directory, expected a regular file"));
    assert!(message(pg.read_capped("big", 99)).contains("100 bytes"));
    assert_eq!(pg.read_capped("big", 100).unwrap().unwrap().len(), 100);
    assert_eq!(pg.read_capped("fine", 4096).unwrap().unwrap(), b"k = v\n");
    assert_eq!(pg.read_capped("missing", 4096).unwrap(), None);
    fs::remove_file(t.pg.join("linked")).unwrap();
    assert_eq!(snapshot(&t.canary), before);
}

#[test]
fn remove_tree_removes_symlinks_without_following_them() {
    let Some(t) = tree() else { return };
    let before = snapshot(&t.canary);
    let staging = t.pg.join("main.pgha-staging");
    fs::create_dir_all(staging.join("base/1")).unwrap();
    fs::write(staging.join("base/1/1234"), b"data").unwrap();
    symlink(t.canary.join("dir"), staging.join("base/tblspc")).unwrap();
    symlink(t.canary.join("secret"), staging.join("secret")).unwrap();
    give_to_owner(&staging);
    plant_fifo(&staging.join("fifo"));
    plant_symlink(&t.canary.join("dir"), &t.pg.join("link"));
    let pg = t.pg();
    bounded(move || {
        pg.remove_tree("main.pgha-staging").unwrap();
        pg.remove_tree("link").unwrap();
        assert!(is_not_found(&pg.remove_tree("link").unwrap_err()));
    });
    assert!(names(&t.pg).is_empty());
    assert_eq!(snapshot(&t.canary), before);
}

#[test]
fn rename_noreplace_keeps_what_is_there_and_exchange_swaps() {
    let Some(t) = tree() else { return };
    let pg = t.pg();
    pg.write_atomic("a", b"a", AS_POSTGRES).unwrap();
    pg.write_atomic("b", b"b", AS_POSTGRES).unwrap();
    let error = pg.rename_noreplace("a", "b").unwrap_err();
    assert_eq!(io_error_kind(&error), Some(io::ErrorKind::AlreadyExists), "{error:#}");
    pg.exchange("a", "b").unwrap();
    assert_eq!(fs::read(t.pg.join("a")).unwrap(), b"b");
    pg.rename("a", "b").unwrap();
    assert_eq!(names(&t.pg), ["b"]);
    assert_eq!(fs::read(t.pg.join("b")).unwrap(), b"b");
    pg.remove_file("b").unwrap();
    assert!(pg.stat("b").unwrap().is_none());
}

#[test]
fn copy_tree_copies_links_as_links_and_skips_fifos() {
    let Some(t) = tree() else { return };
    let before = snapshot(&t.canary);
    let source = t.pg.join("main");
    fs::create_dir_all(source.join("base/1")).unwrap();
    let big: Vec<u8> = (0..3 * COPY_CHUNK + 17).map(|i| (i % 251) as u8).collect();
    fs::write(source.join("base/1/16384"), &big).unwrap();
    fs::write(source.join("PG_VERSION"), b"15\n").unwrap();
    fs::set_permissions(source.join("PG_VERSION"), fs::Permissions::from_mode(0o4640)).unwrap();
    symlink(t.canary.join("dir"), source.join("tblspc")).unwrap();
    symlink("../../secret", source.join("base/relative")).unwrap();
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options().write(true).open(source.join("base/1/16384")).unwrap().set_modified(old).unwrap();
    give_to_owner(&source);
    plant_fifo(&source.join("fifo"));
    let pg = t.pg();
    let copy = pg.create_dir("copy", POSTGRES_DIR).unwrap();
    let from = pg.open_dir("main").unwrap();
    let report = bounded(move || copy_tree(&from, &copy, CopyOwnership::Preserve).unwrap());
    assert_eq!((report.files, report.dirs, report.symlinks), (2, 2, 2), "{report:?}");
    assert_eq!(report.bytes, big.len() as u64 + 3);
    assert_eq!(report.skipped, [source.join("fifo")]);
    let copied = t.pg.join("copy");
    assert_eq!(fs::read(copied.join("base/1/16384")).unwrap(), big);
    let data = fs::metadata(copied.join("base/1/16384")).unwrap();
    assert_eq!((data.uid(), data.gid(), data.modified().unwrap()), (NOBODY, NOBODY, old));
    assert_eq!(fs::metadata(copied.join("PG_VERSION")).unwrap().mode() & 0o7777, 0o640, "setuid dropped");
    assert_eq!(fs::read_link(copied.join("tblspc")).unwrap(), t.canary.join("dir"));
    assert_eq!(fs::read_link(copied.join("base/relative")).unwrap(), Path::new("../../secret"));
    assert_eq!(fs::symlink_metadata(copied.join("tblspc")).unwrap().uid(), NOBODY);
    assert!(!copied.join("fifo").exists());
    assert_eq!(snapshot(&t.canary), before);
}

#[test]
fn copy_tree_never_writes_through_a_symlink_in_the_destination() {
    let Some(t) = tree() else { return };
    let before = snapshot(&t.canary);
    fs::create_dir_all(t.pg.join("main/pg_wal")).unwrap();
    fs::write(t.pg.join("main/PG_VERSION"), b"15\n").unwrap();
    let pg = t.pg();
    let copy = pg.create_dir("copy", POSTGRES_DIR).unwrap();
    plant_symlink(&t.canary.join("secret"), &t.pg.join("copy/PG_VERSION"));
    plant_symlink(&t.canary.join("dir"), &t.pg.join("copy/pg_wal"));
    let error = message(copy_tree(&pg.open_dir("main").unwrap(), &copy, CopyOwnership::Preserve));
    assert!(error.contains(&t.pg.join("copy").display().to_string()), "{error}");
    assert!(error.contains("already there"), "{error}");
    assert_eq!(snapshot(&t.canary), before);
}

/// The owner of pg/ keeps swapping `conf.d` between a real directory and a symlink to root's
/// directory, and keeps planting symlinks at the names written and created inside, while
/// pgha opens, writes, reads, creates and removes there. Whatever interleaving happens, root's
/// directory is never written and root's secret never read.
#[test]
fn racing_renames_never_redirect_root_outside_the_tree() {
    let Some(t) = tree() else { return };
    let before = snapshot(&t.canary);
    let pg = t.pg();
    let real = pg.create_dir("real", POSTGRES_DIR).unwrap();
    symlink(t.canary.join("dir"), t.pg.join("conf.d")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Attackers work through their own handles, so they never step through the symlink themselves.
    let planter = {
        let (stop, secret, dir) = (stop.clone(), t.canary.join("secret"), t.canary.join("dir"));
        std::thread::spawn(move || {
            let (secret, dir) = (
                CString::new(secret.into_os_string().into_vec()).unwrap(),
                CString::new(dir.into_os_string().into_vec()).unwrap(),
            );
            while !stop.load(Ordering::Relaxed) {
                for (name, target) in [("pgha.conf", &secret), ("made", &dir)] {
                    let _ = real.remove_tree(name);
                    let cname = CString::new(name).unwrap();
                    unsafe { libc::symlinkat(target.as_ptr(), real.raw(), cname.as_ptr()) };
                }
            }
        })
    };
    let swapper = {
        let (pg, stop) = (t.pg(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = pg.exchange("real", "conf.d");
            }
        })
    };
    let (mut attempts, mut written, mut refused, mut made_dirs) = (0, 0, 0, 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        attempts += 1;
        let opened = if attempts % 2 == 0 { Dir::open(t.pg.join("conf.d")) } else { pg.open_dir("conf.d") };
        let Ok(conf_d) = opened else {
            refused += 1;
            continue;
        };
        if conf_d.write_atomic("pgha.conf", b"mine\n", AS_POSTGRES).is_ok() {
            written += 1;
        }
        if let Ok(Some(content)) = conf_d.read_capped("pgha.conf", 4096) {
            assert_eq!(content, b"mine\n", "read something that is not in the tree");
        }
        if let Ok(made) = conf_d.create_dir("made", POSTGRES_DIR) {
            made_dirs += 1;
            let _ = made.write_atomic("inside", b"x", AS_POSTGRES);
            let _ = conf_d.remove_tree("made");
        }
        let _ = pg.create_dir_or_open_existing("conf.d", POSTGRES_DIR);
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    planter.join().unwrap();
    eprintln!("{attempts} attempts: {written} files written, {made_dirs} directories made, {refused} refusals");
    assert!(
        written > 0 && refused > 0,
        "the race was not exercised: {attempts} attempts, {written} writes, {refused} refusals"
    );
    assert_eq!(snapshot(&t.canary), before);
}
