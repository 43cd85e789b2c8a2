//! Secrets on the primary: the replication role's verifier never reaches the server log, even
//! when the statement that carries it fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::common::{config_text, host_pair, pgha, pgha_output, require_root_and_postgres, TestCluster, TestConfig};

const PASSWORD: &str = "v3rifier-'leak'-test";

/// log_min_error_statement logs the text of a failing statement, CREATE ROLE … PASSWORD
/// 'SCRAM-SHA-256$…' included: pgha's session turns it off before the role statement.
#[test]
fn a_failing_role_statement_keeps_the_verifier_out_of_the_server_log() {
    if !require_root_and_postgres() {
        return;
    }
    let hosts = host_pair();
    let cluster = TestCluster::create("15", Some(&hosts.a.name));
    cluster.start();
    let scratch = tempfile::tempdir().unwrap();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let text = config_text(&cluster, &hosts.a_ip, cluster.port, &[&hosts.b_ip], &scratch.path().join("archive"));
    let config = TestConfig::new(&text, PASSWORD);

    cluster.psql("ALTER SYSTEM SET log_min_error_statement = 'error'");
    cluster.psql("SELECT pg_reload_conf()");
    // Every new session of postgres is read-only, so CREATE ROLE fails after pgha's checks passed.
    cluster.psql("ALTER ROLE postgres SET default_transaction_read_only = on");

    let out = pgha_output(pgha(Some(&hosts.a.name)).args(["--config", config.path_str(), "primary"]));
    assert_eq!(out.code, 1, "pgha primary must fail:\n{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("read-only transaction"), "{}", out.stderr);
    let log = cluster.log();
    assert!(
        log.contains("ERROR:  cannot execute CREATE ROLE in a read-only transaction"),
        "the role statement did not fail on the server:\n{log}"
    );
    // The server did log failing statements: an ordinary one shows up with its text.
    assert!(cluster.try_psql("CREATE TABLE pgha_marker_statement (x int)").is_err());
    assert!(cluster.log().contains("STATEMENT:  CREATE TABLE pgha_marker_statement"), "log_min_error_statement is off");
    assert!(!log.contains("SCRAM-SHA-256$"), "the verifier is in the server log:\n{log}");
    assert!(!log.contains(PASSWORD), "the password is in the server log");
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains("SCRAM-SHA-256$") && !text.contains(PASSWORD), "pgha printed a secret: {text}");
    }
}
