//! The fence at start: before a cluster pgha manages opens for writes, ask the other members
//! whether one of them already is the primary on a timeline that continues this cluster's (a
//! failover happened while this host was away). If so, the cluster starts fenced: in recovery
//! (standby signal) with `hot_standby = off`, so it accepts no write and serves no stale read,
//! until `pgha rejoin` makes it a proper standby and removes the fence.
//!
//! It runs as `ExecStartPre=` of postgresql@.service for every cluster on the host, so it returns
//! at once for clusters pgha does not manage and for a cluster that starts in recovery anyway.
//! It never takes pgha's lock: a pgha run that starts the cluster holds it already. This module
//! owns the fence's files: the conf.d fragment (which also tells `pgha status` who the primary
//! was) and the standby signal the fence writes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::{Config, NoAnswer};
use crate::debian::Cluster;
use crate::files::apply::{write_atomic, Transaction};
use crate::files::datadir::starts_in_recovery;
use crate::files::secure::{read_text_capped, Ownership};
use crate::host::postgres_account;
use crate::members::{decide, local_member, survey, Verdict};
use crate::node::{find_local_address, Node};
use crate::tools::pg_lsclusters;
use crate::upstream::PrivatePassfile;

/// conf.d is read in file name order and the last setting wins: this name sorts after
/// conf.d/pgha.conf (which sets `hot_standby = on`) and after the usual admin fragments.
pub const FRAGMENT_NAME: &str = "zz-pgha-fence.conf";

/// The comment line that names the primary, read back by `pgha status`.
const PRIMARY_MARK: &str = "# pgha-fence-primary: ";

/// Pause between two rounds of questions while no member answers.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

pub fn fragment_path(cluster: &Cluster) -> PathBuf {
    cluster.config_dir.join("conf.d").join(FRAGMENT_NAME)
}

/// What the fence decided for one start of a cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not pgha's cluster (no pgha.conf, another cluster, or this host is not a member).
    NotManaged(String),
    /// It starts in recovery anyway (a standby, or a cluster fenced before).
    InRecovery,
    /// It runs already: nothing starts.
    Running,
    /// It is the primary (or no other member is writable): it starts as before.
    Primary,
    /// No member answered within fence.wait, and fence.no_answer = "start".
    Alone { waited: Duration },
    /// Started fenced. `primary` is the member that is the primary, None when nobody answered.
    Fenced { primary: Option<IpAddr>, reason: String },
}

/// A fence found in place: who the primary was when it was put up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub primary: Option<IpAddr>,
}

impl Fence {
    /// The one line the journal, `pgha status` and `pgha primary` say.
    pub fn message(&self) -> String {
        match self.primary {
            Some(primary) => format!("fenced: {primary} is the primary; run `pgha rejoin`"),
            None => "fenced: no member answered when this cluster started (fence.no_answer = \"read-only\"); \
                     run `pgha rejoin` once the primary answers"
                .to_string(),
        }
    }
}

/// `VERSION-NAME`, the instance name of postgresql@.service, split where pg_ctlcluster splits it
/// (versions hold no dash, cluster names may).
pub fn parse_instance(instance: &str) -> Result<(String, String)> {
    match instance.split_once('-') {
        Some((version, name)) if !version.is_empty() && !name.is_empty() => Ok((version.into(), name.into())),
        _ => bail!("{instance:?} is not a cluster instance: expected VERSION-NAME, such as 15-main"),
    }
}

