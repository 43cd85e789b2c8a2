//! The trust boundary, tried as an attacker and an impatient admin would: symlinks and FIFOs the
//! postgres account plants where pgha works as root, two runs at once, a signal in the middle of
//! a clone, and a primary that vanishes while it is being cloned.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::common::*;

const PASSWORD: &str = "Tr-s3cret";

fn setup() -> Option<TwoHosts> {
    let setup = TwoHosts::new("15", PASSWORD)?;
    setup.b.start();
    setup.b.psql("CREATE TABLE marker (note text); INSERT INTO marker VALUES ('b was here')");
    Some(setup)
}

/// A root-owned directory outside every tree pgha works in, with one file: what an attacker
/// would point a symlink at (/etc, /root/.ssh).
struct Canary {
    dir: tempfile::TempDir,
}

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::Builder::new().prefix("pgha-canary-").tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.path().join("precious"), "root's own\n").unwrap();
        fs::set_permissions(dir.path().join("precious"), fs::Permissions::from_mode(0o644)).unwrap();
        Canary { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("precious")
    }

    /// The canary is exactly as made: owner, mode, entries and content.
    fn assert_untouched(&self) {
        let dir = fs::symlink_metadata(self.path()).unwrap();
        assert_eq!((dir.uid(), dir.gid(), dir.mode() & 0o7777), (0, 0, 0o755), "the canary directory changed");
        let entries: Vec<String> = fs::read_dir(self.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, ["precious"], "something was created in the canary directory");
        let file = fs::symlink_metadata(self.file()).unwrap();
        assert_eq!((file.uid(), file.gid(), file.mode() & 0o7777), (0, 0, 0o644), "the canary file changed");
        assert_eq!(fs::read_to_string(self.file()).unwrap(), "root's own\n");
    }
}

/// Runs a shell command as the postgres account: the attacker.
fn as_postgres(script: &str) {
    run_ok(Command::new("runuser").args(["-u", "postgres", "--", "sh", "-c", script]));
}

fn chown_postgres(path: &Path) {
    run_ok(Command::new("chown").args(["postgres:postgres"]).arg(path));
}

/// A pgha run that must end within `bound`; killed and reported otherwise.
fn bounded(mut command: Command, bound: Duration) -> (PghaOutput, Duration) {
    let started = Instant::now();
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(child.wait_with_output());
    });
    match receive.recv_timeout(bound) {
        Ok(output) => {
            let output = output.unwrap();
            let out = PghaOutput {
                code: output.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            };
            (out, started.elapsed())
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("pgha did not end within {}s", bound.as_secs());
        }
    }
}

fn pgha_b(setup: &TwoHosts, config: &TestConfig, args: &[&str]) -> Command {
    let mut command = pgha(Some(&setup.hosts.b.name));
    command.args(["--config", config.path_str()]).args(args);
    command
}

fn pgha_a(setup: &TwoHosts, args: &[&str]) -> Command {
    let mut command = pgha(Some(&setup.hosts.a.name));
    command.args(["--config", setup.config_a.path_str()]).args(args);
    command
}

fn staging_dir(cluster: &TestCluster) -> PathBuf {
    PathBuf::from(format!("{}.pgha-staging", cluster.data_dir().display()))
}

fn assert_b_untouched(setup: &TwoHosts) {
    let b = &setup.b;
    assert!(b.is_running(), "B's cluster must run as before");
    assert_eq!(b.psql("SELECT note FROM marker"), "b was here");
    assert_eq!(b.psql("SELECT pg_is_in_recovery()"), "f");
    assert!(!staging_dir(b).exists(), "staging directory left behind");
}

/// Makes A's link slow (about 4 MB/s), so a clone of a fresh cluster lasts several seconds.
fn throttle(setup: &TwoHosts) {
    let dev = setup.hosts.a.veth();
    run_ok(
        setup
            .hosts
            .a
            .exec("tc")
            .args(["qdisc", "add", "dev", &dev, "root", "tbf", "rate", "32mbit"])
            .args(["burst", "64kbit", "latency", "400ms"]),
    );
}

