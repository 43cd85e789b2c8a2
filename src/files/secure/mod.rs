//! Root's file work in directories another account can change (the postgres account owns the
//! config directory, the data directory and its siblings, the archive): every such change goes
//! through a [`Dir`] handle, so nobody who can rename, link or replace entries there can make
//! root write, chown, read or delete anything outside them.
//!
//! The model, in five rules:
//! - **Directories are handles, not paths.** [`Dir::open`] walks from `/` one component at a time
//!   with `openat(O_DIRECTORY|O_NOFOLLOW)`, so a symlink anywhere in the path is refused, not
//!   followed. Everything after that is relative to the handle (`*at` system calls on one name,
//!   never a path with `/`), so renaming or replacing a directory after it was opened cannot
//!   redirect the work: it follows the inode, which the attacker could already write.
//! - **New entries are created exclusively** (`O_CREAT|O_EXCL|O_NOFOLLOW`, `mkdirat`, `symlinkat`),
//!   files under an unpredictable temporary name, and owner and mode are set on the open
//!   descriptor (`fchown`, `fchmod`) before any content is written. A file is made 0600 and owned
//!   by root, so a secret is never readable by anyone else, not even for a moment.
//! - **Replacing is a rename within one directory handle**, which swaps the directory entry: a
//!   symlink or a hard link planted at the target name is replaced, never written through.
//! - **Reads open with `O_NOFOLLOW|O_NONBLOCK`**, accept only a regular file with one link, and cap
//!   the size, so a FIFO cannot hang pgha, a device is never opened, and a link to a file only
//!   root may read is refused.
//! - **Recursive work (remove, copy) descends through directory handles** and never follows a
//!   symlink: one found inside is removed or copied as a symlink.
//!
//! Why not do the work as the owning account instead (a child that dropped to postgres)? Most of
//! what pgha does in these trees needs root anyway (root-owned files in the config directory, the
//! chown of a fresh clone, moving data directories), and a child per operation would still need
//! these same rules for everything root does there. One model that holds for root is simpler to
//! get right than two.
//!
//! The code is split by what it does: opening and reading here, changing entries in `change`,
//! path-level helpers and the recursive copy in `paths` and `copy`, system calls nix lacks in `sys`.

mod change;
mod copy;
mod paths;
mod sys;
#[cfg(test)]
mod tests;

pub use copy::copy_tree;
pub use paths::{open_parent, read_tail, read_text_capped};
use sys::*;

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;

/// Owner and mode an entry must end up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// What a directory entry is, as `lstat` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Unknown => "a file of unknown type",
        })
    }
}

/// The parts of `struct stat` pgha decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, including setuid, setgid and sticky.
    pub mode: u32,
    pub size: u64,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
    atime: libc::timespec,
    mtime: libc::timespec,
}

impl Stat {
    // The field types of struct stat differ between architectures (st_nlink is u32 on aarch64).
    #[allow(clippy::unnecessary_cast)]
    fn from_raw(raw: &libc::stat) -> Stat {
        let kind = match raw.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => Kind::Unknown,
        };
        Stat {
            kind,
            uid: raw.st_uid,
            gid: raw.st_gid,
            mode: raw.st_mode & 0o7777,
            size: raw.st_size as u64,
            nlink: raw.st_nlink as u64,
            dev: raw.st_dev,
            ino: raw.st_ino,
            atime: libc::timespec { tv_sec: raw.st_atime, tv_nsec: raw.st_atime_nsec },
            mtime: libc::timespec { tv_sec: raw.st_mtime, tv_nsec: raw.st_mtime_nsec },
        }
    }

    fn same_inode(&self, other: &Stat) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// The io::ErrorKind at the bottom of an error from this module, so callers can tell a missing
/// entry (`NotFound`) or a taken name (`AlreadyExists`) from a refusal.
pub fn io_error_kind(error: &anyhow::Error) -> Option<io::ErrorKind> {
    error.chain().find_map(|cause| cause.downcast_ref::<io::Error>()).map(io::Error::kind)
}

pub fn is_not_found(error: &anyhow::Error) -> bool {
    io_error_kind(error) == Some(io::ErrorKind::NotFound)
}

/// How [`copy_tree`] sets the owner of what it creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyOwnership {
    /// The source entry's owner (only root can give files away; otherwise the caller's).
    Preserve,
    /// Everything owned by this account.
    // Part of the handle API; exercised by the tests until a caller needs it.
    #[allow(dead_code)]
    Fixed { uid: u32, gid: u32 },
}

/// What [`copy_tree`] copied, and what it left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// FIFOs, sockets and devices: not copied, each logged as a warning.
    pub skipped: Vec<PathBuf>,
}

