//! `pgha prune-archive`: keep the WAL archive within archive.keep and archive.max_size, so it
//! cannot grow forever.
//!
//! The archive directory belongs to postgres, and so does everything the archive_command puts
//! in it. The deleting is therefore done as postgres: root reads pgha.conf, then gives up its
//! rights for good before it lists anything, so a symlink or a renamed directory planted by the
//! postgres account can at worst make pgha delete what that account could delete itself.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::unistd::{Gid, Uid};

use crate::config::Config;
use crate::error::{ConfigError, EXIT_OK};
use crate::files::archive::{prune, prune_to_size};
use crate::host::postgres_account;

#[derive(Debug, Args)]
pub struct PruneArchiveArgs {
    /// List what would be deleted and delete nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// Gives up root for the postgres account, for the rest of the process. The systemd unit starts
/// pgha as postgres already (its system call filter forbids setuid), so there this is a check.
/// Any other account could not delete postgres' files anyway, and is refused with a clear word.
fn become_postgres() -> Result<()> {
    let account = postgres_account()?;
    let (uid, gid) = (Uid::from_raw(account.uid), Gid::from_raw(account.gid));
    if Uid::effective() == uid {
        return Ok(());
    }
    if !Uid::effective().is_root() {
        return Err(ConfigError::new(format!(
            "pgha prune-archive runs as root or postgres, not as uid {}: it deletes as postgres, the archive's owner",
            Uid::effective()
        ))
        .into());
    }
    nix::unistd::setgroups(&[gid]).context("cannot drop root's supplementary groups")?;
    nix::unistd::setgid(gid).context("cannot become group postgres")?;
    nix::unistd::setuid(uid).context("cannot become user postgres")?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        bail!("could still become root after switching to postgres: refusing to delete anything");
    }
    Ok(())
}

impl PruneArchiveArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let config = Config::load(config_path)?;
        if !config.archive.enabled {
            println!("archive.enabled is false: nothing to prune");
            return Ok(EXIT_OK);
        }
        become_postgres()?;
        let directory = &config.archive.directory;
        let keep = humantime::format_duration(config.archive.keep);
        let Some(pruned) = prune(directory, config.archive.keep, SystemTime::now(), self.dry_run)? else {
            println!("{} does not exist: nothing to prune", directory.display());
            return Ok(EXIT_OK);
        };
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        if pruned.count == 0 {
            println!("nothing older than {keep} in {}: no changes", directory.display());
        } else {
            log::info!("{verb} {} archived files ({} MB) older than {keep}", pruned.count, pruned.bytes >> 20);
            println!("{verb} {} files, {} MB", pruned.count, pruned.bytes >> 20);
        }
        let mut failed = pruned.failed;
        if let Some(max_bytes) = config.archive.max_bytes {
            let capped = prune_to_size(directory, max_bytes, None, self.dry_run)?;
            if capped.count > 0 {
                let max = crate::size::format_bytes(max_bytes);
                log::info!(
                    "{verb} the {} oldest archived files ({} MB) beyond archive.max_size {max}",
                    capped.count,
                    capped.bytes >> 20
                );
                println!(
                    "{verb} {} more files, {} MB, beyond archive.max_size {max}",
                    capped.count,
                    capped.bytes >> 20
                );
            }
            failed += capped.failed;
        }
        if failed > 0 {
            bail!("{failed} files in {} could not be deleted (see the warnings above)", directory.display());
        }
        Ok(EXIT_OK)
    }
}
