//! The audit trail: one syslog line (AUTHPRIV) for every load, denial and
//! unload, with the user, the module path and the SHA-256 of the loaded
//! bytes. Values are `key=value`; paths are quoted.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

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
pub fn who(uid: u32, name: Option<&str>, class: &str) -> String {
    format!(
        "user={} uid={uid} class={}",
        quote(name.unwrap_or("?")),
        quote(class)
    )
}

pub fn load_line(who: &str, module: &str, path: &Path, sha256: &str, rule: &str) -> String {
    format!(
        "LOAD {who} module={module} path={} sha256={sha256} rule={}",
        quote(&path.display().to_string()),
        quote(rule)
    )
}

/// What happens during a load that main must log as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// Logged before `init_module`: who loads which bytes, by which rule.
    Loading {
        module: &'a str,
        path: &'a Path,
        sha256: &'a str,
        rule: &'a str,
    },
    /// `init_module` failed.
    LoadFailed {
        module: &'a str,
        path: &'a Path,
        error: &'a str,
    },
}

/// The syslog line of an event.
pub fn event_line(who: &str, e: &Event<'_>) -> String {
    match e {
        Event::Loading {
            module,
            path,
            sha256,
            rule,
        } => format!(
            "LOADING {who} module={module} path={} sha256={sha256} rule={}",
            quote(&path.display().to_string()),
            quote(rule)
        ),
        Event::LoadFailed {
            module,
            path,
            error,
        } => format!(
            "LOAD-FAILED {who} module={module} path={} error={}",
            quote(&path.display().to_string()),
            quote(error)
        ),
    }
}

pub fn deny_line(who: &str, path: &str, reason: &str) -> String {
    format!("DENY {who} path={} reason={}", quote(path), quote(reason))
}

pub fn unload_line(who: &str, module: &str) -> String {
    format!("UNLOAD {who} module={module}")
}

/// The module was unloaded because its stapio could not start.
pub fn undo_line(who: &str, module: &str) -> String {
    format!("UNLOAD {who} module={module} reason=\"stapio did not start\"")
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
        let w = who(1001, Some("alice"), "stapusr");
        let l = load_line(&w, "pmod", Path::new("/x y/p.ko"), "00", "blessed");
        assert_eq!(
            l,
            "LOAD user=\"alice\" uid=1001 class=\"stapusr\" module=pmod path=\"/x y/p.ko\" sha256=00 rule=\"blessed\""
        );
        // A newline in a path cannot start a forged line.
        let d = deny_line(&w, "/tmp/a\nLOAD user=root", "nope");
        assert!(!d.contains('\n'));
    }
}
