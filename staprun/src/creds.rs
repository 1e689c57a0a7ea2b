//! The caller's privilege class, from the real uid and the real groups.
#![forbid(unsafe_code)]

use stap_common::ids::{Gid, Uid};

use crate::policy::Class;

/// Group ids of the three SystemTap groups (absent groups are `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StapGroups {
    pub stapusr: Option<Gid>,
    pub stapsys: Option<Gid>,
    pub stapdev: Option<Gid>,
}

impl StapGroups {
    pub fn from_system() -> Self {
        StapGroups {
            stapusr: stap_common::sys::group_id("stapusr"),
            stapsys: stap_common::sys::group_id("stapsys"),
            stapdev: stap_common::sys::group_id("stapdev"),
        }
    }
}

/// Classify a caller. `groups` are the real gid and the supplementary
/// groups; the effective ids play no part (staprun is setuid root).
pub fn classify(real_uid: Uid, groups: &[Gid], stap: StapGroups) -> Class {
    if real_uid.is_root() {
        return Class::Root;
    }
    let has = |g: Option<Gid>| g.is_some_and(|g| groups.contains(&g));
    if has(stap.stapdev) {
        Class::Stapdev
    } else if has(stap.stapsys) {
        Class::Stapsys
    } else if has(stap.stapusr) {
        Class::Stapusr
    } else {
        Class::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: StapGroups = StapGroups {
        stapusr: Some(Gid::from_raw(156)),
        stapsys: Some(Gid::from_raw(157)),
        stapdev: Some(Gid::from_raw(158)),
    };

    fn classify(uid: u32, groups: &[u32], stap: StapGroups) -> Class {
        let groups: Vec<Gid> = groups.iter().copied().map(Gid::from_raw).collect();
        super::classify(Uid::from_raw(uid), &groups, stap)
    }

    #[test]
    fn classes() {
        assert_eq!(classify(0, &[], G), Class::Root);
        assert_eq!(classify(1002, &[100, 156, 158], G), Class::Stapdev);
        assert_eq!(classify(1003, &[156, 157], G), Class::Stapsys);
        assert_eq!(classify(1001, &[1001, 156], G), Class::Stapusr);
        assert_eq!(classify(1004, &[1004, 100], G), Class::None);
        // Groups that do not exist grant nothing.
        assert_eq!(classify(1001, &[156], StapGroups::default()), Class::None);
    }
}
