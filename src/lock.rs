//! One pgha run at a time per cluster: an exclusive `flock` on `<lock dir>/<version>-<name>.lock`
//! for as long as a command changes anything. The lock file names the holder (pid and command)
//! so a second run can say who it is waiting for.
//!
//! The lock lives in the open file description, so it goes away when the [`ClusterLock`] is
//! dropped or the process dies, whatever kills it. The descriptor is close-on-exec: children do
//! not hold the lock, because some of them outlive pgha on purpose (pg_ctlcluster starts a
//! postmaster that would then hold the lock as long as the server runs). Children that write into
//! the cluster's directories (pg_basebackup, pg_rewind, a copy) should be given the lock with
//! [`ClusterLock::hold_in_child`]: if pgha is killed while one of them runs, the next run then
//! waits for (or reports) the orphan instead of deleting a directory it is still writing.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
#[cfg(test)]
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;

use crate::files::secure::{io_error_kind, Dir, Ownership};

/// Made at boot by systemd-tmpfiles (`d /run/lock/pgha 0700 root root -`); pgha makes it too
/// when it is missing. /run stays writable under the units' `ProtectSystem=strict`, and it is not
/// a `RuntimeDirectory=`, which systemd would remove when either unit stops.
pub const DEFAULT_LOCK_DIR: &str = "/run/lock/pgha";

/// More than any "pid command" line pgha writes; a bound for reading someone else's.
const MAX_HOLDER_BYTES: u64 = 4096;

/// The exclusive lock on one cluster, held until dropped.
#[derive(Debug)]
#[allow(dead_code)]
pub struct ClusterLock {
    file: File,
    path: PathBuf,
    cluster: String,
}

/// Another run holds the lock. The caller exits 1 with this message.
#[derive(Debug)]
pub struct LockBusy {
    pub cluster: String,
    pub lock_file: PathBuf,
    /// The pid and command the holder wrote, when it did.
    pub holder: Option<(u32, String)>,
    /// False when that pid is gone: a child it gave the lock to still holds it.
    pub holder_alive: bool,
}

impl LockBusy {
    /// Who holds the lock, as one clause.
    fn holder_clause(&self) -> String {
        match &self.holder {
            Some((pid, command)) if self.holder_alive => {
                format!("another pgha (pid {pid}, `{command}`) is working on cluster {}", self.cluster)
            }
            Some((pid, command)) => format!(
                "a program started by pgha (pid {pid}, `{command}`, no longer running) is still working on cluster {}",
                self.cluster
            ),
            None => {
                format!("another pgha is working on cluster {} (it holds {})", self.cluster, self.lock_file.display())
            }
        }
    }
}

impl fmt::Display for LockBusy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; wait for it or pass --wait", self.holder_clause())
    }
}

impl std::error::Error for LockBusy {}

/// The lock this run holds, so the children that write into the cluster can be given it.
static HELD: OnceLock<ClusterLock> = OnceLock::new();

/// Takes the lock of `cluster` for the rest of this run (see [`ClusterLock::acquire`]).
pub fn take_for_run(cluster: &str, command: &str, wait: bool) -> Result<()> {
    let lock = ClusterLock::acquire(Path::new(DEFAULT_LOCK_DIR), cluster, command, wait)?;
    // The children that write into the cluster inherit it (see `signals::hand_lock_to`).
    crate::signals::set_run_lock(lock.file.as_raw_fd());
    let _ = HELD.set(lock);
    Ok(())
}

