//! The external programs pgha runs, one module each: `invoke_*` runs the program, `parse_*` turns
//! its output into a typed value and is pure, tested on output saved from the real program.
//! This module holds what they share: a scrubbed environment, running as postgres, and polling.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::host::postgres_account;
use crate::signals::{self, Tracked};

pub mod pg_basebackup;
pub mod pg_controldata;
pub mod pg_ctlcluster;
pub mod pg_lsclusters;
pub mod pg_rewind;
pub mod psql;

const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A command that runs as postgres with a scrubbed environment, so nothing of the caller's
/// environment (PGPASSWORD included) reaches it.
pub fn postgres_command(program: &str) -> Result<Command> {
    let account = postgres_account()?;
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", PATH)
        .env("LANG", "C.UTF-8")
        .env("HOME", "/var/lib/postgresql")
        .current_dir("/")
        .uid(account.uid)
        .gid(account.gid);
    Ok(command)
}

/// A root command with the same scrubbed environment.
pub fn root_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env_clear().env("PATH", PATH).env("LANG", "C.UTF-8").current_dir("/");
    command
}

/// Starts a child that a signal stops (see `signals`); none starts once a signal arrived.
/// It runs in a process group of its own, so that a signal reaches what it started too (such as
/// pg_basebackup's WAL-streaming child, which would otherwise outlive it and keep its pipes open).
pub fn spawn_tracked(command: &mut Command, what: &str) -> Result<(Child, Tracked)> {
    signals::check()?;
    command.process_group(0);
    let child = command.spawn().with_context(|| format!("cannot run {what}"))?;
    let tracked = signals::track(child.id());
    Ok((child, tracked))
}

/// Runs a tracked child to its end, feeding `stdin` if given. A child that failed because a
/// signal stopped it fails with `signals::Interrupted` in the chain.
pub fn output_tracked(command: &mut Command, what: &str, stdin: Option<&[u8]>) -> Result<Output> {
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let (mut child, _tracked) = spawn_tracked(command, what)?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().with_context(|| format!("{what}'s stdin is not a pipe"))?;
        // A child that exits early closes the pipe; its exit status says why.
        let _ = pipe.write_all(input);
    }
    let output = child.wait_with_output().with_context(|| format!("{what} did not finish"))?;
    interrupted_if_killed(output.status, what)?;
    Ok(output)
}

/// The error for a child that ended unsuccessfully after a signal arrived.
pub fn interrupted_if_killed(status: std::process::ExitStatus, what: &str) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    match signals::received_by(status) {
        Some(signal) => {
            Err(anyhow::Error::new(signals::Interrupted { signal }).context(format!("{what} was stopped ({status})")))
        }
        None => Ok(()),
    }
}

/// Copies `files` into `into` as postgres, keeping modes and times and copying links as links:
/// for files in postgres' own trees, where whatever postgres reads as itself gives it nothing.
pub fn copy_as_postgres(files: &[PathBuf], into: &Path) -> Result<()> {
    for chunk in files.chunks(256) {
        let mut command = postgres_command("cp")?;
        command.args(["--no-dereference", "--preserve=mode,timestamps", "--"]).args(chunk).arg(into);
        run_checked(&mut command, "cp")?;
    }
    Ok(())
}

/// Output of a finished command, with stderr kept for error messages.
pub fn run_checked(command: &mut Command, what: &str) -> Result<String> {
    let output = output_tracked(command, what, None)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!("{what} failed ({}): {}", output.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Asks `probe` every `interval` until it answers `Some`, or `timeout` has passed (then `None`).
/// An error from the probe ends the wait at once: a probe that should retry on errors keeps
/// them itself and answers `None`.
pub fn poll_until<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let deadline = Instant::now() + timeout;
    loop {
        signals::check()?;
        if let Some(value) = probe()? {
            return Ok(Some(value));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(interval);
    }
}

/// Tries `attempt` every `interval` until it succeeds, or `timeout` has passed: then its last
/// error. For servers and programs that fail for a moment (starting, reconnecting, a cluster
/// being created next to ours) before they answer.
pub fn retry_until_ok<T>(timeout: Duration, interval: Duration, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut last_error = None;
    let answer = poll_until(timeout, interval, || match attempt() {
        Ok(value) => Ok(Some(value)),
        Err(error) => {
            last_error = Some(error);
            Ok(None)
        }
    })?;
    answer.ok_or_else(|| last_error.unwrap_or_else(|| anyhow::anyhow!("no answer")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_stops_at_the_first_answer_or_error_or_deadline() {
        let mut calls = 0;
        let answer = poll_until(Duration::from_secs(5), Duration::ZERO, || {
            calls += 1;
            Ok((calls == 3).then_some(calls))
        });
        assert_eq!(answer.unwrap(), Some(3));
        let failed: Result<Option<()>> = poll_until(Duration::from_secs(5), Duration::ZERO, || anyhow::bail!("no"));
        assert!(failed.is_err());
        let never: Option<()> = poll_until(Duration::ZERO, Duration::ZERO, || Ok(None)).unwrap();
        assert_eq!(never, None);
    }

    #[test]
    fn retrying_keeps_the_last_error() {
        let mut calls = 0;
        let answer = retry_until_ok(Duration::from_secs(5), Duration::ZERO, || {
            calls += 1;
            if calls < 3 {
                anyhow::bail!("not yet {calls}")
            }
            Ok(calls)
        });
        assert_eq!(answer.unwrap(), 3);
        let failed: Result<()> = retry_until_ok(Duration::ZERO, Duration::ZERO, || anyhow::bail!("down"));
        assert_eq!(failed.unwrap_err().to_string(), "down");
    }
}