/// Starts `pgha standby` on B and returns once it logged that pg_basebackup is copying.
fn start_clone(setup: &TwoHosts) -> (Child, mpsc::Receiver<String>) {
    let mut child =
        pgha_b(setup, &setup.config_b, &["standby"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = receive.recv_timeout(Duration::from_millis(200)) {
            let copying = line.contains("cloning") && line.contains('%');
            seen.push(line);
            if copying {
                return (child, receive);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the clone never started copying:\n{}", seen.join("\n"));
}

fn wait_bounded(mut child: Child, lines: mpsc::Receiver<String>, bound: Duration) -> (i32, String) {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(200));
            let stderr: Vec<String> = lines.try_iter().collect();
            return (status.code().unwrap_or(-1), stderr.join("\n"));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("pgha did not end within {}s", bound.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_symlink_at_the_archive_directory_never_hands_its_target_to_postgres() {
    let Some(setup) = setup() else { return };
    let canary = Canary::new();
    let text = fs::read_to_string(&setup.config_a.path).unwrap();
    let archive = text.lines().find_map(|line| line.strip_prefix("directory = ")).unwrap().trim_matches('"');
    let archive = PathBuf::from(archive);
    // The archive sits in a directory postgres can write, as /var/lib/postgresql would be.
    chown_postgres(archive.parent().unwrap());
    fs::remove_dir_all(&archive).unwrap();
    as_postgres(&format!("ln -s {} {}", canary.path().display(), archive.display()));

    let (out, took) = bounded(pgha_a(&setup, &["primary"]), Duration::from_secs(60));
    assert_ne!(out.code, 0, "pgha primary went on through the planted symlink:\n{}", out.stderr);
    assert!(out.stderr.contains("symbolic link"), "the error names the problem: {}", out.stderr);
    assert!(took < Duration::from_secs(30), "pgha took {took:?} to refuse");
    canary.assert_untouched();
    assert!(setup.a.is_running());
}

#[test]
fn a_conf_d_replaced_by_a_symlink_gets_no_file() {
    let Some(setup) = setup() else { return };
    let canary = Canary::new();
    let conf_d = setup.a.config_dir().join("conf.d");
    // The attacker swaps conf.d for a link to a root directory and removes pgha's file, so pgha
    // has a file to write.
    as_postgres(&format!(
        "rm -f {0}/pgha.conf && mv {0} {0}.real && ln -s {1} {0}",
        conf_d.display(),
        canary.path().display()
    ));

    let (out, _) = bounded(pgha_a(&setup, &["primary"]), Duration::from_secs(60));
    assert_ne!(out.code, 0, "pgha primary wrote through the planted conf.d:\n{}", out.stderr);
    assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);
    canary.assert_untouched();
    assert!(setup.a.is_running(), "the primary keeps running on its old configuration");
}

#[test]
fn a_fifo_at_the_passfile_does_not_hang_the_standby() {
    let Some(setup) = setup() else { return };
    let passfile = PathBuf::from(format!("{}.pgpass", setup.config_b.password_file.display()));
    run_ok(Command::new("mkfifo").arg(&passfile));
    chown_postgres(&passfile);

    let (out, took) = bounded(pgha_b(&setup, &setup.config_b, &["standby"]), Duration::from_secs(60));
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(took < Duration::from_secs(30), "pgha took {took:?} to refuse the FIFO");
    assert!(out.stderr.contains("FIFO"), "the error says what it found: {}", out.stderr);
    assert_b_untouched(&setup);
}

#[test]
fn two_runs_at_once_the_second_names_the_first_and_changes_nothing() {
    let Some(setup) = setup() else { return };
    throttle(&setup);
    let (first, lines) = start_clone(&setup);
    let pid = first.id();

    let (second, _) =
        bounded(pgha_b(&setup, &setup.config_b, &["standby", "--force-reclone"]), Duration::from_secs(60));
    assert_eq!(second.code, 1, "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!("another pgha (pid {pid}, `pgha standby`)")),
        "the refusal names the holder: {}",
        second.stderr
    );
    assert!(staging_dir(&setup.b).exists(), "the second run must not touch the first run's staging");

    let (code, stderr) = wait_bounded(first, lines, Duration::from_secs(300));
    assert_eq!(code, 0, "the first run must finish undisturbed:\n{stderr}");
    assert_eq!(setup.b.psql("SELECT pg_is_in_recovery()"), "t");
}

#[test]
fn sigterm_in_the_middle_of_a_clone_puts_the_host_back() {
    let Some(setup) = setup() else { return };
    throttle(&setup);
    let (child, lines) = start_clone(&setup);
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));

    let (code, stderr) = wait_bounded(child, lines, Duration::from_secs(120));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    assert_b_untouched(&setup);
    setup.a.wait_for("SELECT count(*) FROM pg_replication_slots", "0", Duration::from_secs(30));
    let leftover = Command::new("pgrep").args(["-f", &staging_dir(&setup.b).display().to_string()]).output().unwrap();
    assert!(leftover.stdout.is_empty(), "a pg_basebackup still writes into staging");
}

#[test]
fn a_primary_that_vanishes_mid_clone_ends_in_the_undo() {
    let Some(setup) = setup() else { return };
    throttle(&setup);
    let (child, lines) = start_clone(&setup);
    std::thread::sleep(Duration::from_secs(2));
    run_ok(setup.hosts.a.exec("ip").args(["link", "set", &setup.hosts.a.veth(), "down"]));
    let cut = Instant::now();

    let (code, stderr) = wait_bounded(child, lines, Duration::from_secs(120));
    let took = cut.elapsed();
    assert_eq!(code, 1, "{stderr}");
    assert!(took < Duration::from_secs(90), "pgha needed {took:?} to notice the primary was gone");
    assert_b_untouched(&setup);
}

/// For a minute the postgres account swaps conf.d for a symlink to a root directory and back,
/// as fast as it can, and B's passfile for a symlink to a root file, while `pgha primary` rewrites
/// A's configuration and `pgha standby` refreshes B's passfile over and over. Every run either
/// works or fails cleanly; root's files never change.
#[test]
fn racing_the_paths_pgha_uses_never_reaches_root_files() {
    let Some(setup) = setup() else { return };
    let canary = Canary::new();
    let (a, b) = (&setup.a, &setup.b);
    // B's passfile in a directory postgres owns, as /var/lib/postgresql is.
    let home = tempfile::Builder::new().prefix("pgha-home-").tempdir().unwrap();
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o755)).unwrap();
    chown_postgres(home.path());
    let passfile = home.path().join("pgpass");
    let text = fs::read_to_string(&setup.config_b.path)
        .unwrap()
        .replace(&format!("{}.pgpass", setup.config_b.password_file.display()), &passfile.display().to_string())
        .replace(&setup.config_b.password_file.display().to_string(), "@PASSWORD_FILE@");
    let config_b = TestConfig::new(&text, PASSWORD);
    let clone = bounded(pgha_b(&setup, &config_b, &["standby"]), Duration::from_secs(300)).0;
    assert_eq!(clone.code, 0, "{}", clone.stderr);

    let stop = Arc::new(AtomicBool::new(false));
    let conf_d = a.config_dir().join("conf.d");
    let attacker = {
        let script = format!(
            "while [ ! -e {stop} ]; do \
               mv {c} {c}.real 2>/dev/null; ln -s {canary} {c} 2>/dev/null; \
               mv {p} {p}.real 2>/dev/null; ln -s {file} {p} 2>/dev/null; \
               rm -f {c} {p}; mv {c}.real {c} 2>/dev/null; mv {p}.real {p} 2>/dev/null; \
             done",
            stop = home.path().join("stop").display(),
            c = conf_d.display(),
            p = passfile.display(),
            canary = canary.path().display(),
            file = canary.file().display(),
        );
        Command::new("runuser").args(["-u", "postgres", "--", "sh", "-c", &script]).spawn().unwrap()
    };

    let started = Instant::now();
    let (mut runs, mut worked) = (0, 0);
    let mut keep = "1GB";
    while started.elapsed() < Duration::from_secs(60) {
        // A different wal_keep_size each time, so pgha primary has a file to write (a reload, no restart).
        keep = if keep == "1GB" { "2GB" } else { "1GB" };
        let config = fs::read_to_string(&setup.config_a.path).unwrap();
        let config = match config.find("wal_keep_size") {
            Some(_) => config
                .lines()
                .map(|line| {
                    if line.starts_with("wal_keep_size") {
                        format!("wal_keep_size = \"{keep}\"")
                    } else {
                        line.into()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
            None => config.replacen("[primary]\n", &format!("[primary]\nwal_keep_size = \"{keep}\"\n"), 1),
        };
        fs::write(&setup.config_a.path, config).unwrap();
        for (out, _) in [
            bounded(pgha_a(&setup, &["primary"]), Duration::from_secs(60)),
            bounded(pgha_b(&setup, &config_b, &["standby"]), Duration::from_secs(60)),
        ] {
            runs += 1;
            assert!(matches!(out.code, 0..=2), "a run ended with {} (a panic or a signal):\n{}", out.code, out.stderr);
            if out.code == 0 {
                worked += 1;
            }
        }
        canary.assert_untouched();
    }
    stop.store(true, Ordering::SeqCst);
    fs::write(home.path().join("stop"), "").unwrap();
    let mut attacker = attacker;
    let _ = attacker.wait();
    // Put the paths back the way they were, whatever state the loop ended in.
    for path in [&conf_d, &passfile] {
        let real = PathBuf::from(format!("{}.real", path.display()));
        if fs::symlink_metadata(path).map(|m| m.file_type().is_symlink()).unwrap_or(false) {
            fs::remove_file(path).unwrap();
        }
        if real.exists() && !path.exists() {
            fs::rename(&real, path).unwrap();
        }
    }
    canary.assert_untouched();
    // The attacker, as postgres, may have left A stopped: a reload while conf.d pointed at the
    // canary dropped listen_addresses, so pgha restarted A, and the restart met a missing conf.d.
    // The postgres account can always stop its own server; what matters is that root's files are
    // intact and that pgha works again once the paths are back.
    for cluster in [a, b] {
        if !cluster.is_running() {
            cluster.start();
        }
    }
    assert!(runs >= 10, "only {runs} runs in a minute");
    assert!(worked > 0, "no run succeeded while racing: the test raced nothing");
    let last = bounded(pgha_a(&setup, &["primary"]), Duration::from_secs(60)).0;
    assert_eq!(last.code, 0, "after the race pgha primary works again: {}", last.stderr);
    assert!(a.is_running() && b.is_running());
}
