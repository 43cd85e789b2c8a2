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

// Commands take the lock in the next change; until then this is unused.
#![allow(dead_code)]

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

impl fmt::Display for LockBusy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.holder {
            Some((pid, command)) if self.holder_alive => {
                write!(f, "another pgha (pid {pid}, `{command}`) is working on cluster {}", self.cluster)?
            }
            Some((pid, command)) => write!(
                f,
                "a program started by pgha (pid {pid}, `{command}`, no longer running) is still working on \
                 cluster {}",
                self.cluster
            )?,
            None => write!(
                f,
                "another pgha is working on cluster {} (it holds {})",
                self.cluster,
                self.lock_file.display()
            )?,
        }
        write!(f, "; wait for it or pass --wait")
    }
}

impl std::error::Error for LockBusy {}

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
            log::info!("{}; waiting for it", busy.to_string().split(';').next().unwrap_or_default());
            flock(&file, libc::LOCK_EX).with_context(|| format!("cannot lock {}", path.display()))?;
        }
        let holder = format!("{} {}\n", std::process::id(), printable(command));
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(holder.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(ClusterLock { file, path, cluster: cluster.to_string() })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets the child `command` will start hold this lock too (its copy of the descriptor is not
    /// closed on exec), so the lock outlives a killed pgha for as long as that child runs.
    pub fn hold_in_child(&self, command: &mut Command) {
        let fd = self.file.as_raw_fd();
        // Runs in the child between fork and exec: fcntl is async-signal-safe and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
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
