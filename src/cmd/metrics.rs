//! `pgha metrics`: the report of `pgha status` as Prometheus metrics, written for
//! node-exporter's textfile collector (pgha-metrics.timer runs it) or printed.
//!
//! A file that says what is wrong beats no file: Prometheus sees a missing file only as stale
//! values. So a config error or a failed query still writes `pgha_status 3` and
//! `pgha_cluster_up 0`; the exit code then tells systemd about a config error (2), and only a file
//! that could not be written is a failure (1).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;

use crate::cmd::status::{gather, HealthLimitArgs};
use crate::error::{exit_code_for, EXIT_OK, EXIT_USAGE};
use crate::files::apply::write_atomic;
use crate::files::plan::Ownership;
use crate::health::{format_metrics, Report};
use crate::replication::Health;

/// Where Debian's prometheus-node-exporter has its textfile collector look.
pub const DEFAULT_TEXTFILE_DIRECTORY: &str = "/var/lib/prometheus/node-exporter";

/// The file's name in the directory: the collector reads every `*.prom` there.
const FILE_NAME: &str = "pgha.prom";

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Write pgha.prom into this directory (node-exporter's --collector.textfile.directory)
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TEXTFILE_DIRECTORY)]
    pub textfile_directory: PathBuf,

    /// Print the metrics instead of writing a file
    #[arg(long, conflicts_with = "textfile_directory")]
    pub stdout: bool,

    #[command(flatten)]
    pub limits: HealthLimitArgs,
}

impl MetricsArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        // The same flags and defaults as `pgha status`, so pgha_status agrees with the check.
        let (report, failure) = match gather(config_path, &self.limits.lag(), self.limits.free(), self.limits.warn_kept)
        {
            Ok(report) => (report, None),
            Err(error) => {
                let mut report = Report::empty();
                report.problem(Health::Unknown, format!("{error:#}"));
                (report, Some(error))
            }
        };
        let text = format_metrics(&report.finish(), unix_now());
        if self.stdout {
            print!("{text}");
        } else {
            let path = self.textfile_directory.join(FILE_NAME);
            if let Err(error) = write_metrics(&path, &text) {
                if let Some(failure) = &failure {
                    log::error!("{failure:#}");
                }
                return Err(error);
            }
        }
        match failure {
            Some(error) if exit_code_for(&error) == EXIT_USAGE => Err(error),
            Some(error) => {
                log::warn!("{error:#} (written as pgha_status 3)");
                Ok(EXIT_OK)
            }
            None => Ok(EXIT_OK),
        }
    }
}

/// Replaces the file atomically, so the collector never reads half of it, through a handle on the
/// directory: whatever is at the name (a symlink too) is replaced, never written through. Readable
/// by all: node-exporter runs as its own account, and the file holds no secret.
fn write_metrics(path: &Path, text: &str) -> Result<()> {
    let ownership =
        Ownership { uid: nix::unistd::geteuid().as_raw(), gid: nix::unistd::getegid().as_raw(), mode: 0o644 };
    write_atomic(path, text.as_bytes(), ownership)
        .with_context(|| format!("cannot write the metrics for node-exporter to {}", path.display()))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}
