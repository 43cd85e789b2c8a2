//! `pgha status` as a monitoring agent runs it: Debian's NRPE daemon, as user nagios, calls it
//! through the sudo rule and the NRPE command the package ships in docs/examples/, with only the
//! binary's path and the test's config put in. The agent gets OK, then CRITICAL with the reason;
//! without sudo it gets UNKNOWN saying why; any other command line is refused by sudo.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::day2::status_json;

const PASSWORD: &str = "nrpe-s3cret";
const WAIT: Duration = Duration::from_secs(60);
const SUDOERS_EXAMPLE: &str = "docs/examples/sudoers.d-pgha-monitoring";
const NRPE_EXAMPLE: &str = "docs/examples/nrpe.d-pgha.cfg";
const NRPE: &str = "/usr/sbin/nrpe";
const CHECK_NRPE: &str = "/usr/lib/nagios/plugins/check_nrpe";
const PACKAGED_BINARY: &str = "/usr/sbin/pgha";
const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

fn repo_text(path: &str) -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The lines of a sudoers or nrpe.cfg file that do something: neither blank nor comments.
fn rule_lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).collect()
}

/// Skips without nrpe, check_nrpe, sudo or visudo outside CI, fails under CI like the other
/// prerequisites.
fn require_monitoring_tools() -> bool {
    let missing: Vec<&str> = [NRPE, CHECK_NRPE, "/usr/bin/sudo", "/usr/sbin/visudo"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() && std::env::var_os("CI").is_some() {
        panic!("CI needs nagios-nrpe-server, nagios-nrpe-plugin and sudo for this test: missing {missing:?}");
    }
    if !missing.is_empty() {
        eprintln!("SKIPPED: missing {missing:?}");
    }
    missing.is_empty()
}

fn visudo_check(path: &Path) -> PghaOutput {
    pgha_output(Command::new("visudo").arg("-cf").arg(path).env_clear().env("PATH", SAFE_PATH))
}

/// A file in /etc/sudoers.d for this test only, removed at the end whatever happens.
struct SudoersDropIn {
    path: PathBuf,
    staged: PathBuf,
}

impl SudoersDropIn {
    fn install(text: &str) -> SudoersDropIn {
        let name = format!("pgha-test-monitoring-{}-{}", std::process::id(), unique());
        let directory = Path::new("/etc/sudoers.d");
        // sudo skips names with a dot: the file is checked there before it takes effect, since one
        // broken file in sudoers.d stops sudo for every user of this machine.
        let drop_in = SudoersDropIn { path: directory.join(&name), staged: directory.join(format!(".{name}.new")) };
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o440).open(&drop_in.staged).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.sync_all().unwrap();
        let check = visudo_check(&drop_in.staged);
        assert_eq!(check.code, 0, "visudo refuses the test's rule:\n{text}\n{}{}", check.stdout, check.stderr);
        fs::rename(&drop_in.staged, &drop_in.path).unwrap();
        drop_in
    }
}

impl Drop for SudoersDropIn {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.staged);
        let _ = fs::remove_file(&self.path);
    }
}

