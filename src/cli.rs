//! Command-line interface. Kept apart from main.rs so man pages and completions come from it.

use std::path::PathBuf;

use clap::error::ErrorKind;
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
    ///
    /// Changes nothing on the host; with --root DIR it writes the files under DIR only.
    Render(crate::cmd::render::RenderArgs),
    /// Make this host's cluster the replication primary
    ///
    /// Changes: the replication role (created or its password verifier updated, never SUPERUSER),
    /// the archive directory, conf.d/pgha.conf, pgha's block in pg_hba.conf; then a reload, or a
    /// restart when a changed setting needs one. Every file is put back when the server refuses it.
    /// A second run with the same input changes nothing.
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
    /// Delete archived WAL older than archive.keep, then the oldest beyond archive.max_size
    ///
    /// Changes: removes, as postgres, WAL segments in archive.directory older than archive.keep,
    /// then the oldest ones while the archive holds more than archive.max_size; timeline history
    /// files and anything not named like WAL stay.
    PruneArchive(crate::cmd::prune_archive::PruneArchiveArgs),
    /// Copy one finished WAL file into the archive: PostgreSQL's archive_command
    ///
    /// `pgha primary` sets archive_command to run this, as postgres, with the [archive] limits on
    /// its command line. Changes: writes the segment to archive.directory (to a temporary name,
    /// synced, renamed, the directory synced); an identical copy already there counts as done, a
    /// different one is an error. Then deletes the oldest archived files beyond --max-size. With
    /// --min-free, a segment that would leave less free space is dropped instead: an empty
    /// <segment>.pgha-dropped file takes its place and `pgha status` warns. Exit 0 lets
    /// PostgreSQL recycle the segment; anything else makes it retry.
    ArchiveWal(crate::cmd::archive_wal::ArchiveWalArgs),
    /// Save what pg_rewind is about to change (run by pgha rejoin as postgres)
    #[command(hide = true)]
    RewindSave(crate::cmd::rewind_save::RewindSaveArgs),
    /// Put back what rewind-save saved (run by pgha rejoin --undo-rewind as postgres)
    #[command(hide = true)]
    RewindRestore(crate::cmd::rewind_save::RewindRestoreArgs),
    /// Show this host's role and replication health (monitoring-plugin exit codes)
    ///
    /// Changes nothing and takes no lock. Asks the local cluster and every member.
    #[command(after_help = "Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for a config error: to a \
                            monitoring system 2 would mean CRITICAL; usage errors and runs by anyone but root too: a monitoring agent \
                            runs it through sudo, see /usr/share/doc/pgha/examples/sudoers.d-pgha-monitoring). The first line follows the Monitoring Plugins \
                            guidelines: `PGHA OK - summary | perfdata`, the reason on it for anything but OK. \
                            JSON schema: /usr/share/doc/pgha/status-schema.json.")]
    Status(crate::cmd::status::StatusArgs),
    /// Write `pgha status` as Prometheus metrics for node-exporter's textfile collector
    ///
    /// Changes: replaces DIR/pgha.prom (default /var/lib/prometheus/node-exporter/pgha.prom) with
    /// the report `pgha status` gives, judged with the same limit options, atomically (mode
    /// 0644); a symlink at that name is replaced, not followed. Nothing else; takes no lock.
    /// pgha-metrics.timer runs it every 30 seconds. A config error still writes the file
    /// (pgha_status 3, pgha_cluster_up 0), then exits 2; any other problem is in the file and the
    /// exit code is 0.
    Metrics(crate::cmd::metrics::MetricsArgs),
    /// Prove that a change on the primary reaches every standby, and time it
    ///
    /// Changes: writes one WAL record on the primary (a logical message, 9.5: an empty
    /// transaction); no table is touched.
    Verify(crate::cmd::verify::VerifyArgs),
    /// Turn this standby into the primary (refuses while the primary still accepts writes)
    ///
    /// Changes: promotes the local cluster, writes a checkpoint and creates the other members'
    /// replication slots on it. pgha.conf is not edited anywhere. Then run `pgha rejoin` on the old
    /// primary.
    Promote(crate::cmd::promote::PromoteArgs),
    /// Turn a former primary into a standby of the current primary (pg_rewind, or a full clone)
    ///
    /// Changes: stops the local cluster, keeps the diverged WAL in <datadir>.pgha-fork-<time> and
    /// saves there what pg_rewind will change (unless --no-keep-copy), rewinds it, or clones the
    /// primary when that copies less, writes the standby's files, removes the fence and starts it
    /// (unless --no-start). A failed rewind is put back before the clone it falls back to.
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
    ///
    /// Changes: stops this cluster, promotes the standby over SQL with a one-time password, and
    /// restarts this cluster as its standby. pgha.conf is not edited anywhere.
    Switchover(crate::cmd::switchover::SwitchoverArgs),
    /// Remove the old data directories and forks pgha kept, once older than --older-than
    ///
    /// Changes: deletes <datadir>.pgha-old-<time> and <datadir>.pgha-fork-<time> directories
    /// made before --older-than; nothing else.
    Cleanup(crate::cmd::cleanup::CleanupArgs),
    /// Write /etc/pgha/pgha.conf and the password file (used by the package's postinst)
    ///
    /// Changes: pgha.conf and the password file (mode 0600), from the answers given; nothing else.
    WriteConfig(crate::cmd::write_config::WriteConfigArgs),
    /// Write man pages and shell completions (used by the package build)
    #[command(hide = true)]
    GenerateDocs(crate::cmd::generate_docs::GenerateDocsArgs),
}

/// The subcommand an argument list asks for, read without clap: the first word that is neither
/// a global option nor its value.
fn invoked_subcommand(args: &[String]) -> Option<&str> {
    let mut words = args.iter().skip(1);
    while let Some(word) = words.next() {
        if word == "--config" {
            words.next();
        } else if !word.starts_with('-') {
            return Some(word);
        }
    }
    None
}

/// The arguments, parsed. A usage error of `pgha status` exits 3 (UNKNOWN) with a
/// `PGHA UNKNOWN - ...` first line on stdout, as its config errors do: a monitoring system reads
/// 2 as CRITICAL, and a mistyped check says nothing about the database.
pub fn parse() -> Cli {
    let args: Vec<String> = std::env::args().collect();
    match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error)
            if invoked_subcommand(&args) == Some("status")
                && !matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) =>
        {
            let text = error.render().to_string();
            let reason = text.lines().next().unwrap_or("usage error").trim_start_matches("error: ");
            let mut report = crate::health::Report::empty();
            report.problem(crate::replication::Health::Unknown, format!("usage error: {reason}"));
            let report = report.finish();
            if args.iter().any(|arg| arg == "--json") {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", crate::health::format_plugin(&report, &crate::health::Limits::new(&[], &[])));
            }
            eprint!("{text}");
            std::process::exit(report.exit_code);
        }
        Err(error) => error.exit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subcommand_is_found_past_global_options() {
        let args = |text: &str| text.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(invoked_subcommand(&args("pgha --config status -v status --warn-lag x")), Some("status"));
        assert_eq!(invoked_subcommand(&args("pgha -vv status")), Some("status"));
        assert_eq!(invoked_subcommand(&args("pgha --config=/x primary")), Some("primary"));
        assert_eq!(invoked_subcommand(&args("pgha --verbose")), None);
    }
}
