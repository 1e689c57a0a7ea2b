//! One test per guest scenario: each boots its own QEMU guest (see the `vm` crate).
//!
//! `cargo test -p vm --test vm` or `cargo nextest run -p vm`; prepare first with
//! `cargo xtask vm-prepare` (or run everything with `cargo xtask vm-test`).
//! A missing kernel, initramfs or QEMU is a failure, never a skip.

use std::time::Instant;

use libtest_mimic::{Arguments, Failed, Trial};

/// Scenario names, as known to the guest agent (`vm/src/bin/vm-agent/scenarios.rs`).
/// `boot` (KVM probe) and `demo` (`cargo xtask demo`) are not tests of their own.
const SCENARIOS: &[&str] = &[
    "infra_boot",
    "alice_runs_pmod",
    "alice_runs_pmod5",
    "permission_table",
    "unload_refusals",
    "detach_attach",
    "signals",
    "second_load_exists",
    "stapio_sigkill_cleanup",
    "privilege_drop",
    "env_attacks",
    "relay_ordering",
    "output_options",
    "target_options",
    "rename_concurrent",
    "bulk_mode",
    "overrun",
    "system_and_oob",
    "init_failure",
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
                "[vm] {name}: {checks} checks passed, guest {:.2}s, wall {wall:.2}s",
                run.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("[vm] {name}: FAILED after {wall:.2}s");
            Err(e.into())
        }
    }
}

fn main() {
    let mut args = Arguments::from_args();
    // Guests are CPU-heavy under TCG: default to one at a time unless asked.
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let trials = SCENARIOS
        .iter()
        .map(|&name| Trial::test(name, move || run(name)))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
