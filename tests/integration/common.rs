//! Test hosts made of real parts: Debian clusters created and dropped by the test, network
//! namespaces with their own addresses, and the pgha binary run with a scrubbed environment.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this test process, for cluster names, ports and namespaces.
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A port no other test process is likely to pick: the pid spreads processes apart.
pub fn free_port() -> u16 {
    let base = 40000 + (std::process::id() % 200) * 100;
    (base + unique() % 100) as u16
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips (with a loud message) tests that need root or a PostgreSQL server, but only outside CI:
/// under CI=true a missing prerequisite is a failure, so CI cannot pass by skipping.
pub fn require_root_and_postgres() -> bool {
    let ok = is_root() && Path::new("/usr/lib/postgresql/15/bin/postgres").exists();
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI needs root and postgresql-15 for this test");
    }
    if !ok {
        eprintln!("SKIPPED: needs root and postgresql-15");
    }
    ok
}

pub fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    output
}

pub fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn sh(script: &str) -> String {
    run_ok(Command::new("sh").arg("-c").arg(script))
}

/// The pgha binary, with the environment scrubbed as in ripgrep's tests.
pub fn pgha(netns: Option<&str>) -> Command {
    let binary = env!("CARGO_BIN_EXE_pgha");
    let mut command = match netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns, binary]);
            command
        }
        None => Command::new(binary),
    };
    command.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("LANG", "C.UTF-8");
    command
}

