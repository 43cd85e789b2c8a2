//! Debian's cluster layout: which cluster pgha works on, where its config, data, socket and log
//! are, and what Debian's postgresql.conf must contain. The programs that list and control
//! clusters live in `tools::pg_lsclusters` and `tools::pg_ctlcluster`.

use std::path::{Path, PathBuf};

use crate::config::ClusterChoice;
use crate::error::ConfigError;
use crate::version::PgVersion;

/// A cluster's identity and where Debian keeps its parts, as pg_lsclusters reports them. Whether
/// it runs is a point-in-time fact: ask `tools::pg_lsclusters::is_online`, never store it here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub version: PgVersion,
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub config_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub log_file: Option<PathBuf>,
}

impl Cluster {
    pub fn id(&self) -> String {
        format!("{}/{}", self.version, self.name)
    }

    pub fn bin(&self, program: &str) -> String {
        format!("{}/{program}", self.version.bin_dir())
    }

    /// A cluster laid out as pg_createcluster lays it out, for tests.
    #[cfg(test)]
    pub fn debian_default(version: PgVersion, name: &str) -> Cluster {
        Cluster {
            version,
            name: name.into(),
            port: 5432,
            data_dir: PathBuf::from(format!("/var/lib/postgresql/{version}/{name}")),
            config_dir: PathBuf::from(format!("/etc/postgresql/{version}/{name}")),
            socket_dir: PathBuf::from("/var/run/postgresql"),
            log_file: None,
        }
    }

    /// Where postgresql-common logs the cluster when postgresql.conf names no other log.
    pub fn log_path(&self) -> PathBuf {
        self.log_file.clone().unwrap_or_else(|| {
            PathBuf::from(format!("/var/log/postgresql/postgresql-{}-{}.log", self.version, self.name))
        })
    }
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
        .filter(|cluster| choice.version.is_none_or(|version| version == cluster.version))
        .filter(|cluster| choice.name.as_deref().is_none_or(|name| name == cluster.name))
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

/// The last lines of the cluster's log, for error messages.
pub fn log_tail(cluster: &Cluster, lines: usize) -> String {
    let path = cluster.log_path();
    // The log directory is writable by postgres: read as files::secure reads, never through a link.
    match crate::files::secure::read_tail(&path, 256 << 10) {
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

    fn cluster(version: u32, name: &str) -> Cluster {
        Cluster {
            version: PgVersion::new(version, 0),
            name: name.into(),
            port: 5432,
            data_dir: PathBuf::from("/x"),
            config_dir: PathBuf::from("/etc/x"),
            socket_dir: PathBuf::from("/run/postgresql"),
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
