//! The process's user and group ids: reading them, and the changes a
//! setuid-root program makes. The set calls are nix's, which go through
//! libc: glibc applies `setresuid`/`setresgid` to every thread of the
//! process, where a raw syscall (rustix's `thread::` variants) would
//! change the calling thread only.

use std::io;

use nix::unistd;

use crate::ids::{Gid, Uid};

/// Real, effective and saved user and group ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub ruid: Uid,
    pub euid: Uid,
    pub suid: Uid,
    pub rgid: Gid,
    pub egid: Gid,
    pub sgid: Gid,
}

/// -1 to `setresuid`/`setresgid`: leave that id as it is.
const UNCHANGED: u32 = u32::MAX;

fn nix_uid(u: u32) -> unistd::Uid {
    unistd::Uid::from_raw(u)
}

fn nix_gid(g: u32) -> unistd::Gid {
    unistd::Gid::from_raw(g)
}

/// `setresuid(r, e, s)` for the whole process (raw values; `UNCHANGED`).
fn setresuid(r: u32, e: u32, s: u32) -> io::Result<()> {
    unistd::setresuid(nix_uid(r), nix_uid(e), nix_uid(s))?;
    Ok(())
}

/// `setresgid(r, e, s)` for the whole process (raw values; `UNCHANGED`).
fn setresgid(r: u32, e: u32, s: u32) -> io::Result<()> {
    unistd::setresgid(nix_gid(r), nix_gid(e), nix_gid(s))?;
    Ok(())
}

/// `getresuid` and `getresgid`.
pub fn ids() -> io::Result<Ids> {
    let u = unistd::getresuid()?;
    let g = unistd::getresgid()?;
    Ok(Ids {
        ruid: Uid::from_raw(u.real.as_raw()),
        euid: Uid::from_raw(u.effective.as_raw()),
        suid: Uid::from_raw(u.saved.as_raw()),
        rgid: Gid::from_raw(g.real.as_raw()),
        egid: Gid::from_raw(g.effective.as_raw()),
        sgid: Gid::from_raw(g.saved.as_raw()),
    })
}

/// Supplementary groups of the process.
pub fn groups() -> io::Result<Vec<Gid>> {
    Ok(rustix::process::getgroups()?
        .into_iter()
        .map(|g| Gid::from_raw(g.as_raw()))
        .collect())
}

/// Permanently become `uid`/`gid` (real, effective and saved), keeping
/// the supplementary groups (they are already the user's: setuid does not
/// change them), then prove root cannot be regained.
pub fn drop_privileges_for_good(uid: Uid, gid: Gid) -> io::Result<()> {
    // The gid first: once the uid is not root, it could not change.
    let (u, g) = (uid.as_raw(), gid.as_raw());
    setresgid(g, g, g)?;
    setresuid(u, u, u)?;
    let now = ids()?;
    if [now.ruid, now.euid, now.suid] != [uid; 3] || [now.rgid, now.egid, now.sgid] != [gid; 3] {
        return Err(io::Error::other("ids did not change as asked"));
    }
    // This must fail.
    if !uid.is_root() && setresuid(0, 0, 0).is_ok() {
        return Err(io::Error::other("root could be regained after the drop"));
    }
    Ok(())
}

/// Set the real uid only (effective and saved stay as they are). With
/// effective root, `set_real_uid(Uid::ROOT)` puts the process out of
/// reach of the caller's kill(2); `set_real_uid(caller)` before
/// `init_module` makes the module record the caller as the owner of its
/// control files.
pub fn set_real_uid(uid: Uid) -> io::Result<()> {
    setresuid(uid.as_raw(), UNCHANGED, UNCHANGED)?;
    let now = ids()?;
    if now.ruid != uid {
        return Err(io::Error::other("the real uid did not change as asked"));
    }
    Ok(())
}

/// Switch the effective (and so the file-system) ids to `uid`/`gid`, with
/// the saved ids left root so that [`set_effective_ids`] back to 0 works;
/// returns the previous pair. With a non-root effective uid the kernel
/// clears the effective capabilities, so a path lookup made now has only
/// the rights of `uid` (CAP_SYS_PTRACE would still follow /proc magic
/// links after a mere setfsuid). The real ids are not touched.
pub fn set_effective_ids(uid: Uid, gid: Gid) -> io::Result<(Uid, Gid)> {
    let before = ids()?;
    if uid == before.euid && gid == before.egid {
        return Ok((before.euid, before.egid));
    }
    // Become root first when going back, so the gid may change.
    if uid.is_root() {
        setresuid(UNCHANGED, 0, UNCHANGED)?;
        setresgid(UNCHANGED, gid.as_raw(), UNCHANGED)?;
    } else {
        setresgid(UNCHANGED, gid.as_raw(), UNCHANGED)?;
        setresuid(UNCHANGED, uid.as_raw(), UNCHANGED)?;
    }
    let now = ids()?;
    if now.euid != uid || now.egid != gid {
        return Err(io::Error::other("effective ids did not change as asked"));
    }
    Ok((before.euid, before.egid))
}

