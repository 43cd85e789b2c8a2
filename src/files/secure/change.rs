//! Changing entries through a directory handle: atomic writes, exclusive directories, renames
//! that never replace what they should not, and removal that follows no link.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;

use super::sys::*;
use super::*;

impl Dir {
    /// Replaces `name` with `content`, atomically, owned and moded as `ownership`. The content is
    /// written to a fresh file that only root can read until its owner and mode are set, then
    /// renamed onto `name`: a symlink or hard link at `name` is replaced, not written through.
    pub fn write_atomic(&self, name: impl AsRef<OsStr>, content: &[u8], ownership: Ownership) -> Result<()> {
        let name = name.as_ref();
        let target = self.child(name);
        let cname = entry_name(name, &self.path)?;
        let (temp, mut file) = self.create_temp()?;
        let written = (|| -> Result<Stat> {
            // Owner first: chown clears setuid/setgid bits, so the mode set after it is the one that stays.
            set_ownership(file.as_fd(), ownership)?;
            file.write_all(content)?;
            file.sync_all()?;
            let stat = fstat(file.as_fd())?;
            retry(|| unsafe { libc::renameat(self.raw(), temp.as_ptr(), self.raw(), cname.as_ptr()) })?;
            Ok(stat)
        })();
        let written = match written {
            Ok(stat) => stat,
            Err(error) => {
                let _ = retry(|| unsafe { libc::unlinkat(self.raw(), temp.as_ptr(), 0) });
                return Err(error.context(format!("cannot write {}", target.display())));
            }
        };
        // The temporary name was in a directory the attacker can change: make sure what got renamed
        // onto the target is the file written above, not one swapped in under the temporary name.
        match self.stat_raw(&cname) {
            Ok(now) if now.same_inode(&written) => {}
            _ => bail!(
                "{} was replaced while pgha wrote it; someone else is changing {}",
                target.display(),
                self.path.display()
            ),
        }
        self.sync()
    }

    /// A new file under an unpredictable name, 0600 and owned by root (the creator).
    fn create_temp(&self) -> Result<(CString, File)> {
        for _ in 0..16 {
            let temp = CString::new(format!(".pgha-tmp-{:016x}", random_u64()?)).expect("no NUL");
            match self.openat(&temp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | SAFE_FLAGS, 0o600) {
                Ok(fd) => return Ok((temp, File::from(fd))),
                Err(Errno::EEXIST) => continue,
                Err(errno) => {
                    return Err(io::Error::from(errno))
                        .with_context(|| format!("cannot create a temporary file in {}", self.path.display()))
                }
            }
        }
        bail!("cannot create a temporary file in {}: every random name was taken", self.path.display())
    }

