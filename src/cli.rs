//! Command-line interface. Kept apart from main.rs so man pages and completions come from it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success, or nothing to do
  1  runtime failure (the host is left as it was, or in the state the message describes)
  2  usage or configuration error (nothing was changed)
`pgha status` uses the monitoring-plugin codes instead: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.";

#[derive(Debug, Parser)]
#[command(
    name = "pgha",
    version,
    about = "PostgreSQL hot-standby replication for Debian clusters",
    long_about = "pgha sets up and operates streaming replication between Debian PostgreSQL clusters \
                  (9.5 to 18): a primary, one or more hot standbys, and the day-2 commands around them. \
                  It reads /etc/pgha/pgha.conf, renders the PostgreSQL configuration, and applies it with \
                  Debian's tools (pg_lsclusters, pg_ctlcluster, conf.d). It never deletes PostgreSQL data.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Path of the configuration file
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Log more (repeat for debug output)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every file pgha would write, with its target path; touches nothing
    Render(crate::cmd::render::RenderArgs),
    /// Make this host's cluster the replication primary
    Primary(crate::cmd::primary::PrimaryArgs),
    /// Make this host's cluster a streaming hot standby of [primary]; an existing standby is kept, not re-cloned
    ///
    /// The first run clones the primary: the cluster's old data directory is kept aside as
    /// <datadir>.pgha-old-<time>. Every later run (pgha-standby.service runs one at every boot)
    /// keeps a standby of the primary as it is: started when down, its signal file, conf.d
    /// fragment, pg_hba block and passfile repaired, and reported when it does not stream (exit 0:
    /// `pgha status` watches it). It never clones over a cluster with the primary's system
    /// identifier: a writable one (promoted outside pgha) is refused (exit 1). A new copy takes
    /// `pgha rejoin` or `pgha standby --force-reclone`. Only a cluster of another system that is no
    /// standby (a fresh initdb) is cloned unasked.
    Standby(crate::cmd::standby::StandbyArgs),
    /// Delete archived WAL older than archive.keep
    PruneArchive(crate::cmd::prune_archive::PruneArchiveArgs),
    /// Show this host's role and replication health (monitoring-plugin exit codes)
    #[command(after_help = "Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for a config error: to a \
                            monitoring system 2 would mean CRITICAL). JSON schema: docs/status-schema.json.")]
    Status(crate::cmd::status::StatusArgs),
    /// Prove that a change on the primary reaches every standby, and time it
    Verify(crate::cmd::verify::VerifyArgs),
    /// Turn this standby into the primary (refuses while the primary still accepts writes)
    Promote(crate::cmd::promote::PromoteArgs),
    /// Turn a former primary into a standby of the current primary (pg_rewind, or a full clone)
    Rejoin(crate::cmd::rejoin::RejoinArgs),
    /// Start a returning old primary fenced (run by postgresql@.service before every start)
    #[command(long_about = "Run by postgresql@.service (ExecStartPre) before a cluster starts. For the cluster \
                            pgha.conf manages, when it would start writable and another member is the primary on \
                            a timeline that continues this cluster's (a failover happened while this host was \
                            away), it writes the standby signal and conf.d/zz-pgha-fence.conf (hot_standby = off): \
                            the cluster starts in recovery, takes no writes and serves no reads until `pgha \
                            rejoin`. Returns at once for any other cluster and for a cluster that starts in \
                            recovery anyway; never takes pgha's lock. When no member answers within fence.wait it \
                            starts the cluster as before, or fenced with fence.no_answer = \"read-only\".")]
    Fence(crate::cmd::fence::FenceArgs),
    /// Hand the primary role to a caught-up standby (run on the primary; PostgreSQL 12+), losing no commit
    Switchover(crate::cmd::switchover::SwitchoverArgs),
    /// Remove the old data directories and forks pgha kept, once older than --older-than
    Cleanup(crate::cmd::cleanup::CleanupArgs),
    /// Write /etc/pgha/pgha.conf and the password file (used by the package's postinst)
    WriteConfig(crate::cmd::write_config::WriteConfigArgs),
    /// Write man pages and shell completions (used by the package build)
    #[command(hide = true)]
    GenerateDocs(crate::cmd::generate_docs::GenerateDocsArgs),
}
