//! Mount namespaces, for stapio's `-N PID` with SystemTap 5.1+ modules
//! (PR31060): descriptors of `/proc/PID/ns/mnt` and of stapio's own mount
//! namespace (their numbers go to the module in `STP_MNT_NS_FDS`; the module
//! `fget`s them in stapio's context and switches namespaces around its path
//! lookups), and the switch back to the original namespace in the child that
//! runs `staprun -d`.
//!
//! No descriptor is passed over a socket: the module reads stapio's own
//! descriptor table, so there is no `SCM_RIGHTS`. `setns(2)` is rustix's
//! `move_into_link_name_space`; opening and `stat` are rustix's too. The one
//! `unsafe` is std's `CommandExt::pre_exec`, which runs the switch in the
//! forked child, between `fork` and `exec`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use rustix::thread::LinkNameSpaceType;

use crate::ids::Pid;

/// `/proc/PID/ns/mnt`, the path the C stapio opens (and names in its error).
pub fn mount_ns_path(pid: Pid) -> String {
    format!("/proc/{pid}/ns/mnt")
}

/// Open the mount namespace of process `pid` (`O_RDONLY|O_CLOEXEC`), with
/// the caller's own rights: the kernel allows it only to a caller that may
/// ptrace-read `pid` (EACCES for another user's process).
pub fn open_mount_ns(pid: Pid) -> io::Result<OwnedFd> {
    super::open(OsStr::new(&mount_ns_path(pid)), libc::O_RDONLY)
}

/// Open the calling thread's own mount namespace (`/proc/thread-self/ns/mnt`;
/// the C stapio opens `/proc/self/ns/mnt` from its only control thread).
pub fn open_own_mount_ns() -> io::Result<OwnedFd> {
    super::open(OsStr::new("/proc/thread-self/ns/mnt"), libc::O_RDONLY)
}

/// Whether the calling thread is in the mount namespace `ns` (an open
/// `ns/mnt` file): same nsfs device and inode.
pub fn in_mount_ns(ns: BorrowedFd<'_>) -> io::Result<bool> {
    let want = super::fstat(ns)?;
    let now = rustix::fs::stat("/proc/thread-self/ns/mnt")?;
    Ok(want.st_dev == now.st_dev && want.st_ino == now.st_ino)
}

/// What the child writes to stderr when it cannot switch back.
const SWITCH_FAILED: &[u8] =
    b"stapio: WARNING: could not return to the original mount namespace before staprun -d\n";

/// Make the child that `cmd` spawns enter mount namespace `ns` before it
/// executes its program (the C stapio's `setns(orig_mnt_ns_fd, CLONE_NEWNS)`
/// in the child of `cleanup_and_exit`: a multithreaded process cannot change
/// its mount namespace, a fresh child can). Best effort, as in C: when the
/// switch fails the child says so on stderr and runs the program anyway.
pub fn enter_mount_ns_before_exec(cmd: &mut Command, ns: OwnedFd) {
    let child = move || -> io::Result<()> {
        if rustix::thread::move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Mount))
            .is_err()
        {
            let _ = rustix::io::write(rustix::stdio::stderr(), SWITCH_FAILED);
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec. It only
    // makes two system calls (setns, write) through rustix's raw syscall
    // backend, on a descriptor it owns and a static buffer: it allocates
    // nothing and takes no lock, so it is sound in the child of a
    // multithreaded parent.
    unsafe {
        cmd.pre_exec(child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_mount_ns_is_the_one_of_this_thread_and_process() {
        let own = open_own_mount_ns().unwrap();
        assert!(in_mount_ns(own.as_fd()).unwrap());
        let by_pid = open_mount_ns(crate::sys::getpid()).unwrap();
        assert!(in_mount_ns(by_pid.as_fd()).unwrap());
        // A descriptor that is not this namespace's: not "in" it.
        let other = crate::sys::open(OsStr::new("/proc/self/ns/net"), libc::O_RDONLY).unwrap();
        assert!(!in_mount_ns(other.as_fd()).unwrap());
    }

    #[test]
    fn a_missing_process_is_enoent_and_named_as_in_c() {
        let pid = Pid::from_raw(i32::MAX);
        assert_eq!(mount_ns_path(pid), format!("/proc/{}/ns/mnt", i32::MAX));
        let e = open_mount_ns(pid).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn the_child_runs_even_when_it_cannot_switch() {
        // Our own namespace: the switch succeeds as root, fails (EPERM)
        // otherwise; either way the program runs.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exit 7"]);
        enter_mount_ns_before_exec(&mut cmd, open_own_mount_ns().unwrap());
        assert_eq!(cmd.status().unwrap().code(), Some(7));
        // A descriptor of another kind: setns refuses it (EINVAL), the
        // warning is printed, the program still runs.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exit 3"]);
        let net = crate::sys::open(OsStr::new("/proc/self/ns/net"), libc::O_RDONLY).unwrap();
        enter_mount_ns_before_exec(&mut cmd, net);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stderr, SWITCH_FAILED);
    }
}
