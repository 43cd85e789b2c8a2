//! TLS between standby and primary with certificates the test makes: verify-full against a
//! real CA succeeds and streams, a wrong CA or a certificate for another name is refused and
//! changes nothing, and `auto` never connects without TLS.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

const PASSWORD: &str = "tls-s3cret";

fn setup() -> Option<TwoHosts> {
    let setup = TwoHosts::new("15", PASSWORD)?;
    setup.b.start();
    Some(setup)
}

/// B's config with extra lines in [replication], in a directory of its own.
fn config_b_with(setup: &TwoHosts, replication: &str) -> TestConfig {
    let text = fs::read_to_string(&setup.config_b.path)
        .unwrap()
        .replace(&setup.config_b.password_file.display().to_string(), "@PASSWORD_FILE@")
        .replace("[replication]\n", &format!("[replication]\n{replication}"));
    TestConfig::new(&text, PASSWORD)
}

fn standby(setup: &TwoHosts, config: &TestConfig, extra: &[&str]) -> PghaOutput {
    pgha_output(pgha(Some(&setup.hosts.b.name)).args(["--config", config.path_str(), "standby"]).args(extra))
}

/// A CA (key and certificate) in `dir`, named `name`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (key, cert) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.crt")));
    run_ok(std::process::Command::new("openssl").args(["req", "-x509", "-newkey", "ec"]).args([
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN=pgha test {name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]));
    fs::set_permissions(&cert, fs::Permissions::from_mode(0o644)).unwrap();
    cert
}

/// A server certificate and key signed by the CA `ca` (made by `make_ca`), for IP `address`.
fn make_server_cert(dir: &Path, ca: &Path, name: &str, address: &str) -> (PathBuf, PathBuf) {
    let (key, csr, cert) =
        (dir.join(format!("{name}.key")), dir.join(format!("{name}.csr")), dir.join(format!("{name}.crt")));
    let ext = dir.join(format!("{name}.ext"));
    fs::write(&ext, format!("subjectAltName = IP:{address}\nextendedKeyUsage = serverAuth\n")).unwrap();
    run_ok(std::process::Command::new("openssl").args(["req", "-new", "-newkey", "ec"]).args([
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN=pgha test {name}"),
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]));
    run_ok(std::process::Command::new("openssl").args(["x509", "-req", "-days", "2"]).args([
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca.to_str().unwrap(),
        "-CAkey",
        ca.with_extension("key").to_str().unwrap(),
        "-CAcreateserial",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]));
    (cert, key)
}

/// Makes the primary serve `cert`/`key` (copied into its config directory, owned by postgres)
/// for new connections.
fn install_server_cert(cluster: &TestCluster, cert: &Path, key: &Path, tag: &str) {
    let postgres = uzers::get_user_by_name("postgres").unwrap();
    let target_cert = cluster.config_dir().join(format!("{tag}.crt"));
    let target_key = cluster.config_dir().join(format!("{tag}.key"));
    for (from, to, mode) in [(cert, &target_cert, 0o644), (key, &target_key, 0o600)] {
        fs::copy(from, to).unwrap();
        fs::set_permissions(to, fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(to, Some(postgres.uid()), Some(postgres.primary_group_id())).unwrap();
    }
    cluster.psql(&format!("ALTER SYSTEM SET ssl_cert_file = '{}'", target_cert.display()));
    cluster.psql(&format!("ALTER SYSTEM SET ssl_key_file = '{}'", target_key.display()));
    cluster.psql("SELECT pg_reload_conf()");
    // A certificate the server cannot load would leave the old one in use: fail here instead.
    cluster.wait_for(
        "SELECT current_setting('ssl_cert_file')",
        &target_cert.display().to_string(),
        Duration::from_secs(10),
    );
    assert!(!cluster.log().contains("could not load"), "the primary refused the certificate:\n{}", cluster.log());
}

/// What must stay as it was when a run fails: the standby's data directory, its server process,
/// its recovery state, and nothing left beside it.
struct Untouched {
    inode: u64,
    started: String,
}

impl Untouched {
    fn record(cluster: &TestCluster) -> Untouched {
        Untouched { inode: fs::metadata(cluster.data_dir()).unwrap().ino(), started: cluster.postmaster_start_time() }
    }

    fn check(&self, cluster: &TestCluster) {
        assert_eq!(fs::metadata(cluster.data_dir()).unwrap().ino(), self.inode, "the data directory was replaced");
        assert_eq!(cluster.postmaster_start_time(), self.started, "the standby was restarted");
        assert_eq!(cluster.psql("SELECT pg_is_in_recovery()"), "t");
        let beside: Vec<String> = fs::read_dir(cluster.data_dir().parent().unwrap())
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&format!("{}.pgha-", cluster.name)) && !name.contains(".pgha-old-"))
            .collect();
        assert!(beside.is_empty(), "left beside the data directory: {beside:?}");
    }
}

