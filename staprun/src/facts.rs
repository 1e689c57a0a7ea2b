//! Gathers [`ModuleFacts`] from one walk of open file descriptors.
//!
//! * The blessed directory is reached from `/` one component at a time
//!   with `O_PATH|O_NOFOLLOW`; each directory crossed is `fstat`ed (a
//!   symbolic link is followed only when its containing directory is
//!   trusted, so only root could have made it).
//! * A module counts as "in the blessed directory" only if its parent
//!   directory is that very directory (same device and inode) and its name
//!   opens there with `O_NOFOLLOW`. The bytes are then read from that fd.
//! * For callers who may only load blessed modules, nothing outside the
//!   blessed directory is opened for reading (no device or FIFO is ever
//!   opened as root on their behalf).
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use stap_common::ids::{Gid, Uid};
use stap_common::sys;

use crate::error::StaprunError;
use crate::policy::{AclWho, AclWriter, Class, FileKind, ModuleFacts, Placement, Stat};

/// Largest module image we read (real modules are a few MiB).
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// Group facts, injectable so tests can use made-up groups. Raw ids, as
/// the policy compares them with a file's owner and group from `stat`.
pub trait GroupDb {
    fn stapdev_gid(&self) -> Option<u32>;
    fn is_stapdev_member(&self, uid: u32) -> bool;
}

/// The system's group database.
#[derive(Debug, Default)]
pub struct SystemGroups;

impl GroupDb for SystemGroups {
    fn stapdev_gid(&self) -> Option<u32> {
        sys::group_id("stapdev").map(Gid::as_raw)
    }
    fn is_stapdev_member(&self, uid: u32) -> bool {
        self.stapdev_gid()
            .is_some_and(|g| sys::user_in_group(Uid::from_raw(uid), Gid::from_raw(g)))
    }
}

/// A module file opened for reading, with the facts the policy needs.
#[derive(Debug)]
pub struct Opened {
    pub facts: ModuleFacts,
    /// The readable fd, when the file was opened (`None` when the caller
    /// may not load from there and it was not opened at all).
    pub file: Option<OwnedFd>,
    pub size: u64,
    /// For a module in the blessed directory: that directory's fd and the
    /// module's name there, to check just before the load that the name
    /// still refers to the file that was read.
    pub entry: Option<(OwnedFd, OsString)>,
}

impl Opened {
    fn unopened(facts: ModuleFacts) -> Opened {
        Opened {
            facts,
            file: None,
            size: 0,
            entry: None,
        }
    }
}

/// Whether the module file that was read is still in place: still linked
/// and, for a blessed-directory module, still the file of that name there.
pub fn still_in_place(opened: &Opened) -> bool {
    let Some(file) = &opened.file else {
        return false;
    };
    let Ok(st) = sys::fstat(file.as_fd()) else {
        return false;
    };
    if st.st_nlink == 0 {
        return false;
    }
    match &opened.entry {
        None => true,
        Some((dir, name)) => sys::fstatat_nofollow(dir.as_fd(), name)
            .is_ok_and(|now| (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)),
    }
}

/// The named ACL entries of the file behind `fd` that may write to it.
fn acl_writers_of(fd: BorrowedFd<'_>, shown: &Path) -> io::Result<Vec<AclWriter>> {
    let Some(x) = sys::posix_acl(fd)? else {
        return Ok(Vec::new());
    };
    let who = crate::policy::acl_writers(&x).map_err(io::Error::other)?;
    Ok(who
        .into_iter()
        .map(|w| AclWriter {
            path: shown.to_path_buf(),
            who: w,
            name: match w {
                AclWho::User(u) => sys::user_name(Uid::from_raw(u)),
                AclWho::Group(g) => sys::group_name(Gid::from_raw(g)),
            },
        })
        .collect())
}

