//! Who may load what: a pure function from the caller's credentials and
//! the facts about a module (gathered on open file descriptors by
//! [`crate::facts`]) to a decision naming the rule that made it.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

/// The caller's privilege class, from the real uid and the real groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Root,
    /// Member of stapdev (which implies stapsys and stapusr).
    Stapdev,
    Stapsys,
    Stapusr,
    None,
}

impl Class {
    /// Root and stapdev may load any module from any path.
    pub fn may_load_anything(self) -> bool {
        matches!(self, Class::Root | Class::Stapdev)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Root => "root",
            Class::Stapdev => "stapdev",
            Class::Stapsys => "stapsys",
            Class::Stapusr => "stapusr",
            Class::None => "no systemtap group",
        })
    }
}

/// Ownership and mode of a file or directory, from `fstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Stat {
    fn world_writable(&self) -> bool {
        self.mode & 0o002 != 0
    }
    fn group_writable(&self) -> bool {
        self.mode & 0o020 != 0
    }
}

/// What kind of file the module path opened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Other,
}

/// Facts about the blessed directory and the module's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The module's parent directory is the blessed directory, and it was
    /// opened by name there with `O_NOFOLLOW`.
    InBlessedDir,
    /// The module is somewhere else.
    Elsewhere,
    /// The name in the blessed directory is a symbolic link.
    SymlinkInBlessedDir,
    /// The blessed directory does not exist.
    NoBlessedDir,
}

/// Everything the policy needs to know about one load request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFacts {
    pub path: PathBuf,
    pub blessed_dir: PathBuf,
    pub placement: Placement,
    /// The blessed directory's own stat, when it exists.
    pub blessed: Option<Stat>,
    /// The first directory on the way to the blessed directory that is not
    /// root-owned or is writable by others, with its stat.
    pub untrusted_ancestor: Option<(PathBuf, Stat)>,
    /// The module file, when it could be opened.
    pub file: Stat,
    pub kind: FileKind,
    /// Whether the file's owner is currently a member of stapdev.
    pub owner_is_stapdev: bool,
    /// stapdev's gid, if the group exists.
    pub stapdev_gid: Option<u32>,
}

/// The rule that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    RootMayLoadAnything,
    StapdevMayLoadAnything,
    BlessedModule,
    // Denials:
    NotInAnyGroup,
    NotRegularFile,
    OutsideBlessedDir,
    SymlinkInBlessedDir,
    NoBlessedDir,
    BlessedDirNotRootOwned,
    BlessedDirWorldWritable,
    BlessedDirGroupWritable { gid: u32 },
    UntrustedAncestor { dir: PathBuf },
    FileWorldWritable,
    FileGroupWritable { gid: u32 },
    FileOwner { uid: u32 },
    UprobesNeedsStapdev,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Rule),
    Deny(Rule),
}

impl Rule {
    /// One line, in plain words, naming the rule.
    pub fn explain(&self, f: &ModuleFacts, class: Class) -> String {
        let dir = f.blessed_dir.display();
        let path = f.path.display();
        match self {
            Rule::RootMayLoadAnything => "root may load any module".into(),
            Rule::StapdevMayLoadAnything => {
                "members of stapdev may load any module from any path".into()
            }
            Rule::BlessedModule => format!(
                "{path} was placed by an administrator in {dir}, which members of stapusr may load from"
            ),
            Rule::NotInAnyGroup => {
                "you are not root and not a member of stapusr, stapsys or stapdev".into()
            }
            Rule::NotRegularFile => format!("{path} is not a regular file"),
            Rule::OutsideBlessedDir => format!(
                "as a member of {class} (not stapdev) you may load modules only from {dir}, and {path} is not there"
            ),
            Rule::SymlinkInBlessedDir => {
                format!("{path} is a symbolic link; modules in {dir} must be regular files")
            }
            Rule::NoBlessedDir => format!(
                "as a member of {class} you may load modules only from {dir}, which does not exist"
            ),
            Rule::BlessedDirNotRootOwned => format!("{dir} must be owned by root"),
            Rule::BlessedDirWorldWritable => format!("{dir} must not be world writable"),
            Rule::BlessedDirGroupWritable { gid } => format!(
                "{dir} is writable by group {gid}; only group root or stapdev may write to it"
            ),
            Rule::UntrustedAncestor { dir: d } => format!(
                "{} (on the way to {dir}) must be owned by root and not writable by others",
                d.display()
            ),
            Rule::FileWorldWritable => format!("{path} must not be world writable"),
            Rule::FileGroupWritable { gid } => format!(
                "{path} is writable by group {gid}; only group root or stapdev may write to it"
            ),
            Rule::FileOwner { uid } => format!(
                "{path} is owned by uid {uid}; it must be owned by root, or by a stapdev member in a root:stapdev directory"
            ),
            Rule::UprobesNeedsStapdev => "only root and stapdev may load uprobes.ko (-u)".into(),
        }
    }
}

