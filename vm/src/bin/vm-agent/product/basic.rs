//! alice runs the fixtures (`pmod` 4.x numbering, `pmod5` 5.x), the demo, and a module whose
//! init fails.

use std::path::Path;

use super::common::{
    check_full_run, check_no_new_modules, force_unload, log_run, module_snapshot, record_lines,
    staprun,
};
use crate::harness::{
    self, ALICE, END, HELLO, Reporter, STAPUSR, blessed_dir, product_installed, publish,
};

fn runs_module(r: &mut Reporter, module: &str, prompt: bool) {
    if !product_installed(r) {
        return;
    }
    publish(module);
    let out = staprun(&ALICE, &[module]);
    if prompt {
        log_run(r, &format!("alice$ staprun {module}"), &out);
    }
    check_full_run(r, &format!("alice_{module}"), module, &out);
    let want = 4 * harness::num_cpus();
    r.check_eq(
        &format!("alice_{module}_record_lines"),
        record_lines(&out.stdout),
        want,
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    r.check_eq(
        &format!("alice_{module}_begin_first"),
        lines.first().copied(),
        Some(HELLO),
    );
    r.check_eq(
        &format!("alice_{module}_end_last"),
        lines.last().copied(),
        Some(END),
    );
    r.check(
        &format!("alice_{module}_procfs_gone"),
        !Path::new(&format!("/proc/systemtap/{module}")).exists(),
        "",
    );
}

/// `cargo xtask demo`: alice (stapusr) runs `staprun pmod`; the transcript is the point.
pub fn demo(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    r.log(&format!(
        "alice is uid {} with groups {:?} (stapusr = {STAPUSR})",
        ALICE.uid, ALICE.groups
    ));
    r.log(&format!(
        "{} is mode 0{:o}",
        blessed_dir().join("pmod.ko").display(),
        harness::stat(blessed_dir().join("pmod.ko")).map_or(0, |s| s.0)
    ));
    let out = staprun(&ALICE, &["pmod"]);
    log_run(r, "alice$ staprun pmod", &out);
    r.check("demo_exit_0", out.code == Some(0), out.summary());
    r.check("demo_begin_output", out.stdout.contains(HELLO), HELLO);
    r.check(
        "demo_module_unloaded",
        !harness::is_loaded("pmod"),
        "pmod not in /proc/modules",
    );
    force_unload("pmod");
}

pub fn alice_runs_pmod(r: &mut Reporter) {
    runs_module(r, "pmod", true);
}

pub fn alice_runs_pmod5(r: &mut Reporter) {
    runs_module(r, "pmod5", true);
}

pub fn init_failure(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    publish("pmod");
    let out = staprun(&ALICE, &["pmod", "init_errno=12"]);
    log_run(r, "alice$ staprun pmod init_errno=12", &out);
    r.check(
        "init_enomem_fails",
        out.code.is_some_and(|c| c != 0)
            && out.stderr.contains("Couldn't insert module")
            && out.stderr.contains("Cannot allocate memory")
            && !out.stdout.contains(HELLO),
        out.summary(),
    );
    r.check("init_enomem_not_loaded", !harness::is_loaded("pmod"), "");
    r.check(
        "init_enomem_no_procfs",
        !Path::new("/proc/systemtap/pmod").exists(),
        "",
    );
    r.check(
        "init_enomem_no_stapio",
        harness::pids_named("stapio").is_empty(),
        "",
    );
    check_no_new_modules(r, "end", &before);
}