/// Run `f` with the effective ids `ids` (when given: no capabilities, the
/// caller's rights only), then root's again.
fn with_caller_ids<T>(ids: Option<(Uid, Gid)>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let Some((uid, gid)) = ids else {
        return f();
    };
    let (old_uid, old_gid) = sys::set_effective_ids(uid, gid)?;
    let r = f();
    // Back to the ids we had (root's); refuse to go on if that fails.
    sys::set_effective_ids(old_uid, old_gid)?;
    r
}

fn stat_of(fd: BorrowedFd<'_>) -> io::Result<(Stat, u32, (u64, u64), i64)> {
    let st = sys::fstat(fd)?;
    Ok((
        Stat {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        },
        st.st_mode & libc::S_IFMT,
        (st.st_dev, st.st_ino),
        st.st_size,
    ))
}

fn trusted_dir(s: &Stat) -> bool {
    s.uid == 0 && s.mode & 0o002 == 0 && (s.mode & 0o020 == 0 || s.gid == 0)
}

/// The blessed directory, reached safely.
struct Blessed {
    fd: OwnedFd,
    stat: Stat,
    id: (u64, u64),
    untrusted_ancestor: Option<(PathBuf, Stat)>,
    acl_writers: Vec<AclWriter>,
}

/// Walk from `/` to `dir` (absolute) without trusting any symlink that a
/// non-root user could have made. `Ok(None)` if it does not exist.
fn walk_to_blessed(dir: &Path) -> io::Result<Option<Blessed>> {
    let mut cur = sys::open(OsStr::new("/"), libc::O_PATH | libc::O_DIRECTORY)?;
    let mut shown = PathBuf::from("/");
    let mut untrusted: Option<(PathBuf, Stat)> = None;
    let (st, _, _, _) = stat_of(cur.as_fd())?;
    if !trusted_dir(&st) {
        untrusted = Some((shown.clone(), st));
    }
    let mut acl = acl_writers_of(cur.as_fd(), &shown)?;
    let mut todo: Vec<OsString> = components(dir);
    todo.reverse();
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        let next = match sys::openat(cur.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (st, kind, _, _) = stat_of(next.as_fd())?;
        match kind {
            libc::S_IFLNK => {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                // The link lives in `cur`, which has been checked.
                let target = sys::readlinkat(cur.as_fd(), &name)?;
                let mut more = components(Path::new(&target));
                if Path::new(&target).is_absolute() {
                    cur = sys::open(OsStr::new("/"), libc::O_PATH | libc::O_DIRECTORY)?;
                    shown = PathBuf::from("/");
                }
                more.reverse();
                todo.extend(more);
            }
            libc::S_IFDIR => {
                cur = next;
                if name == ".." {
                    shown.pop();
                } else {
                    shown.push(&name);
                }
                let last = todo.is_empty();
                if !last && untrusted.is_none() && !trusted_dir(&st) {
                    untrusted = Some((shown.clone(), st));
                }
                acl.extend(acl_writers_of(cur.as_fd(), &shown)?);
            }
            _ => return Ok(None),
        }
    }
    let (stat, _, id, _) = stat_of(cur.as_fd())?;
    Ok(Some(Blessed {
        fd: cur,
        stat,
        id,
        untrusted_ancestor: untrusted,
        acl_writers: acl,
    }))
}

fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Reopen an `O_PATH` fd for reading through `/proc/self/fd`, and check it
/// is the same file.
fn reopen_for_read(path_fd: &OwnedFd, id: (u64, u64)) -> io::Result<OwnedFd> {
    let p = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
    let fd = sys::open(OsStr::new(&p), libc::O_RDONLY | libc::O_NONBLOCK)?;
    let (_, _, id2, _) = stat_of(fd.as_fd())?;
    if id2 != id {
        return Err(io::Error::other("file changed while being opened"));
    }
    Ok(fd)
}

