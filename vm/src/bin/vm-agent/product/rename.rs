//! `-R`: renamed modules, concurrent runs of one module.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::common::{
    QUICK, RUN, STARTUP, check_no_new_modules, log_run, module_snapshot, staprun, staprun_bg,
};
use crate::harness::{
    self, ALICE, END, HELLO, Reporter, blessed_dir, product_installed, publish, renamed, sys,
};

pub fn rename_concurrent(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();

    // A name too short to rename: warning, loaded and run under its own name.
    let ab = blessed_dir().join("ab.ko");
    let made = fs::read(Path::new(crate::harness::FIXTURES).join("pmod.ko"))
        .map_err(|e| e.to_string())
        .and_then(|img| renamed(&img, "ab"))
        .and_then(|img| fs::write(&ab, img).map_err(|e| e.to_string()));
    if r.check("R_short_module_built", made.is_ok(), format!("{made:?}")) {
        let out = staprun(&ALICE, &["-R", "ab"]);
        log_run(r, "alice$ staprun -R ab", &out);
        r.check(
            "R_short_warns_and_runs",
            out.code == Some(0)
                && out
                    .stderr
                    .contains("Old module name 'ab' is too short for renaming, ignoring -R.")
                && out.stdout.starts_with(HELLO)
                && out.stdout.trim_end().ends_with(END),
            out.summary(),
        );
        r.check("R_short_unloaded", !harness::is_loaded("ab"), "");
    }
    let _ = fs::remove_file(&ab);

    // Two at once. The short-name run above left /proc/systemtap behind:
    // every fixture creates it when missing without a lock (as the real
    // runtime does), so two first loads racing would both create it and
    // the kernel warns "proc_dir_entry '/proc/systemtap' already registered".
    r.check(
        "R_proc_systemtap_exists",
        Path::new("/proc/systemtap").is_dir(),
        "",
    );
    publish("fixture_a");
    let args = ["-R", "fixture_a", "run_ms=100"];
    let (Some(mut a), Some(mut b)) = (staprun_bg(&ALICE, &args), staprun_bg(&ALICE, &args)) else {
        r.check("R_start", false, "spawn failed");
        return;
    };
    let up = a.wait_stdout(HELLO, STARTUP) & b.wait_stdout(HELLO, STARTUP);
    r.check(
        "R_both_running",
        up,
        format!("{} | {}", a.stderr(), b.stderr()),
    );
    let renamed: Vec<String> = module_snapshot()
        .into_iter()
        .filter(|m| !before.contains(m))
        .collect();
    r.check(
        "R_two_distinct_renamed_modules",
        renamed.len() == 2 && !renamed.iter().any(|m| m == "fixture_a"),
        format!("new in /proc/modules: {renamed:?}"),
    );
    for m in &renamed {
        r.check(
            &format!("R_{m}_has_its_procfs_dir"),
            Path::new(&format!("/proc/systemtap/{m}/.cmd")).exists(),
            "",
        );
    }
    let mut pids = Vec::new();
    harness::wait_until(Duration::from_secs(5), || {
        pids = harness::pids_named("stapio");
        pids.len() >= 2
    });
    r.check_eq("R_two_stapio", pids.len(), 2);
    let sent = pids.iter().all(|p| sys::kill(*p, libc::SIGINT).is_ok());
    let wait = if sent && up { RUN } else { QUICK };
    for (tag, out) in [("R_first", a.wait(wait)), ("R_second", b.wait(wait))] {
        log_run(
            r,
            "alice$ staprun -R fixture_a run_ms=100 (two at once)",
            &out,
        );
        r.check(
            &format!("{tag}_exit0_output"),
            out.code == Some(0)
                && out.stdout.starts_with(HELLO)
                && out.stdout.trim_end().ends_with(END)
                && !out.stderr.contains("too short"),
            out.summary(),
        );
    }
    let left: Vec<&String> = renamed.iter().filter(|m| harness::is_loaded(m)).collect();
    r.check("R_both_unloaded", left.is_empty(), format!("{left:?}"));

    check_no_new_modules(r, "end", &before);
}
