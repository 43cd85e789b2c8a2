//! The standby workflows: make this host's cluster a streaming standby of the primary, by a
//! clone (`clone`) or by pg_rewind (`rewind`), after a preflight that changes nothing
//! (`preflight`), with the primary's slot for it (`slots`) and the wait for streaming
//! (`streaming`); a standby found in place is kept, never replaced unasked (`existing`).
//! `pgha standby` and `pgha rejoin` are thin layers over these. Here is what the clone and the
//! rewind share: the context, the choice of upstream, and the wait for a killed postmaster.

use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::config::{Config, Password};
use crate::debian::Cluster;
use crate::files::secure::read_text_capped;
use crate::render::standby_name;
use crate::tools::poll_until;
use crate::tools::psql::Target;
use crate::upstream::{login_failure, replication_target, sql_target};

pub mod clone;
pub mod existing;
pub mod preflight;
pub mod rejoin;
pub mod rewind;
pub mod slots;
pub mod streaming;

/// Everything a standby workflow knows about this host: the config, the cluster, the password,
/// the address the primary sees this host as, and the primary it follows.
#[derive(Clone, Copy)]
pub struct StandbyContext<'a> {
    pub config: &'a Config,
    pub cluster: &'a Cluster,
    pub password: &'a Password,
    pub own_address: IpAddr,
    /// The member this host follows: the primary the members named.
    pub primary: IpAddr,
}

/// Whom this host follows, as the members say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    Primary(IpAddr),
    /// This host's own cluster is the primary: there is nothing to follow. What each member said.
    ThisHost(String),
}

/// Asks the members who is primary. This host's cluster takes part only as what it is: a copy of
/// another system (a fresh cluster before its first clone) never outvotes the members.
pub fn find_upstream(config: &Config, cluster: &Cluster, passfile: &Path, own_address: IpAddr) -> Result<Upstream> {
    let (mut verdict, survey) = crate::members::ask(config, cluster, passfile, own_address, None);
    // A fresh cluster that nobody else shares a system with, on timeline 1, is no member yet,
    // however alone it is: it has never been cloned, so it names no primary, least of all itself.
    if verdict == (crate::members::Verdict::Primary { address: own_address, stale: Vec::new() })
        && !survey.joined(own_address)
    {
        verdict = crate::members::Verdict::NoPrimary;
    }
    // When nobody answers as a primary and the first primary did not answer at all, the workflow
    // goes on towards it: its preflight tells precisely why (unreachable, TLS, password, pg_hba).
    let first = config.primary.address;
    let first_silent = survey
        .probes
        .iter()
        .any(|(address, probe)| *address == first && matches!(probe, crate::members::Probe::NoAnswer { .. }));
    if verdict == crate::members::Verdict::NoPrimary && first_silent && first != own_address {
        return Ok(Upstream::Primary(first));
    }
    let (primary, survey) = crate::members::primary_of(verdict, survey, &config.path)?;
    log::debug!("members:\n{}", survey.describe());
    Ok(if primary == own_address { Upstream::ThisHost(survey.describe()) } else { Upstream::Primary(primary) })
}

impl StandbyContext<'_> {
    pub fn slot_name(&self) -> Option<String> {
        self.config.replication.slots.then(|| standby_name(self.own_address))
    }

    // Preflight refuses a primary of another major version than this cluster's.
    fn remote(&self, passfile: &Path) -> Target {
        sql_target(self.config, self.primary, passfile, self.cluster.version)
    }

    fn replication(&self, passfile: &Path) -> Target {
        replication_target(self.config, self.primary, passfile, self.cluster.version)
    }

    fn login_failure(&self, what: &str, error: anyhow::Error) -> anyhow::Error {
        login_failure(self.config, self.primary, self.own_address, what, error)
    }
}

/// A killed postmaster stays a zombie until its parent (init) reaps it, and PostgreSQL takes a
/// zombie's PID in the socket lock file for a live server and refuses to start. Wait for the reaping.
pub fn wait_for_dead_postmaster(data_dir: &Path) {
    let Ok(Some(pid_file)) = read_text_capped(&data_dir.join("postmaster.pid"), 4096) else { return };
    let Some(pid) = pid_file.lines().next().and_then(|line| line.trim().parse::<u32>().ok()) else { return };
    let mut said = false;
    let _ = poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) if parse_proc_state(&stat) == Some('Z') => {
                if !said {
                    log::info!("waiting for the killed postmaster (PID {pid}) to be reaped");
                    said = true;
                }
                Ok(None)
            }
            _ => Ok(Some(())),
        }
    });
}

/// The state letter of /proc/PID/stat ("1234 (postgres) Z ..."); the name may contain spaces.
pub fn parse_proc_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_process_state() {
        assert_eq!(parse_proc_state("28247 (postgres) Z 1 28247 28247 0 -1"), Some('Z'));
        assert_eq!(parse_proc_state("7 (a (b) c) S 1"), Some('S'));
        assert_eq!(parse_proc_state("garbage"), None);
    }
}
