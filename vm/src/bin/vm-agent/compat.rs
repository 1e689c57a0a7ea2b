//! Real SystemTap 4.8 modules under our staprun/stapio and under the C ones
//! (Debian's systemtap-runtime), side by side. Host side: `vm/tests/compat.rs`;
//! image: `cargo xtask compat-prepare`; differences: docs/compat.md.
//!
//! Kernel command line: `vmtest.impl=ours,theirs` (which implementations),
//! `vmtest.cases=a,b` (which cases of the scenario; all when absent).
//!
//! Every case runs once per implementation. Its checks are reported as
//! `CASE/ours/NAME` or `CASE/theirs/NAME`; what it observed (exit status,
//! normalized stdout and stderr, files, modules left loaded) is compared
//! between the two and reported as `CASE/same/LABEL`, which passes when equal
//! or when the difference is a known one (listed in `KNOWN`, with its reason).
//!
//! Both implementations are called as `/usr/bin/staprun`: the C staprun lives at
//! /opt/c/usr/bin/staprun and is bind-mounted over ours for the C runs. The C
//! stapio runs `staprun -d` from its build-time path `/usr/bin/staprun`, and the
//! setuid C staprun drops `SYSTEMTAP_STAPRUN` before executing stapio
//! (staprun.c: `unsetenv("SYSTEMTAP_STAPRUN")` when `getuid() != geteuid()`), so
//! for a stapusr caller the variable cannot point it elsewhere.
//!
//! One file per group (`run.rs`, `options.rs`, `lifecycle.rs`, `flightrec.rs`); `ctx.rs` runs
//! one case under one implementation, `driver.rs` runs a group and compares.

mod ctx;
mod driver;
mod env;
mod flightrec;
mod io;
mod lifecycle;
mod monitor;
mod options;
mod run;

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use crate::harness::{self, ROOT, Reporter, STAPIO, STAPRUN, Scenario, sys};

pub(crate) use ctx::alive;

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("compat_run", run::compat_run),
    ("compat_options", options::compat_options),
    ("compat_lifecycle", lifecycle::compat_lifecycle),
    ("compat_flightrec", flightrec::compat_flightrec),
    ("compat5_run", |r| in_c5(r, run::compat_run)),
    ("compat5_options", |r| in_c5(r, options::compat_options)),
    ("compat5_lifecycle", |r| {
        in_c5(r, lifecycle::compat_lifecycle)
    }),
    ("compat5_flightrec", |r| {
        in_c5(r, flightrec::compat_flightrec)
    }),
    ("compat_io", io::compat_io),
    // The -N targets are made before the chroot (their bind mount must be on the real /tmp).
    ("compat5_io", |r| {
        io::prepare_targets(r);
        in_c5(r, io::compat_io)
    }),
    ("compat_env", env::compat_env),
    ("compat5_env", |r| in_c5(r, env::compat_env)),
    ("compat_monitor", monitor::compat_monitor),
    ("compat5_monitor", |r| in_c5(r, monitor::compat_monitor)),
];

