//! The audit trail: one syslog line (AUTHPRIV) for every load, denial and
//! unload, with the user, the module path and the SHA-256 of the loaded
//! bytes. Values are `key=value`; paths are quoted.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};
use stap_common::ids::Uid;

use crate::policy::Rule;

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in d {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Quote a value so spaces and control characters cannot forge fields.
pub fn quote(v: &str) -> String {
    format!("{v:?}")
}

/// Who: `user=NAME uid=N class=C`.
pub fn who(uid: Uid, name: Option<&str>, class: &str) -> String {
    format!(
        "user={} uid={uid} class={}",
        quote(name.unwrap_or("?")),
        quote(class)
    )
}

/// Every audit event, typed; [`Event::line`] is its syslog line and
/// [`Event::priority`] its priority. The operations emit them through
/// `Context::audit` as they happen; main's sink writes them to syslog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// Logged before `init_module`: who loads which bytes, by which rule.
    Loading {
        module: &'a str,
        path: &'a Path,
        sha256: &'a str,
        rule: &'a Rule,
    },
    /// `init_module` failed.
    LoadFailed {
        module: &'a str,
        path: &'a Path,
        error: &'a str,
    },
    /// The module is loaded and set up, about to be handed to stapio.
    Load {
        module: &'a str,
        path: &'a Path,
        sha256: &'a str,
        rule: &'a Rule,
    },
    /// A load refused by the permission rules (`reason` names the rule).
    Denied { path: &'a Path, reason: &'a str },
    /// `staprun -d` unloaded the module.
    Unload { module: &'a str },
    /// The module was unloaded because its stapio could not start
    /// (`staprun --undo-start`).
    Undo { module: &'a str },
}

/// Syslog priorities (`<syslog.h>`), so the events need no libc.
pub const LOG_WARNING: i32 = 4;
pub const LOG_NOTICE: i32 = 5;

impl Event<'_> {
    /// The syslog priority of the event.
    pub fn priority(&self) -> i32 {
        match self {
            Event::LoadFailed { .. } | Event::Denied { .. } => LOG_WARNING,
            Event::Loading { .. }
            | Event::Load { .. }
            | Event::Unload { .. }
            | Event::Undo { .. } => LOG_NOTICE,
        }
    }

    /// The syslog line of the event, for the caller `who` (see [`who`]).
    pub fn line(&self, who: &str) -> String {
        let q = |p: &Path| quote(&p.display().to_string());
        match self {
            Event::Loading {
                module,
                path,
                sha256,
                rule,
            } => format!(
                "LOADING {who} module={module} path={} sha256={sha256} rule={}",
                q(path),
                quote(&format!("{rule:?}"))
            ),
            Event::LoadFailed {
                module,
                path,
                error,
            } => format!(
                "LOAD-FAILED {who} module={module} path={} error={}",
                q(path),
                quote(error)
            ),
            Event::Load {
                module,
                path,
                sha256,
                rule,
            } => format!(
                "LOAD {who} module={module} path={} sha256={sha256} rule={}",
                q(path),
                quote(&format!("{rule:?}"))
            ),
            Event::Denied { path, reason } => {
                format!("DENY {who} path={} reason={}", q(path), quote(reason))
            }
            Event::Unload { module } => format!("UNLOAD {who} module={module}"),
            Event::Undo { module } => {
                format!("UNLOAD {who} module={module} reason=\"stapio did not start\"")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let w = who(Uid::from_raw(1001), Some("alice"), "stapusr");
        let path = Path::new("/x y/p.ko");
        let rule = Rule::BlessedModule;
        let l = Event::Load {
            module: "pmod",
            path,
            sha256: "00",
            rule: &rule,
        };
        assert_eq!(
            l.line(&w),
            "LOAD user=\"alice\" uid=1001 class=\"stapusr\" module=pmod path=\"/x y/p.ko\" sha256=00 rule=\"BlessedModule\""
        );
        assert_eq!(l.priority(), LOG_NOTICE);
        let l = Event::Loading {
            module: "pmod",
            path,
            sha256: "00",
            rule: &Rule::FileGroupWritable { gid: 7 },
        };
        assert!(l.line(&w).starts_with("LOADING user="), "{}", l.line(&w));
        assert!(
            l.line(&w)
                .ends_with("rule=\"FileGroupWritable { gid: 7 }\"")
        );
        // A newline in a path cannot start a forged line.
        let d = Event::Denied {
            path: Path::new("/tmp/a\nLOAD user=root"),
            reason: "nope",
        };
        assert!(!d.line(&w).contains('\n'));
        assert_eq!(d.priority(), LOG_WARNING);
        assert_eq!(
            Event::Undo { module: "m" }.line(&w),
            format!("UNLOAD {w} module=m reason=\"stapio did not start\"")
        );
        assert_eq!(
            Event::Unload { module: "m" }.line(&w),
            format!("UNLOAD {w} module=m")
        );
    }
}
