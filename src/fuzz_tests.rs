//! Property tests for everything pgha reads from another program, a server or the admin: each
//! parser is fed both arbitrary text and input shaped like the real thing with arbitrary values
//! in it, and must answer (a value or an error) without panicking. Where a parser has a real
//! property (a round trip, idempotency), that is checked too.
//!
//! Kept in one file, apart from the modules, so the parsers' own files stay small.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use crate::cmd::prune_archive::is_prunable_name;
use crate::config::{validate_role_name, Config, Password};
use crate::debian::Cluster;
use crate::hba::{merge_block, remove_block, BEGIN, END};
use crate::health::{describe, format_table, Limits, Report};
use crate::password::scram_matches;
use crate::replication::{parse_snapshot, parse_verify_output, LagLimit, Lsn};
use crate::size::{format_bytes, parse_bytes, ANY_UNIT};
use crate::standby::clone::strip_recovery_settings;
use crate::standby::preflight::parse_platform;
use crate::standby::rewind::{parse_proc_state, segments_between};
use crate::tools::pg_basebackup::parse_basebackup_progress;
use crate::tools::pg_controldata::parse_controldata;
use crate::tools::pg_lsclusters::parse_pg_lsclusters;
use crate::tools::pg_rewind::{parse_rewind_output, RewindPlan};
use crate::tools::psql::{classify_failure, parse_bool, parse_rows, ConnectionFailure};
use crate::version::PgVersion;

/// For parsers that cost microseconds a run.
const CHEAP: u32 = 2000;
/// For inputs that go through several parsers, or TOML.
const COMPOSITE: u32 = 1000;

fn cheap() -> ProptestConfig {
    ProptestConfig::with_cases(CHEAP)
}

fn composite() -> ProptestConfig {
    ProptestConfig::with_cases(COMPOSITE)
}

/// Text that is sometimes arbitrary Unicode and sometimes made of the pieces a parser looks for,
/// so both the "garbage" paths and the near-miss paths are reached.
fn text_from(pieces: &'static [&'static str]) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => proptest::sample::select(pieces).prop_map(str::to_string),
        1 => any::<String>(),
        1 => "[0-9A-Fa-f/.:% -]{0,12}",
        1 => any::<u64>().prop_map(|n| n.to_string()),
    ];
    prop_oneof![any::<String>(), proptest::collection::vec(piece, 0..16).prop_map(|parts| parts.concat())]
}

