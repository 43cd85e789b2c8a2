//! pg_basebackup: the copy of the primary a standby starts from, with its progress.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::debian::Cluster;
use crate::tools::{postgres_command, spawn_tracked};

/// One pg_basebackup `-P` progress line: "12345/67890 kB (18%), 0/1 tablespace (...)".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done_kb: u64,
    pub total_kb: u64,
    pub percent: u32,
}

impl Progress {
    pub fn status_line(&self) -> String {
        format!("cloning {}%, {}/{} MB", self.percent, self.done_kb / 1024, self.total_kb / 1024)
    }
}

pub fn parse_basebackup_progress(line: &str) -> Option<Progress> {
    let (sizes, rest) = line.trim_start().split_once(" kB (")?;
    let (done, total) = sizes.split_once('/')?;
    let percent = rest.split_once("%)")?.0;
    Some(Progress {
        done_kb: done.trim().parse().ok()?,
        total_kb: total.trim().parse().ok()?,
        // pg_basebackup caps its own figure at 100; a larger one must not upset the callers' arithmetic.
        percent: percent.trim().parse::<u32>().ok()?.min(100),
    })
}

/// What to copy from where. The conninfo carries a passfile, never a password.
pub struct Basebackup<'a> {
    pub cluster: &'a Cluster,
    pub conninfo: String,
    pub pgdata: PathBuf,
    pub slot: Option<String>,
    /// `--create-slot` (11+).
    pub create_slot: bool,
}

/// Runs pg_basebackup as postgres with `-X stream --checkpoint=fast`; `progress` sees each
/// progress line, `message` every other line it prints. The error carries its last lines.
pub fn invoke_pg_basebackup(
    request: &Basebackup,
    mut progress: impl FnMut(Progress),
    mut message: impl FnMut(&str),
) -> Result<()> {
    let cluster = request.cluster;
    let mut command = postgres_command(&cluster.bin("pg_basebackup"))?;
    command
        .arg(format!("--dbname={}", request.conninfo))
        .arg(format!("--pgdata={}", request.pgdata.display()))
        .arg(format!("{}=stream", cluster.version.wal_method_flag()))
        .args(["--checkpoint=fast", "--progress", "--verbose", "--no-password"]);
    if let Some(name) = &request.slot {
        command.arg(format!("--slot={name}"));
        if request.create_slot {
            command.arg("--create-slot");
        }
    }
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    crate::signals::hand_lock_to(&mut command);
    let (mut child, _tracked) = spawn_tracked(&mut command, "pg_basebackup")?;
    let stderr = child.stderr.take().context("pg_basebackup's stderr is not a pipe")?;
    let mut tail: Vec<String> = Vec::new();
    let mut reader = BufReader::new(stderr);
    let mut buffer = Vec::new();
    // -P ends its lines with \r on a terminal and \n otherwise: split on both.
    loop {
        buffer.clear();
        if read_until_either(&mut reader, &mut buffer)? == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buffer).trim_end().to_string();
        if line.trim().is_empty() {
            continue;
        }
        match parse_basebackup_progress(&line) {
            Some(step) => progress(step),
            None => {
                message(line.trim());
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
        }
    }
    let status = child.wait().context("pg_basebackup did not finish")?;
    crate::tools::interrupted_if_killed(status, "pg_basebackup")?;
    if !status.success() {
        bail!("pg_basebackup failed ({status}):\n{}", tail.join("\n"));
    }
    Ok(())
}

fn read_until_either(reader: &mut impl BufRead, buffer: &mut Vec<u8>) -> Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf().context("cannot read pg_basebackup's output")?;
        if available.is_empty() {
            return Ok(total);
        }
        match available.iter().position(|byte| *byte == b'\n' || *byte == b'\r') {
            Some(end) => {
                buffer.extend_from_slice(&available[..end]);
                reader.consume(end + 1);
                return Ok(total + end + 1);
            }
            None => {
                let length = available.len();
                buffer.extend_from_slice(available);
                reader.consume(length);
                total += length;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_saved_basebackup_progress() {
        let output = include_str!("../../tests/data/pg_basebackup-15-progress.txt");
        let progress: Vec<Progress> = output.lines().filter_map(parse_basebackup_progress).collect();
        assert_eq!(progress.len(), 6);
        assert_eq!(progress[0], Progress { done_kb: 30760, total_kb: 129586, percent: 23 });
        assert_eq!(progress[0].status_line(), "cloning 23%, 30/126 MB");
        assert_eq!(progress.last().unwrap().percent, 100);
        assert!(parse_basebackup_progress("pg_basebackup: checkpoint completed").is_none());
    }

    #[test]
    fn splits_lines_on_carriage_returns_too() {
        let mut reader = std::io::Cursor::new(b"1/2 kB (50%)\r2/2 kB (100%)\nlast".to_vec());
        let mut lines = Vec::new();
        loop {
            let mut buffer = Vec::new();
            if read_until_either(&mut reader, &mut buffer).unwrap() == 0 {
                break;
            }
            lines.push(String::from_utf8(buffer).unwrap());
        }
        assert_eq!(lines, ["1/2 kB (50%)", "2/2 kB (100%)", "last"]);
    }
}
