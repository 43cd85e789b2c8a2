//! The health rules for disk space and the WAL archive: a full data disk stops the server, and a
//! failing archive_command fills it, since PostgreSQL keeps every segment it could not archive.

use crate::files::archive::Usage;
use crate::health::report::{ArchiveReport, FilesystemReport, Report};
use crate::replication::{format_bytes, Archiver, Health};

/// Free-space thresholds, in percent of a filesystem's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeLimits {
    pub warn_percent: u8,
    pub crit_percent: u8,
}

impl Default for FreeLimits {
    fn default() -> FreeLimits {
        FreeLimits { warn_percent: 10, crit_percent: 5 }
    }
}

/// WARNING or CRITICAL when `filesystem` has less than the limits free; `what` names it.
pub fn judge_free_space(report: &mut Report, what: &str, filesystem: &FilesystemReport, limits: FreeLimits) {
    if filesystem.size_bytes == 0 {
        return;
    }
    let percent = u128::from(filesystem.free_bytes) * 100 / u128::from(filesystem.size_bytes);
    let severity = if percent < u128::from(limits.crit_percent) {
        Health::Critical
    } else if percent < u128::from(limits.warn_percent) {
        Health::Warning
    } else {
        return;
    };
    let limit = if severity == Health::Critical { limits.crit_percent } else { limits.warn_percent };
    report.problem(
        severity,
        format!(
            "the filesystem of {what} ({}) has {} free, {percent}% of {}: less than {limit}%",
            filesystem.path,
            format_bytes(filesystem.free_bytes),
            format_bytes(filesystem.size_bytes)
        ),
    );
}

/// What `pgha status` found of the archive besides the server's own counters.
pub struct ArchiveFacts {
    pub directory: String,
    /// None when the directory cannot be read (missing, or not a directory).
    pub usage: Option<Usage>,
    /// None when it is the data directory's filesystem, already judged.
    pub own_filesystem: Option<FilesystemReport>,
}

