//! The report as Prometheus metrics: the text exposition format that node-exporter's textfile
//! collector reads, one gauge family per measure, every name prefixed `pgha_`. Pure: `pgha
//! metrics` gathers the report and writes the file, this module only formats.
//!
//! A value the report does not know (a disconnected standby's lag, a slot without a restart
//! position) gets no series rather than NaN: a NaN compares false with every threshold, so an
//! alert on it would stay silent while looking healthy. The state gauges (`pgha_status`,
//! `pgha_cluster_up`, `pgha_standby_connected`) are there to say why a series is missing.
//!
//! Each part of the report has one function that asks [`Exposition::gauge`] for its families and
//! adds samples; a new part of the report gets a function of its own, called from `format_metrics`.

use std::fmt::Write;

use crate::health::Report;
use crate::replication::Health;

/// One number of a sample. Byte counts and positions stay integers: an f64 would round WAL
/// positions above 2^53.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Value {
    Integer(u64),
    Real(f64),
}

impl From<u64> for Value {
    fn from(value: u64) -> Value {
        Value::Integer(value)
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Integer(u64::from(value))
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Value {
        Value::Real(value)
    }
}

/// A sample's labels, in the order they are printed.
type Labels = Vec<(&'static str, String)>;

struct Sample {
    labels: Labels,
    value: Value,
}

/// One metric family: its name, help text and samples. Every family pgha writes is a gauge: each
/// run reports the state at that moment, and a WAL position can go back (a rewind, a new clone).
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<Sample>,
}

impl Family {
    /// Adds a sample; nothing when the value is unknown or not finite. A second sample with the
    /// same labels is dropped too: node-exporter refuses a whole file that repeats a series, and
    /// two walsenders from one address under one name are possible.
    fn sample(&mut self, labels: Labels, value: Option<impl Into<Value>>) {
        let Some(value) = value.map(Into::into) else { return };
        if matches!(value, Value::Real(real) if !real.is_finite()) {
            return;
        }
        if self.samples.iter().any(|sample| sample.labels == labels) {
            return;
        }
        self.samples.push(Sample { labels, value });
    }
}

/// The families in the order they are first asked for. Asking for a family again returns the
/// same one, so samples of one name stay together (the format requires it) whatever order the
/// report is walked in.
#[derive(Default)]
struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    fn gauge(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        let index = match self.families.iter().position(|family| family.name == name) {
            Some(index) => index,
            None => {
                self.families.push(Family { name, help, samples: Vec::new() });
                self.families.len() - 1
            }
        };
        &mut self.families[index]
    }

    /// The text: HELP, TYPE and samples of each family that has samples, ending in a line feed.
    fn render(&self) -> String {
        let mut out = String::new();
        for family in self.families.iter().filter(|family| !family.samples.is_empty()) {
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
            let _ = writeln!(out, "# TYPE {} gauge", family.name);
            for sample in &family.samples {
                out.push_str(family.name);
                if !sample.labels.is_empty() {
                    let labels: Vec<String> = sample
                        .labels
                        .iter()
                        .map(|(name, value)| format!("{name}=\"{}\"", escape_label_value(value)))
                        .collect();
                    let _ = write!(out, "{{{}}}", labels.join(","));
                }
                let _ = match sample.value {
                    Value::Integer(value) => writeln!(out, " {value}"),
                    // Display of an f64 never uses an exponent and drops a trailing ".0".
                    Value::Real(value) => writeln!(out, " {value}"),
                };
            }
        }
        out
    }
}

/// A label value as the format quotes it: backslash, double quote and line feed escaped.
fn escape_label_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes only backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The report as the text node-exporter's textfile collector reads. `now_unix` is the time of
/// this run in seconds since the epoch (`pgha_last_run_timestamp_seconds`): a file that stops
/// changing means the timer stopped, which `time() - pgha_last_run_timestamp_seconds` shows.
pub fn format_metrics(report: &Report, now_unix: u64) -> String {
    let mut exposition = Exposition::default();
    health(&mut exposition, report);
    cluster(&mut exposition, report);
    standbys(&mut exposition, report);
    slots(&mut exposition, report);
    receiver(&mut exposition, report);
    storage(&mut exposition, report);
    archive(&mut exposition, report);
    exposition
        .gauge(
            "pgha_last_run_timestamp_seconds",
            "When pgha metrics last gathered these values, in seconds since the epoch.",
        )
        .sample(vec![], Some(now_unix));
    exposition.render()
}

