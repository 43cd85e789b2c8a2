//! The system calls and small helpers the handle code needs and nix does not offer as such.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;

use super::*;

pub(super) fn readlinkat(dir: &Dir, cname: &CString, size_hint: u64) -> io::Result<OsString> {
    let mut buffer = vec![0u8; (size_hint as usize).clamp(64, libc::PATH_MAX as usize) + 1];
    loop {
        let n = unsafe { libc::readlinkat(dir.raw(), cname.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buffer.len() {
            buffer.truncate(n);
            return Ok(OsString::from_vec(buffer));
        }
        // Truncated: the link changed since it was looked at. Try again with room to spare.
        if buffer.len() > 1 << 16 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "symbolic link target too long"));
        }
        buffer.resize(buffer.len() * 2, 0);
    }
}

pub(super) fn set_ownership(fd: BorrowedFd<'_>, ownership: Ownership) -> io::Result<()> {
    std::os::unix::fs::fchown(fd, Some(ownership.uid), Some(ownership.gid))?;
    retry(|| unsafe { libc::fchmod(fd.as_raw_fd(), ownership.mode as libc::mode_t) })?;
    Ok(())
}

pub(super) fn set_times(fd: BorrowedFd<'_>, stat: &Stat) -> io::Result<()> {
    let times = [stat.atime, stat.mtime];
    retry(|| unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?;
    Ok(())
}

pub(super) fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    let mut raw = std::mem::MaybeUninit::<libc::stat>::uninit();
    retry(|| unsafe { libc::fstat(fd.as_raw_fd(), raw.as_mut_ptr()) })?;
    Ok(Stat::from_raw(unsafe { &raw.assume_init() }))
}

pub(super) fn list_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    // fdopendir takes the descriptor over, so it gets a duplicate; the duplicate shares the
    // directory offset, hence the rewind.
    let copy = retry(|| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    let stream = unsafe { libc::fdopendir(copy) };
    if stream.is_null() {
        let error = io::Error::last_os_error();
        unsafe { libc::close(copy) };
        return Err(error);
    }
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    let result = loop {
        Errno::clear();
        let entry = unsafe { libc::readdir64(stream) };
        if entry.is_null() {
            match Errno::last_raw() {
                0 => break Ok(names),
                raw => break Err(io::Error::from_raw_os_error(raw)),
            }
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    };
    unsafe { libc::closedir(stream) };
    result
}

/// The names in a path, last first; `..` is refused.
pub(super) fn plain_components(path: &Path) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => names.push(name.to_os_string()),
            Component::ParentDir | Component::Prefix(_) => {
                bail!("{} has `..`, which pgha does not follow", path.display())
            }
        }
    }
    names.reverse();
    Ok(names)
}

/// A single directory entry name: not empty, not `.` or `..`, no `/` and no NUL.
pub(super) fn entry_name(name: &OsStr, dir: &Path) -> Result<CString> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') || bytes.contains(&0) {
        bail!("{:?} is not a plain name of an entry in {}", name, dir.display());
    }
    Ok(CString::new(bytes).expect("checked for NUL"))
}

pub(super) fn random_u64() -> Result<u64> {
    let mut bytes = [0u8; 8];
    let n = retry(|| unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) as libc::c_int })
        .map_err(io::Error::from)
        .context("cannot get random bytes from the kernel")?;
    if n as usize != bytes.len() {
        bail!("cannot get random bytes from the kernel: short read");
    }
    Ok(u64::from_ne_bytes(bytes))
}

/// Runs a libc call until it is not interrupted; -1 becomes the errno.
pub(super) fn retry(mut call: impl FnMut() -> libc::c_int) -> nix::Result<libc::c_int> {
    loop {
        match Errno::result(call()) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}