/// Gather the facts for loading `path` as a caller of `class`.
///
/// `lookup_ids`: the file-system ids with which `path` itself (a path the
/// caller chose) is resolved; `None` resolves it as root.
pub fn gather(
    path: &Path,
    blessed_dir: &Path,
    class: Class,
    groups: &dyn GroupDb,
    lookup_ids: Option<(Uid, Gid)>,
) -> Result<Opened, StaprunError> {
    let io_err = |what: &str, e: io::Error| StaprunError::Io {
        what: what.to_string(),
        path: path.to_path_buf(),
        source: e,
    };
    let blessed = walk_to_blessed(blessed_dir)
        .map_err(|e| io_err("cannot check the blessed directory for", e))?;

    // The module's parent directory and final name.
    let name = path.file_name().ok_or_else(|| {
        io_err(
            "no file name in",
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // For a caller who may load only from the blessed directory, a parent
    // that cannot be opened is just "not there": the answer must not tell
    // whether a path exists in a directory the caller cannot read.
    // The caller's path is resolved with the caller's rights (effective
    // ids, so no capability either): it reaches nothing (symbolic links,
    // `..`, /proc magic links, automounts) that the caller could not.
    let parent_id = match with_caller_ids(lookup_ids, || {
        sys::open(parent.as_os_str(), libc::O_PATH | libc::O_DIRECTORY)
    })
    .and_then(|fd| stat_of(fd.as_fd()))
    {
        Ok((_, _, id, _)) => Some(id),
        Err(_) if !class.may_load_anything() => None,
        Err(e) => return Err(io_err("cannot open the directory of", e)),
    };

    let stapdev_gid = groups.stapdev_gid();
    let mut facts = ModuleFacts {
        path: path.to_path_buf(),
        blessed_dir: blessed_dir.to_path_buf(),
        placement: Placement::NoBlessedDir,
        blessed: blessed.as_ref().map(|b| b.stat),
        untrusted_ancestor: blessed.as_ref().and_then(|b| b.untrusted_ancestor.clone()),
        file: Stat {
            uid: u32::MAX,
            gid: u32::MAX,
            mode: 0,
        },
        kind: FileKind::Other,
        owner_is_stapdev: false,
        stapdev_gid,
        acl_writers: blessed
            .as_ref()
            .map(|b| b.acl_writers.clone())
            .unwrap_or_default(),
    };

    // Open the name as an O_PATH fd: in the blessed directory through its
    // own fd with O_NOFOLLOW, elsewhere by path.
    let in_blessed = blessed.as_ref().is_some_and(|b| Some(b.id) == parent_id);
    let path_fd = if let (true, Some(b)) = (in_blessed, blessed.as_ref()) {
        let fd = sys::openat(b.fd.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW)
            .map_err(|e| io_err("cannot open module", e))?;
        let (_, kind, _, _) = stat_of(fd.as_fd()).map_err(|e| io_err("cannot stat module", e))?;
        if kind == libc::S_IFLNK {
            facts.placement = Placement::SymlinkInBlessedDir;
            if !class.may_load_anything() {
                return Ok(Opened::unopened(facts));
            }
            sys::open(path.as_os_str(), libc::O_PATH)
                .map_err(|e| io_err("cannot open module", e))?
        } else {
            facts.placement = Placement::InBlessedDir;
            fd
        }
    } else {
        facts.placement = if blessed.is_some() {
            Placement::Elsewhere
        } else {
            Placement::NoBlessedDir
        };
        if !class.may_load_anything() {
            return Ok(Opened::unopened(facts));
        }
        sys::open(path.as_os_str(), libc::O_PATH).map_err(|e| io_err("cannot open module", e))?
    };

    let (st, kind, id, size) =
        stat_of(path_fd.as_fd()).map_err(|e| io_err("cannot stat module", e))?;
    facts.acl_writers.extend(
        acl_writers_of(path_fd.as_fd(), path)
            .map_err(|e| io_err("cannot read the ACL of module", e))?,
    );
    facts.file = st;
    facts.kind = if kind == libc::S_IFREG {
        FileKind::Regular
    } else {
        FileKind::Other
    };
    facts.owner_is_stapdev = st.uid != 0 && groups.is_stapdev_member(st.uid);
    if facts.kind != FileKind::Regular {
        return Ok(Opened::unopened(facts));
    }
    let size = u64::try_from(size).unwrap_or(0);
    if size > MAX_MODULE_BYTES {
        return Err(StaprunError::ModuleTooLarge {
            path: path.to_path_buf(),
            size,
            limit: MAX_MODULE_BYTES,
        });
    }
    let file = reopen_for_read(&path_fd, id).map_err(|e| io_err("cannot open module", e))?;
    let entry = match (facts.placement == Placement::InBlessedDir, blessed) {
        (true, Some(b)) => Some((b.fd, name.to_os_string())),
        _ => None,
    };
    Ok(Opened {
        facts,
        file: Some(file),
        size,
        entry,
    })
}

/// Read the whole module from the checked fd: exactly `size` bytes.
pub fn read_image(fd: &OwnedFd, size: u64, path: &Path) -> Result<Vec<u8>, StaprunError> {
    let len = usize::try_from(size).map_err(|_| StaprunError::ModuleTooLarge {
        path: path.to_path_buf(),
        size,
        limit: MAX_MODULE_BYTES,
    })?;
    if len == 0 {
        return Err(StaprunError::ModuleEmpty {
            path: path.to_path_buf(),
        });
    }
    let read_err = |e: io::Error| StaprunError::Io {
        what: "cannot read module".into(),
        path: path.to_path_buf(),
        source: e,
    };
    // A writer allowed to change the file (root, or stapdev in the 775
    // layout) could rewrite it while we read. A read lease keeps writers
    // out for the read: it cannot be taken while the file is open for
    // writing, and an open for writing waits for its release. Where leases
    // are not supported, the file's identity, size and change times must
    // agree before and after a whole read, and the bytes of two reads must
    // be equal. Either way we try a few times, then refuse, so what is
    // loaded was one whole file.
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let leased = match sys::take_read_lease(fd.as_fd()) {
            Ok(()) => true,
            // Open for writing somewhere: try again shortly.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(_) => false,
        };
        let first = read_whole(fd, size, len);
        let whole = match (&first, leased) {
            (Ok(Some(buf)), true) => sys::read_lease_held(fd.as_fd()).then(|| buf.clone()),
            (Ok(Some(buf)), false) => match read_whole(fd, size, len) {
                Ok(Some(again)) if again == *buf => Some(again),
                _ => None,
            },
            _ => None,
        };
        if leased {
            sys::release_lease(fd.as_fd());
        }
        first.map_err(read_err)?;
        if let Some(buf) = whole {
            return Ok(buf);
        }
    }
    Err(StaprunError::ModuleChanged {
        path: path.to_path_buf(),
    })
}

/// One whole read of exactly `len` bytes, `None` if the file changed
/// (identity, size or change times) while it was read.
fn read_whole(fd: &OwnedFd, size: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
    let before = version(fd)?;
    if before.size != size {
        return Ok(None);
    }
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match sys::pread(fd.as_fd(), &mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let mut extra = [0u8; 1];
    let more = sys::pread(fd.as_fd(), &mut extra, len as u64).unwrap_or(0);
    let after = version(fd)?;
    Ok((got == len && more == 0 && before == after).then_some(buf))
}

/// What changes when a file is written.
#[derive(Debug, PartialEq, Eq)]
struct Version {
    id: (u64, u64),
    size: u64,
    mtime: (i64, u64),
    ctime: (i64, u64),
}

fn version(fd: &OwnedFd) -> io::Result<Version> {
    let st = sys::fstat(fd.as_fd())?;
    Ok(Version {
        id: (st.st_dev, st.st_ino),
        size: u64::try_from(st.st_size).unwrap_or(0),
        mtime: (st.st_mtime, st.st_mtime_nsec),
        ctime: (st.st_ctime, st.st_ctime_nsec),
    })
}
