//! Debian's cluster layer: pg_lsclusters, pg_ctlcluster and /etc/postgresql/VERSION/NAME.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::ClusterChoice;
use crate::error::ConfigError;
use crate::host::{root_command, run_checked};
use crate::version::PgVersion;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub version: PgVersion,
    pub name: String,
    pub port: u16,
    pub online: bool,
    pub in_recovery: bool,
    pub owner: String,
    pub data_dir: PathBuf,
    pub log_file: Option<PathBuf>,
}

impl Cluster {
    pub fn config_dir(&self) -> PathBuf {
        PathBuf::from(format!("/etc/postgresql/{}/{}", self.version, self.name))
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.version, self.name)
    }

    pub fn bin(&self, program: &str) -> String {
        format!("{}/{program}", self.version.bin_dir())
    }
}

/// Runs `pg_lsclusters -h` (no header). postgresql-common 248 has no --json.
pub fn invoke_pg_lsclusters() -> Result<String> {
    run_checked(root_command("pg_lsclusters").arg("-h"), "pg_lsclusters")
}

/// Parses `pg_lsclusters -h`: "Ver Cluster Port Status Owner Data-directory Log-file".
/// The log column reads `<unknown>` or is absent when the cluster logs elsewhere.
/// A line pgha cannot use (a cluster being created or dropped right now shows `<unknown>` port
/// and data directory; an unsupported version) is skipped with a warning: another cluster on the
/// host must not stop pgha from working on the configured one. (Kept fallible for its callers.)
pub fn parse_pg_lsclusters(output: &str) -> Result<Vec<Cluster>> {
    Ok(output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter_map(|line| match parse_pg_lsclusters_line(line) {
            Ok(cluster) => Some(cluster),
            Err(error) => {
                log::warn!("ignoring pg_lsclusters line {line:?}: {error:#}");
                None
            }
        })
        .collect())
}

fn parse_pg_lsclusters_line(line: &str) -> Result<Cluster> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 6 {
        anyhow::bail!("expected at least 6 columns");
    }
    let version: PgVersion = fields[0].parse().map_err(|error: String| anyhow::anyhow!(error))?;
    let port = fields[2].parse().with_context(|| format!("bad port {:?}", fields[2]))?;
    if !fields[5].starts_with('/') {
        anyhow::bail!("no data directory");
    }
    let status = fields[3];
    Ok(Cluster {
        version,
        name: fields[1].to_string(),
        port,
        online: status.starts_with("online"),
        in_recovery: status.contains("recovery"),
        owner: fields[4].to_string(),
        data_dir: PathBuf::from(fields[5]),
        log_file: fields.get(6).filter(|log| log.starts_with('/')).map(PathBuf::from),
    })
}

pub fn list_clusters() -> Result<Vec<Cluster>> {
    parse_pg_lsclusters(&invoke_pg_lsclusters()?)
}

/// Picks the cluster the config names, or the only one there is.
pub fn select_cluster(
    config_path: &Path,
    choice: &ClusterChoice,
    clusters: &[Cluster],
) -> Result<Cluster, ConfigError> {
    let listed = || {
        if clusters.is_empty() {
            "pg_lsclusters lists none".to_string()
        } else {
            format!("pg_lsclusters lists {}", clusters.iter().map(Cluster::id).collect::<Vec<_>>().join(", "))
        }
    };
    let matching: Vec<&Cluster> = clusters
        .iter()
        .filter(|cluster| choice.version.map_or(true, |version| version == cluster.version))
        .filter(|cluster| choice.name.as_deref().map_or(true, |name| name == cluster.name))
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] if choice.version.is_none() && choice.name.is_none() => Err(ConfigError::in_file(
            config_path,
            "no PostgreSQL cluster on this host: expected one created by the postgresql package or pg_createcluster",
        )),
        [] => Err(ConfigError::key(
            config_path,
            "cluster",
            format!(
                "no cluster matches version {} name {}: {}",
                choice.version.map_or("(any)".into(), |v| v.to_string()),
                choice.name.as_deref().unwrap_or("(any)"),
                listed()
            ),
        )),
        _ => Err(ConfigError::key(
            config_path,
            "cluster",
            format!(
                "several clusters match and [cluster] does not say which: {}; set cluster.version and cluster.name",
                listed()
            ),
        )),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterAction {
    Start,
    Stop,
    Restart,
    Reload,
    Promote,
}

impl ClusterAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterAction::Start => "start",
            ClusterAction::Stop => "stop",
            ClusterAction::Restart => "restart",
            ClusterAction::Reload => "reload",
            ClusterAction::Promote => "promote",
        }
    }
}

