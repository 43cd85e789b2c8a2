//! The command line: help, exit codes, and one config error per class, each naming file, key
//! and value. None of these needs a server except where a cluster is the subject.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::common::{pgha, pgha_output, require_root_and_postgres, sh, TestCluster, TestConfig};

const VALID: &str = "[cluster]\nversion = 15\nname = \"nosuch\"\n[primary]\naddress = \"192.0.2.10\"\n[standby]\naddresses = [\"192.0.2.11\"]\n[replication]\npassword_file = \"@PASSWORD_FILE@\"\n";

fn run_with(config: &TestConfig, args: &[&str]) -> crate::common::PghaOutput {
    pgha_output(pgha(None).args(["--config", config.path_str()]).args(args))
}

#[test]
fn help_documents_exit_codes_and_subcommands() {
    let out = pgha_output(pgha(None).arg("--help"));
    assert_eq!(out.code, 0);
    for needle in ["Exit codes:", "2  usage or configuration error", "primary", "render", "prune-archive", "metrics"] {
        assert!(out.stdout.contains(needle), "--help lacks {needle:?}:\n{}", out.stdout);
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(pgha_output(pgha(None).arg("--no-such-flag")).code, 2);
    assert_eq!(pgha_output(pgha(None).args(["render", "--pg-version", "8.4"])).code, 2);
}

/// `status` is a monitoring plugin: its usage errors are UNKNOWN (3) with the reason on the
/// first line, in text and JSON alike, while `--help` still exits 0.
#[test]
fn status_usage_errors_are_unknown() {
    for args in [&["status", "--warn-lag", "bogus"][..], &["-v", "status", "--no-such-flag"], &["status", "extra"]] {
        let out = pgha_output(pgha(None).args(args));
        assert_eq!(out.code, 3, "{args:?}: {}\n{}", out.stdout, out.stderr);
        let first = out.stdout.lines().next().unwrap_or_default();
        assert!(first.starts_with("PGHA UNKNOWN - usage error: "), "{args:?}: {first}");
        assert!(!first.contains('|'), "{first}");
    }
    let out = pgha_output(pgha(None).args(["status", "--json", "--crit-lag", "lots"]));
    assert_eq!(out.code, 3);
    let json = crate::day2::status_json(&out);
    assert!(json["problems"][0]["message"].as_str().unwrap().contains("lots"), "{json}");
    assert_eq!(pgha_output(pgha(None).args(["status", "--help"])).code, 0);
    assert_eq!(pgha_output(pgha(None).args(["primary", "--no-such-flag"])).code, 2, "other commands keep 2");
    let metrics = pgha_output(pgha(None).args(["metrics", "--stdout", "--warn-lag", "bogus"]));
    assert_eq!(metrics.code, 2, "metrics takes status's limits, with a usage error's 2: {}", metrics.stderr);
    assert!(metrics.stderr.contains("bogus") && metrics.stderr.contains("--warn-lag"), "{}", metrics.stderr);
}

/// The man pages the package ships: what is typed in the synopsis, exit codes in their own
/// section, no page for the help subcommand, and nothing man(1) warns about at 80 columns.
#[test]
fn man_pages_are_well_formed() {
    if !std::path::Path::new("/usr/bin/man").exists() {
        eprintln!("SKIPPED: needs man-db");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = pgha_output(pgha(None).arg("generate-docs").arg(dir.path()));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut pages: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "8" || ext == "5"))
        .collect();
    pages.sort();
    assert!(pages.len() > 10, "{pages:?}");
    for page in &pages {
        let rendered = std::process::Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .unwrap();
        let warnings = String::from_utf8_lossy(&rendered.stderr);
        assert!(rendered.status.success() && warnings.trim().is_empty(), "{}: {warnings}", page.display());
    }
    let primary = fs::read_to_string(dir.path().join("pgha-primary.8")).unwrap();
    assert!(primary.contains("\\fBpgha primary\\fR"), "{primary}");
    let main = fs::read_to_string(dir.path().join("pgha.8")).unwrap();
    assert!(!main.contains("pgha\\-help") && !main.contains(".SH EXTRA"), "{main}");
    for section in [".SH \"EXIT STATUS\"", ".SH FILES", ".SH \"SEE ALSO\"", "pgha\\-fence.conf", "pg_rewind(1)"] {
        assert!(main.contains(section), "pgha(8) lacks {section}");
    }
    let status = fs::read_to_string(dir.path().join("pgha-status.8")).unwrap();
    assert!(status.contains("UNKNOWN") && status.contains("status\\-schema.json"), "{status}");
    let metrics = fs::read_to_string(dir.path().join("pgha-metrics.8")).unwrap();
    for words in ["pgha_status 3", "pgha\\-metrics.timer", "node\\-exporter/pgha.prom", "The file could not be written"]
    {
        assert!(metrics.contains(words), "pgha-metrics(8) lacks {words}: {metrics}");
    }
}

