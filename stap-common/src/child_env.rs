//! How the environment of stapio's children (the `-c` command and the
//! module's `system()` commands) travels from staprun to stapio without
//! being stapio's own environment.
//!
//! stapio itself runs with a small allowlist (`staprun/src/env.rs`), so
//! nothing else in the caller's environment can change what stapio, the
//! C library or the Rust runtime in it do. The children's variables ride
//! along renamed: `NAME=value` becomes `STAPRUN_CHILD_ENV_NAME=value`, and
//! `STAPRUN_CHILD_ENV=1` says that the set was handed over (so an empty set
//! is one). No library reads those names. stapio gives its children
//! exactly the decoded set; a stapio started without the marker (by hand)
//! gives them its own environment.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Present (value `1`) when staprun handed over the children's set.
pub const MARKER: &str = "STAPRUN_CHILD_ENV";
/// The prefix of each handed-over variable's name.
pub const PREFIX: &str = "STAPRUN_CHILD_ENV_";

/// Whether `name` can travel: not empty and without `=` (execve's
/// `NAME=value` cannot carry such a name back).
pub fn name_can_travel(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

/// The variables to add to stapio's own environment to hand `vars` over
/// (names that cannot travel are left out).
pub fn encode(vars: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(vars.len() + 1);
    out.push((MARKER.to_owned(), "1".to_owned()));
    out.extend(
        vars.iter()
            .filter(|(k, _)| name_can_travel(k))
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.clone())),
    );
    out
}

/// The handed-over set in the environment `own` (stapio's), or `None`
/// when there is no marker.
pub fn decode(
    own: impl IntoIterator<Item = (OsString, OsString)>,
) -> Option<Vec<(OsString, OsString)>> {
    let mut marked = false;
    let mut vars = Vec::new();
    for (k, v) in own {
        if k == OsStr::new(MARKER) {
            marked = true;
        } else if let Some(name) = k.as_bytes().strip_prefix(PREFIX.as_bytes())
            && !name.is_empty()
        {
            vars.push((OsString::from_vec(name.to_vec()), v));
        }
    }
    marked.then_some(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        v.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn round_trip() {
        let vars: Vec<(String, String)> = [
            ("JAVA_HOME", "/x"),
            ("CLASSPATH", "a.jar:b.jar"),
            ("EMPTY", ""),
            ("STAPRUN_CHILD_ENV_X", "nested"),
            ("", "no name"),
            ("=odd", "v"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let enc = encode(&vars);
        assert_eq!(enc[0], (MARKER.to_owned(), "1".to_owned()));
        assert!(enc.iter().skip(1).all(|(k, _)| k.starts_with(PREFIX)));
        // stapio's own variables are not its children's.
        let mut own = os(&[("PATH", "/usr/bin"), ("TERM", "xterm")]);
        own.extend(enc.into_iter().map(|(k, v)| (k.into(), v.into())));
        assert_eq!(
            decode(own).unwrap(),
            os(&[
                ("JAVA_HOME", "/x"),
                ("CLASSPATH", "a.jar:b.jar"),
                ("EMPTY", ""),
                ("STAPRUN_CHILD_ENV_X", "nested"),
            ])
        );
    }

    #[test]
    fn without_the_marker_nothing_was_handed_over() {
        assert_eq!(
            decode(os(&[("PATH", "/bin"), ("STAPRUN_CHILD_ENV_A", "1")])),
            None
        );
        assert_eq!(decode(os(&[("STAPRUN_CHILD_ENV", "1")])), Some(Vec::new()));
    }
}