/// The archive of a primary with archive.enabled: pg_stat_archiver judged, the directory
/// measured, dropped segments counted.
pub fn describe_archive(report: &mut Report, archiver: &Archiver, facts: ArchiveFacts, free: FreeLimits) {
    let failing = archiver.failing();
    if archiver.mode == "off" {
        report.problem(
            Health::Warning,
            "archive.enabled is true, but archive_mode is off: run `pgha primary` (it restarts the cluster to turn it on)"
                .into(),
        );
    }
    if failing {
        report.problem(
            Health::Critical,
            format!(
                "archive_command fails: {} could not be archived{}, and {} segment(s) wait in pg_wal, which grows until \
                 archiving succeeds; the server log says why (check {} and its free space)",
                archiver.last_failed_wal.as_deref().unwrap_or("a segment"),
                archiver.seconds_since_failed.map_or(String::new(), |seconds| format!(" ({} s ago)", seconds as u64)),
                archiver.ready,
                facts.directory
            ),
        );
    }
    match &facts.usage {
        None => report.problem(
            Health::Warning,
            format!("the archive directory {} cannot be read: run `pgha primary` to create it", facts.directory),
        ),
        Some(usage) if usage.dropped > 0 => report.problem(
            Health::Warning,
            format!(
                "{} WAL segment(s) were dropped instead of archived, because {} had less than archive.min_free free \
                 (the *.pgha-dropped files there name them): point-in-time recovery across them is impossible; \
                 free space, then take a new base backup",
                usage.dropped, facts.directory
            ),
        ),
        Some(_) => {}
    }
    if let Some(filesystem) = &facts.own_filesystem {
        judge_free_space(report, "the WAL archive", filesystem, free);
    }
    report.archive = Some(ArchiveReport {
        directory: facts.directory,
        mode: archiver.mode.clone(),
        failing,
        archived_count: archiver.archived_count,
        last_archived_wal: archiver.last_archived_wal.clone(),
        last_archived_age_seconds: archiver.seconds_since_archived,
        failed_count: archiver.failed_count,
        last_failed_wal: archiver.last_failed_wal.clone(),
        last_failed_age_seconds: archiver.seconds_since_failed,
        ready_count: archiver.ready,
        bytes: facts.usage.as_ref().map(|usage| usage.bytes),
        files: facts.usage.as_ref().map(|usage| usage.files),
        dropped: facts.usage.as_ref().map(|usage| usage.dropped),
        filesystem: facts.own_filesystem,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archiver(since_archived: Option<f64>, since_failed: Option<f64>) -> Archiver {
        Archiver {
            mode: "on".into(),
            archived_count: 12,
            last_archived_wal: Some("00000001000000000000000C".into()),
            seconds_since_archived: since_archived,
            failed_count: u64::from(since_failed.is_some()) * 3,
            last_failed_wal: since_failed.map(|_| "00000001000000000000000D".into()),
            seconds_since_failed: since_failed,
            ready: 4,
        }
    }

    fn facts(usage: Option<Usage>) -> ArchiveFacts {
        ArchiveFacts { directory: "/var/backups/pgsql/archive".into(), usage, own_filesystem: None }
    }

    fn judged(archiver: &Archiver, usage: Option<Usage>) -> Report {
        let mut report = Report::empty();
        describe_archive(&mut report, archiver, facts(usage), FreeLimits::default());
        report.finish()
    }

    #[test]
    fn failing_is_a_failure_after_the_last_success() {
        assert!(!archiver(Some(5.0), None).failing());
        assert!(!archiver(Some(5.0), Some(60.0)).failing(), "an old failure followed by success");
        assert!(archiver(Some(60.0), Some(5.0)).failing());
        assert!(archiver(None, Some(5.0)).failing(), "never archived, failed since");
    }

    #[test]
    fn a_failing_archive_is_critical_and_names_the_segment() {
        let report = judged(&archiver(Some(60.0), Some(5.0)), Some(Usage::default()));
        assert_eq!(report.status, Health::Critical);
        let message = &report.problems[0].message;
        assert!(message.contains("00000001000000000000000D") && message.contains("4 segment(s) wait"), "{message}");
        assert!(report.archive.as_ref().unwrap().failing);
        let healthy = judged(&archiver(Some(5.0), Some(60.0)), Some(Usage { bytes: 16 << 20, files: 1, dropped: 0 }));
        assert_eq!(healthy.status, Health::Ok, "{:?}", healthy.problems);
        assert_eq!(healthy.archive.as_ref().unwrap().bytes, Some(16 << 20));
    }

    #[test]
    fn dropped_segments_and_a_missing_directory_warn() {
        let dropped = judged(&archiver(Some(5.0), None), Some(Usage { bytes: 0, files: 0, dropped: 2 }));
        assert_eq!(dropped.status, Health::Warning);
        assert!(dropped.problems[0].message.contains("2 WAL segment(s) were dropped"));
        let missing = judged(&archiver(Some(5.0), None), None);
        assert_eq!(missing.status, Health::Warning);
        assert!(missing.problems[0].message.contains("cannot be read"));
        let mut off = archiver(Some(5.0), None);
        off.mode = "off".into();
        assert!(judged(&off, Some(Usage::default())).problems[0].message.contains("archive_mode is off"));
    }

    #[test]
    fn free_space_below_the_limits_warns_then_is_critical() {
        let filesystem = |free: u64| FilesystemReport { path: "/srv".into(), free_bytes: free, size_bytes: 100 << 30 };
        let status = |free: u64| {
            let mut report = Report::empty();
            judge_free_space(&mut report, "the data directory", &filesystem(free), FreeLimits::default());
            report.finish().status
        };
        assert_eq!(status(50 << 30), Health::Ok);
        assert_eq!(status(10 << 30), Health::Ok);
        assert_eq!(status(9 << 30), Health::Warning);
        assert_eq!(status(4 << 30), Health::Critical);
        let empty = FilesystemReport { path: "/srv".into(), free_bytes: 0, size_bytes: 0 };
        let mut report = Report::empty();
        judge_free_space(&mut report, "x", &empty, FreeLimits::default());
        assert!(report.problems.is_empty());
    }
}
