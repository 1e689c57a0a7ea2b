//! The password and group databases (`getpwuid_r`, `getgrgid_r`,
//! `getgrnam_r`: through NSS, so libc's own), each lookup with a buffer
//! that grows on ERANGE up to 64 MiB.

use std::ffi::{CStr, CString};

use crate::ids::{Gid, Uid};

/// Largest lookup buffer: past it, a lookup that still gets ERANGE fails.
const MAX_BUF: usize = 64 << 20;

/// Double a lookup buffer after ERANGE, up to `max`; false past that.
fn grow_to(buf: &mut Vec<libc::c_char>, max: usize) -> bool {
    if buf.len() >= max {
        return false;
    }
    let n = (buf.len() * 2).min(max);
    buf.resize(n, 0);
    true
}

/// Double a lookup buffer after ERANGE, up to 64 MiB; false past that.
fn grow(buf: &mut Vec<libc::c_char>) -> bool {
    grow_to(buf, MAX_BUF)
}

/// The user name of `uid`, if the password database has one.
pub fn user_name(uid: Uid) -> Option<String> {
    with_passwd(uid, |pw| {
        // SAFETY: pw_name points to a NUL-terminated string inside getpwuid_r's
        // buffer, alive for this call.
        unsafe { CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned()
    })
}

/// One reentrant NSS lookup (`getpwuid_r`-style): `call` fills `entry`
/// using the buffer and sets the result pointer; the buffer starts at
/// `initial` bytes and grows on ERANGE. `f` sees the entry while the
/// buffer its strings point into is alive.
fn nss_entry<E, T>(
    mut entry: E,
    initial: usize,
    mut call: impl FnMut(&mut E, &mut [libc::c_char], &mut *mut E) -> libc::c_int,
    f: impl FnOnce(&E) -> T,
) -> Option<T> {
    let mut buf = vec![0 as libc::c_char; initial];
    loop {
        let mut res: *mut E = std::ptr::null_mut();
        let r = call(&mut entry, &mut buf, &mut res);
        if r == libc::ERANGE && grow(&mut buf) {
            continue;
        }
        return (r == 0 && !res.is_null()).then(|| f(&entry));
    }
}

/// `f` on the password-database entry of `uid`.
fn with_passwd<T>(uid: Uid, f: impl FnOnce(&libc::passwd) -> T) -> Option<T> {
    // SAFETY: a zeroed passwd struct is valid storage for getpwuid_r.
    let pw: libc::passwd = unsafe { std::mem::zeroed() };
    let call = |pw: &mut libc::passwd, buf: &mut [libc::c_char], res: &mut *mut libc::passwd| {
        // SAFETY: all pointers are to live storage of the documented sizes.
        unsafe { libc::getpwuid_r(uid.as_raw(), pw, buf.as_mut_ptr(), buf.len(), res) }
    };
    nss_entry(pw, 16384, call, f)
}

/// `f` on the group-database entry of `gid`.
fn with_group<T>(gid: Gid, f: impl FnOnce(&libc::group) -> T) -> Option<T> {
    // SAFETY: a zeroed group struct is valid storage for getgrgid_r.
    let grp: libc::group = unsafe { std::mem::zeroed() };
    let call = |grp: &mut libc::group, buf: &mut [libc::c_char], res: &mut *mut libc::group| {
        // SAFETY: all pointers are to live storage of the documented sizes.
        unsafe { libc::getgrgid_r(gid.as_raw(), grp, buf.as_mut_ptr(), buf.len(), res) }
    };
    // Group entries list their members: start larger than for passwd.
    nss_entry(grp, 65536, call, f)
}

/// Look up a group id by name in the group database (`getgrnam_r`).
pub fn group_id(name: &str) -> Option<Gid> {
    let c = CString::new(name).ok()?;
    // SAFETY: a zeroed group struct is valid storage for getgrnam_r.
    let grp: libc::group = unsafe { std::mem::zeroed() };
    let call = |grp: &mut libc::group, buf: &mut [libc::c_char], res: &mut *mut libc::group| {
        // SAFETY: all pointers are to live storage of the documented sizes.
        unsafe { libc::getgrnam_r(c.as_ptr(), grp, buf.as_mut_ptr(), buf.len(), res) }
    };
    nss_entry(grp, 16384, call, |grp| Gid::from_raw(grp.gr_gid))
}

/// The name of group `gid`, if the group database has one.
pub fn group_name(gid: Gid) -> Option<String> {
    with_group(gid, |grp| {
        // SAFETY: gr_name points to a NUL-terminated string inside
        // getgrgid_r's buffer, alive for this call.
        unsafe { CStr::from_ptr(grp.gr_name) }
            .to_string_lossy()
            .into_owned()
    })
}

/// Is user `uid` a member of group `gid` (primary group or listed member)?
pub fn user_in_group(uid: Uid, gid: Gid) -> bool {
    let Some((primary, name)) = with_passwd(uid, |pw| {
        // SAFETY: pw_name is a NUL-terminated string inside getpwuid_r's buffer,
        // alive for this call.
        let name = unsafe { CStr::from_ptr(pw.pw_name) };
        (pw.pw_gid, name.to_bytes().to_vec())
    }) else {
        return false;
    };
    if primary == gid.as_raw() {
        return true;
    }
    with_group(gid, |grp| {
        if grp.gr_mem.is_null() {
            return false;
        }
        let mut i = 0;
        loop {
            // SAFETY: gr_mem is a NULL-terminated array of C strings inside
            // getgrgid_r's buffer, alive for this call.
            let p = unsafe { *grp.gr_mem.add(i) };
            if p.is_null() {
                return false;
            }
            // SAFETY: each entry is a NUL-terminated string.
            if unsafe { CStr::from_ptr(p) }.to_bytes() == name.as_slice() {
                return true;
            }
            i += 1;
        }
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_root() {
        assert_eq!(user_name(Uid::ROOT).as_deref(), Some("root"));
        assert_eq!(group_id("root"), Some(Gid::ROOT));
        assert_eq!(group_name(Gid::ROOT).as_deref(), Some("root"));
        assert!(user_in_group(Uid::ROOT, Gid::ROOT));
    }

    #[test]
    fn missing_entries() {
        // Ids and names no database has.
        assert_eq!(user_name(Uid::from_raw(4_000_000_000)), None);
        assert_eq!(group_name(Gid::from_raw(4_000_000_000)), None);
        assert_eq!(group_id("no-such-group-stap-test"), None);
        assert_eq!(group_id("nul\0inside"), None);
        assert!(!user_in_group(Uid::from_raw(4_000_000_000), Gid::ROOT));
        assert!(!user_in_group(Uid::ROOT, Gid::from_raw(4_000_000_000)));
    }

    /// Every listed member of every group in /etc/group that also has a
    /// passwd entry there counts as a member (the databases may have more
    /// sources than these files; the files' entries are in them).
    #[test]
    fn listed_members_of_etc_group() {
        let Ok(groups) = std::fs::read_to_string("/etc/group") else {
            return;
        };
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let uid_of = |name: &str| {
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&name)).then(|| f.get(2)?.parse::<u32>().ok())?
            })
        };
        for l in groups.lines() {
            let f: Vec<&str> = l.split(':').collect();
            let (Some(gid), Some(members)) = (f.get(2).and_then(|g| g.parse().ok()), f.get(3))
            else {
                continue;
            };
            for m in members.split(',').filter(|m| !m.is_empty()) {
                if let Some(uid) = uid_of(m) {
                    assert!(
                        user_in_group(Uid::from_raw(uid), Gid::from_raw(gid)),
                        "{m} in {l}"
                    );
                }
            }
            // (Two lines may share a gid: the name is one of theirs.)
            assert!(group_name(Gid::from_raw(gid)).is_some(), "{l}");
            assert_eq!(group_id(f[0]), Some(Gid::from_raw(gid)));
        }
    }

    #[test]
    fn buffers_double_up_to_the_limit() {
        let mut b = vec![0 as libc::c_char; 16];
        assert!(grow_to(&mut b, 100));
        assert_eq!(b.len(), 32);
        assert!(grow_to(&mut b, 100));
        assert!(grow_to(&mut b, 100));
        assert_eq!(b.len(), 100);
        assert!(!grow_to(&mut b, 100));
        assert_eq!(b.len(), 100);
        let mut b = vec![0 as libc::c_char; MAX_BUF];
        assert!(!grow(&mut b));
        assert_eq!(b.len(), MAX_BUF);
    }
}
