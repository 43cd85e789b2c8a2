//! pg_rewind: what it plans (its dry run) and the rewind itself.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::debian::Cluster;
use crate::replication::Lsn;
use crate::tools::{interrupted_if_killed, output_tracked, postgres_command, spawn_tracked};

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
    /// What it copies from the source, and the source's whole size ("need to copy N MB (total
    /// source directory size is M MB)", printed with --progress).
    pub copy_bytes: Option<u64>,
    pub source_bytes: Option<u64>,
    /// Its file map (printed with --debug): every target file it will change.
    pub file_map: Vec<FileEntry>,
    /// The whole output, kept beside the saved fork.
    pub text: String,
}

/// What pg_rewind does to one path of the target (its filemap's actions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileAction {
    /// Nothing to the file as a whole; the listed blocks, if any, are overwritten from the source.
    None,
    /// Overwritten (or created) with the source's copy.
    Copy,
    /// Extended with the source's tail; what the target held stays.
    CopyTail,
    Truncate,
    Remove,
    /// A directory (or link) created.
    Create,
}

/// One entry of pg_rewind's file map, with the blocks it overwrites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub action: FileAction,
    pub blocks: Vec<u32>,
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
    let (copy_bytes, source_bytes) = parse_copy_sizes(output).unzip();
    Some(RewindReport {
        plan,
        same_timeline,
        copy_bytes,
        source_bytes,
        file_map: parse_file_map(output),
        text: output.to_string(),
    })
}

/// "need to copy 48 MB (total source directory size is 67 MB)", in bytes.
fn parse_copy_sizes(output: &str) -> Option<(u64, u64)> {
    let rest = output.split("need to copy ").nth(1)?;
    let copy: u64 = rest.split_whitespace().next()?.parse().ok()?;
    let total: u64 = rest.split("total source directory size is ").nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some((copy << 20, total << 20))
}

/// Whether a line of pg_rewind's output belongs to its debug listing (file map, blocks, chunks),
/// which is long and for the saved report, not for the log.
pub fn is_debug_listing(line: &str) -> bool {
    let text = line.strip_prefix("pg_rewind:").unwrap_or(line).trim();
    let text = text.strip_prefix("debug:").unwrap_or(text).trim();
    text.starts_with("block ")
        || text.starts_with("received chunk")
        || (text.starts_with("getting ") && text.ends_with(" file chunks"))
        || !parse_file_map(text).is_empty()
}

/// The file map of pg_rewind's debug output: `path (ACTION)` lines, each followed by the
/// `block N` lines of the blocks it overwrites. The message prefix differs between versions
/// ("pg_rewind: ", "pg_rewind: debug: " or none), so it is taken off whatever it is.
pub fn parse_file_map(output: &str) -> Vec<FileEntry> {
    let mut entries: Vec<FileEntry> = Vec::new();
    for line in output.lines() {
        let text = line.strip_prefix("pg_rewind:").unwrap_or(line).trim();
        let text = text.strip_prefix("debug:").unwrap_or(text).trim();
        if let Some(block) = text.strip_prefix("block ") {
            if let (Ok(block), Some(entry)) = (block.trim().parse::<u32>(), entries.last_mut()) {
                entry.blocks.push(block);
            }
            continue;
        }
        let Some((path, action)) = text.rsplit_once(" (") else { continue };
        let action = match action {
            "NONE)" => FileAction::None,
            "COPY)" => FileAction::Copy,
            "COPY_TAIL)" => FileAction::CopyTail,
            "TRUNCATE)" => FileAction::Truncate,
            "REMOVE)" => FileAction::Remove,
            "CREATE)" => FileAction::Create,
            _ => continue,
        };
        if path.is_empty() {
            continue;
        }
        entries.push(FileEntry { path: path.to_string(), action, blocks: Vec::new() });
    }
    entries
}

/// pg_rewind as postgres on the cluster's data directory from `source_conninfo`.
fn rewind_command(cluster: &Cluster, source_conninfo: &str) -> Result<Command> {
    let mut command = postgres_command(&cluster.bin("pg_rewind"))?;
    command
        .arg(format!("--target-pgdata={}", cluster.data_dir.display()))
        .arg(format!("--source-server={source_conninfo}"));
    crate::signals::hand_lock_to(&mut command);
    // --progress prints what it copies, --debug its file map: the dry run's figures decide between
    // rewind and clone, and the real run's file map is checked against what was saved.
    command.args(["--progress", "--debug"]);
    Ok(command)
}

/// The rewind itself; its whole output.
pub fn invoke_pg_rewind(cluster: &Cluster, source_conninfo: &str) -> Result<String> {
    let output = output_tracked(&mut rewind_command(cluster, source_conninfo)?, "pg_rewind", None)?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("pg_rewind failed ({}):\n{}", output.status, text.trim());
    }
    Ok(text)
}

