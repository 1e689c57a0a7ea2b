//! The caller's privilege class, from the real uid and the real groups.
#![forbid(unsafe_code)]

use crate::policy::Class;

/// Group ids of the three SystemTap groups (absent groups are `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StapGroups {
    pub stapusr: Option<u32>,
    pub stapsys: Option<u32>,
    pub stapdev: Option<u32>,
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
pub fn classify(real_uid: u32, groups: &[u32], stap: StapGroups) -> Class {
    if real_uid == 0 {
        return Class::Root;
    }
    let has = |g: Option<u32>| g.is_some_and(|g| groups.contains(&g));
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
        stapusr: Some(156),
        stapsys: Some(157),
        stapdev: Some(158),
    };

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