/// A value as a server or a program might print it in one field: empty, a number, a WAL
/// position, a boolean, a float spelling, or anything.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| Lsn(n).to_string()),
        proptest::sample::select(&["t", "f", "true", "false", "NaN", "inf", "-inf", "1e308", "-0.5", "streaming"][..])
            .prop_map(str::to_string),
        "[0-9a-f:.]{1,20}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(cheap())]

    #[test]
    fn psql_rows_never_panic(text in text_from(&["\u{1f}", "\u{1e}", "\n", "t", "0/3000060"])) {
        let rows = parse_rows(&text);
        prop_assert!(rows.iter().all(|row| !row.is_empty()));
    }

    /// Rows printed the way psql prints them with pgha's separators come back as they went in.
    #[test]
    fn psql_rows_round_trip(rows in proptest::collection::vec(
        proptest::collection::vec("[a-z0-9 /.:$'\"\\\\]{0,8}", 1..5)
            .prop_filter("a row of one empty field prints as nothing", |row| row.len() > 1 || !row[0].is_empty()),
        0..6,
    )) {
        let printed: Vec<String> = rows.iter().map(|row| row.join("\u{1f}")).collect();
        let output = if printed.is_empty() { String::new() } else { format!("{}\n", printed.join("\u{1e}")) };
        prop_assert_eq!(parse_rows(&output), rows);
    }

    #[test]
    fn booleans_are_exactly_four_spellings(text in text_from(&["t", "f", "true", "false", " "])) {
        let expected = match text.as_str() {
            "t" | "true" => Some(true),
            "f" | "false" => Some(false),
            _ => None,
        };
        prop_assert_eq!(parse_bool(&text).ok(), expected);
    }

    #[test]
    fn connection_failures_never_panic(text in text_from(&[
        "Connection refused", "timeout expired", "the database system is starting up", "role", "does not exist",
        "password authentication failed", "no pg_hba.conf entry", "the database system is shutting down",
    ])) {
        let failure = classify_failure(&text);
        if text.contains("Connection refused")
            && !text.contains("the database system is starting up")
            && !text.contains("the database system is shutting down")
        {
            prop_assert_eq!(failure, ConnectionFailure::Unreachable);
        }
    }

    #[test]
    fn controldata_never_panics(text in text_from(&[
        "Database system identifier: ", "Database cluster state: ", "Latest checkpoint's TimeLineID: ",
        "Latest checkpoint location: ", "max_connections setting: ", "Bytes per WAL segment: ", "\n", ":",
    ])) {
        let _ = parse_controldata(&text);
    }

    /// The saved output with one field's value replaced by anything: an error or a sane value.
    #[test]
    fn controldata_with_one_odd_value(line in 0usize..64, value in field()) {
        let saved = include_str!("../tests/data/pg_controldata-15.txt");
        let text: String = saved
            .lines()
            .enumerate()
            .map(|(index, text)| match text.split_once(':') {
                Some((key, _)) if index == line => format!("{key}: {value}\n"),
                _ => format!("{text}\n"),
            })
            .collect();
        if let Ok(control) = parse_controldata(&text) {
            prop_assert!(control.segment_bytes.is_power_of_two());
            prop_assert!((1 << 20..=1 << 30).contains(&control.segment_bytes));
        }
    }

    #[test]
    fn basebackup_progress_never_panics(text in text_from(&[" kB (", "/", "%)", "%", " ", "kB"])) {
        if let Some(progress) = parse_basebackup_progress(&text) {
            prop_assert!(progress.percent <= 100);
            let _ = progress.status_line();
        }
    }

    #[test]
    fn basebackup_progress_reads_what_it_prints(done: u64, total: u64, percent: u32) {
        let line = format!("{done}/{total} kB ({percent}%), 0/1 tablespace");
        let progress = parse_basebackup_progress(&line).unwrap();
        prop_assert_eq!((progress.done_kb, progress.total_kb, progress.percent), (done, total, percent.min(100)));
    }

    #[test]
    fn rewind_output_never_panics(text in text_from(&[
        "servers diverged at WAL location ", " on timeline ", "no rewind required", "same timeline", " ", "\n",
    ])) {
        let _ = parse_rewind_output(&text);
    }

    #[test]
    fn rewind_divergence_reads_back(lsn: u64, timeline: u32) {
        let text = format!("pg_rewind: servers diverged at WAL location {} on timeline {timeline}\n", Lsn(lsn));
        let report = parse_rewind_output(&text).unwrap();
        prop_assert_eq!(report.plan, RewindPlan::Diverged { lsn: Lsn(lsn), timeline });
    }

    #[test]
    fn lsn_parse_never_panics(text in text_from(&["/", "0", "F", "FFFFFFFF", "100000000", " "])) {
        if let Ok(lsn) = text.parse::<Lsn>() {
            prop_assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
    }

    #[test]
    fn lsn_round_trips(value: u64, earlier: u64) {
        prop_assert_eq!(Lsn(value).to_string().parse::<Lsn>(), Ok(Lsn(value)));
        prop_assert!(Lsn(value).bytes_after(Lsn(earlier)) <= value);
    }

    #[test]
    fn lag_limits_never_panic(text in text_from(&["kB", "MB", "GB", "TB", "s", "min", "h", "d", "y", " "])) {
        if let Ok(limit) = text.parse::<LagLimit>() {
            let _ = limit.to_string();
            let lag = crate::replication::Lag { bytes: Some(u64::MAX), seconds: Some(f64::MAX) };
            let _ = limit.exceeded_by(lag);
        }
    }

    #[test]
    fn sizes_never_panic(text in text_from(&["kB", "KB", "MB", "GB", "TB", "B", " "]), bytes: u64) {
        let _ = parse_bytes(&text, &ANY_UNIT);
        let _ = format_bytes(bytes);
    }

    /// What pgha.conf and --warn-lag accept is exact: a number times its unit, or nothing on overflow.
    #[test]
    fn sizes_are_number_times_unit(number: u64, unit in proptest::sample::select(&ANY_UNIT[..]), space in " {0,2}") {
        let factor = [1u64, 1, 1 << 10, 1 << 20, 1 << 30, 1 << 40][ANY_UNIT.iter().position(|u| *u == unit).unwrap()];
        prop_assert_eq!(parse_bytes(&format!("{space}{number}{space}{unit}{space}"), &ANY_UNIT), number.checked_mul(factor));
    }

    #[test]
    fn versions_never_panic(text in text_from(&["9", "10", "18", ".", "5", "6"]), num: u32) {
        if let Ok(version) = text.parse::<PgVersion>() {
            prop_assert!(version.is_supported());
            prop_assert_eq!(version.to_string().parse::<PgVersion>(), Ok(version));
        }
        let _ = PgVersion::from_version_num(num).to_string();
    }

    #[test]
    fn recovery_settings_are_stripped_once_and_for_all(text in text_from(&[
        "primary_conninfo = 'x'\n", "recovery_target = ''\n", "# primary_slot_name\n", "work_mem = 4MB\n",
        "  restore_command", "\n", "=", "standby_mode",
    ])) {
        let (kept, removed) = strip_recovery_settings(&text);
        prop_assert_eq!(kept.split_inclusive('\n').count() + removed.len(), text.split_inclusive('\n').count());
        prop_assert!(strip_recovery_settings(&kept).1.is_empty());
    }

    #[test]
    fn proc_state_never_panics(text in text_from(&["(", ")", " ", "Z", "postgres", "1234"])) {
        if let Some(state) = parse_proc_state(&text) {
            prop_assert!(!state.is_whitespace());
        }
    }

    /// Names from a WAL directory another account can write to: real segment names, 24-byte
    /// names that are not ASCII, and anything; any segment size a damaged pg_control could claim.
    #[test]
    fn segment_selection_never_panics(
        names in proptest::collection::vec(prop_oneof![
            "[0-9A-F]{24}",
            "[0-9a-fA-F]{8}[é]{8}",
            "[0-9A-F]{8}.history",
            any::<String>(),
        ], 0..12),
        from: u64,
        to: u64,
        segment_bytes in prop_oneof![Just(0u64), Just(1), Just(16 << 20), any::<u64>()],
    ) {
        let chosen = segments_between(&names, Lsn(from), Lsn(to), segment_bytes);
        prop_assert!(chosen.windows(2).all(|pair| pair[0] <= pair[1]));
        prop_assert!(chosen.iter().all(|name| names.contains(name) && name.len() == 24));
    }

    #[test]
    fn prunable_names_and_platforms_never_panic(text in text_from(&[".partial", ".backup", ".pgha-tmp", " on ", ", ", "-bit", "0000000100000000000000AB"])) {
        let _ = is_prunable_name(&text);
        let _ = parse_platform(&text);
    }

    #[test]
    fn role_names_never_panic(text in text_from(&["pg_", "/", "@", "all", "replicator", "$", "-", "é"])) {
        if validate_role_name(&text).is_ok() {
            prop_assert!(text.len() <= 63 && !text.starts_with('/'));
            prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@$".contains(&b)));
        }
    }
}

