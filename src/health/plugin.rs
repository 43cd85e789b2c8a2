//! The report as a monitoring plugin prints it (Monitoring Plugins development guidelines): a
//! first line `PGHA STATUS - summary | perfdata`, then the long text. Pure.

use crate::health::{Limits, Report};
use crate::replication::{Health, LagLimit};

/// One performance datum: `'label'=value[UOM];[warn];[crit];[min];[max]`.
#[derive(Clone, Debug, PartialEq)]
pub struct PerfDatum {
    pub label: String,
    /// None prints `U`: the value could not be determined (a disconnected standby's lag).
    pub value: Option<f64>,
    pub uom: &'static str,
    pub warn: Option<f64>,
    pub crit: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// A number as the guidelines want it: digits, a minus and a point, never an exponent or NaN.
fn number(value: f64) -> String {
    if !value.is_finite() {
        return String::new();
    }
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Labels may hold anything but `=` and `'`; they are quoted unless plainly safe, so that spaces
/// and IPv6 colons survive every parser.
fn label(text: &str) -> String {
    let clean: String = text.chars().map(|c| if c == '=' || c == '\'' || c.is_control() { '_' } else { c }).collect();
    if clean.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        clean
    } else {
        format!("'{clean}'")
    }
}

impl PerfDatum {
    fn new(label: String, value: Option<f64>, uom: &'static str) -> PerfDatum {
        PerfDatum { label, value, uom, warn: None, crit: None, min: Some(0.0), max: None }
    }

    pub fn format(&self) -> String {
        let value = match self.value.filter(|value| value.is_finite()) {
            Some(value) => format!("{}{}", number(value), self.uom),
            None => "U".to_string(),
        };
        let field = |value: Option<f64>| value.map_or(String::new(), number);
        let mut text = format!(
            "{}={value};{};{};{};{}",
            label(&self.label),
            field(self.warn),
            field(self.crit),
            field(self.min),
            field(self.max)
        );
        while text.ends_with(';') {
            text.pop();
        }
        text
    }
}

/// The lowest byte and time limits of one level: the first one a lag exceeds raises the alarm.
fn lowest(limits: &[LagLimit]) -> (Option<f64>, Option<f64>) {
    let bytes = limits.iter().filter_map(|limit| match limit {
        LagLimit::Bytes(bytes) => Some(*bytes as f64),
        LagLimit::Time(_) => None,
    });
    let seconds = limits.iter().filter_map(|limit| match limit {
        LagLimit::Time(duration) => Some(duration.as_secs_f64()),
        LagLimit::Bytes(_) => None,
    });
    (
        bytes.fold(None, |low: Option<f64>, b| Some(low.map_or(b, |l| l.min(b)))),
        seconds.fold(None, |low: Option<f64>, s| Some(low.map_or(s, |l| l.min(s)))),
    )
}

/// Lag of each configured standby (on a primary) or of this standby, the WAL each slot retains,
/// and the free space of the data directory's filesystem. Labels stay the same from run to run,
/// so a graph follows one standby; a disconnected one reports `U`.
pub fn perfdata(report: &Report, limits: &Limits) -> Vec<PerfDatum> {
    let (warn_bytes, warn_seconds) = lowest(&limits.warn);
    let (crit_bytes, crit_seconds) = lowest(&limits.crit);
    let mut data = Vec::new();
    let mut lag = |suffix: String, lag: crate::replication::Lag| {
        let mut bytes = PerfDatum::new(format!("lag_bytes{suffix}"), lag.bytes.map(|b| b as f64), "B");
        bytes.warn = warn_bytes;
        bytes.crit = crit_bytes;
        let mut seconds = PerfDatum::new(format!("lag_seconds{suffix}"), lag.seconds, "s");
        seconds.warn = warn_seconds;
        seconds.crit = crit_seconds;
        data.push(bytes);
        data.push(seconds);
    };
    for standby in report.standbys.iter().filter(|standby| standby.configured) {
        let who = standby.address.clone().or_else(|| standby.application_name.clone()).unwrap_or_default();
        lag(format!("_{who}"), standby.lag);
    }
    if let Some(receiver) = &report.receiver {
        lag(String::new(), receiver.lag);
    }
    for slot in &report.slots {
        data.push(PerfDatum::new(
            format!("slot_retained_bytes_{}", slot.name),
            slot.retained_bytes.map(|b| b as f64),
            "B",
        ));
    }
    if let Some(filesystem) = &report.data_filesystem {
        let mut free = PerfDatum::new("data_free_bytes".into(), Some(filesystem.free_bytes as f64), "B");
        free.max = Some(filesystem.size_bytes as f64);
        data.push(free);
    }
    if let Some(archive) = &report.archive {
        // A counter: the monitoring system graphs its rate.
        data.push(PerfDatum::new("archive_failed".into(), Some(archive.failed_count as f64), "c"));
        data.push(PerfDatum::new("archive_ready".into(), Some(archive.ready_count as f64), ""));
        data.push(PerfDatum::new("archive_last_archived_age".into(), archive.last_archived_age_seconds, "s"));
        data.push(PerfDatum::new("archive_bytes".into(), archive.bytes.map(|bytes| bytes as f64), "B"));
        data.push(PerfDatum::new("archive_dropped".into(), archive.dropped.map(|count| count as f64), ""));
        if let Some(filesystem) = &archive.filesystem {
            let mut free = PerfDatum::new("archive_free_bytes".into(), Some(filesystem.free_bytes as f64), "B");
            free.max = Some(filesystem.size_bytes as f64);
            data.push(free);
        }
    }
    data
}

/// One line, with no `|` (it would start the perfdata) and no line break.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "/")
}

