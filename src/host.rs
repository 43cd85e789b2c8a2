//! Facts about this host: the postgres account, the addresses of its interfaces and where the
//! pgha program itself is.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

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

/// Where the package installs pgha.
pub const INSTALLED_PROGRAM: &str = "/usr/sbin/pgha";

/// The program running now, which `archive_command` calls back: the installed one on a real host,
/// the one under test in a build tree. A program replaced while it runs (an upgrade) has no path
/// left, so the installed path stands in.
pub fn pgha_program() -> PathBuf {
    std::env::current_exe().ok().filter(|path| path.is_file()).unwrap_or_else(|| INSTALLED_PROGRAM.into())
}