impl ClusterLock {
    /// Takes the lock of `cluster` ("15/main") for `command`. Without `wait`, a held lock is a
    /// [`LockBusy`] error; with it, pgha says once whom it waits for and blocks until its turn.
    pub fn acquire(lock_dir: &Path, cluster: &str, command: &str, wait: bool) -> Result<ClusterLock> {
        let file_name = lock_file_name(cluster)?;
        let dir = open_lock_dir(lock_dir)?;
        let path = lock_dir.join(&file_name);
        let mut file = dir.open_file(&file_name, libc::O_RDWR | libc::O_CREAT | libc::O_NONBLOCK, 0o600)?;
        check_lock_file(&file, &path)?;
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB).with_context(|| format!("cannot lock {}", path.display()))? {
            let busy = busy(&mut file, cluster, &path);
            if !wait {
                return Err(busy.into());
            }
            log::info!("{}; waiting for it", busy.holder_clause());
            flock(&file, libc::LOCK_EX).with_context(|| format!("cannot lock {}", path.display()))?;
        }
        let holder = format!("{} {}\n", std::process::id(), printable(command));
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(holder.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(ClusterLock { file, path, cluster: cluster.to_string() })
    }

    #[allow(dead_code)]
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    #[allow(dead_code)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets the child `command` will start hold this lock too (its copy of the descriptor is not
    /// closed on exec), so the lock outlives a killed pgha for as long as that child runs. Spawn
    /// the command while this lock is still held: the child is given the descriptor's number.
    /// pgha's own children get it through `signals::hand_lock_to`; this is the same, for one lock.
    #[cfg(test)]
    pub fn hold_in_child(&self, command: &mut Command) {
        crate::signals::inherit_fd(command, self.file.as_raw_fd());
    }
}

/// `15/main` → `15-main.lock`. The version has no `-`, so the name is unambiguous.
fn lock_file_name(cluster: &str) -> Result<String> {
    let valid = cluster.split_once('/').filter(|(version, name)| {
        !version.is_empty()
            && version.chars().all(|c| c.is_ascii_digit() || c == '.')
            && !name.is_empty()
            && !name.starts_with('.')
            && !name.contains('/')
            && !name.chars().any(char::is_control)
    });
    match valid {
        Some((version, name)) => Ok(format!("{version}-{name}.lock")),
        None => bail!("cannot lock cluster {cluster:?}: expected VERSION/NAME, such as 15/main"),
    }
}

/// The lock directory, made 0700 when missing. An existing one must be root's and writable by
/// nobody else, or anyone could plant or remove lock files in it.
fn open_lock_dir(lock_dir: &Path) -> Result<Dir> {
    let (Some(parent), Some(name)) = (lock_dir.parent(), lock_dir.file_name()) else {
        bail!("{} cannot hold pgha's locks: expected a directory path such as {DEFAULT_LOCK_DIR}", lock_dir.display());
    };
    let parent = Dir::open(parent)?;
    let owner = Ownership { uid: unsafe { libc::geteuid() }, gid: unsafe { libc::getegid() }, mode: 0o700 };
    match parent.create_dir(name, owner) {
        Ok(dir) => return Ok(dir),
        Err(error) if io_error_kind(&error) == Some(io::ErrorKind::AlreadyExists) => {}
        Err(error) => return Err(error),
    }
    let dir = parent.open_dir(name)?;
    let stat = dir.metadata()?;
    if stat.uid != owner.uid || stat.mode & 0o022 != 0 {
        bail!(
            "{} is owned by uid {} with mode {:04o}; pgha keeps its locks only in a directory no one but root \
             can change (systemd-tmpfiles makes it: d {DEFAULT_LOCK_DIR} 0700 root root)",
            lock_dir.display(),
            stat.uid,
            stat.mode
        );
    }
    Ok(dir)
}

fn check_lock_file(file: &File, path: &Path) -> Result<()> {
    let metadata = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
    let euid = unsafe { libc::geteuid() };
    if !metadata.is_file() || metadata.uid() != euid || metadata.nlink() != 1 {
        bail!(
            "{} is not a lock file pgha made ({:?}, owner uid {}, {} links); remove it if no pgha is running",
            path.display(),
            metadata.file_type(),
            metadata.uid(),
            metadata.nlink()
        );
    }
    Ok(())
}

/// Ok(false) when a non-blocking lock is taken by someone else.
fn flock(file: &File, operation: libc::c_int) -> io::Result<bool> {
    loop {
        match Errno::result(unsafe { libc::flock(file.as_raw_fd(), operation) }) {
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(Errno::EWOULDBLOCK) => return Ok(false),
            Err(errno) => return Err(errno.into()),
        }
    }
}

