//! The environment: captured and cleared at start-up; staprun itself uses
//! nothing from it but `TERM` and `SYSTEMTAP_COLORS`, and those only to
//! colour its own stderr (`stap_common::color`, digits and `;` only).
//!
//! What goes on, in stapio's `execve` ([`for_stapio`]):
//!
//! * stapio's own environment: the allowlist [`keep`] (`TERM`, `LANG`,
//!   `LANGUAGE`, `LC_*`, a safe `TZ`, `PATH`, `HOME`, `USER`, `LOGNAME`,
//!   `SYSTEMTAP_COLORS`, `COLUMNS`, `LINES`), plus `SYSTEMTAP_VERBOSE` and
//!   `SYSTEMTAP_MODULE`. Nothing else can change what stapio (or the C
//!   library and Rust runtime in it) does: it is executed after the drop,
//!   so the dynamic loader's secure mode no longer guards it.
//! * its children's environment (the `-c` command, `system()` commands),
//!   handed over apart (`stap_common::child_env`): the caller's whole
//!   environment minus [`for_children`]'s refusals (what glibc removes from
//!   a setuid program's environment, every `LD_*`, `GLIBC_TUNABLES`, the C
//!   staprun's `IFS`/`CDPATH`/`ENV`/`BASH_ENV`, the SystemTap override
//!   variables), plus `SYSTEMTAP_VERBOSE` (unless the caller set it) and
//!   `SYSTEMTAP_MODULE`, as the C staprun sets them.
//!
//! No override variable (`SYSTEMTAP_STAPIO`, `SYSTEMTAP_STAPRUN`,
//! `SYSTEMTAP_RUNTIME`, `MODPROBE_OPTIONS`, `LD_*`, `STAP_*_OVERRIDE`, ...)
//! is ever read, nor reaches stapio or a child. The rule is the same for
//! every caller, root included.
#![forbid(unsafe_code)]

use stap_common::child_env;

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

/// What glibc 2.36 (Debian bookworm) removes from the environment of a
/// setuid program (`AT_SECURE`): `UNSECURE_ENVVARS` of
/// `sysdeps/generic/unsecvars.h`, as built (glibc with tunables: no
/// `GLIBC_TUNABLES` here), and `MALLOC_CHECK_` (kept only when
/// `/etc/suid-debug` exists). Checked against bookworm's 2.36-9: a setuid
/// copy of `env` run by another user prints everything but these.
pub const GLIBC_SECURE: &[&str] = &[
    "GCONV_PATH",
    "GETCONF_DIR",
    "HOSTALIASES",
    "LD_AUDIT",
    "LD_DEBUG",
    "LD_DEBUG_OUTPUT",
    "LD_DYNAMIC_WEAK",
    "LD_HWCAP_MASK",
    "LD_LIBRARY_PATH",
    "LD_ORIGIN_PATH",
    "LD_PRELOAD",
    "LD_PROFILE",
    "LD_SHOW_AUXV",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_TRACE",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TMPDIR",
    "TZDIR",
    "MALLOC_CHECK_",
];

/// Removed beyond glibc's list: the dynamic loader's whole namespace
/// (glibc keeps a few `LD_*`, such as `LD_BIND_NOW`) and the tunables
/// (glibc keeps the ones it ignores in secure mode).
const LOADER_PREFIX: &str = "LD_";
const TUNABLES: &str = "GLIBC_TUNABLES";

/// What the C staprun always unsets (staprun.c `main`).
pub const SHELL: &[&str] = &["IFS", "CDPATH", "ENV", "BASH_ENV"];

/// The variables the C staprun and stapio read to change what they do
/// (staprun.c, staprun_funcs.c, mainloop.c of 4.8 and 5.1; the first three
/// are the ones the C staprun unsets when setuid), and `MODPROBE_OPTIONS`
/// (CVE-2010-4170). Any other `STAP_*_OVERRIDE` is removed too.
pub const OVERRIDES: &[&str] = &[
    "SYSTEMTAP_STAPRUN",
    "SYSTEMTAP_STAPIO",
    "SYSTEMTAP_RUNTIME",
    "SYSTEMTAP_REAL_UID",
    "SYSTEMTAP_REAL_GID",
    "SYSTEMTAP_SYNC",
    "STAP_FIPS_OVERRIDE",
    "STAP_PR13193_OVERRIDE",
    "STAP_BZ1552745_OVERRIDE",
    "MODPROBE_OPTIONS",
];

/// Keep `name=value` for stapio itself?
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

/// Give `name` to stapio's children (the `-c` command, `system()`)?
pub fn for_children(name: &str) -> bool {
    child_env::name_can_travel(name)
        && !name.starts_with(LOADER_PREFIX)
        && name != TUNABLES
        && !GLIBC_SECURE.contains(&name)
        && !SHELL.contains(&name)
        && !OVERRIDES.contains(&name)
        && !(name.starts_with("STAP_") && name.ends_with("_OVERRIDE"))
}

/// A TZ value that cannot make libc read an arbitrary file.
fn safe_tz(v: &str) -> bool {
    let v = v.strip_prefix(':').unwrap_or(v);
    if v.contains("..") || !v.chars().all(|c| c.is_ascii_graphic()) {
        return false;
    }
    !v.starts_with('/') || v.starts_with("/usr/share/zoneinfo/")
}

/// stapio's own environment out of a captured one.
pub fn filter(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.into_iter().filter(|(k, v)| keep(k, v)).collect()
}