proptest! {
    #![proptest_config(composite())]

    #[test]
    fn lsclusters_text_never_panics(text in text_from(&["[", "]", "{", "}", "\"version\":", "\"pgdata\":\"/x\"", ",", "15"])) {
        let _ = parse_pg_lsclusters(&text);
    }

    /// JSON shaped like pg_lsclusters --json, with any JSON value under each real key.
    #[test]
    fn lsclusters_json_never_panics(entries in proptest::collection::vec(
        proptest::collection::btree_map(
            proptest::sample::select(&[
                "version", "cluster", "port", "running", "recovery", "pgdata", "configdir", "socketdir", "logfile", "owneruid",
            ][..]),
            json_value(),
            0..10,
        ),
        0..4,
    )) {
        let text = serde_json::to_string(&entries).unwrap();
        if let Ok(clusters) = parse_pg_lsclusters(&text) {
            for listed in clusters {
                prop_assert!(listed.cluster.data_dir.is_absolute() && listed.cluster.config_dir.is_absolute());
                prop_assert!(listed.cluster.version.is_supported());
            }
        }
    }

    /// Rows shaped like the status query's, with any value in each field, then judged and printed
    /// as `pgha status` does.
    #[test]
    fn snapshots_never_panic_nor_does_status(rows in proptest::collection::vec(
        (
            proptest::sample::select(&["server", "sender", "slot", "progress", "receiver", "other", ""][..]),
            proptest::collection::vec(field(), 0..11),
        ).prop_map(|(kind, fields)| std::iter::once(kind.to_string()).chain(fields).collect::<Vec<String>>()),
        0..6,
    )) {
        let _ = parse_verify_output(&rows);
        let Ok(snapshot) = parse_snapshot(&rows) else { return Ok(()) };
        let config = Config::parse(
            Path::new("/etc/pgha/pgha.conf"),
            "[primary]\naddress = \"10.0.0.1\"\n[standby]\naddresses = [\"10.0.0.2\", \"fd00::2\"]\n",
        ).unwrap();
        let mut report = Report::empty();
        report.host_address = Some("10.0.0.1".into());
        report.configured_role = Some("primary");
        let limits = Limits::new(
            &["30s".parse().unwrap(), "16MB".parse().unwrap()],
            &["1GB".parse().unwrap(), "5min".parse().unwrap()],
        );
        describe(&mut report, &config, &test_cluster(), &snapshot, &limits);
        let report = report.finish();
        let _ = format_table(&report);
        prop_assert!(serde_json::to_string(&report).is_ok());
    }

    #[test]
    fn hba_text_never_panics(text in text_from(&[BEGIN, END, "\n", "# comment\n", "host all all 0.0.0.0/0 md5\n", " "])) {
        let block = format!("{BEGIN}\nhostssl replication \"r\" 10.0.0.2/32 scram-sha-256\n{END}\n");
        if let Ok(merged) = merge_block(&text, &block) {
            prop_assert_eq!(merged.lines().filter(|line| line.trim_end() == BEGIN).count(), 1);
        }
        let _ = remove_block(&text);
    }

    /// Merging twice is merging once, the block sits above the admin's first rule, and removing it
    /// gives back the admin's lines.
    #[test]
    fn hba_merge_is_idempotent_and_reversible(
        lines in proptest::collection::vec(prop_oneof![
            Just(String::new()),
            "# [a-z ]{0,10}",
            "(local|host|hostssl) (all|replication) [a-z]{1,6} (peer|md5|10\\.0\\.0\\.[0-9]/32 scram-sha-256)",
            "[ \t]{1,3}",
        ], 0..10),
        final_newline: bool,
        rules in proptest::collection::vec("host(ssl)? replication \"[a-z]{1,5}\" 10\\.0\\.[0-9]\\.[0-9]/32 md5", 0..4),
    ) {
        let mut admin = lines.join("\n");
        if final_newline && !admin.is_empty() {
            admin.push('\n');
        }
        let block = format!("{BEGIN}\n{}{END}", rules.iter().map(|rule| format!("{rule}\n")).collect::<String>());
        let once = merge_block(&admin, &block).unwrap();
        prop_assert_eq!(merge_block(&once, &block).unwrap(), once.clone());
        let first_rule = admin.lines().find(|line| !line.trim().is_empty() && !line.trim().starts_with('#'));
        if let Some(rule) = first_rule {
            let rule_at = once.find(&format!("\n{rule}"));
            prop_assert!(rule_at.is_some_and(|at| once.find(BEGIN).unwrap() < at), "{:?}", once);
        }
        let meaningful = |text: &str| -> Vec<String> {
            text.lines().map(|line| line.trim_end().to_string()).filter(|line| !line.is_empty()).collect()
        };
        prop_assert_eq!(meaningful(&remove_block(&once).unwrap()), meaningful(&admin));
    }

    #[test]
    fn config_text_never_panics(text in text_from(&[
        "[primary]\n", "[standby]\n", "[replication]\n", "[archive]\n", "[cluster]\n", "address = ", "addresses = [",
        "\"192.0.2.10\"", "]", "\n", "keep = ", "\"1000000000y\"", "user = ", "'/.*'", "=", "\"",
    ])) {
        let _ = Config::parse(Path::new("/etc/pgha/pgha.conf"), &text);
    }

    /// pgha.conf built from the real keys, each with an arbitrary TOML value (mostly of the right
    /// type); whatever is accepted meets every rule the rest of pgha relies on.
    #[test]
    fn config_from_real_keys_never_panics(table in config_table()) {
        let text = toml::to_string(&table).unwrap();
        if let Ok(config) = Config::parse(Path::new("/etc/pgha/pgha.conf"), &text) {
            prop_assert!(validate_role_name(&config.replication.user).is_ok());
            for path in [&config.replication.password_file, &config.replication.passfile, &config.archive.directory] {
                prop_assert!(path.is_absolute());
                prop_assert!(!path.display().to_string().chars().any(char::is_control));
            }
            prop_assert!(!config.archive.keep.is_zero());
            prop_assert!(config.primary.port > 0);
            prop_assert!(!config.standby.addresses.is_empty());
            prop_assert!(!config.standby.addresses.contains(&config.primary.address));
            let _ = std::time::Instant::now() + config.standby.streaming_timeout;
        }
    }
}

