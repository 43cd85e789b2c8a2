//! Path-level entry points for callers that hold a path, not a handle: each opens the parent
//! once with `Dir::open_following_root_links` and works on one entry.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::sys::*;
use super::*;

/// Copies everything in `src` into `dst` (usually just made by [`Dir::create_dir`]), like
/// `cp -a --reflink=auto src/. dst`, but safe in trees another account can change: symlinks in
/// the source are copied as symlinks, every destination entry is created exclusively (an entry
/// already there is an error, never written through), files are streamed (reflink, then
/// copy_file_range, then read/write), modes and times are kept, owners as `owners` says. FIFOs,
/// sockets and devices are skipped with a warning. Ends with a syncfs, so the copy is on disk.
/// The directory holding `path`, opened with [`Dir::open_following_root_links`], and the
/// entry's name: how every path-level operation below starts.
pub fn open_parent(path: &Path) -> Result<(Dir, OsString)> {
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let parent = path.parent().with_context(|| format!("{} has no parent directory", path.display()))?;
    Ok((Dir::open_following_root_links(parent)?, name.to_os_string()))
}

/// [`Dir::read_capped`] of an absolute path.
pub fn read_file_capped(path: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>> {
    let (dir, name) = open_parent(path)?;
    dir.read_capped(&name, max_bytes)
}

/// The text of a file another account can change, for parsing: at most `max_bytes`, UTF-8, no
/// symlink, FIFO or multiply-linked file followed. None when it does not exist.
pub fn read_text_capped(path: &Path, max_bytes: u64) -> Result<Option<String>> {
    match read_file_capped(path, max_bytes)? {
        Some(bytes) => {
            String::from_utf8(bytes).map(Some).with_context(|| format!("{} is not UTF-8 text", path.display()))
        }
        None => Ok(None),
    }
}

/// The last `max_bytes` of a regular file (a log), opened as [`Dir::read_capped`] opens, whatever
/// its size. For messages only.
pub fn read_tail(path: &Path, max_bytes: u64) -> Result<String> {
    use std::io::{Seek, SeekFrom};
    let (dir, name) = open_parent(path)?;
    match dir.stat(&name)? {
        Some(stat) if stat.kind == Kind::File => {}
        Some(stat) => bail!("{} is {}, expected a regular file", path.display(), stat.kind),
        None => bail!("{} does not exist", path.display()),
    }
    let mut file = dir.open_file(&name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
    let stat = fstat(file.as_fd()).with_context(|| format!("cannot stat {}", path.display()))?;
    if stat.kind != Kind::File || stat.nlink != 1 {
        bail!("{} is not a regular file with one link", path.display());
    }
    file.seek(SeekFrom::Start(stat.size.saturating_sub(max_bytes)))?;
    let mut content = Vec::new();
    file.take(max_bytes).read_to_end(&mut content)?;
    Ok(String::from_utf8_lossy(&content).into_owned())
}
