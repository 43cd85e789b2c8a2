//! Facts about this host, and running commands as the postgres user.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result};

pub const POSTGRES_USER: &str = "postgres";

#[derive(Clone, Copy, Debug)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

pub fn postgres_account() -> Result<Account> {
    let user = uzers::get_user_by_name(POSTGRES_USER)
        .context("there is no `postgres` user on this host: is postgresql-common installed?")?;
    Ok(Account { uid: user.uid(), gid: user.primary_group_id() })
}

/// A command that runs as postgres with a scrubbed environment, so nothing of the caller's
/// environment (PGPASSWORD included) reaches it.
pub fn postgres_command(program: &str) -> Result<Command> {
    let account = postgres_account()?;
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
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
    command.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("LANG", "C.UTF-8").current_dir("/");
    command
}

/// The addresses configured on this host's interfaces (of the network namespace pgha runs in).
pub fn local_addresses() -> Result<BTreeSet<IpAddr>> {
    let mut addresses = BTreeSet::new();
    for interface in nix::ifaddrs::getifaddrs().context("cannot list this host's network interfaces")? {
        let Some(address) = interface.address else { continue };
        if let Some(v4) = address.as_sockaddr_in() {
            addresses.insert(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            addresses.insert(IpAddr::V6(v6.ip()));
        }
    }
    Ok(addresses)
}

/// Output of a finished command, with stderr kept for error messages.
pub fn run_checked(command: &mut Command, what: &str) -> Result<String> {
    let output = command.output().with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!("{what} failed ({}): {}", output.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
