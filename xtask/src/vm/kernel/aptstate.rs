//! Which guest kernel `vm-prepare` uses, whatever state the apt lists are in (fresh, stale,
//! empty) and whatever an earlier, interrupted run left in target/vm-cache: the decisions,
//! as pure functions of what is known (the rest of `vm::kernel` gathers the facts and acts).
//!
//! The rules:
//!
//! * a kernel already prepared completely (image unpacked, headers installed or unpacked,
//!   fixture modules built for it) is used without apt-get: no update, install or download;
//! * the newest kernel is what the apt lists name (read locally); when they name one older than
//!   a complete prepared kernel (stale lists), the prepared one is used;
//! * lists that name none (empty, or without the package) are updated first, unless a complete
//!   kernel is there;
//! * when fetching a kernel resolved from lists not updated in this run fails (stale lists:
//!   its packages are gone from the mirror), the lists are updated and the kernel resolved
//!   again (another version, usually), not the same stale one retried;
//! * when that fails with fresh lists too, or the update fails (no network), a complete prepared
//!   kernel of the suite is used, with a warning; without one, it is an error naming why.

use std::cmp::Ordering;

/// What was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// This ABI, e.g. 6.12.95+deb12-cloud-amd64.
    Exact(String),
    /// The newest of a suite; with a prefix (`6.1`), its ABI must start with it, followed by
    /// `.`, `-` or `+`.
    Newest { prefix: Option<String> },
}

/// A kernel whose packages could not be fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kver: String,
    /// Whether the lists it was resolved from had been updated in this run.
    pub fresh: bool,
}

/// What is known when deciding.
#[derive(Clone, Copy, Debug)]
pub struct Situation<'a> {
    pub want: &'a Want,
    /// The newest kernel the lists name (`None`: they name none).
    pub listed: Option<&'a str>,
    /// Whether the lists were updated in this run.
    pub fresh: bool,
    /// Complete prepared kernels of the suite.
    pub cached: &'a [String],
    /// Fetches that failed in this run.
    pub failed: &'a [Failure],
    /// `apt-get update` was tried in this run and failed.
    pub update_failed: bool,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Use this complete prepared kernel; apt is not needed.
    Reuse(String),
    /// Use this complete prepared kernel instead of the one wanted, which cannot be had.
    Fallback { kver: String, because: String },
    /// Fetch what this kernel still lacks.
    Fetch(String),
    /// `apt-get update`, then decide again.
    Update,
    /// Give up.
    Fail(String),
}

