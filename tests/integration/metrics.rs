//! `pgha metrics` as Prometheus sees it: written for a real primary and standby in network
//! namespaces, read by the real prometheus-node-exporter's textfile collector and scraped over
//! HTTP inside the namespace; and the file replaces a symlink planted at its name.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const PASSWORD: &str = "metrics-s3cret-'q'";
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

/// node-exporter running in a namespace, killed when the test ends however it ends.
struct Exporter {
    child: Child,
    url: String,
    netns: String,
}

impl Exporter {
    /// Started in `netns`, listening on `ip` only, with nothing but the textfile collector.
    fn start(netns: &str, ip: &str, directory: &Path) -> Exporter {
        let address = format!("{ip}:{}", free_port());
        let child = Command::new("ip")
            .args(["netns", "exec", netns, NODE_EXPORTER, "--collector.disable-defaults", "--collector.textfile"])
            .arg(format!("--collector.textfile.directory={}", directory.display()))
            .arg(format!("--web.listen-address={address}"))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node-exporter starts");
        Exporter { child, url: format!("http://{address}/metrics"), netns: netns.to_string() }
    }

    /// The scraped page, once the exporter answers.
    fn scrape(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // No proxy: the request must stay inside the namespace.
            let output = run(Command::new("ip")
                .args(["netns", "exec", &self.netns, "curl", "--silent", "--fail", "--noproxy", "*", "--max-time", "5"])
                .arg(&self.url)
                .env_clear());
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node-exporter exited ({status}) before answering");
            }
            assert!(Instant::now() < deadline, "node-exporter did not answer at {}", self.url);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // `ip netns exec` execs the exporter: this pid is the exporter's own.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample line for exactly this series.
fn sample(page: &str, series: &str) -> Option<String> {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ').map(str::to_string))
}

#[test]
fn node_exporter_serves_the_metrics_of_a_streaming_pair() {
    if !Path::new(NODE_EXPORTER).exists() || !Path::new("/usr/bin/curl").exists() {
        assert!(std::env::var_os("CI").is_none(), "CI needs prometheus-node-exporter and curl");
        eprintln!("SKIPPED: needs prometheus-node-exporter and curl");
        return;
    }
    let Some(pair) = TwoHosts::new("15", PASSWORD) else { return };
    let standby = pair.run_b(&["standby"]);
    assert_eq!(standby.code, 0, "pgha standby failed: {}\n{}", standby.stdout, standby.stderr);
    pair.a.wait_for("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", "1", Duration::from_secs(60));

    let directory = tempfile::tempdir().unwrap();
    let out = pair.run_a(&["metrics", "--textfile-directory", directory.path().to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let written = fs::read_to_string(directory.path().join("pgha.prom")).unwrap();
    assert!(!written.contains(PASSWORD), "the password is in the metrics file");

    let mut exporter = Exporter::start(&pair.hosts.a.name, &pair.hosts.a_ip, directory.path());
    let page = exporter.scrape();
    assert_eq!(sample(&page, "node_textfile_scrape_error").as_deref(), Some("0"), "{page}");
    assert_eq!(sample(&page, "pgha_status").as_deref(), Some("0"), "{written}");
    assert_eq!(sample(&page, r#"pgha_role{role="primary"}"#).as_deref(), Some("1"), "{page}");
    assert_eq!(sample(&page, "pgha_cluster_up").as_deref(), Some("1"), "{page}");
    let b = &pair.hosts.b_ip;
    let standby_labels = format!(r#"{{address="{b}",application_name="pgha_{}"}}"#, b.replace('.', "_"));
    assert_eq!(sample(&page, &format!("pgha_standby_connected{standby_labels}")).as_deref(), Some("1"), "{page}");
    let lag = sample(&page, &format!("pgha_standby_lag_bytes{standby_labels}"))
        .unwrap_or_else(|| panic!("no lag series for {b}:\n{page}"));
    assert!(lag.parse::<f64>().is_ok_and(|bytes| bytes < (16 << 20) as f64), "lag {lag}");
    let slot = format!(r#"pgha_slot_active{{slot="pgha_{}"}}"#, b.replace('.', "_"));
    assert_eq!(sample(&page, &slot).as_deref(), Some("1"), "{page}");
    let position: f64 = sample(&page, "pgha_wal_position_bytes").expect("a WAL position").parse().unwrap();
    assert!(position > 0.0, "{page}");

    // The standby, printed: its receiver streams.
    let on_b = pair.run_b(&["metrics", "--stdout"]);
    assert_eq!(on_b.code, 0, "{}\n{}", on_b.stdout, on_b.stderr);
    assert_eq!(sample(&on_b.stdout, r#"pgha_role{role="standby"}"#).as_deref(), Some("1"), "{}", on_b.stdout);
    assert_eq!(sample(&on_b.stdout, "pgha_receiver_streaming").as_deref(), Some("1"), "{}", on_b.stdout);
    assert!(!on_b.stdout.contains(PASSWORD));

    // Judged with the limits it is given, as `pgha status` is: no filesystem is 100% free.
    assert_eq!(sample(&on_b.stdout, "pgha_status").as_deref(), Some("0"), "{}", on_b.stdout);
    let judged = pair.run_b(&["metrics", "--stdout", "--warn-free", "100"]);
    assert_eq!(judged.code, 0, "{}\n{}", judged.stdout, judged.stderr);
    assert_eq!(sample(&judged.stdout, "pgha_status").as_deref(), Some("1"), "{}", judged.stdout);
    let status = pair.run_b(&["status", "--warn-free", "100"]);
    assert_eq!(status.code, 1, "pgha status agrees: {}", status.stdout);
}

/// A config error still writes the file Prometheus reads (UNKNOWN, cluster not up) and exits 2,
/// and a symlink at the file's name is replaced, not written through.
#[test]
fn a_config_error_writes_unknown_and_a_planted_symlink_is_not_followed() {
    let directory = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let canary = elsewhere.path().join("canary");
    fs::write(&canary, "canary\n").unwrap();
    let target = directory.path().join("pgha.prom");
    symlink(&canary, &target).unwrap();

    let missing = directory.path().join("no-such-pgha.conf");
    let out = pgha_output(pgha(None).args(["--config", missing.to_str().unwrap()]).args([
        "metrics",
        "--textfile-directory",
        directory.path().to_str().unwrap(),
    ]));
    assert_eq!(out.code, 2, "a config error: {}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no-such-pgha.conf"), "{}", out.stderr);
    assert_eq!(fs::read_to_string(&canary).unwrap(), "canary\n", "the symlink was followed");
    assert!(fs::symlink_metadata(&target).unwrap().file_type().is_file(), "the symlink is still there");
    let written = fs::read_to_string(&target).unwrap();
    assert_eq!(sample(&written, "pgha_status").as_deref(), Some("3"), "{written}");
    assert_eq!(sample(&written, "pgha_cluster_up").as_deref(), Some("0"), "{written}");
    let names: Vec<String> = fs::read_dir(directory.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["pgha.prom"], "no temporary file is left behind");

    // A directory that does not exist is a failure to write: 1, even with a config error.
    let gone = directory.path().join("absent");
    let out = pgha_output(pgha(None).args(["--config", missing.to_str().unwrap()]).args([
        "metrics",
        "--textfile-directory",
        gone.to_str().unwrap(),
    ]));
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("cannot write the metrics"), "{}", out.stderr);
}
