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

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
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
    #[cfg_attr(not(test), allow(dead_code))]
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
    #[cfg_attr(not(test), allow(dead_code))]
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
    #[cfg_attr(not(test), allow(dead_code))]
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

    /// Renames `from` to `to`, both in this directory, replacing what is at `to` (a directory only
    /// when empty).
    // Part of the handle API; exercised by the tests until a caller needs it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> Result<()> {
        self.rename_flags(from.as_ref(), to.as_ref(), 0)
    }

    /// Renames `from` to `to`, refusing (`AlreadyExists`) when anything is at `to`.
    pub fn rename_noreplace(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> Result<()> {
        self.rename_flags(from.as_ref(), to.as_ref(), libc::RENAME_NOREPLACE)
    }

    /// Swaps the entries `a` and `b` atomically: at every moment each name exists.
    // Part of the handle API; exercised by the tests until a caller needs it.
    #[cfg_attr(not(test), allow(dead_code))]
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

fn readlinkat(dir: &Dir, cname: &CString, size_hint: u64) -> io::Result<OsString> {
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

fn set_ownership(fd: BorrowedFd<'_>, ownership: Ownership) -> io::Result<()> {
    std::os::unix::fs::fchown(fd, Some(ownership.uid), Some(ownership.gid))?;
    retry(|| unsafe { libc::fchmod(fd.as_raw_fd(), ownership.mode as libc::mode_t) })?;
    Ok(())
}

fn set_times(fd: BorrowedFd<'_>, stat: &Stat) -> io::Result<()> {
    let times = [stat.atime, stat.mtime];
    retry(|| unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?;
    Ok(())
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    let mut raw = std::mem::MaybeUninit::<libc::stat>::uninit();
    retry(|| unsafe { libc::fstat(fd.as_raw_fd(), raw.as_mut_ptr()) })?;
    Ok(Stat::from_raw(unsafe { &raw.assume_init() }))
}

fn list_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
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
fn plain_components(path: &Path) -> Result<Vec<OsString>> {
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
fn entry_name(name: &OsStr, dir: &Path) -> Result<CString> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') || bytes.contains(&0) {
        bail!("{:?} is not a plain name of an entry in {}", name, dir.display());
    }
    Ok(CString::new(bytes).expect("checked for NUL"))
}

fn random_u64() -> Result<u64> {
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
fn retry(mut call: impl FnMut() -> libc::c_int) -> nix::Result<libc::c_int> {
    loop {
        match Errno::result(call()) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The attacker holds the account that owns `pg/` (nobody here, postgres in real life) and
    //! plants symlinks, hard links and FIFOs where pgha works; `canary/` is root's, outside the
    //! tree, and must come through every test exactly as it was.

    use super::*;
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};

    const NOBODY: u32 = 65534;
    const AS_POSTGRES: Ownership = Ownership { uid: NOBODY, gid: NOBODY, mode: 0o640 };
    const POSTGRES_DIR: Ownership = Ownership { uid: NOBODY, gid: NOBODY, mode: 0o700 };
    /// Far longer than any of these operations takes; reaching it means pgha hung.
    const HANG: Duration = Duration::from_secs(20);

    struct Tree {
        _temp: tempfile::TempDir,
        pg: PathBuf,
        canary: PathBuf,
    }

    impl Tree {
        fn pg(&self) -> Dir {
            Dir::open(&self.pg).unwrap()
        }
    }

    /// None (and the test passes without checking anything) unless run as root, as `make test` does.
    fn tree() -> Option<Tree> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: the hostile file tests need root");
            return None;
        }
        let temp = tempfile::tempdir().unwrap();
        fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let pg = temp.path().join("pg");
        fs::create_dir(&pg).unwrap();
        std::os::unix::fs::chown(&pg, Some(NOBODY), Some(NOBODY)).unwrap();
        fs::set_permissions(&pg, fs::Permissions::from_mode(0o700)).unwrap();
        let canary = temp.path().join("canary");
        fs::create_dir_all(canary.join("dir")).unwrap();
        fs::write(canary.join("secret"), "root's secret\n").unwrap();
        fs::set_permissions(canary.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(canary.join("dir/inside"), "inside\n").unwrap();
        for path in [&canary, &canary.join("dir")] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Some(Tree { _temp: temp, pg, canary })
    }

    /// Everything observable about a tree: per entry its type, owner, mode and content (or link target).
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, u32, u32, u32, Vec<u8>)> {
        let mut entries = BTreeMap::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(path) = pending.pop() {
            let metadata = fs::symlink_metadata(&path).unwrap();
            let kind = format!("{:?}", metadata.file_type());
            let content = if metadata.is_file() {
                fs::read(&path).unwrap()
            } else if metadata.is_symlink() {
                fs::read_link(&path).unwrap().into_os_string().into_vec()
            } else {
                Vec::new()
            };
            if metadata.is_dir() {
                pending.extend(fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
            }
            entries.insert(path, (kind, metadata.uid(), metadata.gid(), metadata.mode(), content));
        }
        entries
    }

    /// Runs a command as the account that owns `pg/`, as an attacker holding it would.
    fn as_owner(program: &str, args: &[&OsStr]) {
        let status = Command::new(program).args(args).uid(NOBODY).gid(NOBODY).status().unwrap();
        assert!(status.success(), "{program} {args:?} as uid {NOBODY}: {status}");
    }

    fn plant_symlink(target: &Path, link: &Path) {
        as_owner("ln", &["-s".as_ref(), target.as_os_str(), link.as_os_str()]);
    }

    /// What root set up in pg/ for a test becomes the attacker's, as everything in pg/ is in real life.
    fn give_to_owner(path: &Path) {
        let status = Command::new("chown").args(["-Rh", "65534:65534"]).arg(path).status().unwrap();
        assert!(status.success());
    }

    fn plant_fifo(path: &Path) {
        as_owner("mkfifo", &[path.as_os_str()]);
    }

    /// Runs `work` on another thread and fails the test if it has not finished within [`HANG`].
    fn bounded<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || sender.send(work()));
        receiver.recv_timeout(HANG).expect("the operation blocked")
    }

    fn message(result: Result<impl fmt::Debug>) -> String {
        format!("{:#}", result.expect_err("expected a refusal"))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn open_refuses_a_symlink_at_any_component_and_names_it() {
        let Some(t) = tree() else { return };
        let before = snapshot(&t.canary);
        let link = t.pg.join("conf.d");
        plant_symlink(&t.canary.join("dir"), &link);
        for path in [link.clone(), link.join("inner")] {
            let error = message(Dir::open(&path));
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains(&format!("{} is a symbolic link", link.display())), "{error}");
        }
        assert!(message(t.pg().open_dir("conf.d")).contains("symbolic link"));
        assert!(message(Dir::open("relative/path")).contains("absolute"));
        assert!(message(Dir::open(t.pg.join("../canary"))).contains(".."));
        assert_eq!(Dir::open(&t.pg).unwrap().path(), t.pg);
        assert_eq!(snapshot(&t.canary), before);
    }

    #[test]
    fn only_links_root_alone_controls_are_followed_on_request() {
        let Some(t) = tree() else { return };
        let base = t.pg.parent().unwrap();
        // base is root's and 0755: a link there could only be root's doing.
        fs::create_dir_all(base.join("disk/15/main")).unwrap();
        symlink(base.join("disk"), base.join("postgresql")).unwrap();
        symlink("main", base.join("disk/15/relative")).unwrap();
        let opened = Dir::open_following_root_links(base.join("postgresql/15/main")).unwrap();
        assert_eq!(opened.metadata().unwrap().ino, fs::metadata(base.join("disk/15/main")).unwrap().ino());
        Dir::open_following_root_links(base.join("postgresql/15/relative")).unwrap();
        assert!(message(Dir::open(base.join("postgresql/15/main"))).contains("symbolic link"));
        // In a directory another account can write, or owned by another account: refused.
        plant_symlink(&t.canary.join("dir"), &t.pg.join("conf.d"));
        let error = message(Dir::open_following_root_links(t.pg.join("conf.d")));
        assert!(error.contains(&format!("{} is a symbolic link", t.pg.join("conf.d").display())), "{error}");
        symlink(&t.canary, base.join("nobodys")).unwrap();
        std::os::unix::fs::lchown(base.join("nobodys"), Some(NOBODY), Some(NOBODY)).unwrap();
        assert!(message(Dir::open_following_root_links(base.join("nobodys"))).contains("symbolic link"));
        fs::set_permissions(base, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(message(Dir::open_following_root_links(base.join("postgresql/15/main"))).contains("symbolic link"));
        symlink("../canary", base.join("disk/up")).unwrap();
        fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(message(Dir::open_following_root_links(base.join("disk/up"))).contains(".."));
    }

    #[test]
    fn names_that_are_not_a_single_entry_are_refused() {
        let Some(t) = tree() else { return };
        let pg = t.pg();
        for name in ["", ".", "..", "../canary", "a/b", "a\0b"] {
            assert!(pg.write_atomic(name, b"x", AS_POSTGRES).is_err(), "{name:?}");
            assert!(pg.create_dir(name, POSTGRES_DIR).is_err(), "{name:?}");
            assert!(pg.read_capped(name, 10).is_err(), "{name:?}");
        }
        assert!(names(&t.pg).is_empty());
    }

    #[test]
    fn write_atomic_replaces_a_planted_symlink_instead_of_following_it() {
        let Some(t) = tree() else { return };
        let before = snapshot(&t.canary);
        plant_symlink(&t.canary.join("secret"), &t.pg.join("pgha.conf"));
        t.pg().write_atomic("pgha.conf", b"new\n", AS_POSTGRES).unwrap();
        let written = fs::symlink_metadata(t.pg.join("pgha.conf")).unwrap();
        assert!(written.is_file());
        assert_eq!((written.uid(), written.gid(), written.mode() & 0o7777), (NOBODY, NOBODY, 0o640));
        assert_eq!(fs::read(t.pg.join("pgha.conf")).unwrap(), b"new\n");
        assert_eq!(names(&t.pg), ["pgha.conf"], "no temporary file left");
        assert_eq!(snapshot(&t.canary), before);
    }

    #[test]
    fn write_atomic_replaces_a_hard_link_instead_of_writing_through_it() {
        let Some(t) = tree() else { return };
        // The kernel's protected_hardlinks stops the owner of pg/ from linking root's file;
        // root plants it, to prove the writer does not depend on that setting.
        fs::hard_link(t.canary.join("secret"), t.pg.join("passfile")).unwrap();
        let before = snapshot(&t.canary);
        t.pg().write_atomic("passfile", b"*:*:*:u:pw\n", AS_POSTGRES).unwrap();
        assert_eq!(snapshot(&t.canary), before);
        assert_eq!(fs::metadata(t.canary.join("secret")).unwrap().nlink(), 1);
        assert_eq!(fs::read(t.pg.join("passfile")).unwrap(), b"*:*:*:u:pw\n");
    }

    #[test]
    fn write_atomic_sets_owner_and_mode_on_an_existing_file() {
        let Some(t) = tree() else { return };
        let pg = t.pg();
        pg.write_atomic("f", b"one", Ownership { uid: 0, gid: 0, mode: 0o644 }).unwrap();
        pg.write_atomic("f", b"two", Ownership { uid: NOBODY, gid: NOBODY, mode: 0o600 }).unwrap();
        let metadata = fs::metadata(t.pg.join("f")).unwrap();
        assert_eq!((metadata.uid(), metadata.gid(), metadata.mode() & 0o7777), (NOBODY, NOBODY, 0o600));
        assert_eq!(fs::read(t.pg.join("f")).unwrap(), b"two");
        assert_eq!(names(&t.pg), ["f"]);
    }

    #[test]
    fn write_atomic_removes_its_temporary_file_when_it_fails() {
        let Some(t) = tree() else { return };
        fs::create_dir_all(t.pg.join("pgha.conf/full")).unwrap();
        let error = message(t.pg().write_atomic("pgha.conf", b"x", AS_POSTGRES));
        assert!(error.contains(&t.pg.join("pgha.conf").display().to_string()), "{error}");
        assert_eq!(names(&t.pg), ["pgha.conf"]);
    }

    #[test]
    fn create_dir_refuses_a_symlink_at_its_name() {
        let Some(t) = tree() else { return };
        let before = snapshot(&t.canary);
        plant_symlink(&t.canary.join("dir"), &t.pg.join("archive"));
        let pg = t.pg();
        for error in [
            message(pg.create_dir("archive", POSTGRES_DIR)),
            message(pg.create_dir_or_open_existing("archive", POSTGRES_DIR)),
        ] {
            assert!(error.contains(&t.pg.join("archive").display().to_string()), "{error}");
            assert!(error.contains("symbolic link"), "{error}");
        }
        assert_eq!(snapshot(&t.canary), before);
    }

    #[test]
    fn create_dir_makes_a_new_directory_with_owner_and_mode() {
        let Some(t) = tree() else { return };
        let pg = t.pg();
        let made = pg.create_dir("staging", Ownership { uid: NOBODY, gid: NOBODY, mode: 0o750 }).unwrap();
        let metadata = fs::symlink_metadata(t.pg.join("staging")).unwrap();
        assert!(metadata.is_dir());
        assert_eq!((metadata.uid(), metadata.gid(), metadata.mode() & 0o7777), (NOBODY, NOBODY, 0o750));
        made.write_atomic("inside", b"x", AS_POSTGRES).unwrap();
        assert!(t.pg.join("staging/inside").is_file());
        let error = pg.create_dir("staging", POSTGRES_DIR).unwrap_err();
        assert_eq!(io_error_kind(&error), Some(io::ErrorKind::AlreadyExists), "{error:#}");
    }

    #[test]
    fn create_dir_or_open_existing_accepts_a_real_directory_and_fixes_it() {
        let Some(t) = tree() else { return };
        fs::create_dir(t.pg.join("conf.d")).unwrap();
        fs::set_permissions(t.pg.join("conf.d"), fs::Permissions::from_mode(0o777)).unwrap();
        let (_, created) = t.pg().create_dir_or_open_existing("conf.d", POSTGRES_DIR).unwrap();
        assert!(!created);
        let metadata = fs::metadata(t.pg.join("conf.d")).unwrap();
        assert_eq!((metadata.uid(), metadata.mode() & 0o7777), (NOBODY, 0o700));
        let (_, created) = t.pg().create_dir_or_open_existing("new", POSTGRES_DIR).unwrap();
        assert!(created);
    }

    #[test]
    fn create_unique_dir_makes_a_new_name_each_time() {
        let Some(t) = tree() else { return };
        let pg = t.pg();
        let (first, _) = pg.create_unique_dir("main.pgha-fork-20250101T000000Z-", POSTGRES_DIR).unwrap();
        let (second, _) = pg.create_unique_dir("main.pgha-fork-20250101T000000Z-", POSTGRES_DIR).unwrap();
        assert_ne!(first, second);
        assert!(first.starts_with("main.pgha-fork-20250101T000000Z-") && first.len() > 32, "{first}");
        for name in [&first, &second] {
            assert_eq!(fs::metadata(t.pg.join(name)).unwrap().uid(), NOBODY);
        }
    }

    #[test]
    fn read_capped_refuses_a_fifo_without_blocking() {
        let Some(t) = tree() else { return };
        plant_fifo(&t.pg.join("passfile"));
        let pg = t.pg();
        let error = bounded(move || message(pg.read_capped("passfile", 4096)));
        assert!(error.contains(&t.pg.join("passfile").display().to_string()), "{error}");
        assert!(error.contains("a FIFO, expected a regular file"), "{error}");
    }

    #[test]
    fn read_capped_refuses_symlinks_links_directories_and_big_files() {
        let Some(t) = tree() else { return };
        let before = snapshot(&t.canary);
        plant_symlink(&t.canary.join("secret"), &t.pg.join("auto.conf"));
        fs::hard_link(t.canary.join("secret"), t.pg.join("linked")).unwrap();
        fs::create_dir(t.pg.join("dir")).unwrap();
        fs::write(t.pg.join("big"), vec![b'x'; 100]).unwrap();
        fs::write(t.pg.join("fine"), b"k = v\n").unwrap();
        let pg = t.pg();
        let error = message(pg.read_capped("auto.conf", 4096));
        assert!(error.contains(&format!("{} is a symbolic link", t.pg.join("auto.conf").display())), "{error}");
        assert!(message(pg.read_capped("linked", 4096)).contains("2 hard links"));
        assert!(message(pg.read_capped("dir", 4096)).contains("is a directory, expected a regular file"));
        assert!(message(pg.read_capped("big", 99)).contains("100 bytes"));
        assert_eq!(pg.read_capped("big", 100).unwrap().unwrap().len(), 100);
        assert_eq!(pg.read_capped("fine", 4096).unwrap().unwrap(), b"k = v\n");
        assert_eq!(pg.read_capped("missing", 4096).unwrap(), None);
        fs::remove_file(t.pg.join("linked")).unwrap();
        assert_eq!(snapshot(&t.canary), before);
    }

    #[test]
    fn remove_tree_removes_symlinks_without_following_them() {
        let Some(t) = tree() else { return };
        let before = snapshot(&t.canary);
        let staging = t.pg.join("main.pgha-staging");
        fs::create_dir_all(staging.join("base/1")).unwrap();
        fs::write(staging.join("base/1/1234"), b"data").unwrap();
        symlink(t.canary.join("dir"), staging.join("base/tblspc")).unwrap();
        symlink(t.canary.join("secret"), staging.join("secret")).unwrap();
        give_to_owner(&staging);
        plant_fifo(&staging.join("fifo"));
        plant_symlink(&t.canary.join("dir"), &t.pg.join("link"));
        let pg = t.pg();
        bounded(move || {
            pg.remove_tree("main.pgha-staging").unwrap();
            pg.remove_tree("link").unwrap();
            assert!(is_not_found(&pg.remove_tree("link").unwrap_err()));
        });
        assert!(names(&t.pg).is_empty());
        assert_eq!(snapshot(&t.canary), before);
    }

    #[test]
    fn rename_noreplace_keeps_what_is_there_and_exchange_swaps() {
        let Some(t) = tree() else { return };
        let pg = t.pg();
        pg.write_atomic("a", b"a", AS_POSTGRES).unwrap();
        pg.write_atomic("b", b"b", AS_POSTGRES).unwrap();
        let error = pg.rename_noreplace("a", "b").unwrap_err();
        assert_eq!(io_error_kind(&error), Some(io::ErrorKind::AlreadyExists), "{error:#}");
        pg.exchange("a", "b").unwrap();
        assert_eq!(fs::read(t.pg.join("a")).unwrap(), b"b");
        pg.rename("a", "b").unwrap();
        assert_eq!(names(&t.pg), ["b"]);
        assert_eq!(fs::read(t.pg.join("b")).unwrap(), b"b");
        pg.remove_file("b").unwrap();
        assert!(pg.stat("b").unwrap().is_none());
    }

    #[test]
    fn copy_tree_copies_links_as_links_and_skips_fifos() {
        let Some(t) = tree() else { return };
        let before = snapshot(&t.canary);
        let source = t.pg.join("main");
        fs::create_dir_all(source.join("base/1")).unwrap();
        let big: Vec<u8> = (0..3 * COPY_CHUNK + 17).map(|i| (i % 251) as u8).collect();
        fs::write(source.join("base/1/16384"), &big).unwrap();
        fs::write(source.join("PG_VERSION"), b"15\n").unwrap();
        fs::set_permissions(source.join("PG_VERSION"), fs::Permissions::from_mode(0o4640)).unwrap();
        symlink(t.canary.join("dir"), source.join("tblspc")).unwrap();
        symlink("../../secret", source.join("base/relative")).unwrap();
        let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        fs::File::options().write(true).open(source.join("base/1/16384")).unwrap().set_modified(old).unwrap();
        give_to_owner(&source);
        plant_fifo(&source.join("fifo"));
        let pg = t.pg();
        let copy = pg.create_dir("copy", POSTGRES_DIR).unwrap();
        let from = pg.open_dir("main").unwrap();
        let report = bounded(move || copy_tree(&from, &copy, CopyOwnership::Preserve).unwrap());
        assert_eq!((report.files, report.dirs, report.symlinks), (2, 2, 2), "{report:?}");
        assert_eq!(report.bytes, big.len() as u64 + 3);
        assert_eq!(report.skipped, [source.join("fifo")]);
        let copied = t.pg.join("copy");
        assert_eq!(fs::read(copied.join("base/1/16384")).unwrap(), big);
        let data = fs::metadata(copied.join("base/1/16384")).unwrap();
        assert_eq!((data.uid(), data.gid(), data.modified().unwrap()), (NOBODY, NOBODY, old));
        assert_eq!(fs::metadata(copied.join("PG_VERSION")).unwrap().mode() & 0o7777, 0o640, "setuid dropped");
        assert_eq!(fs::read_link(copied.join("tblspc")).unwrap(), t.canary.join("dir"));
        assert_eq!(fs::read_link(copied.join("base/relative")).unwrap(), Path::new("../../secret"));
        assert_eq!(fs::symlink_metadata(copied.join("tblspc")).unwrap().uid(), NOBODY);
        assert!(!copied.join("fifo").exists());
        assert_eq!(snapshot(&t.canary), before);
    }

    #[test]
    fn copy_tree_never_writes_through_a_symlink_in_the_destination() {
        let Some(t) = tree() else { return };
        let before = snapshot(&t.canary);
        fs::create_dir_all(t.pg.join("main/pg_wal")).unwrap();
        fs::write(t.pg.join("main/PG_VERSION"), b"15\n").unwrap();
        let pg = t.pg();
        let copy = pg.create_dir("copy", POSTGRES_DIR).unwrap();
        plant_symlink(&t.canary.join("secret"), &t.pg.join("copy/PG_VERSION"));
        plant_symlink(&t.canary.join("dir"), &t.pg.join("copy/pg_wal"));
        let error = message(copy_tree(&pg.open_dir("main").unwrap(), &copy, CopyOwnership::Preserve));
        assert!(error.contains(&t.pg.join("copy").display().to_string()), "{error}");
        assert!(error.contains("already there"), "{error}");
        assert_eq!(snapshot(&t.canary), before);
    }

    /// The owner of pg/ keeps swapping `conf.d` between a real directory and a symlink to root's
    /// directory, and keeps planting symlinks at the names written and created inside, while
    /// pgha opens, writes, reads, creates and removes there. Whatever interleaving happens, root's
    /// directory is never written and root's secret never read.
    #[test]
    fn racing_renames_never_redirect_root_outside_the_tree() {
        let Some(t) = tree() else { return };
        let before = snapshot(&t.canary);
        let pg = t.pg();
        let real = pg.create_dir("real", POSTGRES_DIR).unwrap();
        symlink(t.canary.join("dir"), t.pg.join("conf.d")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // Attackers work through their own handles, so they never step through the symlink themselves.
        let planter = {
            let (stop, secret, dir) = (stop.clone(), t.canary.join("secret"), t.canary.join("dir"));
            std::thread::spawn(move || {
                let (secret, dir) = (
                    CString::new(secret.into_os_string().into_vec()).unwrap(),
                    CString::new(dir.into_os_string().into_vec()).unwrap(),
                );
                while !stop.load(Ordering::Relaxed) {
                    for (name, target) in [("pgha.conf", &secret), ("made", &dir)] {
                        let _ = real.remove_tree(name);
                        let cname = CString::new(name).unwrap();
                        unsafe { libc::symlinkat(target.as_ptr(), real.raw(), cname.as_ptr()) };
                    }
                }
            })
        };
        let swapper = {
            let (pg, stop) = (t.pg(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = pg.exchange("real", "conf.d");
                }
            })
        };
        let (mut attempts, mut written, mut refused, mut made_dirs) = (0, 0, 0, 0);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            attempts += 1;
            let opened = if attempts % 2 == 0 { Dir::open(t.pg.join("conf.d")) } else { pg.open_dir("conf.d") };
            let Ok(conf_d) = opened else {
                refused += 1;
                continue;
            };
            if conf_d.write_atomic("pgha.conf", b"mine\n", AS_POSTGRES).is_ok() {
                written += 1;
            }
            if let Ok(Some(content)) = conf_d.read_capped("pgha.conf", 4096) {
                assert_eq!(content, b"mine\n", "read something that is not in the tree");
            }
            if let Ok(made) = conf_d.create_dir("made", POSTGRES_DIR) {
                made_dirs += 1;
                let _ = made.write_atomic("inside", b"x", AS_POSTGRES);
                let _ = conf_d.remove_tree("made");
            }
            let _ = pg.create_dir_or_open_existing("conf.d", POSTGRES_DIR);
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        planter.join().unwrap();
        eprintln!("{attempts} attempts: {written} files written, {made_dirs} directories made, {refused} refusals");
        assert!(
            written > 0 && refused > 0,
            "the race was not exercised: {attempts} attempts, {written} writes, {refused} refusals"
        );
        assert_eq!(snapshot(&t.canary), before);
    }
}
