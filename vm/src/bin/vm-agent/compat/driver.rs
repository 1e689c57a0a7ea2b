//! The driver: which cases run, each once per implementation, their observations
//! compared, and the known differences and C deviations.

use std::collections::BTreeMap;
use std::fs;
use std::time::Instant;

use crate::harness::{self, Out, Reporter, STAPUSR, blessed_dir};

use super::ctx::{
    Ctx, kill_stray_stapio, loaded_like, loaded_text, module_names, publish, sleep_ms, unload_all,
};
use super::flightrec::{C3, C4};
use super::{C_STAPIO, C_STAPRUN, Impl, MODS, activate, cmdline_list, impls};

// ---------------------------------------------------------------------------
// The driver.

/// The SystemTap generation of a boot: 4.x, or 5.x (the compat5 scenarios, in /c5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gen {
    V4,
    V5,
}

pub(crate) static GEN5: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn generation() -> Gen {
    if GEN5.load(std::sync::atomic::Ordering::Relaxed) {
        Gen::V5
    } else {
        Gen::V4
    }
}

/// How the C tools of a generation deviate from a ported testsuite case
/// (docs/compat.md, "C deviations").
#[derive(Clone, Copy, Debug)]
pub(crate) enum CDev {
    /// They fail it every time: their run must fail (and a pass is reported, so the entry goes).
    Fails(&'static str),
    /// They fail it some of the time: their checks are logged, not asserted.
    Flaky(&'static str),
}

/// One case: a function run once per implementation.
#[derive(Clone, Copy)]
pub(crate) struct Case {
    pub name: &'static str,
    pub f: fn(&mut Ctx),
    /// Modules the case publishes in the blessed directory.
    pub modules: &'static [&'static str],
    /// The generations whose C tools fail this case, and why (their run then must fail).
    pub c_fails: &'static [(Gen, CDev)],
}

/// A known, explained difference: (case, observation label, reason).
/// `*` as case or label matches any. docs/compat.md lists the same ones.
pub(crate) const KNOWN: &[(Option<Gen>, &str, &str, &str)] = &[
    (
        None,
        "cmdline*",
        "run.stdout",
        "D1: after an option error the C staprun prints its whole usage text on stdout; ours prints \
         `ERROR: Run 'staprun -h' for usage.` on stderr",
    ),
    (
        None,
        "cmdline09",
        "run.error",
        "D2: wording of the too-long module name error (ours also names the limit)",
    ),
    (
        None,
        "monitor_*",
        "monitor_mode",
        "D3: Debian's C stapio is built without monitor mode (no ncurses/json-c: its usage has \
         no -M); ours has it",
    ),
    (
        Some(Gen::V5),
        "ns_none_root",
        "run.stderr",
        "D-io1: after the module's own ERROR lines (its probes failed to start), ours adds \
         `ERROR: the module's probes failed to start (systemtap_module_init returned 2)`; the C \
         stapio exits 1 without a word of its own",
    ),
    (
        Some(Gen::V5),
        "ns_alice_denied",
        "run.stderr",
        "D-io2: ours tags its own error `ERROR: Failed to open file '/proc/N/ns/mnt': ...`; the C \
         stapio prints it untagged",
    ),
    (
        Some(Gen::V5),
        "ns_alice_own",
        "run.stderr",
        "C-io1: the C child that runs staprun -d always calls setns(orig_mnt_ns_fd), which needs \
         CAP_SYS_ADMIN: every -N run of a non-root user ends with `setns(orig_mnt_ns_fd) failed: \
         Operation not permitted`; ours switches only when not in the original namespace",
    ),
    (Some(Gen::V4), "flightrec4", "files_*", C3),
    (Some(Gen::V5), "flightrec5", "files_*", C4),
];

pub(crate) fn known(case: &str, label: &str) -> Option<&'static str> {
    KNOWN
        .iter()
        .find(|(g, c, l, _)| g.is_none_or(|g| g == generation()) && glob(c, case) && glob(l, label))
        .map(|(_, _, _, why)| *why)
}

/// `*` matches anything, `prefix*` what starts with prefix, `*suffix` what ends with it.
pub(crate) fn glob(pattern: &str, s: &str) -> bool {
    if pattern == "*" || pattern == s {
        return true;
    }
    if let Some(p) = pattern.strip_suffix('*') {
        return s.starts_with(p);
    }
    if let Some(x) = pattern.strip_prefix('*') {
        return s.ends_with(x);
    }
    false
}

pub(crate) fn run_group(r: &mut Reporter, cases: &[Case]) {
    let selected = cmdline_list("vmtest.cases");
    let impls = impls();
    r.log(&format!(
        "compat: implementations {:?}, cases {}",
        impls.iter().map(|i| i.name()).collect::<Vec<_>>(),
        selected
            .as_ref()
            .map_or_else(|| "all".to_owned(), |v| v.join(","))
    ));
    if !image_ok(r) {
        return;
    }
    for case in cases {
        if selected
            .as_ref()
            .is_some_and(|v| !v.iter().any(|s| s == case.name))
        {
            continue;
        }
        let mut seen: Vec<(Impl, BTreeMap<String, String>)> = Vec::new();
        for &imp in &impls {
            let obs = run_case(r, case, imp);
            seen.push((imp, obs));
        }
        if let [(Impl::Ours, ours), (Impl::Theirs, theirs)] = seen.as_slice() {
            compare(r, case, ours, theirs);
        }
    }
    if let Err(e) = activate(Impl::Ours) {
        r.check("compat_restore_staprun", false, e);
    }
}

