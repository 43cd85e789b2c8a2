//! Golden trees: for every supported version and role, `pgha render --root` must produce exactly
//! the files under tests/golden/<role>-<version>/. Set PGHA_UPDATE_GOLDEN=1 to rewrite them,
//! then review the diff like any other change.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{pgha, pgha_output};

const VERSIONS: [&str; 11] = ["9.5", "9.6", "10", "11", "12", "13", "14", "15", "16", "17", "18"];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn render_tree(role: &str, version: &str, root: &Path) {
    // A relative --config keeps the checkout's location out of the rendered headers.
    let out = pgha_output(
        pgha(None).current_dir(golden_dir()).args(["--config", "pgha.conf", "render", "--role", role]).args([
            "--pg-version",
            version,
            "--root",
            root.to_str().unwrap(),
        ]),
    );
    assert_eq!(out.code, 0, "render {role} {version}: {}", out.stderr);
}

#[test]
fn every_version_and_role_matches_its_golden_tree() {
    let update = std::env::var_os("PGHA_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for role in ["primary", "standby"] {
        for version in VERSIONS {
            let expected = golden_dir().join(format!("{role}-{version}"));
            let actual = tempfile::tempdir().unwrap();
            render_tree(role, version, actual.path());
            if update {
                let _ = std::fs::remove_dir_all(&expected);
                crate::common::sh(&format!("cp -a {}/. {}", actual.path().display(), expected.display()));
                continue;
            }
            let diff = Command::new("diff").arg("-ru").arg(&expected).arg(actual.path()).output().unwrap();
            if !diff.status.success() {
                failures.push(format!("{role}-{version}:\n{}", String::from_utf8_lossy(&diff.stdout)));
            }
        }
    }
    assert!(failures.is_empty(), "rendered files differ from the golden trees:\n{}", failures.join("\n"));
}

/// The version differences REFERENCE.md §2 lists, checked directly so a wrong golden file
/// cannot be blessed by accident.
#[test]
fn version_differences_are_rendered() {
    let read = |role: &str, version: &str, file: &str| {
        let root = tempfile::tempdir().unwrap();
        render_tree(role, version, root.path());
        std::fs::read_to_string(root.path().join(format!("etc/postgresql/{version}/main/{file}"))).unwrap_or_else(
            |_| std::fs::read_to_string(root.path().join(format!("var/lib/postgresql/{version}/main/{file}"))).unwrap(),
        )
    };
    assert!(read("primary", "9.5", "conf.d/pgha.conf").contains("wal_level = hot_standby"));
    assert!(read("primary", "9.6", "conf.d/pgha.conf").contains("wal_level = replica"));
    assert!(read("primary", "12", "conf.d/pgha.conf").contains("wal_keep_segments = 64"));
    let v13 = read("primary", "13", "conf.d/pgha.conf");
    assert!(v13.contains("wal_keep_size = '1024MB'") && v13.contains("max_slot_wal_keep_size"));
    assert!(!read("primary", "12", "conf.d/pgha.conf").contains("max_slot_wal_keep_size"));
    assert!(read("primary", "9.6", "pg_hba.conf").contains(" md5"));
    assert!(read("primary", "10", "pg_hba.conf").contains("scram-sha-256"));
    assert!(read("standby", "11", "recovery.conf").contains("standby_mode = 'on'"));
    let v12 = read("standby", "12", "conf.d/pgha.conf");
    assert!(v12.contains("primary_conninfo") && v12.contains("primary_slot_name = 'pgha_192_0_2_11'"));
    assert!(read("standby", "12", "standby.signal").starts_with("# Managed by pgha"));
    // The wal receiver binds its login to TLS only where the server's own libpq can (13+).
    assert!(!v12.contains("channel_binding") && !read("standby", "11", "recovery.conf").contains("channel_binding"));
    assert!(read("standby", "13", "conf.d/pgha.conf").contains("sslmode=require channel_binding=require"));
    // synchronous = "on" in the golden config: a plain list on 9.5 (one synchronous standby), a
    // priority list with its count on 9.6, a quorum from 10; the same in both roles.
    let members = r#"("pgha_192_0_2_10", "pgha_192_0_2_11", "pgha_2001_db8__12")"#;
    for role in ["primary", "standby"] {
        let v95 = read(role, "9.5", "conf.d/pgha.conf");
        assert!(v95.contains(&format!("synchronous_standby_names = '{}'", &members[1..members.len() - 1])), "{v95}");
        assert!(read(role, "9.6", "conf.d/pgha.conf").contains(&format!("synchronous_standby_names = '1 {members}'")));
        let v10 = read(role, "10", "conf.d/pgha.conf");
        assert!(v10.contains(&format!("synchronous_standby_names = 'ANY 1 {members}'\nsynchronous_commit = on\n")));
    }
    for version in VERSIONS {
        let conf = read("primary", version, "conf.d/pgha.conf");
        assert!(conf.starts_with("# Managed by pgha") && conf.contains("wal_log_hints = on"), "{version}");
        assert!(!conf.contains("listen_addresses = '*'"));
    }
}
