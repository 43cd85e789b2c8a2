//! Property tests for everything pgha reads from another program, a server or the admin: each
//! parser is fed both arbitrary text and input shaped like the real thing with arbitrary values
//! in it, and must answer (a value or an error) without panicking. Where a parser has a real
//! property (a round trip, idempotency), that is checked too.
//!
//! Kept apart from the modules, so the parsers' own files stay small: the parsers of program
//! output here, the composite inputs (pg_lsclusters JSON, snapshots, pgha.conf) in `composite`.

mod composite;

use std::net::IpAddr;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use crate::config::{validate_role_name, Config, Password};
use crate::debian::Cluster;
use crate::files::archive::is_prunable_name;
use crate::hba::{merge_block, remove_block, BEGIN, END};
use crate::health::{describe, format_plugin, Limits, Report};
use crate::password::scram_matches;
use crate::replication::{parse_snapshot, parse_verify_output, LagLimit, Lsn};
use crate::size::{format_bytes, parse_bytes, ANY_UNIT};
use crate::standby::clone::strip_recovery_settings;
use crate::standby::parse_proc_state;
use crate::standby::preflight::parse_platform;
use crate::standby::rewind::segments_between;
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
        let saved = include_str!("../../tests/data/pg_controldata-15.txt");
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
