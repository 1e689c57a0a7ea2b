//! The attack suite (issue 5): one test per attack scenario, each booting
//! its own QEMU guest (see the `vm` crate and `docs/attacks.md`).
//!
//! `cargo test -p vm --test attacks [-- NAME]` after `cargo xtask vm-prepare`
//! (or `cargo xtask vm-test`, which runs this binary too). A missing kernel,
//! initramfs or QEMU is a failure, never a skip.

use std::time::Instant;

use libtest_mimic::{Arguments, Failed, Trial};

/// Scenario names, as known to the guest agent (`vm/src/bin/vm-agent/attacks.rs`).
const SCENARIOS: &[&str] = &[
    "attack_cve_2009_0784",
    "attack_cve_2010_4170",
    "attack_cve_2010_4171",
    "attack_cve_2011_2502",
    "attack_cve_2011_2503",
    "attack_obs_weaknesses",
    "attack_module_paths",
    "attack_process_state",
    "attack_faults",
];

fn run(name: &'static str) -> Result<(), Failed> {
    let t0 = Instant::now();
    let spec = vm::BootSpec::new(name);
    let result = vm::run_scenario(&spec);
    let wall = t0.elapsed().as_secs_f64();
    match result {
        Ok(run) => {
            let checks = run.verdict().passed;
            eprintln!(
                "[attacks] {name}: {checks} checks passed, guest {:.2}s, wall {wall:.2}s",
                run.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("[attacks] {name}: FAILED after {wall:.2}s");
            Err(e.into())
        }
    }
}

fn main() {
    let mut args = Arguments::from_args();
    // Guests are CPU-heavy under TCG: one at a time unless asked.
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let trials = SCENARIOS
        .iter()
        .map(|&name| Trial::test(name, move || run(name)))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
