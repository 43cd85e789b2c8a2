//! pg_rewind: what it plans (its dry run) and the rewind itself.

use anyhow::{bail, Context, Result};

use crate::debian::Cluster;
use crate::replication::Lsn;
use crate::tools::{output_tracked, postgres_command};

/// What pg_rewind's dry run reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RewindPlan {
    NotNeeded,
    Diverged { lsn: Lsn, timeline: u32 },
}

/// pg_rewind's report of a run or a dry run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewindReport {
    pub plan: RewindPlan,
    /// pg_rewind found both servers on the same timeline by their pg_control: a freshly promoted
    /// source whose first checkpoint has not finished yet looks like that too.
    pub same_timeline: bool,
    /// The whole output, kept beside the saved fork.
    pub text: String,
}

pub fn parse_rewind_output(output: &str) -> Option<RewindReport> {
    let same_timeline = output.contains("same timeline");
    let plan = if output.contains("no rewind required") {
        RewindPlan::NotNeeded
    } else {
        let rest = output.split("servers diverged at WAL location ").nth(1)?;
        let lsn = rest.split_whitespace().next()?.parse().ok()?;
        let timeline = rest.split("on timeline ").nth(1)?.split_whitespace().next()?.parse().ok()?;
        RewindPlan::Diverged { lsn, timeline }
    };
    Some(RewindReport { plan, same_timeline, text: output.to_string() })
}

/// Runs pg_rewind as postgres on the cluster's data directory from `source_conninfo`.
pub fn invoke_pg_rewind(cluster: &Cluster, source_conninfo: &str, dry_run: bool) -> Result<String> {
    let mut command = postgres_command(&cluster.bin("pg_rewind"))?;
    command
        .arg(format!("--target-pgdata={}", cluster.data_dir.display()))
        .arg(format!("--source-server={source_conninfo}"));
    crate::signals::hand_lock_to(&mut command);
    if dry_run {
        command.arg("--dry-run");
    } else {
        command.arg("--progress");
    }
    let output = output_tracked(&mut command, "pg_rewind", None)?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("pg_rewind{} failed ({}):\n{}", if dry_run { " --dry-run" } else { "" }, output.status, text.trim());
    }
    Ok(text)
}

/// pg_rewind's dry run: changes nothing, says whether and where the histories diverged.
pub fn plan(cluster: &Cluster, source_conninfo: &str) -> Result<RewindReport> {
    let text = invoke_pg_rewind(cluster, source_conninfo, true)?;
    parse_rewind_output(&text).with_context(|| format!("cannot read pg_rewind's plan:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_saved_pg_rewind_output() {
        let diverged = parse_rewind_output(include_str!("../../tests/data/pg_rewind-15-dry-run.txt")).unwrap();
        assert!(matches!(diverged.plan, RewindPlan::Diverged { timeline: 1, .. }), "{diverged:?}");
        let same = parse_rewind_output(
            "pg_rewind: source and target cluster are on the same timeline\npg_rewind: no rewind required\n",
        )
        .unwrap();
        assert_eq!(same.plan, RewindPlan::NotNeeded);
        assert!(same.same_timeline);
        assert_eq!(parse_rewind_output("pg_rewind: fatal: could not connect"), None);
    }
}
