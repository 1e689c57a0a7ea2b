//! The environment: captured and cleared at start-up, and passed on to
//! stapio only through an allowlist. No override variable
//! (SYSTEMTAP_STAPIO, SYSTEMTAP_STAPRUN, SYSTEMTAP_RUNTIME, MODPROBE_OPTIONS,
//! LD_*, STAP_*_OVERRIDE, ...) is ever read.
#![forbid(unsafe_code)]

/// Variables stapio (running as the user) may inherit.
const KEEP: &[&str] = &[
    "TERM",
    "LANG",
    "LANGUAGE",
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SYSTEMTAP_COLORS",
    "TZ",
    "COLUMNS",
    "LINES",
];

/// Keep `name=value` for stapio?
pub fn keep(name: &str, value: &str) -> bool {
    if value.starts_with("()") || value.len() > 4096 {
        return false;
    }
    if name == "TZ" {
        return safe_tz(value);
    }
    KEEP.contains(&name)
        || (name.starts_with("LC_") && name[3..].chars().all(|c| c.is_ascii_uppercase()))
}

/// A TZ value that cannot make libc read an arbitrary file.
fn safe_tz(v: &str) -> bool {
    let v = v.strip_prefix(':').unwrap_or(v);
    if v.contains("..") || !v.chars().all(|c| c.is_ascii_graphic()) {
        return false;
    }
    !v.starts_with('/') || v.starts_with("/usr/share/zoneinfo/")
}

/// Filter a captured environment.
pub fn filter(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.into_iter().filter(|(k, v)| keep(k, v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist() {
        for (k, v) in [
            ("TERM", "xterm"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("TZ", "Europe/Paris"),
            ("PATH", "/usr/bin"),
        ] {
            assert!(keep(k, v), "{k}");
        }
        for (k, v) in [
            ("SYSTEMTAP_STAPIO", "/tmp/evil"),
            ("SYSTEMTAP_STAPRUN", "/tmp/evil"),
            ("SYSTEMTAP_RUNTIME", "/tmp"),
            ("MODPROBE_OPTIONS", "-C /tmp/x"),
            ("LD_PRELOAD", "/tmp/x.so"),
            ("LD_LIBRARY_PATH", "/tmp"),
            ("STAP_FIPS_OVERRIDE", "1"),
            ("IFS", " "),
            ("BASH_ENV", "/tmp/x"),
            ("TZ", "/etc/shadow"),
            ("TZ", "../../etc/shadow"),
            ("TERM", "() { :; }; id"),
            ("LC_x", "C"),
        ] {
            assert!(!keep(k, v), "{k}={v}");
        }
    }
}