fn busy(file: &mut File, cluster: &str, path: &Path) -> LockBusy {
    let mut text = String::new();
    let _ = file.seek(SeekFrom::Start(0)).and_then(|_| file.take(MAX_HOLDER_BYTES).read_to_string(&mut text));
    let holder = text.lines().next().and_then(|line| {
        let (pid, command) = line.split_once(' ')?;
        Some((pid.parse::<u32>().ok().filter(|pid| *pid > 0)?, printable(command)))
    });
    let holder_alive = match &holder {
        Some((pid, _)) => {
            !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), None), Err(Errno::ESRCH))
        }
        None => true,
    };
    LockBusy { cluster: cluster.to_string(), lock_file: path.to_path_buf(), holder, holder_alive }
}

/// A command line as it may appear in a message: one line, no control characters, bounded.
fn printable(command: &str) -> String {
    command.chars().take(200).map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::sync::mpsc;
    use std::time::Duration;

    /// Far longer than taking a free lock takes; reaching it means the waiter never got it.
    const HANG: Duration = Duration::from_secs(20);

    fn lock_dir() -> (tempfile::TempDir, PathBuf) {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("pgha");
        (temp, dir)
    }

    fn busy_of(error: anyhow::Error) -> LockBusy {
        error.downcast::<LockBusy>().expect("a LockBusy error")
    }

    #[test]
    fn a_second_run_is_refused_and_told_who_holds_the_lock() {
        let (_temp, dir) = lock_dir();
        let first = ClusterLock::acquire(&dir, "15/main", "pgha standby", false).unwrap();
        let busy = busy_of(ClusterLock::acquire(&dir, "15/main", "pgha primary", false).unwrap_err());
        assert_eq!(busy.holder, Some((std::process::id(), "pgha standby".to_string())));
        assert_eq!(
            busy.to_string(),
            format!(
                "another pgha (pid {}, `pgha standby`) is working on cluster 15/main; wait for it or pass --wait",
                std::process::id()
            )
        );
        // Another cluster is another lock.
        ClusterLock::acquire(&dir, "15/other", "pgha standby", false).unwrap();
        drop(first);
        ClusterLock::acquire(&dir, "15/main", "pgha primary", false).unwrap();
    }

    #[test]
    fn a_waiting_run_gets_the_lock_once_the_holder_lets_go() {
        let (_temp, dir) = lock_dir();
        let first = ClusterLock::acquire(&dir, "15/main", "pgha standby", false).unwrap();
        let (sender, receiver) = mpsc::channel();
        let waiter_dir = dir.clone();
        std::thread::spawn(move || {
            let lock =
                ClusterLock::acquire(&waiter_dir, "15/main", "pgha rejoin", true).map(|lock| lock.path().to_owned());
            sender.send(lock.map_err(|error| format!("{error:#}"))).unwrap();
        });
        assert!(receiver.recv_timeout(Duration::from_millis(300)).is_err(), "the waiter did not wait");
        drop(first);
        let path = receiver.recv_timeout(HANG).expect("the waiter never got the lock").unwrap();
        assert_eq!(fs::read_to_string(path).unwrap(), format!("{} pgha rejoin\n", std::process::id()));
    }

    #[test]
    fn a_symlink_at_the_lock_file_is_refused() {
        let (temp, dir) = lock_dir();
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let canary = temp.path().join("canary");
        fs::write(&canary, "root's file\n").unwrap();
        symlink(&canary, dir.join("15-main.lock")).unwrap();
        let error = format!("{:#}", ClusterLock::acquire(&dir, "15/main", "pgha standby", false).unwrap_err());
        assert!(error.contains(&format!("{} is a symbolic link", dir.join("15-main.lock").display())), "{error}");
        assert_eq!(fs::read_to_string(&canary).unwrap(), "root's file\n");
    }

    #[test]
    fn a_lock_file_pgha_did_not_make_is_refused() {
        let (_temp, dir) = lock_dir();
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join("15-main.lock"), "").unwrap();
        fs::hard_link(dir.join("15-main.lock"), dir.join("other")).unwrap();
        let error = format!("{:#}", ClusterLock::acquire(&dir, "15/main", "pgha standby", false).unwrap_err());
        assert!(error.contains("is not a lock file pgha made"), "{error}");
        fs::remove_file(dir.join("other")).unwrap();
        nix::unistd::mkfifo(&dir.join("15-other.lock"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let error = format!("{:#}", ClusterLock::acquire(&dir, "15/other", "pgha standby", false).unwrap_err());
        assert!(error.contains("is not a lock file pgha made"), "{error}");
    }

    #[test]
    fn a_missing_lock_directory_is_made_for_its_owner_only() {
        let (_temp, dir) = lock_dir();
        ClusterLock::acquire(&dir, "9.6/main", "pgha standby", false).unwrap();
        let metadata = fs::symlink_metadata(&dir).unwrap();
        assert!(metadata.is_dir());
        assert_eq!(metadata.permissions().mode() & 0o7777, 0o700);
        assert!(dir.join("9.6-main.lock").is_file());
    }

    #[test]
    fn a_lock_directory_others_can_write_or_a_symlink_is_refused() {
        let (temp, dir) = lock_dir();
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let error = format!("{:#}", ClusterLock::acquire(&dir, "15/main", "pgha standby", false).unwrap_err());
        assert!(error.contains(&format!("{} is owned by uid", dir.display())) && error.contains("0777"), "{error}");
        let link = temp.path().join("link");
        symlink(&dir, &link).unwrap();
        let error = format!("{:#}", ClusterLock::acquire(&link, "15/main", "pgha standby", false).unwrap_err());
        assert!(error.contains("symbolic link"), "{error}");
        assert!(!dir.join("15-main.lock").exists());
    }

    #[test]
    fn a_child_given_the_lock_holds_it_after_pgha_lets_go() {
        let (_temp, dir) = lock_dir();
        let lock = ClusterLock::acquire(&dir, "15/main", "pgha standby", false).unwrap();
        let mut command = Command::new("sleep");
        command.arg("60");
        lock.hold_in_child(&mut command);
        let mut child = command.spawn().unwrap();
        let mut unrelated = Command::new("sleep").arg("60").spawn().unwrap();
        drop(lock);
        let result = ClusterLock::acquire(&dir, "15/main", "pgha primary", false);
        child.kill().unwrap();
        child.wait().unwrap();
        let busy = busy_of(result.unwrap_err());
        assert_eq!(busy.holder, Some((std::process::id(), "pgha standby".to_string())));
        // A child started without hold_in_child (such as a postmaster) never holds it. Another test
        // thread may fork meanwhile, and its child holds every descriptor until it execs: a short
        // retry, far shorter than `unrelated` lives.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Err(error) = ClusterLock::acquire(&dir, "15/main", "pgha primary", false) {
            assert!(std::time::Instant::now() < deadline, "{error:#}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        unrelated.kill().unwrap();
        unrelated.wait().unwrap();
    }

    #[test]
    fn a_holder_that_is_gone_is_reported_as_such() {
        let busy = LockBusy {
            cluster: "15/main".into(),
            lock_file: "/run/lock/pgha/15-main.lock".into(),
            holder: Some((1234, "pgha standby".into())),
            holder_alive: false,
        };
        assert_eq!(
            busy.to_string(),
            "a program started by pgha (pid 1234, `pgha standby`, no longer running) is still working on \
             cluster 15/main; wait for it or pass --wait"
        );
    }

    #[test]
    fn cluster_names_become_one_file_name() {
        assert_eq!(lock_file_name("15/main").unwrap(), "15-main.lock");
        assert_eq!(lock_file_name("9.6/my-cluster").unwrap(), "9.6-my-cluster.lock");
        for bad in ["main", "15/", "/main", "15/../x", "15/a/b", "15/.x", "x5/main", "15/a\nb"] {
            assert!(lock_file_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(printable("pgha\nstandby\x1b"), "pgha?standby?");
    }
}