/// Each bad config yields exit 2 and a message with the file, the key and the bad value.
#[test]
fn config_errors_name_file_key_and_value() {
    let cases: &[(&str, String, &[&str])] = &[
        ("toml syntax", "[primary\naddress = 1".into(), &["invalid TOML", "line 1"]),
        ("unknown key", VALID.replace("[standby]", "[standby]\nadresses = []"), &["unknown field", "adresses"]),
        ("bad ip", VALID.replace("192.0.2.10", "192.0.2.300"), &["primary.address", "192.0.2.300", "IPv4 or IPv6"]),
        ("bad port", VALID.replace("[standby]", "port = 70000\n[standby]"), &["primary.port", "70000", "1 to 65535"]),
        ("empty standbys", VALID.replace("[\"192.0.2.11\"]", "[]"), &["standby.addresses", "empty"]),
        (
            "bad user",
            VALID.replace("[replication]", "[replication]\nuser = \"pg_evil\""),
            &["replication.user", "pg_evil"],
        ),
        (
            "reserved user",
            VALID.replace("[replication]", "[replication]\nuser = \"all\""),
            &["replication.user", "\"all\""],
        ),
        (
            "user outside the whitelist",
            VALID.replace("[replication]", "[replication]\nuser = \"rép'l$;x:1\""),
            &["replication.user", "rép'l$;x:1", "expected 1 to 63 bytes"],
        ),
        (
            "user read as a regular expression",
            VALID.replace("[replication]", "[replication]\nuser = \"/.*\""),
            &["replication.user", "\"/.*\"", "regular expression"],
        ),
        (
            "control character in a path",
            VALID.to_string() + "[archive]\ndirectory = \"/srv/wal\\narchive\"\n",
            &["archive.directory", "control character"],
        ),
        ("bad keep", VALID.to_string() + "[archive]\nkeep = \"forever\"\n", &["archive.keep", "forever"]),
    ];
    for (name, body, needles) in cases {
        let config = TestConfig::new(body, "pw");
        let out = run_with(&config, &["render"]);
        assert_eq!(out.code, 2, "{name}: expected exit 2, got {}: {}", out.code, out.stderr);
        assert!(out.stderr.contains(config.path_str()), "{name}: message lacks the file: {}", out.stderr);
        for needle in *needles {
            assert!(out.stderr.contains(needle), "{name}: message lacks {needle:?}: {}", out.stderr);
        }
    }
}

#[test]
fn missing_config_file_is_a_config_error() {
    let out = pgha_output(pgha(None).args(["--config", "/nonexistent/pgha.conf", "render"]));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/nonexistent/pgha.conf") && out.stderr.contains("cannot read"), "{}", out.stderr);
}

