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

/// Who a POSIX ACL entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclWho {
    User(u32),
    Group(u32),
}

/// A named entry of an access ACL whose effective permissions (its own,
/// limited by the ACL mask) include write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclWriter {
    pub path: PathBuf,
    pub who: AclWho,
    /// The user or group name, for messages.
    pub name: Option<String>,
}

/// The named entries that may write, from a `system.posix_acl_access`
/// value (version 2: a 4-byte header, then 8-byte entries `tag: u16,
/// perm: u16, id: u32`, little-endian). With named entries, the mode's
/// group bits are the mask, so these are what the mode does not show.
pub fn acl_writers(xattr: &[u8]) -> Result<Vec<AclWho>, &'static str> {
    const USER: u16 = 0x02;
    const GROUP: u16 = 0x08;
    const MASK: u16 = 0x10;
    let Some((head, body)) = xattr.split_first_chunk::<4>() else {
        return Err("truncated ACL");
    };
    if u32::from_le_bytes(*head) != 2 || body.len() % 8 != 0 {
        return Err("unknown ACL format");
    }
    let entries: Vec<(u16, u16, u32)> = body
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect();
    let mask = entries.iter().find(|e| e.0 == MASK).map_or(0o7, |e| e.1);
    Ok(entries
        .iter()
        .filter(|&&(_, perm, _)| perm & mask & 0o2 != 0)
        .filter_map(|&(tag, _, id)| match tag {
            USER => Some(AclWho::User(id)),
            GROUP => Some(AclWho::Group(id)),
            _ => None,
        })
        .collect())
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
    /// Named ACL entries granting write on the directories on the way to
    /// the blessed directory, on it, or on the module.
    pub acl_writers: Vec<AclWriter>,
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
    AclGrantsWrite { path: PathBuf, who: String },
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
            Rule::AclGrantsWrite { path: p, who } => format!(
                "{} has a POSIX ACL that lets {who} write to it; only root and the stapdev group may",
                p.display()
            ),
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
    let stranger = f.acl_writers.iter().find(|w| match w.who {
        AclWho::User(uid) => uid != 0,
        AclWho::Group(gid) => !group_ok(gid),
    });
    if let Some(w) = stranger {
        let (kind, id) = match w.who {
            AclWho::User(u) => ("user", u),
            AclWho::Group(g) => ("group", g),
        };
        let who = match &w.name {
            Some(n) => format!("{kind} {n} ({id})"),
            None => format!("{kind} {id}"),
        };
        return Deny(Rule::AclGrantsWrite {
            path: w.path.clone(),
            who,
        });
    }
    Allow(Rule::BlessedModule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(uid: u32, gid: u32, mode: u32) -> Stat {
        Stat { uid, gid, mode }
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (t, p, id) in entries {
            v.extend_from_slice(&t.to_le_bytes());
            v.extend_from_slice(&p.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    #[test]
    fn acl_writers_are_named_entries_with_effective_write() {
        const U: u32 = u32::MAX;
        // owner rwx, user 1001 rwx, group-obj r-x, group 158 rw-, mask rwx, other r-x
        let x = acl(&[
            (0x01, 7, U),
            (0x02, 7, 1001),
            (0x04, 5, U),
            (0x08, 6, 158),
            (0x10, 7, U),
            (0x20, 5, U),
        ]);
        assert_eq!(
            acl_writers(&x),
            Ok(vec![AclWho::User(1001), AclWho::Group(158)])
        );
        // The mask takes write away from every named entry.
        let x = acl(&[(0x01, 7, U), (0x02, 7, 1001), (0x04, 5, U), (0x10, 5, U)]);
        assert_eq!(acl_writers(&x), Ok(vec![]));
        // Read-only grants are no writers.
        let x = acl(&[(0x01, 7, U), (0x02, 4, 1001), (0x10, 7, U)]);
        assert_eq!(acl_writers(&x), Ok(vec![]));
        assert!(acl_writers(&[1, 0, 0, 0]).is_err());
        assert!(acl_writers(&[2, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn an_acl_writer_other_than_root_or_stapdev_is_refused() {
        let mut f = facts();
        f.acl_writers = vec![AclWriter {
            path: f.blessed_dir.clone(),
            who: AclWho::Group(STAPDEV),
            name: Some("stapdev".into()),
        }];
        assert_eq!(
            decide(Class::Stapusr, &f),
            Decision::Allow(Rule::BlessedModule)
        );
        f.acl_writers.push(AclWriter {
            path: f.path.clone(),
            who: AclWho::User(1001),
            name: Some("alice".into()),
        });
        let d = decide(Class::Stapusr, &f);
        let Decision::Deny(r) = d else {
            panic!("allowed: {d:?}")
        };
        let text = r.explain(&f, Class::Stapusr);
        assert!(
            text.contains("ACL") && text.contains("user alice (1001)"),
            "{text}"
        );
        // root and stapdev load whatever the ACLs say.
        assert!(matches!(decide(Class::Stapdev, &f), Decision::Allow(_)));
    }

    const STAPDEV: u32 = 158;

    fn facts() -> ModuleFacts {
        ModuleFacts {
            path: "/lib/modules/K/systemtap/pmod.ko".into(),
            blessed_dir: "/lib/modules/K/systemtap".into(),
            placement: Placement::InBlessedDir,
            blessed: Some(stat(0, 0, 0o755)),
            untrusted_ancestor: None,
            file: stat(0, 0, 0o644),
            kind: FileKind::Regular,
            owner_is_stapdev: false,
            stapdev_gid: Some(STAPDEV),
            acl_writers: Vec::new(),
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
        f.blessed = Some(stat(1000, 0, 0o755));
        assert_eq!(deny(Class::Stapsys, &f), Rule::BlessedDirNotRootOwned);
        f.blessed = Some(stat(0, 0, 0o777));
        assert_eq!(deny(Class::Stapusr, &f), Rule::BlessedDirWorldWritable);
        f.blessed = Some(stat(0, 100, 0o775));
        assert_eq!(
            deny(Class::Stapusr, &f),
            Rule::BlessedDirGroupWritable { gid: 100 }
        );

        let mut f = facts();
        f.file.mode = 0o646;
        assert_eq!(deny(Class::Stapusr, &f), Rule::FileWorldWritable);
        f.file = stat(0, 100, 0o664);
        assert_eq!(
            deny(Class::Stapusr, &f),
            Rule::FileGroupWritable { gid: 100 }
        );
        f.file = stat(1001, 0, 0o644);
        assert_eq!(deny(Class::Stapusr, &f), Rule::FileOwner { uid: 1001 });

        let mut f = facts();
        f.placement = Placement::SymlinkInBlessedDir;
        assert_eq!(deny(Class::Stapusr, &f), Rule::SymlinkInBlessedDir);
        f.placement = Placement::NoBlessedDir;
        assert_eq!(deny(Class::Stapusr, &f), Rule::NoBlessedDir);

        let mut f = facts();
        f.untrusted_ancestor = Some(("/lib/modules".into(), stat(5, 0, 0o755)));
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
        f.blessed = Some(stat(0, STAPDEV, 0o775));
        f.file = stat(1002, STAPDEV, 0o664);
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
        f.file = stat(1002, 0, 0o644);
        f.owner_is_stapdev = true;
        assert_eq!(deny(Class::Stapusr, &f), Rule::FileOwner { uid: 1002 });
    }
}
