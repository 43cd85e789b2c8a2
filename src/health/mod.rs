//! The health rules of `pgha status`: a report of this host's role and replication, judged
//! from one snapshot of the server. Pure: the status command gathers, this module decides.

use std::net::IpAddr;

use crate::config::{Config, Synchronous};
use crate::debian::Cluster;
use crate::render::standby_name;
mod archive;
mod plugin;
mod prometheus;
mod report;

use crate::replication::{format_bytes, sender_lag, standby_lag, Health, Lag, LagLimit, Snapshot};
pub use archive::{describe_archive, judge_free_space, ArchiveFacts, FreeLimits};
pub use plugin::format_plugin;
#[cfg(test)]
pub use plugin::plugin_grammar;
pub use prometheus::format_metrics;
pub use report::{ClusterReport, FilesystemReport, KeptReport, ReceiverReport, Report, SlotReport, StandbyReport};

/// Limits in force: the defaults unless the admin gave some of that level.
pub struct Limits {
    pub warn: Vec<LagLimit>,
    pub crit: Vec<LagLimit>,
}

impl Limits {
    /// The limits given, or 16MB to warn and 1GB for critical.
    pub fn new(warn: &[LagLimit], crit: &[LagLimit]) -> Limits {
        let or_default = |given: &[LagLimit], default: u64| {
            if given.is_empty() {
                vec![LagLimit::Bytes(default)]
            } else {
                given.to_vec()
            }
        };
        Limits { warn: or_default(warn, 16 << 20), crit: or_default(crit, 1 << 30) }
    }

    fn judge(&self, report: &mut Report, who: &str, lag: Lag) {
        if let Some(limit) = self.crit.iter().find(|limit| limit.exceeded_by(lag)) {
            report.problem(Health::Critical, format!("{who} lags more than {limit} ({})", describe_lag(lag)));
        } else if let Some(limit) = self.warn.iter().find(|limit| limit.exceeded_by(lag)) {
            report.problem(Health::Warning, format!("{who} lags more than {limit} ({})", describe_lag(lag)));
        }
    }
}

fn describe_lag(lag: Lag) -> String {
    let bytes = lag.bytes.map_or("? bytes".to_string(), format_bytes);
    let seconds = lag.seconds.map_or("? s".to_string(), |s| format!("{s:.1} s"));
    format!("{bytes}, {seconds}")
}

/// A fenced cluster (started in recovery with hot_standby off after a failover it missed) answers
/// no query; it is CRITICAL until `pgha rejoin` makes it a standby.
pub fn fenced(report: &mut Report, fence: &crate::fence::Fence) {
    report.role = Some("standby");
    report.problem(Health::Critical, fence.message());
}

/// The directories pgha kept beside the data directory, each with its size: listed, and a
/// WARNING when together they take more than `warn_percent` of the filesystem. pgha never removes
/// them by itself (they are what "nothing lost" keeps), so someone has to see them pile up.
pub fn describe_kept(
    report: &mut Report,
    kept: &[(crate::files::datadir::Kept, u64)],
    now: std::time::SystemTime,
    filesystem_bytes: u64,
    warn_percent: u8,
) {
    for (dir, bytes) in kept {
        report.kept.push(KeptReport {
            path: dir.path.display().to_string(),
            kind: match dir.kind {
                crate::files::datadir::KeptKind::Old => "old",
                crate::files::datadir::KeptKind::Fork => "fork",
            },
            age_seconds: now.duration_since(dir.made).map_or(0, |age| age.as_secs()),
            bytes: *bytes,
        });
    }
    let total: u64 = kept.iter().map(|(_, bytes)| bytes).sum();
    if filesystem_bytes > 0 && u128::from(total) * 100 > u128::from(filesystem_bytes) * u128::from(warn_percent) {
        report.problem(
            Health::Warning,
            format!(
                "{} kept beside the data directory take {} ({}% of its filesystem, more than {warn_percent}%): \
                 remove what is no longer needed with `pgha cleanup --older-than DURATION`",
                if kept.len() == 1 { "1 directory".to_string() } else { format!("{} directories", kept.len()) },
                format_bytes(total),
                u128::from(total) * 100 / u128::from(filesystem_bytes)
            ),
        );
    }
}