/// The password file is checked before anything else happens on the host.
#[test]
fn password_file_problems_are_config_errors() {
    let config = TestConfig::new(VALID, "pw");
    let path = config.password_file.to_str().unwrap().to_string();

    fs::set_permissions(&config.password_file, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_with(&config, &["primary"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains(&path) && out.stderr.contains("0644") && out.stderr.contains("0600"), "{}", out.stderr);

    fs::set_permissions(&config.password_file, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&config.password_file, "\n").unwrap();
    let out = run_with(&config, &["primary"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("replication.password_file") && out.stderr.contains("empty"), "{}", out.stderr);

    fs::write(&config.password_file, "two\nlines\n").unwrap();
    let out = run_with(&config, &["primary"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("line break"), "{}", out.stderr);

    fs::remove_file(&config.password_file).unwrap();
    let out = run_with(&config, &["primary"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains(&path) && out.stderr.contains("cannot read"), "{}", out.stderr);
}

#[test]
fn cluster_selection_errors_are_config_errors() {
    if !require_root_and_postgres() {
        return;
    }
    // This cluster guarantees at least two exist (Debian's main is the other), and it is down.
    let cluster = TestCluster::create("15", None);
    let no_choice = TestConfig::new(&VALID.replace("[cluster]\nversion = 15\nname = \"nosuch\"\n", ""), "pw");
    let out = run_with(&no_choice, &["primary"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("several clusters") && out.stderr.contains(&cluster.name), "{}", out.stderr);

    let missing = TestConfig::new(VALID, "pw");
    let out = run_with(&missing, &["primary"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("no cluster matches") && out.stderr.contains("nosuch"), "{}", out.stderr);

    let down = TestConfig::new(&VALID.replace("nosuch", &cluster.name), "pw");
    let out = run_with(&down, &["primary"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("is down") && out.stderr.contains("pg_ctlcluster 15"), "{}", out.stderr);
}

#[test]
fn prune_archive_deletes_only_old_wal_and_is_idempotent() {
    if !require_root_and_postgres() {
        return;
    }
    let archive = tempfile::tempdir().unwrap();
    let dir = archive.path().display().to_string();
    let config = TestConfig::new(&format!("{VALID}[archive]\ndirectory = \"{dir}\"\nkeep = \"2d\"\n"), "pw");
    // As `pgha primary` leaves it: the archive belongs to postgres, and prune-archive deletes as postgres.
    sh(&format!(
        "cd {dir} && touch -d '3 days ago' 000000010000000000000001 000000010000000000000002.partial 00000002.history notes.txt \
         && touch 000000010000000000000003 && chown -R postgres:postgres {dir}"
    ));
    let out = run_with(&config, &["prune-archive", "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("would delete 2 files"), "{}", out.stdout);
    assert!(archive.path().join("000000010000000000000001").exists(), "dry run deleted a file");

    let out = run_with(&config, &["prune-archive"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut left: Vec<String> =
        fs::read_dir(archive.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["000000010000000000000003", "00000002.history", "notes.txt"]);

    let out = run_with(&config, &["prune-archive"]);
    assert!(out.stdout.contains("no changes"), "{}", out.stdout);
}

/// Run as root, prune-archive deletes as postgres: an archive postgres cannot read is an error
/// and root's old WAL-named file in it stays. A huge keep deletes nothing and does not crash.
#[test]
fn prune_archive_gives_up_root_and_survives_a_huge_keep() {
    if !require_root_and_postgres() {
        return;
    }
    let archive = tempfile::tempdir().unwrap();
    let dir = archive.path().display().to_string();
    sh(&format!("chmod 700 {dir} && touch -d '3 days ago' {dir}/000000010000000000000001"));
    let config = TestConfig::new(&format!("{VALID}[archive]\ndirectory = \"{dir}\"\nkeep = \"2d\"\n"), "pw");
    let out = run_with(&config, &["prune-archive"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("cannot list") && out.stderr.contains("postgres"), "{}", out.stderr);
    assert!(archive.path().join("000000010000000000000001").exists(), "root's file was deleted");

    sh(&format!("chown postgres:postgres {dir}"));
    let huge = TestConfig::new(&format!("{VALID}[archive]\ndirectory = \"{dir}\"\nkeep = \"1000000000y\"\n"), "pw");
    let out = run_with(&huge, &["prune-archive"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("no changes"), "{}", out.stdout);
    assert!(archive.path().join("000000010000000000000001").exists());
}

#[test]
fn write_config_round_trips_and_refuses_bad_answers() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("pgha.conf");
    let password_file = dir.path().join("replication.password");
    let args = |primary: &str| {
        let mut command = pgha(None);
        command.args(["--config", conf.to_str().unwrap(), "write-config", "--primary-address", primary]).args([
            "--standby-addresses",
            "192.0.2.11, 192.0.2.12",
            "--password-file",
            password_file.to_str().unwrap(),
            "--password-stdin",
        ]);
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    let feed = |mut command: std::process::Command, password: &str| {
        use std::io::Write;
        let mut child = command.spawn().unwrap();
        child.stdin.take().unwrap().write_all(password.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status.code().unwrap(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (code, text) = feed(args("not-an-ip"), "pw\n");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("primary.address") && text.contains("not-an-ip"));
    assert!(!conf.exists() && !password_file.exists(), "a refused answer must write nothing");

    let (code, text) = feed(args("192.0.2.10"), "s3cr'et\n");
    assert_eq!(code, 0, "{text}");
    assert_eq!(fs::metadata(&password_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read_to_string(&password_file).unwrap(), "s3cr'et\n");
    let rendered = pgha_output(pgha(None).args(["--config", conf.to_str().unwrap(), "render"]));
    assert_eq!(rendered.code, 0, "{}", rendered.stderr);
    assert!(rendered.stdout.contains("192.0.2.12/32"), "written config lost a standby: {}", rendered.stdout);

    let (code, text) = feed(args("192.0.2.10"), "s3cr'et\n");
    assert_eq!(code, 0);
    assert!(text.contains("no changes"), "{text}");
}
