//! Opening and inspecting files: open/openat (always close-on-exec),
//! stat, statfs, access as the real user, symbolic links, POSIX ACLs and
//! read leases.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use rustix::fs::{Access, AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::cerr;

/// What [`fstat`] and [`fstatat_nofollow`] return: `struct stat`, with
/// the usual `st_mode`, `st_uid`, `st_gid`, `st_dev`, `st_ino`, `st_nlink`,
/// `st_size` fields.
pub use rustix::fs::Stat;

pub const DEBUGFS_MAGIC: i64 = 0x6462_6720;
pub const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// `flags` (`libc::O_*`) plus `O_CLOEXEC`.
fn cloexec_flags(flags: i32) -> OFlags {
    OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC
}

/// `openat(dir, name, flags | O_CLOEXEC)`.
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        cloexec_flags(flags),
        Mode::empty(),
    )?)
}

/// `open(path, flags | O_CLOEXEC)`.
pub fn open(path: &OsStr, flags: i32) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, cloexec_flags(flags), Mode::empty())?)
}

/// `faccessat(dir, name, R_OK|W_OK, 0)`: checked with the **real** ids.
pub fn access_rw_as_real_user(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    // No flags: the faccessat syscall itself, which uses the real ids
    // (AT_EACCESS would ask for the effective ones).
    Ok(rustix::fs::accessat(
        dir,
        name,
        Access::READ_OK | Access::WRITE_OK,
        AtFlags::empty(),
    )?)
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// `statfs` magic of an open file.
pub fn fstatfs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    Ok(rustix::fs::fstatfs(fd)?.f_type as i64)
}

/// `readlinkat(dir, name)`.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
    let target = rustix::fs::readlinkat(dir, name, Vec::with_capacity(4096))?;
    Ok(OsString::from_vec(target.into_bytes()))
}

/// The `system.posix_acl_access` extended attribute of the file behind
/// `fd` (any kind of fd, `O_PATH` included, read through
/// `/proc/self/fd`); `None` when the file has no ACL or the file system
/// has none.
pub fn posix_acl(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mut buf = vec![0u8; 4096];
    loop {
        match rustix::fs::getxattr(path.as_str(), "system.posix_acl_access", &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA | Errno::OPNOTSUPP) => return Ok(None),
            Err(Errno::RANGE) if buf.len() < (1 << 20) => {
                let n = buf.len() * 4;
                buf.resize(n, 0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Take a read lease on `fd` (`F_SETLEASE F_RDLCK`): fails with EAGAIN
/// while anyone has the file open for writing, and while held, an open for
/// writing blocks until the lease is released (the break is signalled with
/// SIGIO, which the caller must ignore).
pub fn take_read_lease(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on a borrowed fd.
    cerr(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) })?;
    Ok(())
}

/// Whether the read lease is still held unbroken.
pub fn read_lease_held(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: fcntl with integer arguments on a borrowed fd.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETLEASE) == libc::F_RDLCK }
}

/// Release a lease taken with [`take_read_lease`].
pub fn release_lease(fd: BorrowedFd<'_>) {
    // SAFETY: fcntl with integer arguments on a borrowed fd.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::path::PathBuf;

    /// A fresh empty directory under the temporary directory.
    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("stap-sys-fs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn open_is_cloexec_and_stats_agree() {
        let d = scratch("open");
        std::fs::write(d.join("f"), b"12345").unwrap();
        let dir = open(d.as_os_str(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let f = openat(dir.as_fd(), OsStr::new("f"), libc::O_RDONLY).unwrap();
        let fl = rustix::io::fcntl_getfd(&f).unwrap();
        assert!(fl.contains(rustix::io::FdFlags::CLOEXEC));
        let a = fstat(f.as_fd()).unwrap();
        let b = fstatat_nofollow(dir.as_fd(), OsStr::new("f")).unwrap();
        assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
        assert_eq!(a.st_size, 5);
        assert_eq!(a.st_mode & libc::S_IFMT, libc::S_IFREG);
        let e = openat(dir.as_fd(), OsStr::new("missing"), libc::O_RDONLY).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let e = open(OsStr::new("a\0b"), libc::O_RDONLY).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_are_not_followed() {
        let d = scratch("link");
        std::os::unix::fs::symlink("some/where", d.join("l")).unwrap();
        let dir = open(d.as_os_str(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let st = fstatat_nofollow(dir.as_fd(), OsStr::new("l")).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(
            readlinkat(dir.as_fd(), OsStr::new("l")).unwrap(),
            OsString::from("some/where")
        );
        let e = openat(
            dir.as_fd(),
            OsStr::new("l"),
            libc::O_RDONLY | libc::O_NOFOLLOW,
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn access_and_acl_of_a_fresh_file() {
        let d = scratch("acl");
        std::fs::write(d.join("f"), b"").unwrap();
        let dir = open(d.as_os_str(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
        access_rw_as_real_user(dir.as_fd(), OsStr::new("f")).unwrap();
        let f = openat(dir.as_fd(), OsStr::new("f"), libc::O_PATH).unwrap();
        assert_eq!(posix_acl(f.as_fd()).unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn proc_and_its_magic() {
        let p = open(OsStr::new("/proc/self"), libc::O_PATH).unwrap();
        assert_eq!(fstatfs_type(p.as_fd()).unwrap(), PROC_SUPER_MAGIC);
        let root = open(OsStr::new("/"), libc::O_PATH).unwrap();
        assert_ne!(fstatfs_type(root.as_fd()).unwrap(), PROC_SUPER_MAGIC);
    }

    #[test]
    fn read_lease_on_a_file_nobody_writes() {
        let d = scratch("lease");
        std::fs::write(d.join("f"), b"x").unwrap();
        let f = std::fs::File::open(d.join("f")).unwrap();
        // Leases need the file's owner (or CAP_LEASE) and a file system
        // that has them (not every overlay or tmpfs setup does).
        match take_read_lease(f.as_fd()) {
            Ok(()) => {
                assert!(read_lease_held(f.as_fd()));
                release_lease(f.as_fd());
                assert!(!read_lease_held(f.as_fd()));
            }
            Err(e) => assert!(
                matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::EACCES | libc::EAGAIN)
                ),
                "{e}"
            ),
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