/// The health rules, applied to one snapshot. Kept free of I/O.
pub fn describe(report: &mut Report, config: &Config, cluster: &Cluster, snapshot: &Snapshot, limits: &Limits) {
    let role = if snapshot.in_recovery { "standby" } else { "primary" };
    report.role = Some(role);
    report.wal_lsn = snapshot.wal_lsn;
    if report.configured_role == Some("standby") && role == "primary" {
        report.problem(
            Health::Critical,
            format!(
                "cluster {} is writable, but the members name {} as the primary: this is an old primary; keep \
                 clients away from it and run `pgha rejoin` here",
                cluster.id(),
                report.primary_address.as_deref().unwrap_or("another member")
            ),
        );
    }
    for slot in &snapshot.slots {
        let retained = match (snapshot.wal_lsn, slot.restart_lsn) {
            (Some(current), Some(restart)) => Some(current.bytes_after(restart)),
            _ => None,
        };
        if !slot.active && retained.is_some_and(|bytes| bytes > 0) {
            report.problem(
                Health::Warning,
                format!(
                    "slot {} is inactive and holds {} of WAL: drop it with SELECT pg_drop_replication_slot('{}') if its standby is gone",
                    slot.name,
                    format_bytes(retained.unwrap_or(0)),
                    slot.name
                ),
            );
        }
        if slot.wal_status.as_deref() == Some("lost") {
            report.problem(
                Health::Critical,
                format!("slot {} lost WAL its standby needs: that standby must be cloned again", slot.name),
            );
        }
        report.slots.push(SlotReport {
            name: slot.name.clone(),
            slot_type: slot.slot_type.clone(),
            active: slot.active,
            restart_lsn: slot.restart_lsn,
            retained_bytes: retained,
            wal_status: slot.wal_status.clone(),
        });
    }
    if snapshot.in_recovery {
        describe_standby(report, snapshot, limits);
    } else {
        describe_primary(report, config, snapshot, limits);
        describe_synchronous(report, config, snapshot);
    }
}

fn describe_primary(report: &mut Report, config: &Config, snapshot: &Snapshot, limits: &Limits) {
    let own: Option<IpAddr> = report.host_address.as_deref().and_then(|text| text.parse().ok());
    let expected: Vec<IpAddr> = config.node_addresses().into_iter().filter(|address| Some(*address) != own).collect();
    for sender in &snapshot.senders {
        let configured = expected
            .iter()
            .any(|address| sender.client_addr == Some(*address) || sender.application_name == standby_name(*address));
        let lag = sender_lag(sender, snapshot.wal_lsn);
        let who = format!(
            "standby {} ({})",
            sender.client_addr.map_or("local".to_string(), |a| a.to_string()),
            sender.application_name
        );
        if configured {
            if sender.state != "streaming" {
                report.problem(Health::Warning, format!("{who} is in state {:?}, not streaming", sender.state));
            }
            limits.judge(report, &who, lag);
        }
        report.standbys.push(StandbyReport {
            address: sender.client_addr.map(|address| address.to_string()),
            application_name: Some(sender.application_name.clone()),
            configured,
            state: sender.state.clone(),
            sync_state: Some(sender.sync_state.clone()),
            sent_lsn: sender.sent,
            write_lsn: sender.write,
            flush_lsn: sender.flush,
            replay_lsn: sender.replay,
            lag,
        });
    }
    for address in expected {
        let connected = snapshot
            .senders
            .iter()
            .any(|sender| sender.client_addr == Some(address) || sender.application_name == standby_name(address));
        if !connected {
            report.problem(Health::Critical, format!("standby {address} is not connected"));
            report.standbys.push(StandbyReport {
                address: Some(address.to_string()),
                application_name: Some(standby_name(address)),
                configured: true,
                state: "disconnected".into(),
                sync_state: None,
                sent_lsn: None,
                write_lsn: None,
                flush_lsn: None,
                replay_lsn: None,
                lag: Lag { bytes: None, seconds: None },
            });
        }
    }
}

