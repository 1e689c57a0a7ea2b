//! `-N PID` with a SystemTap 5.1+ module: the mount namespaces of
//! `STP_MNT_NS_FDS` (PR31060).
//!
//! What the C 5.1 stapio does (mainloop.c `stp_main_loop`, case
//! `STP_TRANSPORT`, and `cleanup_and_exit`), and ours with it:
//!
//! * after `STP_NAMESPACES_PID`, before `STP_START`: open
//!   `/proc/PID/ns/mnt` (failing: `Failed to open file '/proc/PID/ns/mnt':
//!   ERRNO TEXT`, the run ends, the module is unloaded, exit 1), then
//!   stapio's own mount namespace, and send `STP_MNT_NS_FDS { int
//!   target_fd; int orig_fd; }`: the two descriptor *numbers*. The module
//!   `fget`s them in stapio's context while it starts its probes (uprobe
//!   registration, the task finder's path lookups), switching the writing
//!   thread into the target's mount namespace and back around each lookup.
//!   The descriptors stay open until the end;
//! * at the end: the target's descriptor is closed; the child that runs
//!   `staprun -d` switches back to the original mount namespace first (in
//!   case the module left the thread in the target's; a multithreaded
//!   process cannot switch, the fresh child can), best effort.
//!
//! Ours differs in one point: the child switches only when the thread that
//! runs it is not already in the original namespace. The C child always
//! calls `setns`, which fails for every user but root (mount namespaces
//! need `CAP_SYS_ADMIN`), and prints `setns(orig_mnt_ns_fd) failed:
//! Operation not permitted` at the end of every `-N` run of a stapusr
//! member. A 4.x module gets `STP_NAMESPACES_PID` only, as from the C 4.8
//! stapio; a 5.0 module, which does not know the message (EINVAL), runs
//! without it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use stap_common::ids::Pid;
use stap_common::protocol::Request;
use stap_common::sys;

use crate::error::Error;

/// The two open mount namespaces of a `-N` session.
#[derive(Debug)]
pub struct MountNamespaces {
    target: OwnedFd,
    orig: OwnedFd,
}

impl MountNamespaces {
    /// Open `/proc/PID/ns/mnt` and the calling thread's own mount
    /// namespace, with the user's rights.
    pub fn open(pid: i32) -> Result<MountNamespaces, Error> {
        let pid = Pid::from_raw(pid);
        let target = sys::open_mount_ns(pid).map_err(|source| Error::MountNamespace {
            path: sys::mount_ns_path(pid),
            source,
        })?;
        let orig = sys::open_own_mount_ns().map_err(|source| Error::MountNamespace {
            path: "/proc/thread-self/ns/mnt".into(),
            source,
        })?;
        Ok(MountNamespaces { target, orig })
    }

    /// The `STP_MNT_NS_FDS` message naming them.
    pub fn request(&self) -> Request {
        Request::MntNsFds {
            target_fd: self.target.as_raw_fd(),
            orig_fd: self.orig.as_raw_fd(),
        }
    }

    /// The end of the session: close the target's namespace; the original
    /// one, for the child that runs `staprun -d` to return to, when the
    /// calling thread is no longer in it.
    pub fn end(self) -> Option<OwnedFd> {
        let MountNamespaces { target, orig } = self;
        drop(target);
        match sys::in_mount_ns(orig.as_fd()) {
            Ok(true) => None,
            Ok(false) | Err(_) => Some(orig),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_as_target() {
        let ns = MountNamespaces::open(std::process::id() as i32).unwrap();
        let Request::MntNsFds { target_fd, orig_fd } = ns.request() else {
            panic!("not an STP_MNT_NS_FDS request");
        };
        assert!(target_fd > 2 && orig_fd > 2 && target_fd != orig_fd);
        // Still in the original namespace: nothing to switch back to.
        assert!(ns.end().is_none());
    }

    #[test]
    fn a_missing_process_is_named_as_in_c() {
        let e = MountNamespaces::open(i32::MAX).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Failed to open file '/proc/{}/ns/mnt': No such file or directory",
                i32::MAX
            )
        );
    }
}