/// Whether the effective uid is root.
pub fn current_uid_is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `PR_GET_NO_NEW_PRIVS` (false when it cannot be read).
pub fn no_new_privs() -> bool {
    rustix::thread::no_new_privs().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_single_getters() {
        let i = ids().unwrap();
        assert_eq!(i.ruid.as_raw(), rustix::process::getuid().as_raw());
        assert_eq!(i.euid.as_raw(), rustix::process::geteuid().as_raw());
        assert_eq!(i.rgid.as_raw(), rustix::process::getgid().as_raw());
        assert_eq!(i.egid.as_raw(), rustix::process::getegid().as_raw());
        assert_eq!(current_uid_is_root(), i.euid.is_root());
    }

    #[test]
    fn groups_match_proc_status() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .unwrap();
        let mut want: Vec<u32> = line
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        let mut got: Vec<u32> = groups().unwrap().iter().map(|g| g.as_raw()).collect();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn no_new_privs_matches_proc_status() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let nnp = status
            .lines()
            .find_map(|l| l.strip_prefix("NoNewPrivs:"))
            .map(|v| v.trim() == "1");
        if let Some(nnp) = nnp {
            assert_eq!(no_new_privs(), nnp);
        }
    }

    /// Setting the ids the process already has changes nothing and
    /// succeeds, privileged or not.
    #[test]
    fn unchanged_ids_are_kept() {
        let before = ids().unwrap();
        assert_eq!(
            set_effective_ids(before.euid, before.egid).unwrap(),
            (before.euid, before.egid)
        );
        set_real_uid(before.ruid).unwrap();
        assert_eq!(ids().unwrap(), before);
    }

    /// Root, in a child process (so the test process keeps root): drop
    /// to nobody's ids; the kernel must then refuse root (checked inside
    /// the call, and again here), and the ids read back are the new ones.
    /// Unprivileged: a drop to root must fail.
    #[test]
    fn drop_for_good_in_a_child() {
        if !current_uid_is_root() {
            assert!(drop_privileges_for_good(Uid::ROOT, Gid::ROOT).is_err());
            return;
        }
        if crate::sys::tests::ran_in_child(
            "sys::creds::tests::drop_for_good_in_a_child",
            "STAP_SYS_DROP_CHILD",
        ) {
            return;
        }
        let (u, g) = (Uid::from_raw(65534), Gid::from_raw(65534));
        drop_privileges_for_good(u, g).unwrap();
        let now = ids().unwrap();
        assert_eq!((now.ruid, now.euid, now.suid), (u, u, u));
        assert_eq!((now.rgid, now.egid, now.sgid), (g, g, g));
        assert!(setresuid(0, 0, 0).is_err());
        assert!(set_effective_ids(Uid::ROOT, Gid::ROOT).is_err());
    }

    /// Root, in a child: the effective ids go to a user and back, the
    /// real and saved ones stay; the real uid alone changes too.
    #[test]
    fn effective_and_real_switches_in_a_child() {
        if !current_uid_is_root() {
            return;
        }
        if crate::sys::tests::ran_in_child(
            "sys::creds::tests::effective_and_real_switches_in_a_child",
            "STAP_SYS_SWITCH_CHILD",
        ) {
            return;
        }
        let start = ids().unwrap();
        let (u, g) = (Uid::from_raw(65534), Gid::from_raw(65534));
        assert_eq!(set_effective_ids(u, g).unwrap(), (start.euid, start.egid));
        let now = ids().unwrap();
        assert_eq!((now.euid, now.egid), (u, g));
        assert_eq!(
            (now.ruid, now.suid, now.rgid, now.sgid),
            (start.ruid, start.suid, start.rgid, start.sgid)
        );
        assert_eq!(set_effective_ids(Uid::ROOT, Gid::ROOT).unwrap(), (u, g));
        assert_eq!(ids().unwrap(), start);

        set_real_uid(u).unwrap();
        let now = ids().unwrap();
        assert_eq!((now.ruid, now.euid, now.suid), (u, start.euid, start.suid));
        set_real_uid(Uid::ROOT).unwrap();
        assert_eq!(ids().unwrap(), start);
    }
}