/// Kernel ABIs in version order: runs of digits compare as numbers, everything else as
/// text (`6.1.0-9` < `6.1.0-10` < `6.12.1`).
pub fn abi_cmp(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let b = s.as_bytes();
        for i in 1..=b.len() {
            if i == b.len() || b[i].is_ascii_digit() != b[start].is_ascii_digit() {
                out.push((b[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(&rb) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ra.len().cmp(&rb.len()).then_with(|| a.cmp(b))
}

/// Whether `kver` is a `prefix` kernel (`6.1` matches 6.1.0-57-cloud-amd64, not 6.12.x).
pub fn has_prefix(kver: &str, prefix: &str) -> bool {
    kver.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '-', '+']))
}

/// The next step.
pub fn next(s: &Situation<'_>) -> Next {
    let prefix = match s.want {
        Want::Exact(k) => return next_exact(s, k),
        Want::Newest { prefix } => prefix,
    };
    let failed = |k: &str, fresh: bool| failed(s, k, fresh);
    let cached = s
        .cached
        .iter()
        .filter(|k| prefix.as_deref().is_none_or(|p| has_prefix(k, p)))
        .max_by(|a, b| abi_cmp(a, b));
    let fall_back = |because: String| match cached {
        Some(k) => Next::Fallback {
            kver: k.clone(),
            because,
        },
        None => Next::Fail(because),
    };
    let listed = match (s.listed, prefix.as_deref()) {
        (Some(k), Some(p)) if !has_prefix(k, p) => {
            // Wrong series: stale or odd lists; a prepared kernel of the series does.
            return match cached {
                Some(c) => Next::Reuse(c.clone()),
                None if !s.fresh && !s.update_failed => Next::Update,
                None => Next::Fail(format!(
                    "apt's lists name {k} as the newest, which is not a {p} kernel"
                )),
            };
        }
        (l, _) => l,
    };
    let Some(k) = listed else {
        // The lists name none: empty, or stale without the package.
        return match cached {
            Some(c) => Next::Reuse(c.clone()),
            None if s.fresh => {
                Next::Fail("apt's lists name no such kernel, even freshly updated".into())
            }
            None if s.update_failed => {
                Next::Fail("apt's lists name no such kernel and apt-get update failed".into())
            }
            None => Next::Update,
        };
    };
    if let Some(c) = cached.filter(|c| abi_cmp(c, k) != Ordering::Less) {
        // Prepared already (or newer than stale lists know).
        return Next::Reuse(c.clone());
    }
    if failed(k, true) {
        return fall_back(format!(
            "the packages of {k}, the newest kernel apt's freshly updated lists name, cannot be fetched"
        ));
    }
    if failed(k, false) && !s.fresh {
        return if s.update_failed {
            fall_back(format!(
                "the packages of {k} cannot be fetched and apt-get update failed"
            ))
        } else {
            Next::Update
        };
    }
    Next::Fetch(k.to_owned())
}

fn failed(s: &Situation<'_>, kver: &str, fresh: bool) -> bool {
    s.failed.iter().any(|f| f.kver == kver && f.fresh == fresh)
}

/// An exact ABI: that one or nothing.
fn next_exact(s: &Situation<'_>, k: &str) -> Next {
    if s.cached.iter().any(|c| c == k) {
        Next::Reuse(k.to_owned())
    } else if failed(s, k, true) {
        Next::Fail(format!(
            "the packages of {k} cannot be fetched, even with freshly updated apt lists"
        ))
    } else if failed(s, k, false) && !s.fresh {
        if s.update_failed {
            Next::Fail(format!(
                "the packages of {k} cannot be fetched and apt-get update failed"
            ))
        } else {
            Next::Update
        }
    } else {
        Next::Fetch(k.to_owned())
    }
}

/// Whether an apt lists directory (its file names) holds no package index at all.
pub fn lists_empty<'a>(names: impl IntoIterator<Item = &'a str>) -> bool {
    !names.into_iter().any(|n| n.contains("_Packages"))
}

/// Whether `image` is a whole kernel module built for kernel `kver`: its section header table
/// lies inside the file (ld writes it last, so a module cut short by an interrupted build or
/// copy fails this) and its `.modinfo` vermagic names `kver`.
pub fn module_built_for(image: &[u8], kver: &str) -> bool {
    let field = |at: usize, n: usize| -> Option<u64> {
        let b = image.get(at..at + n)?;
        Some(b.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
    };
    let table_fits = (|| {
        let (shoff, shentsize, shnum) = (field(0x28, 8)?, field(0x3a, 2)?, field(0x3c, 2)?);
        let end = shoff.checked_add(shentsize.checked_mul(shnum)?)?;
        Some(shnum > 0 && end <= image.len() as u64)
    })()
    .unwrap_or(false);
    table_fits
        && stap_common::elf::vermagic(image)
            .ok()
            .flatten()
            .is_some_and(|v| stap_common::elf::vermagic_release(&v) == Some(kver))
}

/// The name of a temporary file or directory for `name`, written by process `pid` and
/// renamed into place when complete: `.NAME.tmp-PID`.
pub fn tmp_name(name: &str, pid: u32) -> String {
    format!(".{name}.tmp-{pid}")
}

/// The writer's pid of a name made by [`tmp_name`].
pub fn tmp_owner(name: &str) -> Option<u32> {
    let (head, pid) = name.rsplit_once(".tmp-")?;
    if !head.starts_with('.') || head.len() < 2 {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K48: &str = "6.1.0-48-cloud-amd64";
    const K57: &str = "6.1.0-57-cloud-amd64";

    fn newest() -> Want {
        Want::Newest { prefix: None }
    }

    fn sit<'a>(want: &'a Want, listed: Option<&'a str>, fresh: bool) -> Situation<'a> {
        Situation {
            want,
            listed,
            fresh,
            cached: &[],
            failed: &[],
            update_failed: false,
        }
    }

    fn fail(kver: &str, fresh: bool) -> Failure {
        Failure {
            kver: kver.into(),
            fresh,
        }
    }

    #[test]
    fn versions_in_order() {
        let mut v = vec![
            "6.1.0-57-cloud-amd64",
            "6.1.0-9-cloud-amd64",
            "6.12.95+deb12-cloud-amd64",
            "6.1.0-10-cloud-amd64",
            "6.12.9+deb12-cloud-amd64",
            "7.3.4+deb13-cloud-amd64",
        ];
        v.sort_by(|a, b| abi_cmp(a, b));
        assert_eq!(
            v,
            [
                "6.1.0-9-cloud-amd64",
                "6.1.0-10-cloud-amd64",
                "6.1.0-57-cloud-amd64",
                "6.12.9+deb12-cloud-amd64",
                "6.12.95+deb12-cloud-amd64",
                "7.3.4+deb13-cloud-amd64",
            ]
        );
        assert_eq!(abi_cmp(K57, K57), Ordering::Equal);
        assert_eq!(abi_cmp("", "1"), Ordering::Less);
        assert!(has_prefix(K57, "6.1") && !has_prefix("6.12.9+deb12", "6.1"));
    }

    /// The issue: stale lists name 6.1.0-48, whose packages are gone (404). After one
    /// update the kernel is resolved again, and 6.1.0-57 is fetched.
    #[test]
    fn stale_lists_resolve_again_after_a_failed_fetch() {
        let w = newest();
        assert_eq!(next(&sit(&w, Some(K48), false)), Next::Fetch(K48.into()));
        let failed = [fail(K48, false)];
        let s = Situation {
            failed: &failed,
            ..sit(&w, Some(K48), false)
        };
        assert_eq!(next(&s), Next::Update);
        // Fresh lists name another kernel: that one, not the stale one again.
        let s = Situation {
            failed: &failed,
            ..sit(&w, Some(K57), true)
        };
        assert_eq!(next(&s), Next::Fetch(K57.into()));
        // Same kernel with fresh lists: one more try, then give up.
        let s = Situation {
            failed: &failed,
            ..sit(&w, Some(K48), true)
        };
        assert_eq!(next(&s), Next::Fetch(K48.into()));
        let failed = [fail(K48, false), fail(K48, true)];
        let s = Situation {
            failed: &failed,
            ..sit(&w, Some(K48), true)
        };
        assert!(matches!(next(&s), Next::Fail(m) if m.contains(K48)));
    }

    #[test]
    fn empty_lists_are_updated_first() {
        let w = newest();
        assert_eq!(next(&sit(&w, None, false)), Next::Update);
        assert!(matches!(next(&sit(&w, None, true)), Next::Fail(_)));
        let s = Situation {
            update_failed: true,
            ..sit(&w, None, false)
        };
        assert!(matches!(next(&s), Next::Fail(m) if m.contains("update failed")));
    }

    #[test]
    fn a_complete_kernel_is_used_without_apt() {
        let w = newest();
        let cached = [K48.to_owned(), K57.to_owned()];
        // Lists name the prepared kernel, an older one (stale), or none (empty).
        for listed in [Some(K57), Some(K48), None] {
            for fresh in [false, true] {
                let s = Situation {
                    cached: &cached,
                    ..sit(&w, listed, fresh)
                };
                assert_eq!(next(&s), Next::Reuse(K57.into()), "{listed:?} {fresh}");
            }
        }
        // Lists name a newer kernel than the prepared one: fetch it.
        let cached = [K48.to_owned()];
        let s = Situation {
            cached: &cached,
            ..sit(&w, Some(K57), false)
        };
        assert_eq!(next(&s), Next::Fetch(K57.into()));
        // ... and when it cannot be had even after an update, use the prepared one.
        let failed = [fail(K57, true)];
        let s = Situation {
            cached: &cached,
            failed: &failed,
            ..sit(&w, Some(K57), true)
        };
        assert!(matches!(next(&s), Next::Fallback { kver, .. } if kver == K48));
        // No network: the update fails; the prepared kernel does.
        let failed = [fail(K57, false)];
        let s = Situation {
            cached: &cached,
            failed: &failed,
            update_failed: true,
            ..sit(&w, Some(K57), false)
        };
        assert!(matches!(next(&s), Next::Fallback { kver, .. } if kver == K48));
    }

    #[test]
    fn prefixes_and_exact_abis() {
        let w = Want::Newest {
            prefix: Some("6.1".into()),
        };
        let cached = ["6.12.95+deb12-cloud-amd64".to_owned()];
        // A 6.12 kernel is no 6.1 kernel, prepared or listed.
        let s = Situation {
            cached: &cached,
            ..sit(&w, Some(K57), false)
        };
        assert_eq!(next(&s), Next::Fetch(K57.into()));
        assert_eq!(
            next(&sit(&w, Some("6.12.95+deb12-cloud-amd64"), false)),
            Next::Update
        );
        assert!(matches!(
            next(&sit(&w, Some("6.12.95+deb12-cloud-amd64"), true)),
            Next::Fail(m) if m.contains("not a 6.1 kernel")
        ));
        let w = Want::Exact(K48.into());
        let cached = [K48.to_owned()];
        let s = Situation {
            cached: &cached,
            ..sit(&w, Some(K57), false)
        };
        assert_eq!(next(&s), Next::Reuse(K48.into()));
        assert_eq!(next(&sit(&w, None, false)), Next::Fetch(K48.into()));
        let failed = [fail(K48, false)];
        let s = Situation {
            failed: &failed,
            ..sit(&w, None, false)
        };
        assert_eq!(next(&s), Next::Update);
        let s = Situation {
            failed: &failed,
            ..sit(&w, None, true)
        };
        assert_eq!(next(&s), Next::Fetch(K48.into()));
        let failed = [fail(K48, false), fail(K48, true)];
        let s = Situation {
            failed: &failed,
            ..sit(&w, None, true)
        };
        assert!(matches!(next(&s), Next::Fail(_)));
    }

    /// Whatever happens, the decisions end: every fetch or update adds a fact, and the same
    /// facts never ask for the same step twice.
    #[test]
    fn the_decisions_end() {
        for want in [newest(), Want::Exact(K48.into())] {
            for (listed_before, listed_after) in
                [(Some(K48), Some(K57)), (None, Some(K57)), (None, None)]
            {
                for update_works in [false, true] {
                    let (mut fresh, mut update_failed) = (false, false);
                    let mut failed: Vec<Failure> = Vec::new();
                    let mut steps = 0;
                    loop {
                        steps += 1;
                        assert!(steps < 10, "{want:?} {listed_before:?} {update_works}");
                        let listed = if fresh { listed_after } else { listed_before };
                        let s = Situation {
                            want: &want,
                            listed,
                            fresh,
                            cached: &[],
                            failed: &failed,
                            update_failed,
                        };
                        match next(&s) {
                            Next::Fetch(k) => failed.push(Failure { kver: k, fresh }),
                            Next::Update if update_works => fresh = true,
                            Next::Update => update_failed = true,
                            Next::Reuse(_) | Next::Fallback { .. } | Next::Fail(_) => break,
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn whole_modules_for_the_kernel_only() {
        use stap_common::elf::{build_test_module, test_modinfo};
        let ko = build_test_module("pmod", &[(".modinfo", &test_modinfo(K57))]);
        assert!(module_built_for(&ko, K57));
        assert!(!module_built_for(&ko, K48));
        assert!(!module_built_for(&build_test_module("pmod", &[]), K57));
        // Cut short anywhere: never taken as built.
        for cut in 0..ko.len() {
            assert!(!module_built_for(&ko[..cut], K57), "cut at {cut}");
        }
        assert!(!module_built_for(b"", K57));
    }

    #[test]
    fn lists_and_temporary_names() {
        assert!(lists_empty(["lock", "partial", "auxfiles"]));
        assert!(!lists_empty([
            "lock",
            "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4"
        ]));
        assert_eq!(
            tmp_name("6.1.0-57-cloud-amd64", 42),
            ".6.1.0-57-cloud-amd64.tmp-42"
        );
        assert_eq!(tmp_owner(&tmp_name("x.deb", 7)), Some(7));
        assert_eq!(tmp_owner(".x.tmp-"), None);
        assert_eq!(tmp_owner("x.tmp-7"), None);
        assert_eq!(tmp_owner("6.1.0-57-cloud-amd64"), None);
    }
}
