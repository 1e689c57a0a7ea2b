//! What the scenario test binaries share: one libtest-mimic test per guest
//! scenario of a suite of `vm::registry`, each booting its own guest, one guest
//! at a time by default.

use std::time::Instant;

use libtest_mimic::{Arguments, Failed, Trial};
use vm::registry::{self, Scenario, Suite};

fn run(tag: &str, scenario: &'static Scenario) -> Result<(), Failed> {
    let t0 = Instant::now();
    let name = scenario.name;
    let result = vm::run_scenario(&scenario.spec());
    let wall = t0.elapsed().as_secs_f64();
    match result {
        Ok(run) => {
            let checks = run.verdict().passed;
            eprintln!(
                "[{tag}] {name}: {checks} checks passed, guest {:.2}s, wall {wall:.2}s",
                run.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("[{tag}] {name}: FAILED after {wall:.2}s");
            Err(e.into())
        }
    }
}

/// Run the scenarios of `suite` as named tests, reporting under `tag`, and the
/// `extra` tests (of the harness itself).
pub fn main(tag: &'static str, suite: Suite, extra: Vec<Trial>) {
    let mut args = Arguments::from_args();
    // Guests are CPU-heavy under TCG: one at a time unless asked.
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let trials = registry::tests(suite)
        .map(|s| Trial::test(s.name, move || run(tag, s)))
        .chain(extra)
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