pub struct PghaOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn pgha_output(command: &mut Command) -> PghaOutput {
    let output = run(command);
    PghaOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A network namespace: a host with its own interfaces and addresses.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// The name of this host's end of the veth pair, for cutting its link.
    pub fn veth(&self) -> String {
        let links = run_ok(Command::new("ip").args(["-n", &self.name, "-o", "link", "show", "type", "veth"]));
        links
            .split(": ")
            .nth(1)
            .and_then(|name| name.split('@').next())
            .unwrap_or_else(|| panic!("{} has no veth: {links}", self.name))
            .to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two hosts joined by a veth pair, each with its own /24 address (10.231.N.1 and 10.231.N.2).
pub struct HostPair {
    pub a: Netns,
    pub b: Netns,
    pub a_ip: String,
    pub b_ip: String,
}

pub fn host_pair() -> HostPair {
    let id = unique();
    let subnet = (std::process::id() % 50) * 5 + id % 5;
    let tag = format!("{}{}", std::process::id() % 100000, id);
    let (a, b) = (format!("pgha-a{tag}"), format!("pgha-b{tag}"));
    let (veth_a, veth_b) = (format!("pa{tag}"), format!("pb{tag}"));
    let a_ip = format!("10.231.{subnet}.1");
    let b_ip = format!("10.231.{subnet}.2");
    sh(&format!(
        "set -e; ip netns add {a}; ip netns add {b}
         ip link add {veth_a} type veth peer name {veth_b}
         ip link set {veth_a} netns {a}; ip link set {veth_b} netns {b}
         ip -n {a} addr add {a_ip}/24 dev {veth_a}; ip -n {b} addr add {b_ip}/24 dev {veth_b}
         ip -n {a} link set lo up; ip -n {a} link set {veth_a} up
         ip -n {b} link set lo up; ip -n {b} link set {veth_b} up"
    ));
    HostPair { a: Netns { name: a }, b: Netns { name: b }, a_ip, b_ip }
}

/// A libpq passfile (mode 0600) for the replicator role at `host:port`.
pub fn write_passfile(path: &Path, host: &str, port: u16, user: &str, password: &str) {
    let escape = |text: &str| text.replace('\\', "\\\\").replace(':', "\\:");
    fs::write(path, format!("{host}:{port}:*:{}:{}\n", escape(user), escape(password))).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// IDENTIFY_SYSTEM over a replication connection from `client` to `host:port`, authenticated
/// through a passfile (written into `scratch`) as a standby's would be, over TLS.
pub fn identify_system(
    client: &Netns,
    host: &str,
    port: u16,
    user: &str,
    scratch: &Path,
    password: &str,
) -> Result<String, String> {
    let passfile = scratch.join("client.pgpass");
    write_passfile(&passfile, host, port, user, password);
    let conninfo = format!(
        "host={host} port={port} user='{}' passfile={} replication=true sslmode=require connect_timeout=5",
        user.replace('\\', "\\\\").replace('\'', "\\'"),
        passfile.display()
    );
    let output = run(client
        .exec("psql")
        // -h/-p repeat the conninfo's values so that pg_wrapper does not scan every cluster on the
        // host for a default, which fails while a parallel test creates or drops one.
        .args(["-X", "-A", "-t", "-h", host, "-p", &port.to_string(), "-d", &conninfo, "-c", "IDENTIFY_SYSTEM"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin"));
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A Debian cluster created by the test with pg_createcluster, dropped (data and all) at the end.
pub struct TestCluster {
    pub version: String,
    pub name: String,
    pub port: u16,
    pub netns: Option<String>,
    pub socket_dir: PathBuf,
}

impl TestCluster {
    pub fn create(version: &str, netns: Option<&str>) -> TestCluster {
        let name = format!("pgha_t{}_{}", std::process::id(), unique());
        let port = free_port();
        // No initdb auth options: with any, pg_createcluster leaves pg_hba.conf to initdb, which
        // trusts every loopback TCP connection instead of Debian's peer/md5/scram-sha-256 lines.
        run_ok(Command::new("pg_createcluster").args([version, &name, "-p", &port.to_string()]));
        let socket_dir = PathBuf::from("/var/run/postgresql");
        TestCluster { version: version.into(), name, port, netns: netns.map(str::to_string), socket_dir }
    }

    /// A cluster on `port`, the port of a cluster on another test host: pgha expects every member
    /// on one port, as on real hosts. The Unix socket gets its own directory, since both hosts'
    /// sockets live in this machine's filesystem.
    pub fn create_on_port(version: &str, netns: Option<&str>, port: u16) -> TestCluster {
        let name = format!("pgha_t{}_{}", std::process::id(), unique());
        let socket_dir = PathBuf::from(format!("/var/run/postgresql/{name}"));
        fs::create_dir_all(&socket_dir).unwrap();
        run_ok(Command::new("chown").arg("postgres:postgres").arg(&socket_dir));
        run_ok(
            Command::new("pg_createcluster")
                .args([version, &name, "-p", &port.to_string()])
                .arg(format!("--socketdir={}", socket_dir.display())),
        );
        TestCluster { version: version.into(), name, port, netns: netns.map(str::to_string), socket_dir }
    }

    pub fn config_dir(&self) -> PathBuf {
        PathBuf::from(format!("/etc/postgresql/{}/{}", self.version, self.name))
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(format!("/var/lib/postgresql/{}/{}", self.version, self.name))
    }

    pub fn log_file(&self) -> PathBuf {
        PathBuf::from(format!("/var/log/postgresql/postgresql-{}-{}.log", self.version, self.name))
    }

    fn ctl(&self, action: &str) -> Command {
        let mut command = match &self.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, "pg_ctlcluster"]);
                command
            }
            None => Command::new("pg_ctlcluster"),
        };
        command.args([&self.version, &self.name, action]);
        command
    }

    pub fn start(&self) {
        run_ok(&mut self.ctl("start"));
    }

    pub fn stop(&self) {
        run_ok(self.ctl("stop").args(["--", "-m", "fast"]));
    }

    pub fn is_running(&self) -> bool {
        Command::new("pg_ctlcluster")
            .args([&self.version, &self.name, "status"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// SQL as postgres over the Unix socket; returns unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        run_ok(&mut self.psql_command(sql)).trim().to_string()
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let output = run(&mut self.psql_command(sql));
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    fn psql_command(&self, sql: &str) -> Command {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"]);
        command.arg(&self.socket_dir).arg("-p");
        command.arg(self.port.to_string()).args(["-d", "postgres", "-c", sql]);
        command
    }

    pub fn wait_for(&self, sql: &str, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.try_psql(sql);
            if got.as_deref() == Ok(expected) {
                return;
            }
            assert!(Instant::now() < deadline, "{sql} on {} gave {got:?}, expected {expected:?}", self.name);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn postmaster_start_time(&self) -> String {
        self.psql("SELECT pg_postmaster_start_time()")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_file()).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = Command::new("pg_ctlcluster").args([&self.version, &self.name, "stop", "-m", "immediate"]).output();
        let _ = Command::new("pg_dropcluster").args([&self.version, &self.name]).output();
        if self.socket_dir.ends_with(&self.name) {
            let _ = fs::remove_dir_all(&self.socket_dir);
        }
        // Directories pgha keeps beside the data directory (old copies, staging) belong to this test too.
        let parent = PathBuf::from(format!("/var/lib/postgresql/{}", self.version));
        if let Ok(entries) = fs::read_dir(&parent) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{}.", self.name)) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        // pg_dropcluster keeps a config directory holding files it did not create (conf.d/pgha.conf).
        let _ = fs::remove_dir_all(self.config_dir());
        let _ = fs::remove_file(self.log_file());
    }
}

/// A config directory for one test: pgha.conf plus a 0600 password file.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub password_file: PathBuf,
}

impl TestConfig {
    pub fn new(body: &str, password: &str) -> TestConfig {
        let dir = tempfile::Builder::new().prefix("pgha-test-").tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let password_file = dir.path().join("replication.password");
        fs::write(&password_file, format!("{password}\n")).unwrap();
        fs::set_permissions(&password_file, fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("pgha.conf");
        let body = body.replace("@PASSWORD_FILE@", &password_file.display().to_string());
        fs::write(&path, body).unwrap();
        TestConfig { dir, path, password_file }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// A pgha.conf for one cluster, with the password file and archive inside the test's directory.
pub fn config_text(cluster: &TestCluster, primary: &str, port: u16, standbys: &[&str], archive_dir: &Path) -> String {
    let list: Vec<String> = standbys.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[cluster]\nversion = {}\nname = \"{}\"\n\n[primary]\naddress = \"{primary}\"\nport = {port}\n\n[standby]\naddresses = [{}]\nstreaming_timeout = \"60s\"\n\n[replication]\nuser = \"replicator\"\npassword_file = \"@PASSWORD_FILE@\"\n\n[archive]\ndirectory = \"{}\"\nkeep = \"1d\"\n",
        cluster.version,
        cluster.name,
        list.join(", "),
        archive_dir.display()
    )
}

/// Two hosts with their own clusters, the start of every cross-host test: A made the primary by
/// `pgha primary`, B's cluster created but not started, each host with its own config file.
pub struct TwoHosts {
    pub hosts: HostPair,
    pub a: TestCluster,
    pub b: TestCluster,
    pub config_a: TestConfig,
    pub config_b: TestConfig,
    archive: tempfile::TempDir,
}

impl TwoHosts {
    /// The archive directory of A ("a") or B ("b").
    pub fn archive_dir(&self, host: &str) -> PathBuf {
        self.archive.path().join(format!("archive-{host}"))
    }

    pub fn new(primary_version: &str, password: &str) -> Option<TwoHosts> {
        if !require_root_and_postgres() {
            return None;
        }
        let hosts = host_pair();
        let a = TestCluster::create(primary_version, Some(&hosts.a.name));
        let b = TestCluster::create_on_port("15", Some(&hosts.b.name), a.port);
        a.start();
        let archive = tempfile::tempdir().unwrap();
        fs::set_permissions(archive.path(), fs::Permissions::from_mode(0o755)).unwrap();
        // Each host archives to its own directory, as on real hosts with their own disks.
        let config_for = |cluster: &TestCluster, archive_name: &str| {
            let archive_dir = archive.path().join(archive_name);
            let text = config_text(cluster, &hosts.a_ip, a.port, &[&hosts.b_ip], &archive_dir)
                // Each test gets its own passfile: the default one is shared by every cluster on this machine.
                .replace("[replication]\n", "[replication]\npassfile = \"@PASSWORD_FILE@.pgpass\"\n");
            TestConfig::new(&text, password)
        };
        let (config_a, config_b) = (config_for(&a, "archive-a"), config_for(&b, "archive-b"));
        let two = TwoHosts { hosts, a, b, config_a, config_b, archive };
        let out = two.run_a(&["primary"]);
        assert_eq!(out.code, 0, "pgha primary failed: {}", out.stderr);
        Some(two)
    }

    pub fn run_a(&self, args: &[&str]) -> PghaOutput {
        pgha_output(pgha(Some(&self.hosts.a.name)).args(["--config", self.config_a.path_str()]).args(args))
    }

    /// B's config, with its own password file holding `password` instead.
    pub fn config_b_with_password(&self, password: &str) -> TestConfig {
        let text = fs::read_to_string(&self.config_b.path)
            .unwrap()
            .replace(&self.config_b.password_file.display().to_string(), "@PASSWORD_FILE@");
        TestConfig::new(&text, password)
    }

    pub fn run_b(&self, args: &[&str]) -> PghaOutput {
        pgha_output(pgha(Some(&self.hosts.b.name)).args(["--config", self.config_b.path_str()]).args(args))
    }
}

/// Three hosts on one link: a bridge inside A's namespace joins A (10.234.N.1) to B (.2) and C (.3).
pub struct HostTrio {
    pub a: Netns,
    pub b: Netns,
    pub c: Netns,
    pub a_ip: String,
    pub b_ip: String,
    pub c_ip: String,
}

pub fn host_trio() -> HostTrio {
    let id = unique();
    let subnet = (std::process::id() % 50) * 5 + id % 5;
    let tag = format!("{}{}", std::process::id() % 100000, id);
    let (a, b, c) = (format!("pgha-ta{tag}"), format!("pgha-tb{tag}"), format!("pgha-tc{tag}"));
    let ip = |host: u8| format!("10.234.{subnet}.{host}");
    sh(&format!(
        "set -e; ip netns add {a}; ip netns add {b}; ip netns add {c}
         ip -n {a} link add br{tag} type bridge; ip -n {a} link set br{tag} up; ip -n {a} link set lo up
         ip -n {a} addr add {ip_a}/24 dev br{tag}
         for h in b c; do
           [ $h = b ] && ns={b} addr={ip_b} || {{ ns={c}; addr={ip_c}; }}
           ip link add s${{h}}{tag} type veth peer name h${{h}}{tag}
           ip link set s${{h}}{tag} netns {a}; ip link set h${{h}}{tag} netns $ns
           ip -n {a} link set s${{h}}{tag} master br{tag}; ip -n {a} link set s${{h}}{tag} up
           ip -n $ns addr add $addr/24 dev h${{h}}{tag}; ip -n $ns link set h${{h}}{tag} up; ip -n $ns link set lo up
         done",
        ip_a = ip(1),
        ip_b = ip(2),
        ip_c = ip(3),
    ));
    HostTrio { a: Netns { name: a }, b: Netns { name: b }, c: Netns { name: c }, a_ip: ip(1), b_ip: ip(2), c_ip: ip(3) }
}

/// Three hosts with their own clusters on one port: A made the primary by `pgha primary`, B and
/// C standbys made by `pgha standby`, each host with its own config file listing all three.
pub struct ThreeHosts {
    pub hosts: HostTrio,
    pub a: TestCluster,
    pub b: TestCluster,
    pub c: TestCluster,
    pub configs: [TestConfig; 3],
    _archive: tempfile::TempDir,
}

impl ThreeHosts {
    pub fn new(password: &str) -> Option<ThreeHosts> {
        if !require_root_and_postgres() {
            return None;
        }
        let hosts = host_trio();
        let port = free_port();
        let a = TestCluster::create_on_port("15", Some(&hosts.a.name), port);
        let b = TestCluster::create_on_port("15", Some(&hosts.b.name), port);
        let c = TestCluster::create_on_port("15", Some(&hosts.c.name), port);
        a.start();
        let archive = tempfile::tempdir().unwrap();
        fs::set_permissions(archive.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let archive_dir = archive.path().join("archive");
        let config_for = |cluster: &TestCluster| {
            let text = config_text(cluster, &hosts.a_ip, port, &[&hosts.b_ip, &hosts.c_ip], &archive_dir)
                .replace("[replication]\n", "[replication]\npassfile = \"@PASSWORD_FILE@.pgpass\"\n");
            TestConfig::new(&text, password)
        };
        let configs = [config_for(&a), config_for(&b), config_for(&c)];
        let three = ThreeHosts { hosts, a, b, c, configs, _archive: archive };
        let out = three.run(0, &["primary"]);
        assert_eq!(out.code, 0, "pgha primary failed: {}", out.stderr);
        for host in [1, 2] {
            let out = three.run(host, &["standby"]);
            assert_eq!(out.code, 0, "pgha standby failed: {}\n{}", out.stdout, out.stderr);
        }
        Some(three)
    }

    /// pgha on host 0 (A), 1 (B) or 2 (C).
    pub fn run(&self, host: usize, args: &[&str]) -> PghaOutput {
        let netns = [&self.hosts.a, &self.hosts.b, &self.hosts.c][host];
        pgha_output(pgha(Some(&netns.name)).args(["--config", self.configs[host].path_str()]).args(args))
    }

    pub fn cluster(&self, host: usize) -> &TestCluster {
        [&self.a, &self.b, &self.c][host]
    }
}