pub(crate) fn run_case(r: &mut Reporter, case: &Case, imp: Impl) -> BTreeMap<String, String> {
    let t0 = Instant::now();
    let mut ctx = Ctx {
        r,
        case: case.name,
        imp,
        checks: Vec::new(),
        obs: BTreeMap::new(),
    };
    let ready = activate(imp).and_then(|()| {
        let _ = fs::remove_dir_all(blessed_dir());
        crate::harness::prepare_blessed_dir()?;
        for m in case.modules {
            publish(m)?;
        }
        Ok(())
    });
    match ready {
        Ok(()) => (case.f)(&mut ctx),
        Err(e) => {
            ctx.check("setup", false, e);
        }
    }
    // Nothing may be left behind; clean up whatever was.
    let stray = kill_stray_stapio();
    ctx.check(
        "no_stapio_left",
        stray == 0,
        format!("{stray} stapio process(es) still running after the case (killed)"),
    );
    sleep_ms(100);
    let left = unload_all();
    ctx.check(
        "nothing_left_loaded",
        left.is_empty(),
        format!("modules left loaded (rmmod'ed now): {left:?}"),
    );
    let Ctx { checks, obs, .. } = ctx;
    let prefix = format!("{}/{}", case.name, imp.name());
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(n, _, _)| n.as_str())
        .collect();
    let deviation = case
        .c_fails
        .iter()
        .find(|(g, _)| *g == generation())
        .map(|(_, d)| *d);
    match (imp, deviation) {
        (Impl::Theirs, Some(dev)) => {
            for (name, ok, detail) in &checks {
                r.log(&format!(
                    "[{prefix}] {} {name} :: {detail}",
                    if *ok { "pass" } else { "FAIL" }
                ));
            }
            match dev {
                CDev::Fails(why) => r.check(
                    &format!("{prefix}/c_fails_as_known"),
                    !failed.is_empty(),
                    if failed.is_empty() {
                        format!("the C tools pass this case now: drop the entry ({why})")
                    } else {
                        format!("expected: {why}; failed checks: {failed:?}")
                    },
                ),
                CDev::Flaky(why) => r.check(
                    &format!("{prefix}/c_result_not_asserted"),
                    true,
                    format!("{why}; failed checks this time: {failed:?}"),
                ),
            };
        }
        _ => {
            for (name, ok, detail) in &checks {
                r.check(&format!("{prefix}/{name}"), *ok, detail);
            }
        }
    }
    r.log(&format!(
        "[{prefix}] {} checks, {} failed, {:.1}s",
        checks.len(),
        failed.len(),
        t0.elapsed().as_secs_f64()
    ));
    obs
}

pub(crate) fn compare(
    r: &mut Reporter,
    case: &Case,
    ours: &BTreeMap<String, String>,
    theirs: &BTreeMap<String, String>,
) {
    let labels: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    if labels.is_empty() {
        r.check(
            &format!("{}/same/observed", case.name),
            false,
            "nothing observed",
        );
    }
    // A C deviation that shows only sometimes: when it shows, the C side
    // was not asserted, and neither is the comparison (ours is checked on
    // its own).
    let flaky = case.c_fails.iter().find_map(|(g, d)| match d {
        CDev::Flaky(why) if *g == generation() => Some(*why),
        _ => None,
    });
    for label in labels {
        let (a, b) = (ours.get(label), theirs.get(label));
        let name = format!("{}/same/{label}", case.name);
        if a == b {
            r.check(&name, true, format!("{:?}", a.map_or("", String::as_str)));
        } else if let Some(why) = flaky {
            r.check(
                &name,
                true,
                format!(
                    "not compared, the C side was off this time ({why}): ours {a:?}, theirs {b:?}"
                ),
            );
        } else if let Some(why) = known(case.name, label) {
            r.check(
                &name,
                true,
                format!("known difference ({why}): ours {a:?}, theirs {b:?}"),
            );
        } else {
            r.check(&name, false, format!("ours {a:?}\ntheirs {b:?}"));
        }
    }
}

/// The compat image is there: C binaries, their loader, the modules.
pub(crate) fn image_ok(r: &mut Reporter) -> bool {
    let mut ok = r.check_eq(
        "compat_c_staprun_04110_root_stapusr",
        harness::stat(C_STAPRUN),
        Some((0o4110, 0, STAPUSR)),
    );
    ok &= r.check_eq(
        "compat_c_stapio_0755",
        harness::stat(C_STAPIO),
        Some((0o755, 0, 0)),
    );
    ok &= r.check(
        "compat_modules_present",
        !module_names().is_empty(),
        format!("{MODS}: {:?}", module_names()),
    );
    ok
}

// ---------------------------------------------------------------------------
// Checks shared by the cases.

pub(crate) fn contains_line(s: &str, line: &str) -> bool {
    s.lines().any(|l| l == line)
}

/// exit 0, and the module gone.
pub(crate) fn expect_clean_exit(c: &mut Ctx, label: &str, module: &str, out: &Out) {
    c.check(
        &format!("{label}_exit_0"),
        out.code == Some(0),
        out.summary(),
    );
    c.check(
        &format!("{label}_unloaded"),
        loaded_like(module).is_empty(),
        loaded_text(module),
    );
}