/// With replication.synchronous on, a commit waits until `synchronous_count` standbys confirm it:
/// with fewer of them confirming, every write on this primary hangs, which is CRITICAL even when
/// no client has noticed yet. The message says how to accept writes again.
fn describe_synchronous(report: &mut Report, config: &Config, snapshot: &Snapshot) {
    let replication = &config.replication;
    if replication.synchronous == Synchronous::Off {
        return;
    }
    let needed = replication.synchronous_count as usize;
    let confirming = snapshot.synchronous_confirmers().len();
    if confirming >= needed {
        return;
    }
    // Standbys that stream but are all `async`: the server does not run pgha's list (conf.d was
    // not reloaded since synchronous was turned on, or another file overrides it).
    let not_in_effect =
        !snapshot.senders.is_empty() && snapshot.senders.iter().all(|sender| sender.sync_state == "async");
    let why = if not_in_effect {
        "the connected standbys are all async, so commits do not wait for any of them: this server does not \
         run pgha's synchronous_standby_names; run `pgha primary`"
            .to_string()
    } else {
        "every commit waits until enough standbys stream again; to accept writes without them, set \
         replication.synchronous = \"off\" in pgha.conf and run `pgha primary` here (a reload, no restart)"
            .to_string()
    };
    report.problem(
        Health::Critical,
        format!(
            "synchronous replication (replication.synchronous = {:?}) needs {needed} standby(s) to confirm each \
             commit, but {confirming} confirm (sync_state sync or quorum): {why}",
            replication.synchronous.as_str()
        ),
    );
}

