//! The children pgha starts, and what reaches them. SIGTERM, SIGINT and SIGHUP during a run (`systemctl stop`, a unit's timeout, Ctrl-C): the
//! children pgha is waiting on (psql, pg_basebackup, pg_rewind) are stopped, no new one starts,
//! and the run fails through the same undo as any other failure, then exits non-zero.
//!
//! Two moments change that: while an undo runs, it must finish, so children start again; and
//! once a step that cannot be undone has begun (a promote the server has started), the run goes
//! on to the end and only reports the signal.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

use anyhow::Result;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static FINISHING: AtomicBool = AtomicBool::new(false);
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static RUN_LOCK: AtomicI32 = AtomicI32::new(-1);

/// The descriptor of the run's cluster lock, for `hand_lock_to`.
pub fn set_run_lock(fd: i32) {
    RUN_LOCK.store(fd, Ordering::SeqCst);
}

/// Lets the child `command` starts hold the run's cluster lock, if the run holds one: a
/// pg_basebackup or pg_rewind left running by a killed pgha keeps the next run out until it ends.
pub fn hand_lock_to(command: &mut std::process::Command) {
    let fd = RUN_LOCK.load(Ordering::SeqCst);
    if fd >= 0 {
        inherit_fd(command, fd);
    }
}

/// Keeps `fd` open across the exec of the child `command` starts (it is close-on-exec here).
pub fn inherit_fd(command: &mut std::process::Command, fd: i32) {
    use std::os::unix::process::CommandExt;
    // Runs in the child between fork and exec: fcntl is async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The error a run fails with once a signal arrived.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted by {}", signal_name(self.signal))
    }
}

impl std::error::Error for Interrupted {}

/// Whether `error` ended a run because a signal arrived.
pub fn is_interrupted(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<Interrupted>())
}

fn signal_name(signal: i32) -> String {
    match signal {
        SIGTERM => "SIGTERM".into(),
        SIGINT => "SIGINT".into(),
        SIGHUP => "SIGHUP".into(),
        other => format!("signal {other}"),
    }
}

/// Starts the thread that receives the signals. Called once, before any work.
pub fn install() -> Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            if RECEIVED.swap(signal, Ordering::SeqCst) == 0 {
                log::warn!("{}: stopping the current step and putting the host back", signal_name(signal));
            }
            if !FINISHING.load(Ordering::SeqCst) {
                stop_children();
            }
        }
    })?;
    Ok(())
}

fn stop_children() {
    let children = CHILDREN.lock().map(|list| list.clone()).unwrap_or_default();
    // Each child leads its own process group (tools::spawn_tracked): the group goes.
    for pid in children {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
}

/// The signal received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// The signal received, counting the one that may have killed `child` too: systemd signals a
/// unit's whole control group at once, so a child can die of it before the thread that records
/// it for this process has run. Waits up to a second for that thread after such a death.
pub fn received_by(child: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    if received().is_some() || !matches!(child.signal(), Some(SIGTERM | SIGINT | SIGHUP)) {
        return received();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        if let Some(signal) = received() {
            return Some(signal);
        }
    }
    None
}

/// Fails once a signal arrived, unless the run is finishing (an undo, or a step past its point of
/// no return). Called before each child starts and in every wait.
pub fn check() -> Result<()> {
    match received() {
        Some(signal) if !FINISHING.load(Ordering::SeqCst) => Err(Interrupted { signal }.into()),
        _ => Ok(()),
    }
}

/// From here on the run finishes: an undo, or a step that cannot be taken back. Children run and
/// waits go on whatever signal arrives; the signal is still reported at the end.
pub fn finish_from_here() {
    FINISHING.store(true, Ordering::SeqCst);
}

/// Remembers a running child so a signal can stop it. Dropping the guard forgets it.
pub struct Tracked(u32);

pub fn track(pid: u32) -> Tracked {
    if let Ok(mut list) = CHILDREN.lock() {
        list.push(pid);
    }
    Tracked(pid)
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Ok(mut list) = CHILDREN.lock() {
            list.retain(|pid| *pid != self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_killed_by_a_signal_waits_briefly_for_this_process_to_record_it() {
        use std::os::unix::process::ExitStatusExt;
        let started = std::time::Instant::now();
        assert_eq!(received_by(std::process::ExitStatus::from_raw(1 << 8)), None, "an ordinary failure");
        assert!(started.elapsed() < std::time::Duration::from_millis(100), "no wait for an ordinary failure");
        assert_eq!(received_by(std::process::ExitStatus::from_raw(SIGTERM)), None, "nothing arrived here");
        assert!(started.elapsed() >= std::time::Duration::from_secs(1), "it waited for the signal thread");
    }
}
