//! The recursive copy through handles: links copied as links, file data streamed.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStringExt;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;

use super::sys::*;
use super::*;

/// On error `dst` holds a partial copy; remove it with [`Dir::remove_tree`].
pub fn copy_tree(src: &Dir, dst: &Dir, owners: CopyOwnership) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    copy_entries(src, dst, owners, &mut report, 0)?;
    retry(|| unsafe { libc::syncfs(dst.raw()) })
        .map_err(io::Error::from)
        .with_context(|| format!("cannot sync the file system of {}", dst.path.display()))?;
    Ok(report)
}

fn copy_entries(src: &Dir, dst: &Dir, owners: CopyOwnership, report: &mut CopyReport, depth: usize) -> Result<()> {
    if depth >= MAX_DEPTH {
        bail!("cannot copy {}: nested deeper than {MAX_DEPTH} directories", src.path.display());
    }
    for name in src.list()? {
        let path = src.child(&name);
        let Some(stat) = src.stat(&name)? else {
            bail!("cannot copy {}: it disappeared while being copied", path.display());
        };
        let (uid, gid) = owner_for(owners, &stat);
        match stat.kind {
            Kind::File => {
                report.bytes += copy_file(src, dst, &name, &stat, (uid, gid))?;
                report.files += 1;
            }
            Kind::Dir => {
                let from = src.open_dir(&name)?;
                if !from.metadata()?.same_inode(&stat) {
                    bail!("cannot copy {}: it was replaced while being copied", path.display());
                }
                // Setuid means nothing on a directory; setgid and sticky are kept.
                let to = dst.create_dir(&name, Ownership { uid, gid, mode: stat.mode & 0o3777 })?;
                copy_entries(&from, &to, owners, report, depth + 1)?;
                set_times(to.fd.as_fd(), &stat)
                    .with_context(|| format!("cannot set the times of {}", to.path.display()))?;
                report.dirs += 1;
            }
            Kind::Symlink => {
                copy_symlink(src, dst, &name, &stat, (uid, gid))?;
                report.symlinks += 1;
            }
            other => {
                log::warn!(
                    "not copying {}: it is {other}; only files, directories and symbolic links are copied",
                    path.display()
                );
                report.skipped.push(path);
            }
        }
    }
    Ok(())
}

fn owner_for(owners: CopyOwnership, stat: &Stat) -> (u32, u32) {
    match owners {
        CopyOwnership::Fixed { uid, gid } => (uid, gid),
        CopyOwnership::Preserve if unsafe { libc::geteuid() } == 0 => (stat.uid, stat.gid),
        CopyOwnership::Preserve => unsafe { (libc::geteuid(), libc::getegid()) },
    }
}

fn copy_file(src: &Dir, dst: &Dir, name: &OsStr, listed: &Stat, (uid, gid): (u32, u32)) -> Result<u64> {
    let from_path = src.child(name);
    let to_path = dst.child(name);
    let cname = entry_name(name, &src.path)?;
    let from = match src.openat(&cname, libc::O_RDONLY | libc::O_NONBLOCK | SAFE_FLAGS, 0) {
        Ok(fd) => File::from(fd),
        Err(Errno::ELOOP) => return Err(src.unexpected(name, "a regular file")),
        Err(errno) => {
            return Err(io::Error::from(errno)).with_context(|| format!("cannot open {}", from_path.display()))
        }
    };
    let stat = fstat(from.as_fd())?;
    if stat.kind != Kind::File || !stat.same_inode(listed) {
        bail!("cannot copy {}: it was replaced while being copied", from_path.display());
    }
    let to = match dst.openat(&cname, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | SAFE_FLAGS, 0o600) {
        Ok(fd) => File::from(fd),
        Err(Errno::EEXIST) => {
            let what = dst.stat_raw(&cname).map(|stat| stat.kind.to_string()).unwrap_or_else(|_| "something".into());
            bail!("cannot copy to {}: {what} is already there", to_path.display());
        }
        Err(errno) => {
            return Err(io::Error::from(errno)).with_context(|| format!("cannot create {}", to_path.display()))
        }
    };
    // A file's setuid/setgid bits are not copied: nothing in a PostgreSQL tree has them, and a copy
    // made by root must not hand out privileges.
    set_ownership(to.as_fd(), Ownership { uid, gid, mode: stat.mode & 0o1777 })
        .with_context(|| format!("cannot set owner and mode of {}", to_path.display()))?;
    let bytes = copy_data(&from, &to)
        .with_context(|| format!("cannot copy {} to {}", from_path.display(), to_path.display()))?;
    set_times(to.as_fd(), &stat).with_context(|| format!("cannot set the times of {}", to_path.display()))?;
    Ok(bytes)
}

/// Streams `from` into `to`: a reflink where the file system shares extents (btrfs, XFS), else
/// an in-kernel copy, else plain reads and writes. Never holds more than one chunk in memory.
fn copy_data(from: &File, to: &File) -> io::Result<u64> {
    if unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0 {
        return Ok(fstat(to.as_fd())?.size);
    }
    let mut copied = 0u64;
    loop {
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                1 << 30,
                0,
            )
        };
        match Errno::result(n) {
            Ok(0) => return Ok(copied),
            Ok(n) => copied += n as u64,
            Err(Errno::EINTR) => {}
            // Not supported here: go on with reads and writes from the same offsets.
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EPERM) => break,
            Err(errno) => return Err(errno.into()),
        }
    }
    let mut buffer = vec![0u8; COPY_CHUNK];
    let (mut reader, mut writer) = (from, to);
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        writer.write_all(&buffer[..n])?;
        copied += n as u64;
    }
}

fn copy_symlink(src: &Dir, dst: &Dir, name: &OsStr, stat: &Stat, (uid, gid): (u32, u32)) -> Result<()> {
    let to_path = dst.child(name);
    let cname = entry_name(name, &src.path)?;
    let target = readlinkat(src, &cname, stat.size)
        .with_context(|| format!("cannot read link {}", src.child(name).display()))?;
    let ctarget = CString::new(target.into_vec()).context("a symbolic link target with a NUL byte")?;
    match retry(|| unsafe { libc::symlinkat(ctarget.as_ptr(), dst.raw(), cname.as_ptr()) }) {
        Ok(_) => {}
        Err(Errno::EEXIST) => bail!("cannot copy to {}: something is already there", to_path.display()),
        Err(errno) => {
            return Err(io::Error::from(errno)).with_context(|| format!("cannot create {}", to_path.display()))
        }
    }
    retry(|| unsafe { libc::fchownat(dst.raw(), cname.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
        .map_err(io::Error::from)
        .with_context(|| format!("cannot set the owner of {}", to_path.display()))?;
    let times = [stat.atime, stat.mtime];
    retry(|| unsafe { libc::utimensat(dst.raw(), cname.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map_err(io::Error::from)
        .with_context(|| format!("cannot set the times of {}", to_path.display()))?;
    Ok(())
}
