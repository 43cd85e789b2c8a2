//! The standby workflows: make this host's cluster a streaming standby of the primary, by a
//! clone (`clone`) or by pg_rewind (`rewind`), after a preflight that changes nothing
//! (`preflight`), with the primary's slot for it (`slots`) and the wait for streaming
//! (`streaming`); a standby found in place is kept, never replaced unasked (`existing`).
//! `pgha standby` and `pgha rejoin` are thin layers over these.

use std::net::IpAddr;
use std::path::Path;

use crate::config::{Config, Password};
use crate::debian::Cluster;
use crate::render::standby_name;
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