/// Debian's NRPE daemon in the foreground, listening on one address inside a test namespace,
/// dropping to nagios as a packaged one does. Stopped at the end whatever happens.
struct Nrpe {
    child: Child,
    netns: String,
    address: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nrpe {
    fn start(host: &Netns, address: &str, command: &str) -> Nrpe {
        let dir = tempfile::Builder::new().prefix("pgha-nrpe-").tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "log_file={log}\npid_file={pid}\nserver_address={address}\nserver_port={port}\nallowed_hosts={address}\n\
             nrpe_user=nagios\nnrpe_group=nagios\ndont_blame_nrpe=0\nallow_bash_command_substitution=0\n\
             command_timeout=60\nconnection_timeout=60\ndebug=1\n{command}\n",
            log = dir.path().join("nrpe.log").display(),
            pid = dir.path().join("nrpe.pid").display(),
        );
        let config_path = dir.path().join("nrpe.cfg");
        fs::write(&config_path, config).unwrap();
        let child = host
            .exec(NRPE)
            .arg("-c")
            .arg(&config_path)
            .arg("-f")
            .env_clear()
            .env("PATH", SAFE_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut nrpe = Nrpe { child, netns: host.name.clone(), address: address.into(), port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Without -c, check_nrpe asks only for the daemon's version: it answers once it listens.
            let hello = nrpe.check_nrpe(&[]);
            if hello.code == 0 && hello.stdout.starts_with("NRPE v") {
                return nrpe;
            }
            let exited = nrpe.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "nrpe did not answer (exit {exited:?}): {}{}\nlog:\n{}",
                hello.stdout,
                hello.stderr,
                nrpe.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn check_nrpe(&self, extra: &[&str]) -> PghaOutput {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns, CHECK_NRPE, "-H", &self.address, "-t", "90", "-p"]);
        command.arg(self.port.to_string()).args(extra).env_clear().env("PATH", SAFE_PATH);
        pgha_output(&mut command)
    }

    /// What the monitoring server would get for `command`.
    fn check(&self, command: &str) -> PghaOutput {
        self.check_nrpe(&["-c", command])
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("nrpe.log")).unwrap_or_default()
    }
}