/// The decision for `instance`, and the fence put up when it says so.
pub fn fence_at_start(config_path: &Path, instance: &str) -> Result<Outcome> {
    let (version, name) = parse_instance(instance)?;
    if std::fs::symlink_metadata(config_path).is_err() {
        return Ok(Outcome::NotManaged(format!("{} does not exist", config_path.display())));
    }
    let config = Config::load(config_path)?;
    // Cheap answers first: at boot this runs for every cluster of the host.
    let choice = &config.cluster;
    if choice.version.is_some_and(|chosen| chosen.to_string() != version)
        || choice.name.as_deref().is_some_and(|chosen| chosen != name)
    {
        return Ok(Outcome::NotManaged(format!("{} manages another cluster", config_path.display())));
    }
    let Node { config, cluster } = Node::for_config(config)?;
    if cluster.version.to_string() != version || cluster.name != name {
        return Ok(Outcome::NotManaged(format!("{} manages cluster {}", config_path.display(), cluster.id())));
    }
    if starts_in_recovery(&cluster)? {
        return Ok(Outcome::InRecovery);
    }
    if pg_lsclusters::is_online(&cluster)? {
        return Ok(Outcome::Running);
    }
    let started = Instant::now();
    // network-online.target does not promise that this host's address is up yet.
    let own = loop {
        if let Some(own) = find_local_address(&config.node_addresses())? {
            break own;
        }
        if started.elapsed() >= config.fence.wait {
            return Ok(Outcome::NotManaged(format!(
                "none of the members in {} is an address of this host",
                config.path.display()
            )));
        }
        std::thread::sleep(RETRY_INTERVAL);
    };
    let local = local_member(&cluster, own)?;
    let password = config.read_password()?;
    let passfile = PrivatePassfile::new(&config, &password)?;
    let answers = loop {
        let answers = survey(&config, &passfile.path, cluster.version, Some(own)).answers();
        if !answers.is_empty() || started.elapsed() >= config.fence.wait {
            break answers;
        }
        log::info!("no member answers yet; asking again for up to {}s", config.fence.wait.as_secs());
        std::thread::sleep(RETRY_INTERVAL);
    };
    drop(passfile);
    if answers.is_empty() {
        return match config.fence.no_answer {
            NoAnswer::Start => Ok(Outcome::Alone { waited: started.elapsed() }),
            NoAnswer::ReadOnly => {
                let reason = format!(
                    "no member answered within {}s and fence.no_answer is \"read-only\"",
                    config.fence.wait.as_secs()
                );
                put_up(&cluster, None, &reason)?;
                Ok(Outcome::Fenced { primary: None, reason })
            }
        };
    }
    let mut all = vec![local.state.clone()];
    all.extend(answers);
    let described = |states: &[crate::members::MemberState]| {
        states
            .iter()
            .map(|state| {
                format!(
                    "{} {} on timeline {}",
                    state.address,
                    if state.writable { "writable" } else { "in recovery" },
                    state.history.timeline
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match decide(&all, Some(&local.state.system_identifier), config.primary.address) {
        Verdict::Primary { address, .. } if address != own => {
            let reason =
                format!("{address} is the primary on a timeline that continues this cluster's ({})", described(&all));
            put_up(&cluster, Some(address), &reason)?;
            Ok(Outcome::Fenced { primary: Some(address), reason })
        }
        Verdict::SplitBrain(addresses) if addresses.contains(&own) => {
            let others: Vec<IpAddr> = addresses.into_iter().filter(|address| *address != own).collect();
            let reason = format!(
                "split brain: {} writable on a timeline forked from this cluster's ({})",
                others.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "),
                described(&all)
            );
            put_up(&cluster, others.first().copied(), &reason)?;
            Ok(Outcome::Fenced { primary: others.first().copied(), reason })
        }
        _ => Ok(Outcome::Primary),
    }
}

fn fragment_text(primary: Option<IpAddr>, reason: &str) -> String {
    let primary = primary.map_or("none".to_string(), |address| address.to_string());
    let reason = reason.replace(['\n', '\r'], " ");
    format!(
        "# Written by `pgha fence` when this cluster was about to start writable: {reason}.\n\
         # It starts as a standby that takes no writes and serves no reads until `pgha rejoin`\n\
         # makes it a standby of the primary; rejoin removes this file.\n\
         {PRIMARY_MARK}{primary}\n\
         hot_standby = off\n"
    )
}

/// The standby signal first: if anything stops the fence half-way, the cluster starts in
/// recovery (maybe serving stale reads), never writable.
fn put_up(cluster: &Cluster, primary: Option<IpAddr>, reason: &str) -> Result<()> {
    let postgres = postgres_account()?;
    let owned = |mode| Ownership { uid: postgres.uid, gid: postgres.gid, mode };
    let (signal, content) = if cluster.version.uses_recovery_conf() {
        (
            "recovery.conf",
            "# Written by `pgha fence`: start in recovery; `pgha rejoin` replaces it.\nstandby_mode = 'on'\n",
        )
    } else {
        ("standby.signal", "# Written by `pgha fence`: start in recovery; `pgha rejoin` replaces it.\n")
    };
    write_atomic(&cluster.data_dir.join(signal), content.as_bytes(), owned(0o600))?;
    let conf_d = cluster.config_dir.join("conf.d");
    if std::fs::symlink_metadata(&conf_d).is_err() {
        bail!(
            "{} does not exist: the fence wrote {signal}, but cannot keep the standby from serving reads",
            conf_d.display()
        );
    }
    write_atomic(&fragment_path(cluster), fragment_text(primary, reason).as_bytes(), owned(0o644))
}

/// The fence in place on this cluster, if any. The fragment is read without following a link.
pub fn read(cluster: &Cluster) -> Result<Option<Fence>> {
    let Some(text) = read_text_capped(&fragment_path(cluster), 64 << 10)? else { return Ok(None) };
    Ok(Some(parse_fragment(&text)))
}

pub fn parse_fragment(text: &str) -> Fence {
    let primary = text.lines().find_map(|line| line.strip_prefix(PRIMARY_MARK)).and_then(|a| a.trim().parse().ok());
    Fence { primary }
}

/// Takes the fence down within `transaction` (a failed rejoin puts it back), for a workflow that
/// has just made the cluster a proper standby.
pub fn take_down(cluster: &Cluster, transaction: &mut Transaction) -> Result<()> {
    let path = fragment_path(cluster);
    if transaction.remove(&path).with_context(|| format!("cannot remove the fence {}", path.display()))? {
        log::info!("removed the fence {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_split_at_the_first_dash() {
        assert_eq!(parse_instance("15-main").unwrap(), ("15".into(), "main".into()));
        assert_eq!(parse_instance("9.6-my-cluster").unwrap(), ("9.6".into(), "my-cluster".into()));
        assert!(parse_instance("main").is_err() && parse_instance("-main").is_err() && parse_instance("15-").is_err());
    }

    #[test]
    fn the_fragment_names_the_primary_for_status() {
        let primary: IpAddr = "192.0.2.11".parse().unwrap();
        let text = fragment_text(Some(primary), "a reason\nwith a line break");
        assert!(text.contains("\nhot_standby = off\n") && !text.contains("reason\nwith"), "{text}");
        assert_eq!(parse_fragment(&text), Fence { primary: Some(primary) });
        assert_eq!(parse_fragment(&fragment_text(None, "nobody")), Fence { primary: None });
        assert_eq!(Fence { primary: Some(primary) }.message(), "fenced: 192.0.2.11 is the primary; run `pgha rejoin`");
    }

    /// The postgres account owns conf.d and the data directory: what it plants there must not
    /// steer root's writes elsewhere.
    #[test]
    fn planted_links_never_take_the_fence_outside_the_clusters_trees() {
        use std::os::unix::fs::symlink;
        if !nix::unistd::getuid().is_root() || postgres_account().is_err() {
            eprintln!("skipped: needs root and a postgres account");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let canary = tempfile::tempdir().unwrap();
        std::fs::write(canary.path().join("secret"), "root's\n").unwrap();
        let mut cluster = Cluster::debian_default(crate::version::PgVersion::new(15, 0), "main");
        cluster.data_dir = root.path().join("data");
        cluster.config_dir = root.path().join("config");
        std::fs::create_dir_all(&cluster.data_dir).unwrap();
        std::fs::create_dir_all(&cluster.config_dir).unwrap();
        // A signal file that is a link to root's file is replaced, never written through; a
        // conf.d that is a link to root's directory gets no file.
        let postgres = postgres_account().unwrap();
        let as_postgres = |path: &Path| {
            std::os::unix::fs::lchown(path, Some(postgres.uid), Some(postgres.gid)).unwrap();
        };
        as_postgres(&cluster.data_dir);
        as_postgres(&cluster.config_dir);
        symlink(canary.path().join("secret"), cluster.data_dir.join("standby.signal")).unwrap();
        as_postgres(&cluster.data_dir.join("standby.signal"));
        symlink(canary.path(), cluster.config_dir.join("conf.d")).unwrap();
        as_postgres(&cluster.config_dir.join("conf.d"));
        let error = put_up(&cluster, None, "test").unwrap_err();
        assert!(format!("{error:#}").contains("symbolic link"), "{error:#}");
        assert_eq!(std::fs::read_to_string(canary.path().join("secret")).unwrap(), "root's\n");
        assert!(!canary.path().join(FRAGMENT_NAME).exists(), "the fence wrote through the planted conf.d");
        assert!(std::fs::symlink_metadata(cluster.data_dir.join("standby.signal")).unwrap().is_file());
        // A data directory that is a link is refused before anything is written.
        std::fs::remove_dir_all(&cluster.data_dir).unwrap();
        as_postgres(root.path());
        symlink(canary.path(), &cluster.data_dir).unwrap();
        as_postgres(&cluster.data_dir);
        assert!(put_up(&cluster, None, "test").is_err());
        assert!(!canary.path().join("standby.signal").exists(), "the fence wrote through the planted data directory");
    }

    #[test]
    fn the_fragment_sorts_after_pghas_own() {
        // PostgreSQL reads conf.d in strcmp order; the later hot_standby wins.
        assert!(FRAGMENT_NAME > "pgha.conf");
    }
}