proptest! {
    // Each case may run PBKDF2; the iteration counts drawn stay small or beyond the bound.
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn scram_verifiers_never_panic(
        text in text_from(&["SCRAM-SHA-256$", ":", "$", "4096", "AAAA", "=="]),
        iterations in prop_oneof![0u32..64, 10_000_001u32..=u32::MAX],
        salt in proptest::collection::vec(any::<u8>(), 0..20),
        keys in "[A-Za-z0-9+/=]{0,48}",
    ) {
        let password = Password::new("pw".into());
        let _ = scram_matches(&text, &password);
        use base64::Engine;
        let salt = base64::engine::general_purpose::STANDARD.encode(salt);
        let stored = format!("SCRAM-SHA-256${iterations}:{salt}${keys}:{keys}");
        prop_assert!(!scram_matches(&stored, &password) || (1..64).contains(&iterations));
    }
}

fn test_cluster() -> Cluster {
    Cluster {
        version: PgVersion::new(15, 0),
        name: "main".into(),
        port: 5432,
        data_dir: PathBuf::from("/var/lib/postgresql/15/main"),
        config_dir: PathBuf::from("/etc/postgresql/15/main"),
        socket_dir: PathBuf::from("/var/run/postgresql"),
        log_file: None,
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        proptest::sample::select(&["15", "9.6", "9.4", "main", "/var/lib/postgresql/15/main", "1", "0", ""][..])
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A TOML value for a key: usually of the type the key takes, with values near and past its limits.
fn toml_value(kind: Kind) -> BoxedStrategy<toml::Value> {
    use toml::Value;
    let address = prop_oneof![
        Just("192.0.2.10".to_string()),
        Just("192.0.2.11".to_string()),
        Just("fd00::1".to_string()),
        Just("0.0.0.0".to_string()),
        Just("224.0.0.1".to_string()),
        any::<IpAddr>().prop_map(|address| address.to_string()),
        any::<String>(),
    ];
    let typed: BoxedStrategy<Value> = match kind {
        Kind::Text => prop_oneof![
            proptest::sample::select(
                &[
                    "replicator",
                    "pg_x",
                    "/.*",
                    "all",
                    "auto",
                    "require",
                    "verify-full",
                    "7d",
                    "1000000000y",
                    "0s",
                    "500000000000y",
                    "1GB",
                    "99999999999TB",
                    "main",
                    "9.6",
                    "/etc/pgha/pw",
                    "relative",
                    "/a\nb",
                    "/a\u{85}b",
                ][..]
            )
            .prop_map(|text| Value::String(text.to_string())),
            any::<String>().prop_map(Value::String),
        ]
        .boxed(),
        Kind::Address => address.clone().prop_map(Value::String).boxed(),
        Kind::Addresses => proptest::collection::vec(address, 0..4)
            .prop_map(|list| Value::Array(list.into_iter().map(Value::String).collect()))
            .boxed(),
        Kind::Integer => prop_oneof![-2i64..70000, any::<i64>()].prop_map(Value::Integer).boxed(),
        Kind::Bool => any::<bool>().prop_map(Value::Boolean).boxed(),
        Kind::Version => prop_oneof![
            (0i64..30).prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Float),
            Just(Value::Float(9.6)),
            "[0-9.]{0,5}".prop_map(Value::String),
        ]
        .boxed(),
    };
    let wrong_type = prop_oneof![
        any::<i64>().prop_map(Value::Integer),
        any::<bool>().prop_map(Value::Boolean),
        any::<String>().prop_map(Value::String),
        Just(Value::Array(vec![])),
    ];
    prop_oneof![9 => typed, 1 => wrong_type].boxed()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Text,
    Address,
    Addresses,
    Integer,
    Bool,
    Version,
}

/// Every section and key pgha.conf has, and one it does not.
const SECTIONS: &[(&str, &[(&str, Kind)])] = &[
    ("cluster", &[("version", Kind::Version), ("name", Kind::Text)]),
    (
        "primary",
        &[
            ("address", Kind::Address),
            ("port", Kind::Integer),
            ("max_wal_senders", Kind::Integer),
            ("wal_keep_size", Kind::Text),
            ("max_slot_wal_keep_size", Kind::Text),
        ],
    ),
    ("standby", &[("addresses", Kind::Addresses), ("streaming_timeout", Kind::Text)]),
    (
        "replication",
        &[
            ("user", Kind::Text),
            ("password_file", Kind::Text),
            ("passfile", Kind::Text),
            ("slots", Kind::Bool),
            ("connection_limit", Kind::Integer),
            ("sslmode", Kind::Text),
        ],
    ),
    ("archive", &[("enabled", Kind::Bool), ("directory", Kind::Text), ("keep", Kind::Text), ("unknown", Kind::Text)]),
];

fn config_table() -> impl Strategy<Value = toml::Table> {
    let sections: Vec<BoxedStrategy<(String, Option<toml::Table>)>> = SECTIONS
        .iter()
        .map(|(section, keys)| {
            let keys: Vec<BoxedStrategy<Option<(String, toml::Value)>>> = keys
                .iter()
                .map(|(key, kind)| {
                    // The keys that make a config valid are usually present, the others usually not.
                    let present = if matches!(*key, "address" | "addresses") { 0.9 } else { 0.4 };
                    proptest::option::weighted(present, toml_value(*kind))
                        .prop_map(move |value| value.map(|value| (key.to_string(), value)))
                        .boxed()
                })
                .collect();
            let present = if matches!(*section, "primary" | "standby") { 0.95 } else { 0.6 };
            proptest::option::weighted(present, keys)
                .prop_map(move |keys| (section.to_string(), keys.map(|keys| keys.into_iter().flatten().collect())))
                .boxed()
        })
        .collect();
    sections.prop_map(|sections| {
        sections
            .into_iter()
            .filter_map(|(name, keys)| keys.map(|keys| (name, toml::Value::Table(keys))))
            .collect::<toml::Table>()
    })
}
