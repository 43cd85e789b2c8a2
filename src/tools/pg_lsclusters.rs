//! pg_lsclusters --json: the clusters on this host, where Debian keeps their parts, and whether
//! they run. Its JSON carries each cluster's socket, config and data directories, so none of
//! them is guessed from Debian's defaults.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::debian::Cluster;
use crate::tools::{retry_until_ok, root_command, run_checked};
use crate::version::PgVersion;

/// `pg_lsclusters --json [VERSION [NAME]]`. Asking for one cluster keeps a broken other one (a
/// cluster half created or half dropped right now makes the whole listing fail) out of the way.
pub fn invoke_pg_lsclusters(version: Option<PgVersion>, name: Option<&str>) -> Result<String> {
    let mut command = root_command("pg_lsclusters");
    command.arg("--json");
    if let Some(version) = version {
        command.arg(version.to_string());
        if let Some(name) = name {
            command.arg(name);
        }
    }
    run_checked(&mut command, "pg_lsclusters --json")
}

/// One cluster as pg_lsclusters prints it. Numbers arrive as JSON numbers or strings depending
/// on how Perl last used the value, so both are accepted.
#[derive(Debug, Deserialize)]
struct Listed {
    version: Option<Value>,
    cluster: Option<String>,
    port: Option<Value>,
    running: Option<Value>,
    recovery: Option<Value>,
    pgdata: Option<String>,
    configdir: Option<String>,
    socketdir: Option<String>,
    logfile: Option<String>,
}

/// A cluster and its state at the moment pg_lsclusters looked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedCluster {
    pub cluster: Cluster,
    pub online: bool,
    pub in_recovery: bool,
}

fn text(value: &Option<Value>) -> Option<String> {
    match value.as_ref()? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn truthy(value: &Option<Value>) -> bool {
    text(value).is_some_and(|text| !text.is_empty() && text != "0")
}

fn to_cluster(listed: &Listed) -> Result<ListedCluster> {
    let version: PgVersion =
        text(&listed.version).context("no version")?.parse().map_err(|error: String| anyhow::anyhow!(error))?;
    let name = listed.cluster.clone().context("no cluster name")?;
    let port_text = text(&listed.port).context("no port")?;
    let port = port_text.parse().with_context(|| format!("bad port {port_text:?}"))?;
    let data_dir = listed.pgdata.as_deref().filter(|path| path.starts_with('/')).context("no data directory")?;
    let config_dir = listed.configdir.as_deref().filter(|path| path.starts_with('/')).context("no config directory")?;
    Ok(ListedCluster {
        cluster: Cluster {
            version,
            name,
            port,
            data_dir: PathBuf::from(data_dir),
            config_dir: PathBuf::from(config_dir),
            socket_dir: PathBuf::from(listed.socketdir.as_deref().unwrap_or("/var/run/postgresql")),
            log_file: listed.logfile.as_deref().filter(|path| path.starts_with('/')).map(PathBuf::from),
        },
        online: truthy(&listed.running),
        in_recovery: truthy(&listed.recovery),
    })
}

/// A cluster pgha cannot use (one being created or dropped right now has no data directory; an
/// unsupported version) is skipped with a warning: another cluster on the host must not stop
/// pgha from working on the configured one.
pub fn parse_pg_lsclusters(output: &str) -> Result<Vec<ListedCluster>> {
    let listed: Vec<Listed> = serde_json::from_str(output).context("pg_lsclusters --json printed no JSON list")?;
    Ok(listed
        .iter()
        .filter_map(|entry| match to_cluster(entry) {
            Ok(cluster) => Some(cluster),
            Err(error) => {
                log::warn!(
                    "ignoring cluster {:?} of pg_lsclusters: {error:#}",
                    entry.cluster.as_deref().unwrap_or("?")
                );
                None
            }
        })
        .collect())
}

/// The clusters of `version` (all when None), or the one named `name` of that version.
pub fn list(version: Option<PgVersion>, name: Option<&str>) -> Result<Vec<ListedCluster>> {
    let one = version.is_some() && name.is_some();
    // A listing of several clusters fails while one of them is being created or dropped, which
    // takes a few seconds: try again for a while before calling the host broken.
    let patience = if one { Duration::ZERO } else { Duration::from_secs(10) };
    let output = retry_until_ok(patience, Duration::from_millis(500), || invoke_pg_lsclusters(version, name)).map_err(
        |error| {
            if one {
                error
            } else {
                error.context(
                    "pg_lsclusters cannot list this host's clusters: name the cluster in pgha.conf ([cluster] version \
                 and name), so that pgha asks for that one only",
                )
            }
        },
    )?;
    parse_pg_lsclusters(&output)
}

/// The cluster's state now.
pub fn state(cluster: &Cluster) -> Result<ListedCluster> {
    list(Some(cluster.version), Some(&cluster.name))?
        .into_iter()
        .find(|listed| listed.cluster.version == cluster.version && listed.cluster.name == cluster.name)
        .with_context(|| format!("cluster {} disappeared from pg_lsclusters", cluster.id()))
}

pub fn is_online(cluster: &Cluster) -> Result<bool> {
    Ok(state(cluster)?.online)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn reads_saved_json_with_several_clusters() {
        let clusters =
            parse_pg_lsclusters(include_str!("../../tests/data/pg_lsclusters-json-bookworm-several.json")).unwrap();
        assert_eq!(clusters.len(), 5);
        let main = &clusters[0];
        assert_eq!(
            (main.cluster.version, main.cluster.name.as_str(), main.cluster.port),
            (PgVersion::new(15, 0), "main", 5432)
        );
        assert!(!main.online && !main.in_recovery);
        assert_eq!(main.cluster.data_dir, Path::new("/var/lib/postgresql/15/main"));
        assert_eq!(main.cluster.config_dir, Path::new("/etc/postgresql/15/main"));
        assert_eq!(main.cluster.socket_dir, Path::new("/var/run/postgresql"));
        assert_eq!(main.cluster.log_file.as_deref(), Some(Path::new("/var/log/postgresql/postgresql-15-main.log")));
        assert_eq!(clusters.iter().filter(|listed| listed.online).count(), 1);
    }

    #[test]
    fn skips_clusters_it_cannot_use_and_keeps_the_rest() {
        // Real output while another cluster was half created: a config dir with an empty postgresql.conf.
        let clusters =
            parse_pg_lsclusters(include_str!("../../tests/data/pg_lsclusters-json-bookworm-half-created.json"))
                .unwrap();
        assert!(clusters.iter().all(|listed| listed.cluster.name != "pgvbroken"));
        assert!(clusters.iter().any(|listed| listed.cluster.name == "main"));
        assert!(parse_pg_lsclusters("not json").is_err());
    }

    #[test]
    fn recovery_and_string_versions() {
        let text = r#"[{"version":"9.6","cluster":"b","port":5434,"running":1,"recovery":1,"pgdata":"/srv/b","configdir":"/etc/postgresql/9.6/b","socketdir":"/run/postgresql"}]"#;
        let clusters = parse_pg_lsclusters(text).unwrap();
        assert_eq!(clusters[0].cluster.version, PgVersion::new(9, 6));
        assert!(clusters[0].online && clusters[0].in_recovery);
        assert_eq!(clusters[0].cluster.log_file, None);
        let unsupported =
            r#"[{"version":"9.4","cluster":"old","port":"5433","running":0,"pgdata":"/x","configdir":"/y"}]"#;
        assert!(parse_pg_lsclusters(unsupported).unwrap().is_empty());
    }
}
