//! `cargo xtask test`: every stage (what `.ci/run` calls), so one report shows everything.

use std::path::Path;
use std::time::Instant;

use crate::cmd;
use crate::error::{Result, bail};
use crate::pkg::{deb, debtest, dist, install};
use crate::vm::{self, compat, debian, fleet, install_test, run};

/// Runs every stage (so one report shows everything), failing if any failed.
pub fn test_all(opts: &vm::Options) -> Result<()> {
    let t0 = Instant::now();
    let mut failed = Vec::new();
    let mut stage = |name: &str, f: &mut dyn FnMut() -> Result<()>| {
        let t = Instant::now();
        eprintln!("xtask: === {name} ===");
        let r = f();
        eprintln!(
            "xtask: === {name}: {} ({:.1}s) ===",
            if r.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if let Err(e) = r {
            eprintln!("xtask: {name}: {e}");
            failed.push(name.to_owned());
        }
    };
    let cargo = |args: &[&str]| -> Result<()> {
        let sh = cmd::workspace_shell()?;
        cmd::run(cmd::cargo(&sh).args(args))
    };
    stage("rustfmt", &mut || cargo(&["fmt", "--all", "--", "--check"]));
    stage("clippy", &mut || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    });
    stage("host tests", &mut || {
        cargo(&["test", "--workspace", "--exclude", "vm"])
    });
    stage("benchmark (figures only)", &mut || {
        cargo(&["bench", "-p", "stapio", "--bench", "pipeline"])
    });
    stage("fuzz smoke", &mut || crate::dev::fuzz::run(20));
    stage("dist + deb + install (host)", &mut || {
        dist::dist(&dist::Paths::for_prefix(Path::new("/usr")))?;
        deb::deb()?;
        install::check_destdir_install()
    });
    stage("deb coexistence (chroot)", &mut debtest::deb_test);
    stage("vm suite", &mut || run::vm_test(opts, false, &[]));
    stage("ansible collection (unit tests, local smoke)", &mut || {
        fleet::host_checks()
    });
    stage("vm install", &mut || {
        install_test::vm_install_test(opts, true, &[])
    });
    stage("compat (real SystemTap modules, ours vs C)", &mut || {
        let copts = compat::Options {
            vm: opts.clone(),
            no_stap5: false,
        };
        // The 5.x `-N` cases load a module with a process probe while
        // stapio makes system calls; under TCG on a busy host the guest
        // kernel can livelock patching the syscall tracepoint (soft lockup in
        // syscall_trace_enter / asm_exc_int3, docs/compat.md "TCG livelock"),
        // which takes the whole boot down. They run on their own with
        // `cargo xtask compat-test -- compat5_io::ns_`.
        eprintln!(
            "xtask: NOT RUN here: compat5_io::ns_* (TCG livelock risk, see docs/compat.md); run them with `cargo xtask compat-test -- compat5_io::ns_`"
        );
        run::compat_test(&copts, &["--skip".into(), "compat5_io::ns_".into()])
    });
    stage(
        "debian guest (systemd, stap, staprun@.service)",
        &mut || debian::debian_test(opts, &[]),
    );
    eprintln!("xtask: test wall time {:.1}s", t0.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("failed stages: {}", failed.join(", "));
    }
    Ok(())
}