/// The value of `name` in a captured environment (the last one, as
/// `getenv` on a list with duplicates may give either).
pub fn lookup<'a>(captured: &'a [(String, String)], name: &str) -> Option<&'a str> {
    captured
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// stapio's whole `execve` environment for module `module`, from the
/// captured one: its own allowlist, `SYSTEMTAP_VERBOSE` and
/// `SYSTEMTAP_MODULE`, and its children's set handed over apart.
pub fn for_stapio(
    captured: Vec<(String, String)>,
    verbose: u32,
    module: &str,
) -> Vec<(String, String)> {
    let mut children: Vec<(String, String)> = captured
        .iter()
        .filter(|(k, _)| for_children(k) && k != "SYSTEMTAP_MODULE")
        .cloned()
        .collect();
    // As the C staprun: setenv("SYSTEMTAP_VERBOSE", n, 0) (a value the
    // caller set stays) and setenv("SYSTEMTAP_MODULE", name, 1).
    if lookup(&captured, "SYSTEMTAP_VERBOSE").is_none() {
        children.push(("SYSTEMTAP_VERBOSE".into(), verbose.to_string()));
    }
    children.push(("SYSTEMTAP_MODULE".into(), module.to_string()));
    let mut own = filter(captured);
    own.push(("SYSTEMTAP_VERBOSE".into(), verbose.to_string()));
    own.push(("SYSTEMTAP_MODULE".into(), module.to_string()));
    own.extend(child_env::encode(&children));
    own
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
            ("JAVA_HOME", "/x"),
            ("TMPDIR", "/tmp/x"),
            ("GLIBC_TUNABLES", "glibc.malloc.check=3"),
            ("RUST_MIN_STACK", "1"),
        ] {
            assert!(!keep(k, v), "{k}={v}");
        }
    }

    #[test]
    fn children_get_the_callers_environment_minus_the_secure_list() {
        for k in [
            "JAVA_HOME",
            "CLASSPATH",
            "DISPLAY",
            "XAUTHORITY",
            "SSH_AUTH_SOCK",
            "PWD",
            "TERM",
            "PATH",
            "TZ",
            "MALLOC_ARENA_MAX",
            "SYSTEMTAP_DEBUGINFO_PATH",
            "SYSTEMTAP_COLORS",
            "BASH_FUNC_f%%",
            "STAP_OVERRIDE_NOT",
        ] {
            assert!(for_children(k), "{k}");
        }
        for k in GLIBC_SECURE.iter().chain(SHELL).chain(OVERRIDES) {
            assert!(!for_children(k), "{k}");
        }
        for k in [
            "LD_BIND_NOW",
            "LD_WARN",
            "LD_USE_LOAD_BIAS",
            "GLIBC_TUNABLES",
            "STAP_ANY_OVERRIDE",
            "",
            "=x",
        ] {
            assert!(!for_children(k), "{k:?}");
        }
        // The list is glibc 2.36's (unsecvars.h with tunables, plus MALLOC_CHECK_).
        assert_eq!(GLIBC_SECURE.len(), 23);
    }

    fn captured(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn decoded(env: &[(String, String)]) -> Vec<(String, String)> {
        child_env::decode(env.iter().map(|(k, v)| (k.into(), v.into())))
            .expect("the children's set is handed over")
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect()
    }

    #[test]
    fn stapio_gets_its_allowlist_and_its_childrens_set_apart() {
        let env = for_stapio(
            captured(&[
                ("PATH", "/usr/bin:/bin"),
                ("LANG", "C.UTF-8"),
                ("JAVA_HOME", "/x"),
                ("CLASSPATH", "/y.jar"),
                ("DISPLAY", ":9"),
                ("LD_PRELOAD", "/tmp/evil.so"),
                ("SYSTEMTAP_STAPIO", "/tmp/evil"),
                ("TMPDIR", "/tmp/t"),
                ("SYSTEMTAP_MODULE", "stale"),
            ]),
            2,
            "pmod",
        );
        // stapio's own: the allowlist and the two SYSTEMTAP_ variables.
        let own: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| !k.starts_with(child_env::MARKER))
            .cloned()
            .collect();
        assert_eq!(
            own,
            captured(&[
                ("PATH", "/usr/bin:/bin"),
                ("LANG", "C.UTF-8"),
                ("SYSTEMTAP_VERBOSE", "2"),
                ("SYSTEMTAP_MODULE", "pmod"),
            ])
        );
        // A refused variable reaches nothing, not even renamed.
        assert!(
            env.iter()
                .all(|(k, v)| !v.contains("evil") && !k.contains("TMPDIR")),
            "{env:?}"
        );
        assert_eq!(
            decoded(&env),
            captured(&[
                ("PATH", "/usr/bin:/bin"),
                ("LANG", "C.UTF-8"),
                ("JAVA_HOME", "/x"),
                ("CLASSPATH", "/y.jar"),
                ("DISPLAY", ":9"),
                ("SYSTEMTAP_VERBOSE", "2"),
                ("SYSTEMTAP_MODULE", "pmod"),
            ])
        );
    }

    #[test]
    fn a_verbosity_the_caller_set_stays_for_the_children() {
        let env = for_stapio(captured(&[("SYSTEMTAP_VERBOSE", "5")]), 0, "m");
        assert_eq!(
            decoded(&env),
            captured(&[("SYSTEMTAP_VERBOSE", "5"), ("SYSTEMTAP_MODULE", "m")])
        );
        assert!(env.contains(&("SYSTEMTAP_VERBOSE".into(), "0".into())));
    }
}