    /// Makes a new directory `name` and returns its handle, with `ownership` set through the
    /// handle. Anything already at `name` (a symlink included) is refused (`AlreadyExists`).
    pub fn create_dir(&self, name: impl AsRef<OsStr>, ownership: Ownership) -> Result<Dir> {
        let name = name.as_ref();
        let cname = entry_name(name, &self.path)?;
        match retry(|| unsafe { libc::mkdirat(self.raw(), cname.as_ptr(), 0o700) }) {
            Ok(_) => self.adopt_new_dir(name, ownership),
            Err(Errno::EEXIST) => {
                let what =
                    self.stat_raw(&cname).map(|stat| stat.kind.to_string()).unwrap_or_else(|_| "something".into());
                Err(anyhow!(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("cannot create directory {}: {what} is already there", self.child(name).display())
                )))
            }
            Err(errno) => Err(io::Error::from(errno))
                .with_context(|| format!("cannot create directory {}", self.child(name).display())),
        }
    }

    /// Opens the directory just made at `name`, making sure it is still the one made: between
    /// mkdirat and open, the parent's owner could have removed it and put another in its place.
    fn adopt_new_dir(&self, name: &OsStr, ownership: Ownership) -> Result<Dir> {
        let dir = self.open_dir(name)?;
        let stat = dir.metadata()?;
        let euid = unsafe { libc::geteuid() };
        if stat.uid != euid || stat.mode & 0o077 != 0 || !dir.list()?.is_empty() {
            bail!(
                "{} was replaced right after pgha created it (now owned by uid {}, mode {:04o}); \
                 someone else is changing {}",
                dir.path.display(),
                stat.uid,
                stat.mode,
                self.path.display()
            );
        }
        dir.set_ownership(ownership)?;
        Ok(dir)
    }

    /// Like [`Dir::create_dir`], but an existing real directory at `name` is accepted and given
    /// `ownership`; a symlink or anything else is still refused. Returns whether it was created.
    /// Only for names whose directory belongs to the account of `ownership` (or root) anyway: an
    /// existing directory is handed to that account.
    pub fn create_dir_or_open_existing(&self, name: impl AsRef<OsStr>, ownership: Ownership) -> Result<(Dir, bool)> {
        let name = name.as_ref();
        let cname = entry_name(name, &self.path)?;
        match retry(|| unsafe { libc::mkdirat(self.raw(), cname.as_ptr(), 0o700) }) {
            Ok(_) => Ok((self.adopt_new_dir(name, ownership)?, true)),
            Err(Errno::EEXIST) => {
                let dir = self.open_dir(name)?;
                dir.set_ownership(ownership)?;
                Ok((dir, false))
            }
            Err(errno) => Err(io::Error::from(errno))
                .with_context(|| format!("cannot create directory {}", self.child(name).display())),
        }
    }

    /// Makes a new directory named `prefix` followed by random hex digits, never an existing one.
    /// Returns its name and handle.
    // Part of the handle API; exercised by the tests until a caller needs it.
    #[allow(dead_code)]
    pub fn create_unique_dir(&self, prefix: &str, ownership: Ownership) -> Result<(String, Dir)> {
        for _ in 0..16 {
            let name = format!("{prefix}{:012x}", random_u64()? & 0xffff_ffff_ffff);
            match self.create_dir(&name, ownership) {
                Ok(dir) => return Ok((name, dir)),
                Err(error) if io_error_kind(&error) == Some(io::ErrorKind::AlreadyExists) => continue,
                Err(error) => return Err(error),
            }
        }
        bail!("cannot create a directory named {prefix}… in {}: every random name was taken", self.path.display())
    }

    /// Renames `from` to `to`, both in this directory, replacing what is at `to` (a directory only
    /// when empty).
    // Part of the handle API; exercised by the tests until a caller needs it.
    #[allow(dead_code)]
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> Result<()> {
        self.rename_flags(from.as_ref(), to.as_ref(), 0)
    }

    /// Renames `from` to `to`, refusing (`AlreadyExists`) when anything is at `to`.
    pub fn rename_noreplace(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> Result<()> {
        self.rename_flags(from.as_ref(), to.as_ref(), libc::RENAME_NOREPLACE)
    }

    /// Swaps the entries `a` and `b` atomically: at every moment each name exists.
    // Part of the handle API; exercised by the tests until a caller needs it.
    #[allow(dead_code)]
    pub fn exchange(&self, a: impl AsRef<OsStr>, b: impl AsRef<OsStr>) -> Result<()> {
        self.rename_flags(a.as_ref(), b.as_ref(), libc::RENAME_EXCHANGE)
    }

    fn rename_flags(&self, from: &OsStr, to: &OsStr, flags: libc::c_uint) -> Result<()> {
        let cfrom = entry_name(from, &self.path)?;
        let cto = entry_name(to, &self.path)?;
        retry(|| unsafe { libc::renameat2(self.raw(), cfrom.as_ptr(), self.raw(), cto.as_ptr(), flags) })
            .map_err(io::Error::from)
            .with_context(|| format!("cannot rename {} to {}", self.child(from).display(), self.child(to).display()))?;
        Ok(())
    }

    /// Removes a non-directory entry (a symlink itself, never its target).
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = name.as_ref();
        let cname = entry_name(name, &self.path)?;
        retry(|| unsafe { libc::unlinkat(self.raw(), cname.as_ptr(), 0) })
            .map_err(io::Error::from)
            .with_context(|| format!("cannot remove {}", self.child(name).display()))?;
        Ok(())
    }

    /// Removes an empty directory.
    pub fn remove_dir(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = name.as_ref();
        let cname = entry_name(name, &self.path)?;
        retry(|| unsafe { libc::unlinkat(self.raw(), cname.as_ptr(), libc::AT_REMOVEDIR) })
            .map_err(io::Error::from)
            .with_context(|| format!("cannot remove directory {}", self.child(name).display()))?;
        Ok(())
    }

    /// Removes `name` and, for a directory, everything in it, descending through handles: a
    /// symlink inside is removed, never followed. `NotFound` when there is no `name`.
    pub fn remove_tree(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = name.as_ref();
        if self.stat(name)?.is_none() {
            return Err(anyhow!(io::Error::from(io::ErrorKind::NotFound)))
                .with_context(|| format!("cannot remove {}", self.child(name).display()));
        }
        self.remove_tree_at(name, 0)
    }

    fn remove_tree_at(&self, name: &OsStr, depth: usize) -> Result<()> {
        let stat = match self.stat(name)? {
            Some(stat) => stat,
            // Gone meanwhile: what was asked for is done.
            None => return Ok(()),
        };
        if stat.kind != Kind::Dir {
            return self.remove_file(name).or_else(|error| if is_not_found(&error) { Ok(()) } else { Err(error) });
        }
        if depth >= MAX_DEPTH {
            bail!("cannot remove {}: nested deeper than {MAX_DEPTH} directories", self.child(name).display());
        }
        let dir = self.open_dir(name)?;
        for entry in dir.list()? {
            dir.remove_tree_at(&entry, depth + 1)?;
        }
        self.remove_dir(name)
    }
}