/// Bind-mounts `vm::C5_MOUNTS` into /c5 and chroots there (see [`in_c5`]).
pub(crate) fn enter_c5() -> Result<(), String> {
    if !Path::new("/c5/opt/c/usr/bin/staprun").exists() {
        return Err(
            "no /c5 tree in the image: run `cargo xtask compat-prepare` without --no-stap5".into(),
        );
    }
    for d in vm::C5_MOUNTS {
        let (src, dst) = (format!("/{d}"), format!("/c5/{d}"));
        sys::mount(&src, &dst, "", libc::MS_BIND | libc::MS_REC, "")
            .map_err(|e| format!("bind mount {src} on {dst}: {e}"))?;
    }
    std::os::unix::fs::chroot("/c5").map_err(|e| format!("chroot /c5: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// The SystemTap 5.x generation lives in /c5 (xtask `c5_entries`): trixie's C
/// staprun/stapio and libraries, modules built by SystemTap 5.1. These outer
/// directories are bind-mounted into it (`vm::C5_MOUNTS`), among them /usr/bin
/// and /usr/libexec with our staprun/stapio, then the agent chroots into it for
/// the rest of the boot, so the cases run unchanged.
fn in_c5(r: &mut Reporter, group: fn(&mut Reporter)) {
    let entered = enter_c5();
    let ok = entered.is_ok();
    r.check(
        "compat5_chroot",
        ok,
        entered.err().unwrap_or_else(|| "chrooted into /c5".into()),
    );
    if ok {
        driver::GEN5.store(true, std::sync::atomic::Ordering::Relaxed);
        group(r);
    }
}

pub(crate) const C_STAPRUN: &str = "/opt/c/usr/bin/staprun";
pub(crate) const C_STAPIO: &str = "/usr/lib/systemtap/stapio";
pub(crate) const MODS: &str = "/compat/mods";
/// How long a foreground run may take.
pub(crate) const RUN: Duration = Duration::from_secs(60);
/// How long a running session may take to print a line.
pub(crate) const STARTUP: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Ours,
    Theirs,
}

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Theirs => "theirs",
        }
    }

    pub(crate) fn stapio(self) -> &'static str {
        match self {
            Impl::Ours => STAPIO,
            Impl::Theirs => C_STAPIO,
        }
    }
}

pub fn same_file(a: &str, b: &str) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Makes `/usr/bin/staprun` the implementation under test.
pub fn activate(imp: Impl) -> Result<(), String> {
    let c_active = same_file(STAPRUN, C_STAPRUN);
    match imp {
        Impl::Theirs if !c_active => {
            sys::mount(C_STAPRUN, STAPRUN, "", libc::MS_BIND, "")
                .map_err(|e| format!("bind mount {C_STAPRUN} on {STAPRUN}: {e}"))?;
        }
        Impl::Ours if c_active => {
            let out = harness::run_as(&ROOT, &["/bin/umount", STAPRUN], &[]);
            if out.code != Some(0) {
                return Err(format!("umount {STAPRUN}: {}", out.summary()));
            }
        }
        _ => {}
    }
    let now_c = same_file(STAPRUN, C_STAPRUN);
    if now_c != (imp == Impl::Theirs) {
        return Err(format!("{STAPRUN} is not {}'s", imp.name()));
    }
    Ok(())
}

pub(crate) fn cmdline_list(key: &str) -> Option<Vec<String>> {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline.split_whitespace().find_map(|w| {
        w.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
    })
}

pub(crate) fn impls() -> Vec<Impl> {
    match cmdline_list("vmtest.impl") {
        None => vec![Impl::Ours, Impl::Theirs],
        Some(v) => {
            let mut out = Vec::new();
            if v.iter().any(|s| s == "ours" || s == "both") {
                out.push(Impl::Ours);
            }
            if v.iter().any(|s| s == "theirs" || s == "both") {
                out.push(Impl::Theirs);
            }
            out
        }
    }
}

/// The cases of the compat scenario `name`, in the order they run.
#[cfg(test)]
pub fn case_names(name: &str) -> Vec<&'static str> {
    let group = name
        .strip_prefix("compat5_")
        .or_else(|| name.strip_prefix("compat_"));
    let cases: Vec<driver::Case> = match group {
        Some("run") => run::RUN_CASES.to_vec(),
        Some("options") => options::cases(),
        Some("lifecycle") => lifecycle::LIFECYCLE_CASES.to_vec(),
        Some("flightrec") => flightrec::FLIGHTREC_CASES.to_vec(),
        Some("env") => env::ENV_CASES.to_vec(),
        Some("io") => io::IO_CASES.to_vec(),
        Some("monitor") => monitor::MONITOR_CASES.to_vec(),
        _ => Vec::new(),
    };
    cases.iter().map(|c| c.name).collect()
}