/// `pg_ctlcluster VERSION NAME ACTION`. Stop uses fast mode so a stop never waits on clients.
pub fn invoke_pg_ctlcluster(cluster: &Cluster, action: ClusterAction) -> Result<()> {
    let mut command = root_command("pg_ctlcluster");
    if action == ClusterAction::Stop {
        command.args(["-m", "fast"]);
    }
    command.arg(cluster.version.to_string()).arg(&cluster.name).arg(action.as_str());
    run_checked(&mut command, &format!("pg_ctlcluster {} {} {}", cluster.version, cluster.name, action.as_str()))
        .map(|_| ())
}

/// The last lines of the cluster's log, for error messages.
pub fn log_tail(cluster: &Cluster, lines: usize) -> String {
    let path = cluster.log_file.clone().unwrap_or_else(|| {
        PathBuf::from(format!("/var/log/postgresql/postgresql-{}-{}.log", cluster.version, cluster.name))
    });
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            format!("last {} lines of {}:\n{}", tail.len(), path.display(), tail.join("\n"))
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// Whether postgresql.conf has an active `include_dir` for conf.d. Debian's default file ends with one.
pub fn parse_includes_conf_d(postgresql_conf: &str, config_dir: &Path) -> bool {
    let absolute = config_dir.join("conf.d");
    postgresql_conf.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("include_dir") else { return false };
        let value = rest.trim_start().trim_start_matches('=').trim().trim_matches('\'').trim_end_matches('/');
        value == "conf.d" || Path::new(value) == absolute
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_saved_pg_lsclusters_output() {
        let clusters = parse_pg_lsclusters(include_str!("../tests/data/pg_lsclusters-bookworm-15-down.txt")).unwrap();
        assert_eq!(clusters.len(), 1);
        let main = &clusters[0];
        assert_eq!((main.version, main.name.as_str(), main.port), (PgVersion::new(15, 0), "main", 5432));
        assert!(!main.online);
        assert_eq!(main.data_dir, Path::new("/var/lib/postgresql/15/main"));
        assert_eq!(main.log_file.as_deref(), Some(Path::new("/var/log/postgresql/postgresql-15-main.log")));
    }

    #[test]
    fn parses_recovery_status_and_missing_log() {
        let clusters = parse_pg_lsclusters(
            "15  a 5433 online,recovery postgres /var/lib/postgresql/15/a /var/log/postgresql/postgresql-15-a.log\n9.6 b 5434 online postgres /srv/b <unknown>\n",
        )
        .unwrap();
        assert!(clusters[0].online && clusters[0].in_recovery);
        assert_eq!(clusters[1].version, PgVersion::new(9, 6));
        assert!(clusters[1].online && !clusters[1].in_recovery);
        assert_eq!(clusters[1].log_file, None);
    }

    #[test]
    fn skips_clusters_it_cannot_use_and_keeps_the_rest() {
        // Real output while another cluster was half created: its config dir exists, nothing else.
        let clusters =
            parse_pg_lsclusters(include_str!("../tests/data/pg_lsclusters-bookworm-half-created.txt")).unwrap();
        assert_eq!(clusters.iter().map(Cluster::id).collect::<Vec<_>>(), ["15/main"]);
        let unsupported =
            parse_pg_lsclusters("9.4 old 5433 down postgres /var/lib/postgresql/9.4/old <unknown>\n").unwrap();
        assert!(unsupported.is_empty());
    }

    fn cluster(version: u32, name: &str) -> Cluster {
        Cluster {
            version: PgVersion::new(version, 0),
            name: name.into(),
            port: 5432,
            online: true,
            in_recovery: false,
            owner: "postgres".into(),
            data_dir: PathBuf::from("/x"),
            log_file: None,
        }
    }

    #[test]
    fn selection_needs_exactly_one_match() {
        let path = Path::new("/etc/pgha/pgha.conf");
        let any = ClusterChoice { version: None, name: None };
        assert!(select_cluster(path, &any, &[]).unwrap_err().to_string().contains("no PostgreSQL cluster"));
        assert_eq!(select_cluster(path, &any, &[cluster(15, "main")]).unwrap().name, "main");
        let two = [cluster(15, "main"), cluster(17, "main")];
        assert!(select_cluster(path, &any, &two).unwrap_err().to_string().contains("several clusters"));
        let v17 = ClusterChoice { version: Some(PgVersion::new(17, 0)), name: None };
        assert_eq!(select_cluster(path, &v17, &two).unwrap().version, PgVersion::new(17, 0));
    }

    #[test]
    fn recognises_include_dir_forms() {
        let dir = Path::new("/etc/postgresql/15/main");
        assert!(parse_includes_conf_d("include_dir = 'conf.d'\t\t\t# include files", dir));
        assert!(parse_includes_conf_d("include_dir '/etc/postgresql/15/main/conf.d/'", dir));
        assert!(!parse_includes_conf_d("#include_dir = 'conf.d'", dir));
        assert!(!parse_includes_conf_d("include_dir = 'other.d'", dir));
    }
}