fn assert_streams_over_tls(setup: &TwoHosts, tls: bool) {
    setup.a.wait_for(
        &format!(
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
             WHERE r.client_addr = '{}' AND r.state = 'streaming'",
            setup.hosts.b_ip
        ),
        if tls { "t" } else { "f" },
        // pgha reports success once the standby runs in recovery; streaming may follow later.
        Duration::from_secs(60),
    );
    assert_eq!(setup.b.psql("SELECT pg_is_in_recovery()"), "t");
}

#[test]
fn verify_full_streams_with_the_right_ca_and_a_wrong_certificate_changes_nothing() {
    let Some(setup) = setup() else { return };
    let certs = tempfile::tempdir().unwrap();
    fs::set_permissions(certs.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let ca = make_ca(certs.path(), "ca");
    let other_ca = make_ca(certs.path(), "other-ca");
    let (cert, key) = make_server_cert(certs.path(), &ca, "primary", &setup.hosts.a_ip);
    let (wrong_cert, wrong_key) = make_server_cert(certs.path(), &ca, "elsewhere", "192.0.2.99");
    install_server_cert(&setup.a, &cert, &key, "pgha-test-server");

    let verified = config_b_with(&setup, &format!("sslmode = \"verify-full\"\nsslrootcert = \"{}\"\n", ca.display()));
    let out = standby(&setup, &verified, &[]);
    assert_eq!(out.code, 0, "pgha standby with verify-full failed:\n{}\n{}", out.stdout, out.stderr);
    assert_streams_over_tls(&setup, true);
    let conninfo = setup.b.psql("SHOW primary_conninfo");
    for expected in ["sslmode=verify-full", &format!("sslrootcert={}", ca.display()), "channel_binding=require"] {
        assert!(conninfo.contains(expected), "{expected:?} not in {conninfo}");
    }
    let untouched = Untouched::record(&setup.b);

    // A CA that did not sign the primary's certificate: refused before anything changes.
    let wrong_ca =
        config_b_with(&setup, &format!("sslmode = \"verify-full\"\nsslrootcert = \"{}\"\n", other_ca.display()));
    let out = standby(&setup, &wrong_ca, &["--force-reclone"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("certificate verify failed") && out.stderr.contains("replication.sslrootcert"),
        "{}",
        out.stderr
    );
    untouched.check(&setup.b);

    // The right CA, but the primary now shows a certificate made out to another address.
    install_server_cert(&setup.a, &wrong_cert, &wrong_key, "pgha-test-elsewhere");
    let out = standby(&setup, &verified, &["--force-reclone"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("does not match host name") && out.stderr.contains("subjectAltName"), "{}", out.stderr);
    untouched.check(&setup.b);
    // The wal receiver's connection predates the swap, so it still streams.
    assert_streams_over_tls(&setup, true);
    assert_eq!(setup.a.psql("SELECT count(*) FROM pg_replication_slots"), "1");
}

#[test]
fn auto_uses_tls_for_every_connection_and_refuses_a_primary_without_it() {
    let Some(setup) = setup() else { return };
    let a = &setup.a;
    a.psql("ALTER SYSTEM SET log_connections = on");
    a.psql("SELECT pg_reload_conf()");

    let out = standby(&setup, &setup.config_b, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_streams_over_tls(&setup, true);
    let conninfo = setup.b.psql("SHOW primary_conninfo");
    assert!(conninfo.contains("sslmode=require channel_binding=require"), "{conninfo}");
    // Preflight, the clone and the wal receiver: every login of the replication role used TLS.
    let log = a.log();
    let logins: Vec<&str> = log.lines().filter(|line| line.contains("authorized: user=replicator")).collect();
    assert!(logins.len() >= 3, "expected preflight, clone and wal receiver logins:\n{log}");
    for line in &logins {
        assert!(line.contains("SSL enabled"), "a login without TLS: {line}");
    }
    let untouched = Untouched::record(&setup.b);

    // A primary that answers without TLS, as a man in the middle would: auto refuses, names the key.
    a.psql("ALTER SYSTEM SET ssl = off");
    a.psql("SELECT pg_reload_conf()");
    a.wait_for("SHOW ssl", "off", Duration::from_secs(10));
    let out = setup.run_a(&["primary"]);
    assert_eq!(out.code, 0, "pgha primary with ssl off: {}", out.stderr);
    let out = standby(&setup, &setup.config_b, &["--force-reclone"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("refuses TLS") && out.stderr.contains("replication.sslmode = \"disable\""),
        "{}",
        out.stderr
    );
    untouched.check(&setup.b);

    // Said explicitly, unencrypted replication works.
    let plain = config_b_with(&setup, "sslmode = \"disable\"\n");
    let out = standby(&setup, &plain, &["--force-reclone"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_streams_over_tls(&setup, false);
    let conninfo = setup.b.psql("SHOW primary_conninfo");
    assert!(conninfo.contains("sslmode=disable") && !conninfo.contains("channel_binding"), "{conninfo}");
}