/// The decision for loading the module described by `f` as `class`.
pub fn decide(class: Class, f: &ModuleFacts) -> Decision {
    use Decision::{Allow, Deny};
    match class {
        Class::None => return Deny(Rule::NotInAnyGroup),
        Class::Root | Class::Stapdev => {
            if f.kind != FileKind::Regular {
                return Deny(Rule::NotRegularFile);
            }
            return Allow(if class == Class::Root {
                Rule::RootMayLoadAnything
            } else {
                Rule::StapdevMayLoadAnything
            });
        }
        Class::Stapsys | Class::Stapusr => {}
    }
    match f.placement {
        Placement::NoBlessedDir => return Deny(Rule::NoBlessedDir),
        Placement::Elsewhere => return Deny(Rule::OutsideBlessedDir),
        Placement::SymlinkInBlessedDir => return Deny(Rule::SymlinkInBlessedDir),
        Placement::InBlessedDir => {}
    }
    if let Some((dir, _)) = &f.untrusted_ancestor {
        return Deny(Rule::UntrustedAncestor { dir: dir.clone() });
    }
    let Some(d) = f.blessed else {
        return Deny(Rule::NoBlessedDir);
    };
    let group_ok = |gid: u32| gid == 0 || Some(gid) == f.stapdev_gid;
    if d.uid != 0 {
        return Deny(Rule::BlessedDirNotRootOwned);
    }
    if d.world_writable() {
        return Deny(Rule::BlessedDirWorldWritable);
    }
    if d.group_writable() && !group_ok(d.gid) {
        return Deny(Rule::BlessedDirGroupWritable { gid: d.gid });
    }
    if f.kind != FileKind::Regular {
        return Deny(Rule::NotRegularFile);
    }
    let m = f.file;
    if m.world_writable() {
        return Deny(Rule::FileWorldWritable);
    }
    if m.group_writable() && !group_ok(m.gid) {
        return Deny(Rule::FileGroupWritable { gid: m.gid });
    }
    if m.uid != 0 {
        // The 775 root:stapdev layout: stapdev members publish modules.
        let stapdev_layout =
            d.group_writable() && f.stapdev_gid.is_some() && Some(d.gid) == f.stapdev_gid;
        if !(stapdev_layout && f.owner_is_stapdev) {
            return Deny(Rule::FileOwner { uid: m.uid });
        }
    }
    Allow(Rule::BlessedModule)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAPDEV: u32 = 158;

    fn facts() -> ModuleFacts {
        ModuleFacts {
            path: "/lib/modules/K/systemtap/pmod.ko".into(),
            blessed_dir: "/lib/modules/K/systemtap".into(),
            placement: Placement::InBlessedDir,
            blessed: Some(Stat {
                uid: 0,
                gid: 0,
                mode: 0o755,
            }),
            untrusted_ancestor: None,
            file: Stat {
                uid: 0,
                gid: 0,
                mode: 0o644,
            },
            kind: FileKind::Regular,
            owner_is_stapdev: false,
            stapdev_gid: Some(STAPDEV),
        }
    }

    fn deny(c: Class, f: &ModuleFacts) -> Rule {
        match decide(c, f) {
            Decision::Deny(r) => r,
            d => panic!("expected a denial, got {d:?}"),
        }
    }

    #[test]
    fn blessed_module_allowed_for_every_group() {
        for c in [Class::Root, Class::Stapdev, Class::Stapsys, Class::Stapusr] {
            assert!(matches!(decide(c, &facts()), Decision::Allow(_)), "{c}");
        }
        assert_eq!(deny(Class::None, &facts()), Rule::NotInAnyGroup);
    }

    #[test]
    fn stapusr_rules() {
        let mut f = facts();
        f.placement = Placement::Elsewhere;
        assert_eq!(deny(Class::Stapusr, &f), Rule::OutsideBlessedDir);
        assert!(matches!(
            decide(Class::Stapdev, &f),
            Decision::Allow(Rule::StapdevMayLoadAnything)
        ));

        let mut f = facts();
        f.blessed = Some(Stat {
            uid: 1000,
            gid: 0,
            mode: 0o755,
        });
        assert_eq!(deny(Class::Stapsys, &f), Rule::BlessedDirNotRootOwned);
        f.blessed = Some(Stat {
            uid: 0,
            gid: 0,
            mode: 0o777,
        });
        assert_eq!(deny(Class::Stapusr, &f), Rule::BlessedDirWorldWritable);
        f.blessed = Some(Stat {
            uid: 0,
            gid: 100,
            mode: 0o775,
        });
        assert_eq!(
            deny(Class::Stapusr, &f),
            Rule::BlessedDirGroupWritable { gid: 100 }
        );

        let mut f = facts();
        f.file.mode = 0o646;
        assert_eq!(deny(Class::Stapusr, &f), Rule::FileWorldWritable);
        f.file = Stat {
            uid: 0,
            gid: 100,
            mode: 0o664,
        };
        assert_eq!(
            deny(Class::Stapusr, &f),
            Rule::FileGroupWritable { gid: 100 }
        );
        f.file = Stat {
            uid: 1001,
            gid: 0,
            mode: 0o644,
        };
        assert_eq!(deny(Class::Stapusr, &f), Rule::FileOwner { uid: 1001 });

        let mut f = facts();
        f.placement = Placement::SymlinkInBlessedDir;
        assert_eq!(deny(Class::Stapusr, &f), Rule::SymlinkInBlessedDir);
        f.placement = Placement::NoBlessedDir;
        assert_eq!(deny(Class::Stapusr, &f), Rule::NoBlessedDir);

        let mut f = facts();
        f.untrusted_ancestor = Some((
            "/lib/modules".into(),
            Stat {
                uid: 5,
                gid: 0,
                mode: 0o755,
            },
        ));
        assert!(matches!(
            deny(Class::Stapusr, &f),
            Rule::UntrustedAncestor { .. }
        ));

        let mut f = facts();
        f.kind = FileKind::Other;
        assert_eq!(deny(Class::Stapusr, &f), Rule::NotRegularFile);
        assert_eq!(deny(Class::Root, &f), Rule::NotRegularFile);
    }

    #[test]
    fn stapdev_layout_lets_stapdev_members_publish() {
        let mut f = facts();
        f.blessed = Some(Stat {
            uid: 0,
            gid: STAPDEV,
            mode: 0o775,
        });
        f.file = Stat {
            uid: 1002,
            gid: STAPDEV,
            mode: 0o664,
        };
        f.owner_is_stapdev = true;
        assert!(matches!(
            decide(Class::Stapusr, &f),
            Decision::Allow(Rule::BlessedModule)
        ));
        // The owner left stapdev: refused.
        f.owner_is_stapdev = false;
        assert_eq!(deny(Class::Stapusr, &f), Rule::FileOwner { uid: 1002 });
        // A 755 root:root directory never accepts a non-root owner.
        let mut f = facts();
        f.file = Stat {
            uid: 1002,
            gid: 0,
            mode: 0o644,
        };
        f.owner_is_stapdev = true;
        assert_eq!(deny(Class::Stapusr, &f), Rule::FileOwner { uid: 1002 });
    }
}
