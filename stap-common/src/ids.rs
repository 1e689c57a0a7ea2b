//! Typed user, group and process ids: a uid cannot be passed where a gid
//! is meant. Each prints as its bare number (`Display`), as the kernel
//! and the audit lines show it. Only [`crate::sys`] turns them into the
//! raw values of system calls; values from elsewhere (a file's owner in a
//! `stat`, a policy row) are converted with `from_raw` where they meet
//! typed ones.

use std::fmt;

/// A user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uid(u32);

impl Uid {
    /// uid 0.
    pub const ROOT: Uid = Uid(0);

    pub const fn from_raw(raw: u32) -> Uid {
        Uid(raw)
    }

    pub const fn as_raw(self) -> u32 {
        self.0
    }

    pub const fn is_root(self) -> bool {
        self.0 == 0
    }
}

/// A group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gid(u32);

impl Gid {
    /// gid 0.
    pub const ROOT: Gid = Gid(0);

    pub const fn from_raw(raw: u32) -> Gid {
        Gid(raw)
    }

    pub const fn as_raw(self) -> u32 {
        self.0
    }

    pub const fn is_root(self) -> bool {
        self.0 == 0
    }
}

/// A process id (`pid_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid(i32);

impl Pid {
    pub const fn from_raw(raw: i32) -> Pid {
        Pid(raw)
    }

    pub const fn as_raw(self) -> i32 {
        self.0
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_number() {
        assert_eq!(Uid::from_raw(1001).to_string(), "1001");
        assert_eq!(format!("{:>6}", Gid::from_raw(158)), "   158");
        assert_eq!(Pid::from_raw(4242).to_string(), "4242");
    }

    #[test]
    fn root_and_raw() {
        assert!(Uid::ROOT.is_root());
        assert!(Gid::ROOT.is_root());
        assert!(!Uid::from_raw(1).is_root());
        assert_eq!(Uid::from_raw(u32::MAX).as_raw(), u32::MAX);
        assert_eq!(Pid::from_raw(-1).as_raw(), -1);
        assert!(Uid::from_raw(2) > Uid::ROOT);
    }
}