/// Deeper than any PostgreSQL tree; a bound keeps a hostile tree from exhausting descriptors or
/// the stack.
const MAX_DEPTH: usize = 128;
const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
/// Every open of an entry: never follow a final symlink, never hang on a FIFO or become the
/// controlling terminal, never leak into children.
const SAFE_FLAGS: libc::c_int = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY;
const COPY_CHUNK: usize = 1 << 20;

/// An open directory, reached without following any symlink. All operations take a single
/// entry name in this directory, never a path.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl fmt::Debug for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dir").field("path", &self.path).field("fd", &self.fd.as_raw_fd()).finish()
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Dir {
    /// Opens an absolute path, refusing a symlink at any component (including the last) and `..`.
    pub fn open(path: impl AsRef<Path>) -> Result<Dir> {
        let path = path.as_ref();
        if !path.is_absolute() {
            bail!("cannot open {}: pgha opens only absolute paths here", path.display());
        }
        let root = CString::new("/").expect("no NUL");
        let fd = retry(|| unsafe { libc::open(root.as_ptr(), DIR_FLAGS) })
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .map_err(io::Error::from)
            .context("cannot open /")?;
        let mut dir = Dir { fd, path: PathBuf::from("/") };
        for component in path.components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => {
                    dir = dir.open_dir(name).with_context(|| format!("cannot open {}", path.display()))?
                }
                Component::ParentDir | Component::Prefix(_) => {
                    bail!("cannot open {}: pgha does not follow `..` in a path", path.display())
                }
            }
        }
        Ok(dir)
    }

    /// Like [`Dir::open`], but follows a symlink that only root can have made or changed: owned by
    /// root, in a directory owned by root that no one else can write (admins link
    /// /var/lib/postgresql to another disk that way). Any other symlink is refused, and so is
    /// `..` in a link's target. For the part of a path above the trees another account owns.
    pub fn open_following_root_links(path: impl AsRef<Path>) -> Result<Dir> {
        let path = path.as_ref();
        let context = || format!("cannot open {}", path.display());
        let mut pending = plain_components(path).with_context(context)?;
        let mut dir = Dir::open("/")?;
        let mut followed = 0;
        while let Some(name) = pending.pop() {
            let link = match dir.stat(&name).with_context(context)? {
                Some(stat) if stat.kind == Kind::Symlink => stat,
                _ => {
                    dir = dir.open_dir(&name).with_context(context)?;
                    continue;
                }
            };
            let here = dir.metadata()?;
            if link.uid != 0 || here.uid != 0 || here.mode & 0o022 != 0 {
                return Err(dir.unexpected(&name, "a directory")).with_context(context);
            }
            followed += 1;
            if followed > 40 {
                bail!("cannot open {}: more than 40 symbolic links", path.display());
            }
            let cname = entry_name(&name, &dir.path)?;
            let target = PathBuf::from(readlinkat(&dir, &cname, link.size).with_context(context)?);
            // Components are taken from the end of `pending`, so the target's go on in reverse.
            pending.extend(plain_components(&target).with_context(context)?);
            if target.is_absolute() {
                dir = Dir::open("/")?;
            }
        }
        Ok(dir)
    }

    /// The path this handle was opened by, for messages. The directory may have been renamed since.
    // Part of the handle API; exercised by the tests until a caller needs it.
    #[allow(dead_code)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn child(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    fn raw(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }

    /// This directory's own owner, mode and identity.
    pub fn metadata(&self) -> Result<Stat> {
        fstat(self.fd.as_fd()).with_context(|| format!("cannot stat {}", self.path.display()))
    }

    /// `lstat` of an entry, or None when there is none.
    pub fn stat(&self, name: impl AsRef<OsStr>) -> Result<Option<Stat>> {
        let name = name.as_ref();
        let cname = entry_name(name, &self.path)?;
        match self.stat_raw(&cname) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => {
                Err(io::Error::from(errno)).with_context(|| format!("cannot stat {}", self.child(name).display()))
            }
        }
    }

    fn stat_raw(&self, cname: &CString) -> nix::Result<Stat> {
        let mut raw = std::mem::MaybeUninit::<libc::stat>::uninit();
        retry(|| unsafe { libc::fstatat(self.raw(), cname.as_ptr(), raw.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(Stat::from_raw(unsafe { &raw.assume_init() }))
    }

    /// Why an entry that should have been `expected` was not: names what is there.
    fn unexpected(&self, name: &OsStr, expected: &str) -> anyhow::Error {
        let path = self.child(name);
        let cname = CString::new(name.as_bytes()).unwrap_or_default();
        match self.stat_raw(&cname) {
            Ok(stat) if stat.kind == Kind::Symlink => anyhow!(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is a symbolic link, expected {expected}; pgha follows no symlink in a directory \
                     another account can change",
                    path.display()
                )
            )),
            Ok(stat) => anyhow!(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is {}, expected {expected}", path.display(), stat.kind)
            )),
            Err(errno) => anyhow!(io::Error::from(errno)).context(format!("cannot open {}", path.display())),
        }
    }

    fn openat(&self, cname: &CString, flags: libc::c_int, mode: libc::mode_t) -> nix::Result<OwnedFd> {
        retry(|| unsafe { libc::openat(self.raw(), cname.as_ptr(), flags, mode as libc::c_uint) })
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Opens a subdirectory; a symlink or anything else at `name` is refused.
    pub fn open_dir(&self, name: impl AsRef<OsStr>) -> Result<Dir> {
        let name = name.as_ref();
        let cname = entry_name(name, &self.path)?;
        match self.openat(&cname, DIR_FLAGS, 0) {
            Ok(fd) => Ok(Dir { fd, path: self.child(name) }),
            Err(Errno::ELOOP | Errno::ENOTDIR) => Err(self.unexpected(name, "a directory")),
            Err(errno) => {
                Err(io::Error::from(errno)).with_context(|| format!("cannot open {}", self.child(name).display()))
            }
        }
    }

    /// Opens an entry with `flags` plus `O_NOFOLLOW|O_CLOEXEC|O_NOCTTY`; `mode` applies when
    /// `flags` has `O_CREAT`. For callers with needs the other methods do not cover (a lock file);
    /// the caller checks what it opened.
    pub fn open_file(&self, name: impl AsRef<OsStr>, flags: libc::c_int, mode: u32) -> Result<File> {
        let name = name.as_ref();
        let cname = entry_name(name, &self.path)?;
        match self.openat(&cname, flags | SAFE_FLAGS, mode as libc::mode_t) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::ELOOP) => Err(self.unexpected(name, "a regular file")),
            Err(errno) => {
                Err(io::Error::from(errno)).with_context(|| format!("cannot open {}", self.child(name).display()))
            }
        }
    }

    /// Entry names, without `.` and `..`, in directory order.
    pub fn list(&self) -> Result<Vec<OsString>> {
        list_fd(self.fd.as_fd()).with_context(|| format!("cannot list {}", self.path.display()))
    }

    pub fn sync(&self) -> Result<()> {
        retry(|| unsafe { libc::fsync(self.raw()) })
            .map_err(io::Error::from)
            .with_context(|| format!("cannot fsync {}", self.path.display()))?;
        Ok(())
    }

    pub fn set_ownership(&self, ownership: Ownership) -> Result<()> {
        set_ownership(self.fd.as_fd(), ownership)
            .with_context(|| format!("cannot set owner and mode of {}", self.path.display()))
    }

    /// The content of a regular file of at most `max_bytes`, or None when there is no `name`.
    /// Refuses a symlink, FIFO, socket, device or directory, a file with more than one link (it
    /// could be a file only root may read, linked here), and a larger file; never blocks.
    pub fn read_capped(&self, name: impl AsRef<OsStr>, max_bytes: u64) -> Result<Option<Vec<u8>>> {
        let name = name.as_ref();
        let path = self.child(name);
        let cname = entry_name(name, &self.path)?;
        // Looked at before opening, so a device is never opened (opening some has effects).
        match self.stat_raw(&cname) {
            Ok(stat) if stat.kind == Kind::File => {}
            Ok(_) => return Err(self.unexpected(name, "a regular file")),
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => {
                return Err(io::Error::from(errno)).with_context(|| format!("cannot stat {}", path.display()))
            }
        }
        let file = match self.openat(&cname, libc::O_RDONLY | libc::O_NONBLOCK | SAFE_FLAGS, 0) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(self.unexpected(name, "a regular file")),
            Err(errno) => {
                return Err(io::Error::from(errno)).with_context(|| format!("cannot open {}", path.display()))
            }
        };
        let stat = fstat(file.as_fd()).with_context(|| format!("cannot stat {}", path.display()))?;
        if stat.kind != Kind::File {
            bail!("{} is {}, expected a regular file", path.display(), stat.kind);
        }
        if stat.nlink != 1 {
            bail!(
                "{} has {} hard links, expected 1: pgha does not read a file that may be linked from elsewhere",
                path.display(),
                stat.nlink
            );
        }
        if stat.size > max_bytes {
            bail!("{} is {} bytes, more than the {max_bytes} pgha reads", path.display(), stat.size);
        }
        let mut content = Vec::with_capacity(stat.size as usize);
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut content)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if content.len() as u64 > max_bytes {
            bail!("{} grew beyond the {max_bytes} bytes pgha reads while it was read", path.display());
        }
        Ok(Some(content))
    }
}