/// Where this host stands: role, cluster, address, state, WAL position and configured role.
pub fn summary(report: &Report) -> String {
    format!(
        "{} {} on {} ({}), {}{}",
        report.role.unwrap_or("?"),
        report.cluster.id.as_deref().unwrap_or("?"),
        report.host_address.as_deref().unwrap_or("?"),
        report.cluster.state,
        report.wal_lsn.map_or("no WAL position".to_string(), |lsn| format!("WAL at {lsn}")),
        report.configured_role.map_or(String::new(), |role| format!(", configured as {role}"))
    )
}

/// The first line: `PGHA OK - <summary> | <perfdata>`. Anything but OK carries the worst problem
/// (the first of the highest severity) as its reason, and how many more there are.
pub fn first_line(report: &Report, limits: &Limits) -> String {
    let text = match report.problems.iter().find(|problem| problem.severity == report.status) {
        Some(worst) if report.status != Health::Ok => {
            let more = report.problems.len() - 1;
            match more {
                0 => worst.message.clone(),
                1 => format!("{} (and 1 more problem)", worst.message),
                n => format!("{} (and {n} more problems)", worst.message),
            }
        }
        _ => summary(report),
    };
    let mut line = format!("PGHA {} - {}", report.status.as_str(), one_line(&text));
    let data: Vec<String> = perfdata(report, limits).iter().map(PerfDatum::format).collect();
    if !data.is_empty() {
        line.push_str(" | ");
        line.push_str(&data.join(" "));
    }
    line
}

/// The whole text form: the first line, then (when it carries a reason) the summary, the tables
/// and every problem. A `|` in the long text would also start perfdata, so none is printed.
pub fn format_plugin(report: &Report, limits: &Limits) -> String {
    let mut out = first_line(report, limits);
    out.push('\n');
    // Nothing to summarise when the config could not even name a cluster.
    if report.status != Health::Ok && report.cluster.id.is_some() {
        out.push_str(&one_line(&summary(report)));
        out.push('\n');
    }
    out.push_str(&crate::health::report::format_details(report).replace('|', "/"));
    out
}

