//! Property tests on composite inputs: pg_lsclusters JSON, status snapshots through the health
//! rules, and pgha.conf built from its real keys with arbitrary values.

use super::*;

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
        let text = format_plugin(&report, &limits);
        let first = text.lines().next().unwrap_or_default();
        prop_assert!(crate::health::plugin_grammar().is_match(first), "{}", first);
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
    Cluster::debian_default(PgVersion::new(15, 0), "main")
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