impl Drop for Nrpe {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command line run as nagios on `host`, with no environment from the test.
fn as_nagios(host: &Netns, argv: &[&str]) -> PghaOutput {
    pgha_output(host.exec("runuser").args(["-u", "nagios", "--"]).args(argv).env_clear().env("PATH", SAFE_PATH))
}

fn first_line(out: &PghaOutput) -> &str {
    out.stdout.lines().next().unwrap_or("")
}

#[test]
fn nrpe_runs_status_as_nagios_through_the_shipped_sudo_rule() {
    if !require_monitoring_tools() {
        return;
    }
    let Some(p) = TwoHosts::new("15", PASSWORD) else { return };
    let out = p.run_b(&["standby"]);
    assert_eq!(out.code, 0, "pgha standby failed: {}\n{}", out.stdout, out.stderr);
    p.a.wait_for("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", "1", WAIT);

    // The shipped rule and command, where the packaged binary becomes this build with the test's
    // config: nothing else of either is changed.
    let pgha = env!("CARGO_BIN_EXE_pgha");
    let config = p.config_a.path_str();
    let invocation = format!("{pgha} --config {config}");
    assert!(
        invocation.chars().all(|c| c.is_ascii_alphanumeric() || "/-_. ".contains(c)),
        "{invocation} would need quoting in sudoers and nrpe.cfg"
    );
    let local = |line: &str| line.replace(PACKAGED_BINARY, &invocation);
    let sudoers_example = repo_text(SUDOERS_EXAMPLE);
    let rules: Vec<String> = rule_lines(&sudoers_example).into_iter().map(local).collect();
    let _rule = SudoersDropIn::install(&format!("{}\n", rules.join("\n")));
    let nrpe_example = repo_text(NRPE_EXAMPLE);
    let nrpe_commands = rule_lines(&nrpe_example);
    assert_eq!(nrpe_commands.len(), 1, "{nrpe_example}");
    let nrpe = Nrpe::start(&p.hosts.a, &p.hosts.a_ip, &local(nrpe_commands[0]));

    let ok = nrpe.check("check_pgha");
    let first = first_line(&ok);
    assert_eq!(ok.code, 0, "{}{}\nnrpe log:\n{}", ok.stdout, ok.stderr, nrpe.log());
    assert!(first.starts_with("PGHA OK - primary ") && first.contains(" | "), "{first}");
    assert!(first.contains(&format!(" lag_bytes_{}=", p.hosts.b_ip)), "perfdata names the standby: {first}");

    // The rule's other line: JSON for agents that parse it.
    let json = as_nagios(&p.hosts.a, &["sudo", "-n", pgha, "--config", config, "status", "--json"]);
    assert_eq!(json.code, 0, "{}{}", json.stdout, json.stderr);
    assert_eq!(status_json(&json)["role"], "primary");

    // As nagios, not root: UNKNOWN, naming the file it cannot read and the way out, rather than
    // a CRITICAL about the database.
    let direct = as_nagios(&p.hosts.a, &[pgha, "--config", config, "status"]);
    let first = first_line(&direct);
    assert_eq!(direct.code, 3, "{}{}", direct.stdout, direct.stderr);
    assert!(first.starts_with("PGHA UNKNOWN - ") && first.contains("root"), "{first}");
    let password_file = p.config_a.password_file.display().to_string();
    assert!(first.contains(&password_file) && first.contains("sudo"), "{first}");

    // Any other command line is sudo's to refuse, before pgha runs: another config (root would
    // quote a line of it in the parse error), an argument added after the allowed ones, thresholds
    // the rule does not list.
    let shadow = fs::read_to_string("/etc/shadow").unwrap();
    for refused in [
        vec![pgha, "--config", "/etc/shadow", "status"],
        vec![pgha, "--config", config, "status", "--config", "/etc/shadow"],
        vec![pgha, "--config", config, "status", "--warn-lag", "1B"],
    ] {
        let argv: Vec<&str> = ["sudo", "-n"].into_iter().chain(refused.iter().copied()).collect();
        let out = as_nagios(&p.hosts.a, &argv);
        assert_ne!(out.code, 0, "sudo allowed {refused:?}: {}", out.stdout);
        assert!(out.stdout.is_empty(), "pgha ran for {refused:?}: {}", out.stdout);
        assert!(out.stderr.contains("a password is required"), "{refused:?}: {}", out.stderr);
        let leaked = shadow.lines().filter(|line| !line.is_empty()).find(|line| out.stderr.contains(line));
        assert!(leaked.is_none(), "a line of /etc/shadow leaked: {}", out.stderr);
    }

    // The standby goes away: NRPE relays CRITICAL with the reason on the first line.
    p.b.stop();
    let critical = nrpe.check("check_pgha");
    let first = first_line(&critical);
    assert_eq!(critical.code, 2, "{}{}\nnrpe log:\n{}", critical.stdout, critical.stderr, nrpe.log());
    assert!(first.starts_with(&format!("PGHA CRITICAL - standby {} is not connected", p.hosts.b_ip)), "{first}");
    assert!(first.contains(" | "), "perfdata stays on the first line: {first}");
    for text in [&ok.stdout, &critical.stdout, &direct.stdout, &json.stdout, &nrpe.log()] {
        assert!(!text.contains(PASSWORD), "the password leaked");
    }
}

/// What the package ships is a valid rule of exact command lines, and the README shows the same.
#[test]
fn the_shipped_sudo_rule_allows_exact_status_command_lines_only() {
    if !Path::new("/usr/sbin/visudo").exists() {
        assert!(std::env::var_os("CI").is_none(), "CI needs sudo for this test");
        eprintln!("SKIPPED: needs visudo");
        return;
    }
    let check = visudo_check(&Path::new(env!("CARGO_MANIFEST_DIR")).join(SUDOERS_EXAMPLE));
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    let example = repo_text(SUDOERS_EXAMPLE);
    let rules = rule_lines(&example);
    let expected = [
        "nagios ALL=(root) NOPASSWD: /usr/sbin/pgha status",
        "nagios ALL=(root) NOPASSWD: /usr/sbin/pgha status --json",
    ];
    assert_eq!(rules, expected, "one exact command line per rule, no wildcard, no alias");
    let readme = repo_text("README.md");
    let nrpe_example = repo_text(NRPE_EXAMPLE);
    for line in rules.iter().chain(rule_lines(&nrpe_example).iter()) {
        assert!(readme.contains(line), "README.md does not show {line:?}");
    }
}