/// pg_rewind --dry-run, read until its plan is complete. Past the plan a dry run fetches from the
/// source everything it listed and throws it away, as long as the real copy takes; a dry run
/// writes nothing, so it is stopped there and leaves nothing behind. Its output up to then.
pub fn invoke_pg_rewind_plan(cluster: &Cluster, source_conninfo: &str) -> Result<String> {
    let mut command = rewind_command(cluster, source_conninfo)?;
    command.arg("--dry-run");
    // One pipe for both streams, so that the lines arrive in the order pg_rewind wrote them.
    let (reader, writer) = nix::unistd::pipe().context("cannot make a pipe for pg_rewind")?;
    command.stdin(Stdio::null()).stdout(Stdio::from(writer.try_clone()?)).stderr(Stdio::from(writer));
    let (mut child, _tracked) = spawn_tracked(&mut command, "pg_rewind --dry-run")?;
    // The command holds the pipe's write end: reading only ends once every writer closed it.
    drop(command);
    let mut output = BufReader::new(File::from(reader));
    let (mut text, mut line, mut stopped) = (String::new(), Vec::new(), false);
    loop {
        line.clear();
        if output.read_until(b'\n', &mut line).context("cannot read pg_rewind's output")? == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&line);
        text.push_str(&line);
        if completes_plan(&line) {
            let _ = child.kill();
            stopped = true;
            break;
        }
    }
    let status = child.wait().context("pg_rewind --dry-run did not finish")?;
    if stopped {
        return Ok(text);
    }
    interrupted_if_killed(status, "pg_rewind --dry-run")?;
    if !status.success() {
        bail!("pg_rewind --dry-run failed ({status}):\n{}", text.trim());
    }
    Ok(text)
}

/// The line after which a dry run has said all it plans: "need to copy N MB (total source
/// directory size is M MB)", printed (with --progress) after the file map and before the copy.
pub fn completes_plan(line: &str) -> bool {
    line.contains("need to copy ") && line.contains("total source directory size is")
}

/// pg_rewind's dry run: changes nothing, says whether and where the histories diverged.
pub fn plan(cluster: &Cluster, source_conninfo: &str) -> Result<RewindReport> {
    let text = invoke_pg_rewind_plan(cluster, source_conninfo)?;
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

    #[test]
    fn reads_the_file_map_and_sizes_of_a_saved_debug_dry_run() {
        let report = parse_rewind_output(include_str!("../../tests/data/pg_rewind-15-dry-run-debug.txt")).unwrap();
        assert_eq!((report.copy_bytes, report.source_bytes), (Some(48 << 20), Some(67 << 20)));
        let count = |action: FileAction| report.file_map.iter().filter(|entry| entry.action == action).count();
        assert_eq!((count(FileAction::Copy), count(FileAction::Remove), count(FileAction::Truncate)), (247, 10, 1));
        let truncated = report.file_map.iter().find(|entry| entry.action == FileAction::Truncate).unwrap();
        assert_eq!(truncated.path, "base/5/16384");
        assert_eq!((truncated.blocks.len(), truncated.blocks.first()), (1680, Some(&0)));
        let overwritten: Vec<&FileEntry> = report
            .file_map
            .iter()
            .filter(|entry| entry.action == FileAction::None && !entry.blocks.is_empty())
            .collect();
        assert!(!overwritten.is_empty());
        assert!(report.file_map.iter().any(|entry| entry.path == "pg_wal/000000010000000000000001"));
        assert!(report.file_map.iter().all(|entry| !entry.path.starts_with("received")), "chunk lines are no entries");
    }

    #[test]
    fn the_plan_ends_at_need_to_copy_before_any_fetch() {
        let saved = include_str!("../../tests/data/pg_rewind-15-dry-run-debug.txt");
        let end = saved.lines().position(completes_plan).expect("the saved dry run has its plan line");
        let plan: String = saved.lines().take(end + 1).map(|line| format!("{line}\n")).collect();
        assert!(saved.lines().skip(end + 1).any(|line| line.contains("received chunk")), "the fetch comes after");
        assert!(!plan.contains("received chunk"), "nothing is fetched before the plan is complete");
        assert_eq!(
            parse_rewind_output(&plan).unwrap().file_map,
            parse_rewind_output(saved).unwrap().file_map,
            "the plan up to that line holds the whole file map"
        );
        assert!(!completes_plan("pg_rewind: reading WAL in target"));
    }

    #[test]
    fn older_prefixes_read_the_same() {
        let map = parse_file_map(
            "base/1/2 (NONE)\n  block 3\n  block 4\npg_rewind: debug: global/x (COPY)\nbase/1 (CREATE)\n",
        );
        assert_eq!(
            map,
            [
                FileEntry { path: "base/1/2".into(), action: FileAction::None, blocks: vec![3, 4] },
                FileEntry { path: "global/x".into(), action: FileAction::Copy, blocks: vec![] },
                FileEntry { path: "base/1".into(), action: FileAction::Create, blocks: vec![] },
            ]
        );
    }
}