fn health(exposition: &mut Exposition, report: &Report) {
    exposition
        .gauge(
            "pgha_status",
            "Health as pgha status judges it, with the same limit options: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        )
        .sample(vec![], Some(report.status.exit_code() as u64));
    // Every severity, zeros included: an alert on a count needs the series to exist when all is well.
    let problems = exposition.gauge("pgha_problems", "Problems pgha status reports, by severity.");
    for severity in [Health::Warning, Health::Critical, Health::Unknown] {
        let count = report.problems.iter().filter(|problem| problem.severity == severity).count();
        problems.sample(vec![("severity", severity.as_str().to_lowercase())], Some(count as u64));
    }
}

/// A state set (one series per possible state, 1 for the current one), so that a change of role
/// sets the old series to 0 instead of leaving it to go stale.
fn role_states(family: &mut Family, role: Option<&str>) {
    let Some(role) = role else { return };
    for state in ["primary", "standby"] {
        family.sample(vec![("role", state.to_string())], Some(role == state));
    }
}

fn cluster(exposition: &mut Exposition, report: &Report) {
    let cluster = &report.cluster;
    exposition
        .gauge("pgha_cluster_up", "1 when the cluster pgha.conf names is online, 0 when it is down or unknown.")
        .sample(vec![], Some(cluster.state == "online"));
    if let Some(id) = &cluster.id {
        exposition
            .gauge("pgha_cluster_info", "The cluster pgha.conf names and this host's member address; always 1.")
            .sample(
                vec![
                    ("cluster", id.clone()),
                    ("version", cluster.version.clone().unwrap_or_default()),
                    ("port", cluster.port.map_or(String::new(), |port| port.to_string())),
                    ("host_address", report.host_address.clone().unwrap_or_default()),
                ],
                Some(1u64),
            );
    }
    role_states(
        exposition.gauge("pgha_role", "The role the server says it has: 1 for the current one, 0 for the other."),
        report.role,
    );
    role_states(
        exposition.gauge(
            "pgha_configured_role",
            "The role the members give this host (primary when they name it): 1 for it, 0 for the other.",
        ),
        report.configured_role,
    );
    exposition
        .gauge("pgha_wal_position_bytes", "The server's current WAL position (LSN) as a byte offset.")
        .sample(vec![], report.wal_lsn.map(|lsn| lsn.0));
}

/// On a primary: every walsender and every configured standby, connected or not.
fn standbys(exposition: &mut Exposition, report: &Report) {
    for standby in &report.standbys {
        let labels: Labels = vec![
            ("address", standby.address.clone().unwrap_or_default()),
            ("application_name", standby.application_name.clone().unwrap_or_default()),
        ];
        exposition
            .gauge("pgha_standby_connected", "1 when the standby has a walsender on this primary, 0 when it has none.")
            .sample(labels.clone(), Some(standby.state != "disconnected"));
        exposition
            .gauge("pgha_standby_streaming", "1 when the standby's walsender is in state streaming.")
            .sample(labels.clone(), Some(standby.state == "streaming"));
        exposition
            .gauge("pgha_standby_configured", "1 when the standby is listed in [standby].addresses of pgha.conf.")
            .sample(labels.clone(), Some(standby.configured));
        exposition
            .gauge("pgha_standby_lag_bytes", "WAL bytes between the primary's position and the standby's replay.")
            .sample(labels.clone(), standby.lag.bytes);
        exposition
            .gauge(
                "pgha_standby_lag_seconds",
                "Seconds the standby's replay is behind (replay_lag), 0 once it replayed everything.",
            )
            .sample(labels, standby.lag.seconds);
    }
}

fn slots(exposition: &mut Exposition, report: &Report) {
    for slot in &report.slots {
        let labels: Labels = vec![("slot", slot.name.clone())];
        exposition
            .gauge("pgha_slot_active", "1 when a standby uses the replication slot now.")
            .sample(labels.clone(), Some(slot.active));
        exposition
            .gauge("pgha_slot_retained_bytes", "WAL bytes the replication slot keeps on the primary.")
            .sample(labels, slot.retained_bytes);
    }
}

/// On a standby: its WAL receiver. PostgreSQL 9.5 cannot show it: no `streaming` series there.
fn receiver(exposition: &mut Exposition, report: &Report) {
    let Some(receiver) = &report.receiver else { return };
    let streaming = match receiver.status.as_str() {
        "unknown" => None,
        status => Some(status == "streaming"),
    };
    exposition
        .gauge("pgha_receiver_streaming", "1 when this standby's WAL receiver streams from the primary.")
        .sample(vec![], streaming);
    exposition
        .gauge("pgha_receiver_lag_bytes", "WAL bytes between this standby's replay and the newest WAL it knows of.")
        .sample(vec![], receiver.lag.bytes);
    exposition
        .gauge(
            "pgha_receiver_lag_seconds",
            "Seconds since the last commit this standby replayed, 0 when it replayed all it knows of.",
        )
        .sample(vec![], receiver.lag.seconds);
}

/// The data directory's filesystem and what pgha kept on it.
fn storage(exposition: &mut Exposition, report: &Report) {
    if let Some(filesystem) = &report.data_filesystem {
        let labels: Labels = vec![("path", filesystem.path.clone())];
        exposition
            .gauge(
                "pgha_data_filesystem_free_bytes",
                "Bytes free for unprivileged users on the data directory's filesystem.",
            )
            .sample(labels.clone(), Some(filesystem.free_bytes));
        exposition
            .gauge("pgha_data_filesystem_size_bytes", "Size of the data directory's filesystem in bytes.")
            .sample(labels, Some(filesystem.size_bytes));
    }
    for kept in &report.kept {
        let labels: Labels = vec![("path", kept.path.clone()), ("kind", kept.kind.to_string())];
        exposition
            .gauge(
                "pgha_kept_bytes",
                "Bytes of a directory pgha kept beside the data directory (kind old: a replaced data directory, \
                 fork: WAL a rewind set aside); pgha cleanup removes them.",
            )
            .sample(labels.clone(), Some(kept.bytes));
        exposition
            .gauge("pgha_kept_age_seconds", "Seconds since pgha kept the directory.")
            .sample(labels, Some(kept.age_seconds));
    }
}

fn archive(exposition: &mut Exposition, report: &Report) {
    let Some(archive) = &report.archive else { return };
    let labels: Labels = vec![("directory", archive.directory.clone())];
    exposition
        .gauge(
            "pgha_archive_failing",
            "1 while archive_command has failed since its last success: pg_wal keeps every later segment.",
        )
        .sample(labels.clone(), Some(archive.failing));
    exposition
        .gauge("pgha_archive_archived_count", "Segments archived since the statistics were reset (pg_stat_archiver).")
        .sample(labels.clone(), Some(archive.archived_count));
    exposition
        .gauge("pgha_archive_failed_count", "Failed archive_command runs since the statistics were reset.")
        .sample(labels.clone(), Some(archive.failed_count));
    exposition
        .gauge("pgha_archive_ready_segments", "Segments in pg_wal waiting to be archived.")
        .sample(labels.clone(), Some(archive.ready_count));
    exposition
        .gauge("pgha_archive_last_archived_age_seconds", "Seconds since the last segment was archived.")
        .sample(labels.clone(), archive.last_archived_age_seconds);
    exposition
        .gauge("pgha_archive_bytes", "Bytes the archive directory holds (archive.max_size caps it).")
        .sample(labels.clone(), archive.bytes);
    exposition
        .gauge(
            "pgha_archive_dropped_segments",
            "Segments dropped instead of archived under archive.min_free, whose markers are still there.",
        )
        .sample(labels.clone(), archive.dropped);
    if let Some(filesystem) = &archive.filesystem {
        exposition
            .gauge(
                "pgha_archive_filesystem_free_bytes",
                "Bytes free on the archive's filesystem, when it is not the data directory's.",
            )
            .sample(labels, Some(filesystem.free_bytes));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::config::Config;
    use crate::health::{FilesystemReport, KeptReport, ReceiverReport};
    use crate::replication::parse_snapshot;

    const CONF: &str = "[primary]\naddress = \"10.231.245.1\"\n[standby]\naddresses = [\"10.231.245.2\"]\n";
    const PRIMARY: &str = include_str!("../../tests/data/status-primary-15.txt");
    const STANDBY: &str = include_str!("../../tests/data/status-standby-15.txt");
    const NOW: u64 = 1_800_000_000;

    /// The report `pgha status` builds, with the cluster and data filesystem `gather` adds.
    fn report_for(sample: &str, own: &str, config_text: &str) -> Report {
        let mut report = crate::health::tests::report_for(sample, own, config_text);
        report.cluster = crate::health::ClusterReport {
            id: Some("15/main".into()),
            version: Some("15".into()),
            port: Some(5432),
            state: "online",
        };
        report.data_filesystem = Some(FilesystemReport {
            path: "/var/lib/postgresql/15/main".into(),
            free_bytes: 7 << 30,
            size_bytes: 20 << 30,
        });
        report
    }

    /// What a config error leaves: nothing known but the error.
    fn unknown_report() -> Report {
        let mut report = Report::empty();
        report.problem(Health::Unknown, "/etc/pgha/pgha.conf: primary.address: missing".into());
        report.finish()
    }

    /// The subset of the text exposition format pgha writes: HELP, TYPE and samples with plain
    /// decimal values, no timestamps (node-exporter's textfile collector refuses them).
    fn exposition_line() -> regex::Regex {
        let name = r"[a-zA-Z_:][a-zA-Z0-9_:]*";
        let label = r#"[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*""#;
        regex::Regex::new(&format!(
            r#"^(?:# HELP (?P<help>{name}) (?:[^\\\n]|\\[\\n])*|# TYPE (?P<type>{name}) gauge|(?P<sample>{name})(?:\{{{label}(?:,{label})*\}})? -?[0-9]+(?:\.[0-9]+)?)$"#
        ))
        .unwrap()
    }

    /// Checks the whole text against the format and returns each sample line's series: every line
    /// matches, each family has one HELP then one TYPE before its samples, a family's samples are
    /// together, and no series repeats.
    fn check_exposition(text: &str) -> Vec<String> {
        assert!(text.ends_with('\n'), "the format ends with a line feed: {text:?}");
        let grammar = exposition_line();
        let mut helps: HashMap<String, usize> = HashMap::new();
        let mut types: HashMap<String, usize> = HashMap::new();
        let mut finished: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut series = Vec::new();
        for line in text.lines() {
            let captures = grammar.captures(line).unwrap_or_else(|| panic!("not exposition format: {line:?}\n{text}"));
            if let Some(name) = captures.name("help") {
                let name = name.as_str().to_string();
                *helps.entry(name.clone()).or_default() += 1;
                assert!(!types.contains_key(&name), "HELP after TYPE for {name}");
                if let Some(previous) = current.replace(name) {
                    finished.push(previous);
                }
            } else if let Some(name) = captures.name("type") {
                assert_eq!(current.as_deref(), Some(name.as_str()), "TYPE without its HELP just before");
                *types.entry(name.as_str().to_string()).or_default() += 1;
            } else {
                let name = captures.name("sample").unwrap().as_str();
                assert_eq!(current.as_deref(), Some(name), "{name} outside its family's block:\n{text}");
                assert!(types.contains_key(name), "{name} has no TYPE");
                let key = line.rsplit_once(' ').unwrap().0.to_string();
                assert!(!series.contains(&key), "series {key} repeats:\n{text}");
                series.push(key);
            }
        }
        finished.extend(current);
        for name in &finished {
            assert_eq!((helps[name], types[name]), (1, 1), "{name}: one HELP and one TYPE");
            assert!(name.starts_with("pgha_"), "{name}");
            assert!(series.iter().any(|key| key == name || key.starts_with(&format!("{name}{{"))), "{name} is empty");
        }
        assert_eq!(finished.len(), helps.len(), "a family appears in two blocks:\n{text}");
        series
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ').map(str::to_string))
    }

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("two\nlines"), r"two\nlines");
        assert_eq!(escape_label_value("10.231.245.2 é"), "10.231.245.2 é");
        assert_eq!(escape_help("a\\b\nc \"d\""), "a\\\\b\\nc \"d\"");

        let mut report = Report::empty();
        report.kept.push(KeptReport {
            path: "/srv/\"pg\"\\data\nx.pgha-old-1".into(),
            kind: "old",
            age_seconds: 60,
            bytes: 4096,
        });
        let text = format_metrics(&report.finish(), NOW);
        check_exposition(&text);
        let series = r#"pgha_kept_bytes{path="/srv/\"pg\"\\data\nx.pgha-old-1",kind="old"}"#;
        assert_eq!(value(&text, series).as_deref(), Some("4096"), "{text}");
    }

    #[test]
    fn a_primary_reports_its_role_wal_standbys_and_slots() {
        let report = report_for(PRIMARY, "10.231.245.1", CONF);
        assert_eq!(report.status, Health::Ok);
        let text = format_metrics(&report, NOW);
        check_exposition(&text);
        let standby = r#"{address="10.231.245.2",application_name="pgha_10_231_245_2"}"#;
        let expected = [
            ("pgha_status".to_string(), "0"),
            (r#"pgha_role{role="primary"}"#.into(), "1"),
            (r#"pgha_role{role="standby"}"#.into(), "0"),
            (r#"pgha_configured_role{role="primary"}"#.into(), "1"),
            ("pgha_cluster_up".into(), "1"),
            (
                r#"pgha_cluster_info{cluster="15/main",version="15",port="5432",host_address="10.231.245.1"}"#.into(),
                "1",
            ),
            ("pgha_wal_position_bytes".into(), "50473176"),
            (format!("pgha_standby_connected{standby}"), "1"),
            (format!("pgha_standby_streaming{standby}"), "1"),
            (format!("pgha_standby_configured{standby}"), "1"),
            (format!("pgha_standby_lag_bytes{standby}"), "0"),
            (format!("pgha_standby_lag_seconds{standby}"), "0"),
            (r#"pgha_slot_active{slot="pgha_10_231_245_2"}"#.into(), "1"),
            (r#"pgha_slot_retained_bytes{slot="pgha_10_231_245_2"}"#.into(), "0"),
            (r#"pgha_data_filesystem_free_bytes{path="/var/lib/postgresql/15/main"}"#.into(), "7516192768"),
            (r#"pgha_data_filesystem_size_bytes{path="/var/lib/postgresql/15/main"}"#.into(), "21474836480"),
            (r#"pgha_problems{severity="warning"}"#.into(), "0"),
            (r#"pgha_problems{severity="critical"}"#.into(), "0"),
            (r#"pgha_problems{severity="unknown"}"#.into(), "0"),
            ("pgha_last_run_timestamp_seconds".into(), "1800000000"),
        ];
        for (series, expected) in expected {
            assert_eq!(value(&text, &series).as_deref(), Some(expected), "{series}:\n{text}");
        }
        assert!(!text.contains("pgha_receiver"), "a primary has no WAL receiver:\n{text}");
    }

    #[test]
    fn a_failing_archive_is_one_series_per_counter() {
        let sample = include_str!("../../tests/data/status-primary-archive-failing-15.txt");
        let config = Config::parse(Path::new("/etc/pgha/pgha.conf"), CONF).unwrap();
        let snapshot = parse_snapshot(&crate::tools::psql::parse_rows(sample)).unwrap();
        let mut report = Report::empty();
        let facts = crate::health::ArchiveFacts {
            directory: config.archive.directory.display().to_string(),
            usage: Some(crate::files::archive::Usage { bytes: 16 << 20, files: 1, dropped: 0 }),
            own_filesystem: None,
        };
        crate::health::describe_archive(&mut report, snapshot.archiver.as_ref().unwrap(), facts, Default::default());
        let text = format_metrics(&report.finish(), NOW);
        check_exposition(&text);
        let labels = r#"{directory="/var/backups/pgsql/archive"}"#;
        for (name, expected) in [
            ("pgha_archive_failing", "1"),
            ("pgha_archive_archived_count", "1"),
            ("pgha_archive_failed_count", "3"),
            ("pgha_archive_ready_segments", "1"),
            ("pgha_archive_bytes", "16777216"),
            ("pgha_archive_dropped_segments", "0"),
        ] {
            assert_eq!(value(&text, &format!("{name}{labels}")).as_deref(), Some(expected), "{name}:\n{text}");
        }
        assert!(value(&text, &format!("pgha_archive_last_archived_age_seconds{labels}")).is_some(), "{text}");
        assert!(!text.contains("pgha_archive_filesystem"), "shares the data directory's filesystem:\n{text}");
    }

    #[test]
    fn a_missing_standby_is_disconnected_without_a_lag_series() {
        let two =
            "[primary]\naddress = \"10.231.245.1\"\n[standby]\naddresses = [\"10.231.245.2\", \"10.231.245.3\"]\n";
        let report = report_for(PRIMARY, "10.231.245.1", two);
        let text = format_metrics(&report, NOW);
        check_exposition(&text);
        let missing = r#"{address="10.231.245.3",application_name="pgha_10_231_245_3"}"#;
        assert_eq!(value(&text, &format!("pgha_standby_connected{missing}")).as_deref(), Some("0"), "{text}");
        assert_eq!(value(&text, &format!("pgha_standby_streaming{missing}")).as_deref(), Some("0"));
        assert_eq!(value(&text, &format!("pgha_standby_lag_bytes{missing}")), None, "unknown lag is no series");
        assert_eq!(value(&text, "pgha_status").as_deref(), Some("2"));
        assert_eq!(value(&text, r#"pgha_problems{severity="critical"}"#).as_deref(), Some("1"));
        assert!(!text.contains("NaN") && !text.contains("Inf"), "{text}");
    }

    #[test]
    fn a_standby_reports_its_receiver() {
        let report = report_for(STANDBY, "10.231.245.2", CONF);
        assert_eq!(report.status, Health::Ok);
        let text = format_metrics(&report, NOW);
        check_exposition(&text);
        for (series, expected) in [
            (r#"pgha_role{role="standby"}"#, "1"),
            (r#"pgha_role{role="primary"}"#, "0"),
            (r#"pgha_configured_role{role="standby"}"#, "1"),
            ("pgha_receiver_streaming", "1"),
            ("pgha_receiver_lag_bytes", "0"),
            ("pgha_receiver_lag_seconds", "0"),
            ("pgha_status", "0"),
        ] {
            assert_eq!(value(&text, series).as_deref(), Some(expected), "{series}:\n{text}");
        }
        assert!(value(&text, "pgha_wal_position_bytes").is_some(), "{text}");
        assert!(!text.contains("pgha_standby_"), "a standby lists no standbys:\n{text}");
    }

    #[test]
    fn a_receiver_that_cannot_be_seen_has_no_streaming_series_and_a_lag_in_seconds() {
        let mut report = Report::empty();
        report.role = Some("standby");
        report.receiver =
            Some(ReceiverReport::with_lag("unknown", crate::replication::Lag { bytes: None, seconds: Some(2.5) }));
        let text = format_metrics(&report.finish(), NOW);
        check_exposition(&text);
        assert_eq!(value(&text, "pgha_receiver_streaming"), None, "{text}");
        assert_eq!(value(&text, "pgha_receiver_lag_bytes"), None, "{text}");
        assert_eq!(value(&text, "pgha_receiver_lag_seconds").as_deref(), Some("2.5"), "{text}");
    }

    #[test]
    fn a_config_error_is_status_unknown_and_cluster_down() {
        let text = format_metrics(&unknown_report(), NOW);
        check_exposition(&text);
        assert_eq!(value(&text, "pgha_status").as_deref(), Some("3"), "{text}");
        assert_eq!(value(&text, "pgha_cluster_up").as_deref(), Some("0"));
        assert_eq!(value(&text, r#"pgha_problems{severity="unknown"}"#).as_deref(), Some("1"));
        assert_eq!(value(&text, "pgha_last_run_timestamp_seconds").as_deref(), Some("1800000000"));
        for absent in ["pgha_role", "pgha_wal_position_bytes", "pgha_cluster_info", "pgha_data_filesystem"] {
            assert!(!text.contains(absent), "{absent} is not known:\n{text}");
        }
        assert!(!text.contains("primary.address"), "problem messages stay out of the labels:\n{text}");
    }

    #[test]
    fn secrets_and_messages_never_appear() {
        let mut report = report_for(STANDBY, "10.231.245.2", CONF);
        let receiver = report.receiver.as_mut().unwrap();
        receiver.conninfo = Some("user=replicator password=s3cret-conninfo host=10.231.245.1".into());
        report.problem(Health::Warning, "message with s3cret-message".into());
        let text = format_metrics(&report.finish(), NOW);
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn a_repeated_series_is_written_once_and_an_unknown_value_not_at_all() {
        let mut exposition = Exposition::default();
        let family = exposition.gauge("pgha_test", "A test.");
        family.sample(vec![("a", "x".into())], Some(1u64));
        family.sample(vec![("a", "x".into())], Some(2u64));
        family.sample(vec![("a", "y".into())], Some(f64::NAN));
        family.sample(vec![("a", "z".into())], Some(f64::INFINITY));
        family.sample(vec![("a", "w".into())], None::<u64>);
        exposition.gauge("pgha_empty", "Never sampled.");
        let text = exposition.render();
        assert_eq!(text, "# HELP pgha_test A test.\n# TYPE pgha_test gauge\npgha_test{a=\"x\"} 1\n");
    }

    #[test]
    fn every_family_is_one_block_whatever_order_the_samples_come_in() {
        let mut report = report_for(PRIMARY, "10.231.245.1", CONF);
        report.standbys.push(crate::health::StandbyReport {
            address: Some("10.231.245.9".into()),
            application_name: Some("other".into()),
            configured: false,
            state: "catchup".into(),
            sync_state: None,
            sent_lsn: None,
            write_lsn: None,
            flush_lsn: None,
            replay_lsn: None,
            lag: crate::replication::Lag { bytes: Some(16), seconds: Some(0.25) },
        });
        let series = check_exposition(&format_metrics(&report, NOW));
        let connected = series.iter().filter(|s| s.starts_with("pgha_standby_connected{")).count();
        assert_eq!(connected, 2, "{series:?}");
    }

    proptest! {
        /// Any label value survives: the line stays in the format and unescapes to the value.
        #[test]
        fn any_label_value_stays_in_the_format(path in "\\PC*|[\\\\\"\n a-z]{0,12}") {
            let mut report = Report::empty();
            report.kept.push(KeptReport { path: path.clone(), kind: "fork", age_seconds: 1, bytes: 2 });
            let text = format_metrics(&report.finish(), NOW);
            check_exposition(&text);
            let line = text.lines().find(|line| line.starts_with("pgha_kept_bytes{")).unwrap();
            let quoted = line.strip_prefix("pgha_kept_bytes{path=\"").unwrap().rsplit_once("\",kind=").unwrap().0;
            let unescaped = quoted.replace("\\\\", "\u{0}").replace("\\\"", "\"").replace("\\n", "\n").replace('\u{0}', "\\");
            prop_assert_eq!(unescaped, path);
        }
    }
}