fn describe_standby(report: &mut Report, snapshot: &Snapshot, limits: &Limits) {
    let progress = snapshot.progress.clone().unwrap_or(crate::replication::Progress {
        receive: None,
        replay: snapshot.wal_lsn,
        seconds_since_replayed_commit: None,
    });
    let lag = standby_lag(&progress, snapshot.receiver.as_ref());
    let status = match &snapshot.receiver {
        Some(receiver) => receiver.status.clone(),
        None if snapshot.version >= crate::version::PgVersion::new(9, 6) => "stopped".to_string(),
        None => "unknown".to_string(),
    };
    match status.as_str() {
        "streaming" => {}
        "unknown" => report.problem(
            Health::Warning,
            "PostgreSQL 9.5 cannot show the WAL receiver: check the primary with `pgha status` there".into(),
        ),
        other => report.problem(
            Health::Critical,
            format!(
                "the WAL receiver is {other}, not streaming from {}: see the cluster log",
                report.primary_address.as_deref().unwrap_or("the primary")
            ),
        ),
    }
    let primary: Option<IpAddr> = report.primary_address.as_deref().and_then(|address| address.parse().ok());
    if let (Some(host), Some(primary)) =
        (snapshot.receiver.as_ref().and_then(|receiver| receiver.sender_host.as_deref()), primary)
    {
        if host.parse::<IpAddr>().ok() != Some(primary) && !host.starts_with('/') {
            report.problem(
                Health::Warning,
                format!(
                    "this standby follows {host}, but the members name {primary} as the primary: run `pgha rejoin`"
                ),
            );
        }
    }
    limits.judge(report, "this standby", lag);
    let receiver = snapshot.receiver.as_ref();
    report.receiver = Some(ReceiverReport {
        status,
        primary_host: receiver.and_then(|r| r.sender_host.clone()),
        primary_port: receiver.and_then(|r| r.sender_port),
        conninfo: receiver.map(|r| r.conninfo.clone()).filter(|conninfo| !conninfo.is_empty()),
        slot_name: receiver.and_then(|r| r.slot_name.clone()),
        receive_lsn: progress.receive,
        replay_lsn: progress.replay,
        lag,
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;
    use crate::replication::parse_snapshot;
    use crate::version::PgVersion;

    /// The report `pgha status` builds on `own` from a saved answer of the status query, with
    /// the default lag limits. Shared by the tests of every form the report takes.
    pub(crate) fn report_for(sample: &str, own: &str, config_text: &str) -> Report {
        let config = Config::parse(Path::new("/etc/pgha/pgha.conf"), config_text).unwrap();
        let cluster = Cluster::debian_default(PgVersion::new(15, 0), "main");
        let snapshot = parse_snapshot(&crate::tools::psql::parse_rows(sample)).unwrap();
        let mut report = Report::empty();
        report.host_address = Some(own.into());
        report.configured_role = Some(if config.primary.address.to_string() == own { "primary" } else { "standby" });
        report.primary_address = Some(config.primary.address.to_string());
        describe(&mut report, &config, &cluster, &snapshot, &Limits::new(&[], &[]));
        report.finish()
    }

    const PRIMARY: &str = include_str!("../../tests/data/status-primary-15.txt");
    const STANDBY: &str = include_str!("../../tests/data/status-standby-15.txt");

    #[test]
    fn healthy_primary_and_standby_are_ok() {
        let conf = "[primary]\naddress = \"10.231.245.1\"\n[standby]\naddresses = [\"10.231.245.2\"]\n";
        let primary = report_for(PRIMARY, "10.231.245.1", conf);
        assert_eq!(primary.status, Health::Ok, "{:?}", primary.problems);
        assert_eq!(primary.standbys[0].lag.bytes, Some(0));
        let standby = report_for(STANDBY, "10.231.245.2", conf);
        assert_eq!(standby.status, Health::Ok, "{:?}", standby.problems);
        assert_eq!(standby.receiver.as_ref().unwrap().status, "streaming");
        let limits = Limits::new(&[], &[]);
        let text = format_plugin(&standby, &limits);
        assert!(text.starts_with("PGHA OK - standby ? on 10.231.245.2"), "{text}");
    }

    #[test]
    fn a_missing_standby_is_critical_and_an_old_primary_is_critical() {
        let two =
            "[primary]\naddress = \"10.231.245.1\"\n[standby]\naddresses = [\"10.231.245.2\", \"10.231.245.3\"]\n";
        let report = report_for(PRIMARY, "10.231.245.1", two);
        assert_eq!(report.status, Health::Critical);
        assert!(report
            .standbys
            .iter()
            .any(|s| s.state == "disconnected" && s.address.as_deref() == Some("10.231.245.3")));
        // An old primary that came back writable after a failover: the members name B.
        let stale = "[primary]\naddress = \"10.231.245.2\"\n[standby]\naddresses = [\"10.231.245.1\"]\n";
        let report = report_for(PRIMARY, "10.231.245.1", stale);
        assert_eq!(report.status, Health::Critical);
        assert!(report.problems.iter().any(|p| p.message.contains("old primary")
            && p.message.contains("10.231.245.2")
            && p.message.contains("pgha rejoin")));
    }

    #[test]
    fn synchronous_replication_is_critical_with_too_few_confirming_standbys() {
        let conf = "[primary]\naddress = \"10.231.245.1\"\n[standby]\naddresses = [\"10.231.245.2\"]\n\
                    [replication]\nsynchronous = \"on\"\n";
        let quorum = PRIMARY.replace("\u{1f}async\u{1f}", "\u{1f}quorum\u{1f}");
        let report = report_for(&quorum, "10.231.245.1", conf);
        assert_eq!(report.status, Health::Ok, "{:?}", report.problems);
        let sync = PRIMARY.replace("\u{1f}async\u{1f}", "\u{1f}sync\u{1f}");
        assert_eq!(report_for(&sync, "10.231.245.1", conf).status, Health::Ok);

        // The standby is gone: every commit waits, and the message says how to unblock.
        let alone: String = PRIMARY
            .split('\u{1e}')
            .filter(|row| !row.trim_start().starts_with("sender"))
            .collect::<Vec<_>>()
            .join("\u{1e}");
        let report = report_for(&alone, "10.231.245.1", conf);
        assert_eq!(report.status, Health::Critical);
        let message = report.problems.iter().map(|p| p.message.as_str()).find(|m| m.contains("synchronous")).unwrap();
        for words in ["needs 1 standby(s)", "but 0 confirm", "synchronous = \"off\"", "`pgha primary`"] {
            assert!(message.contains(words), "{words}: {message}");
        }

        // Connected but async: the server does not run the list pgha wrote.
        let report = report_for(PRIMARY, "10.231.245.1", conf);
        assert_eq!(report.status, Health::Critical);
        assert!(report.problems.iter().any(|p| p.message.contains("all async")), "{:?}", report.problems);

        // Two needed, one confirming.
        let two =
            "[primary]\naddress = \"10.231.245.1\"\n[standby]\naddresses = [\"10.231.245.2\", \"10.231.245.3\"]\n\
                   [replication]\nsynchronous = \"remote_apply\"\nsynchronous_count = 2\n";
        let report = report_for(&quorum, "10.231.245.1", two);
        assert!(report
            .problems
            .iter()
            .any(|p| p.message.contains("needs 2 standby(s)") && p.message.contains("but 1 confirm")));

        // A standby ignores the setting until it is promoted: no such rule there.
        let standby = report_for(STANDBY, "10.231.245.2", conf);
        assert_eq!(standby.status, Health::Ok, "{:?}", standby.problems);
    }

    #[test]
    fn a_stopped_receiver_is_critical() {
        let conf = "[primary]\naddress = \"10.231.245.1\"\n[standby]\naddresses = [\"10.231.245.2\"]\n";
        let without_receiver: String = STANDBY
            .split('\u{1e}')
            .filter(|row| !row.trim_start().starts_with("receiver"))
            .collect::<Vec<_>>()
            .join("\u{1e}");
        let report = report_for(&without_receiver, "10.231.245.2", conf);
        assert_eq!(report.status, Health::Critical);
        assert_eq!(report.receiver.as_ref().unwrap().status, "stopped");
    }

    #[test]
    fn kept_directories_are_listed_and_warn_past_their_share_of_the_disk() {
        use crate::files::datadir::{Kept, KeptKind};
        use std::time::{Duration, SystemTime};
        let made = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let now = made + Duration::from_secs(3 * 86400);
        let kept = vec![
            (Kept { path: "/v/15/main.pgha-old-x".into(), kind: KeptKind::Old, made }, 150 << 20),
            (Kept { path: "/v/15/main.pgha-fork-y".into(), kind: KeptKind::Fork, made: now }, 50 << 20),
        ];
        let mut report = Report::empty();
        describe_kept(&mut report, &kept, now, 1 << 30, 20);
        let report = report.finish();
        assert_eq!(report.status, Health::Ok, "200 MB of 1 GB is under 20%: {:?}", report.problems);
        assert_eq!(report.kept.len(), 2);
        assert_eq!((report.kept[0].kind, report.kept[0].age_seconds), ("old", 3 * 86400));
        let table = report::format_details(&report);
        assert!(table.contains("KEPT") && table.contains("3days") && table.contains("150.0 MB"), "{table}");

        let mut report = Report::empty();
        describe_kept(&mut report, &kept, now, 1 << 30, 15);
        let report = report.finish();
        assert_eq!(report.status, Health::Warning);
        assert!(report.problems[0].message.contains("2 directories") && report.problems[0].message.contains("19%"));
        assert!(report.problems[0].message.contains("pgha cleanup --older-than"));
    }
}