/// The first line as the guidelines define it: `SERVICE STATUS - text`, optionally followed by
/// ` | ` and space-separated `'label'=value[UOM];[warn];[crit];[min];[max]`, where warn and crit
/// are ranges (`[@][start:][end]`, start may be `~`) and the rest plain numbers.
#[cfg(test)]
pub fn plugin_grammar() -> regex::Regex {
    let number = r"-?[0-9]+(?:\.[0-9]+)?";
    let range = format!(r"@?(?:(?:~|{number}):)?(?:{number})?");
    let datum = format!(
        r"(?:'[^'=]+'|[^'= ][^= ]*)=(?:U|{number}(?:us|ms|s|%|B|KB|MB|GB|TB|c)?)(?:;(?:{range})(?:;(?:{range})(?:;(?:{number})?(?:;(?:{number})?)?)?)?)?"
    );
    regex::Regex::new(&format!(r"^PGHA (?:OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]*[^| \n](?: \| {datum}(?: {datum})*)?$"))
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::report::ArchiveReport;
    use crate::health::{ClusterReport, FilesystemReport, ReceiverReport, SlotReport, StandbyReport};
    use crate::replication::{Lag, Lsn};
    use std::time::Duration;

    fn primary_report() -> Report {
        let mut report = Report::empty();
        report.role = Some("primary");
        report.configured_role = Some("primary");
        report.host_address = Some("192.0.2.10".into());
        report.cluster =
            ClusterReport { id: Some("15/main".into()), version: Some("15".into()), port: Some(5432), state: "online" };
        report.wal_lsn = Some(Lsn(0x30228D8));
        let standby = |address: &str, lag: Lag, configured: bool| StandbyReport {
            address: Some(address.into()),
            application_name: Some(format!("pgha_{}", address.replace(['.', ':'], "_"))),
            configured,
            state: if lag.bytes.is_some() { "streaming" } else { "disconnected" }.into(),
            sync_state: None,
            sent_lsn: None,
            write_lsn: None,
            flush_lsn: None,
            replay_lsn: None,
            lag,
        };
        report.standbys = vec![
            standby("192.0.2.11", Lag { bytes: Some(2048), seconds: Some(0.25) }, true),
            standby("2001:db8::12", Lag { bytes: None, seconds: None }, true),
            standby("192.0.2.99", Lag { bytes: Some(1), seconds: None }, false),
        ];
        report.slots = vec![SlotReport {
            name: "pgha_192_0_2_11".into(),
            slot_type: "physical".into(),
            active: true,
            restart_lsn: None,
            retained_bytes: Some(16 << 20),
            wal_status: None,
        }];
        report.data_filesystem = Some(FilesystemReport {
            path: "/var/lib/postgresql/15/main".into(),
            free_bytes: 5 << 30,
            size_bytes: 20 << 30,
        });
        report.archive = Some(ArchiveReport {
            directory: "/srv/wal archive".into(),
            mode: "on".into(),
            failing: false,
            archived_count: 7,
            last_archived_wal: Some("000000010000000000000007".into()),
            last_archived_age_seconds: Some(42.5),
            failed_count: 2,
            last_failed_wal: None,
            last_failed_age_seconds: None,
            ready_count: 1,
            bytes: Some(112 << 20),
            files: Some(7),
            dropped: Some(0),
            filesystem: Some(FilesystemReport {
                path: "/srv/wal archive".into(),
                free_bytes: 1 << 30,
                size_bytes: 2 << 30,
            }),
        });
        report
    }

    fn limits() -> Limits {
        Limits::new(
            &["16MB".parse().unwrap(), "30s".parse().unwrap(), "8MB".parse().unwrap()],
            &["1GB".parse().unwrap()],
        )
    }

    #[test]
    fn perfdata_follows_the_guidelines_format() {
        let text: Vec<String> = perfdata(&primary_report(), &limits()).iter().map(PerfDatum::format).collect();
        assert_eq!(
            text,
            [
                "lag_bytes_192.0.2.11=2048B;8388608;1073741824;0",
                "lag_seconds_192.0.2.11=0.25s;30;;0",
                "'lag_bytes_2001:db8::12'=U;8388608;1073741824;0",
                "'lag_seconds_2001:db8::12'=U;30;;0",
                "slot_retained_bytes_pgha_192_0_2_11=16777216B;;;0",
                "data_free_bytes=5368709120B;;;0;21474836480",
                "archive_failed=2c;;;0",
                "archive_ready=1;;;0",
                "archive_last_archived_age=42.5s;;;0",
                "archive_bytes=117440512B;;;0",
                "archive_dropped=0;;;0",
                "archive_free_bytes=1073741824B;;;0;2147483648",
            ],
            "an unconfigured walsender (a pg_basebackup, say) gets no label"
        );
    }

    #[test]
    fn labels_are_quoted_when_needed_and_never_hold_quotes_or_equals() {
        assert_eq!(label("lag_bytes"), "lag_bytes");
        assert_eq!(label("a b"), "'a b'");
        assert_eq!(label("it's=x"), "it_s_x");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(1e21), "1000000000000000000000");
        let datum = PerfDatum::new("x".into(), Some(f64::NAN), "s");
        assert_eq!(datum.format(), "x=U;;;0");
    }

    #[test]
    fn the_first_line_is_ok_with_a_summary_or_the_worst_reason() {
        let mut report = primary_report();
        report.standbys.retain(|standby| standby.lag.bytes.is_some());
        let ok = report.finish();
        let line = first_line(&ok, &limits());
        assert!(
            line.starts_with(
                "PGHA OK - primary 15/main on 192.0.2.10 (online), WAL at 0/30228D8, configured as primary | \
                 lag_bytes_192.0.2.11=2048B;"
            ),
            "{line}"
        );

        let mut report = primary_report();
        report.problem(Health::Warning, "slot x is inactive".into());
        report.problem(Health::Critical, "standby 2001:db8::12 is not connected".into());
        report.problem(Health::Critical, "second critical".into());
        let critical = report.finish();
        let text = format_plugin(&critical, &limits());
        let mut lines = text.lines();
        let line = lines.next().unwrap();
        assert!(
            line.starts_with("PGHA CRITICAL - standby 2001:db8::12 is not connected (and 2 more problems) | "),
            "{line}"
        );
        assert_eq!(
            lines.next(),
            Some("primary 15/main on 192.0.2.10 (online), WAL at 0/30228D8, configured as primary")
        );
        assert!(text.contains("\nWARNING: slot x is inactive\n") && text.contains("\nCRITICAL: second critical\n"));

        // A config error: UNKNOWN with the reason on one line, no perfdata, no stray `|`.
        let mut report = Report::empty();
        report.problem(Health::Unknown, "/etc/pgha/pgha.conf: invalid TOML\n  |\n1 | [primary\n  |  ^".into());
        let unknown = report.finish();
        let line = first_line(&unknown, &limits());
        assert_eq!(line, "PGHA UNKNOWN - /etc/pgha/pgha.conf: invalid TOML / 1 / [primary / ^");
        assert!(!format_plugin(&unknown, &limits()).contains('|'));
    }

    /// Every first line the tests above make, every state and an odd label, against the grammar.
    #[test]
    fn every_first_line_matches_the_guidelines_grammar() {
        let grammar = plugin_grammar();
        let mut lines = Vec::new();
        for severity in [None, Some(Health::Warning), Some(Health::Critical), Some(Health::Unknown)] {
            let mut report = primary_report();
            if let Some(severity) = severity {
                report.problem(severity, format!("{} | with a pipe\nand a line break", severity.as_str()));
            }
            lines.push(first_line(&report.finish(), &limits()));
            let mut standby = Report::empty();
            standby.role = Some("standby");
            standby.receiver = Some(ReceiverReport::with_lag("streaming", Lag { bytes: Some(0), seconds: Some(0.0) }));
            if let Some(severity) = severity {
                standby.problem(severity, "x".into());
            }
            lines
                .push(first_line(&standby.finish(), &Limits::new(&[LagLimit::Time(Duration::from_millis(1500))], &[])));
            lines.push(first_line(&Report::empty().finish(), &limits()));
        }
        for line in &lines {
            assert!(grammar.is_match(line), "does not follow the guidelines: {line}");
        }
        assert!(lines.iter().any(|line| line.contains("lag_seconds=0s;1.5;;0")), "{lines:?}");
        for bad in ["PGHA OK - a | x=1B;;;0;;", "PGHA OK - a | 'x'y=1", "PGHA OK - a|b", "OK: a", "PGHA OK - a | x=1e3"]
        {
            assert!(!grammar.is_match(bad), "the grammar lets {bad:?} through");
        }
    }
}
