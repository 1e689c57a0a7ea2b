//! `vm-test`, `compat-test` and `demo`: prepare, then run guests.

use std::time::Instant;

use crate::cmd;
use crate::error::{Context as _, Result};
use crate::vm::{Options, compat, prepare};

/// The guest test binaries of `vm-test`: the scenarios and the attack suite.
const VM_TESTS: [&str; 4] = ["--test", "vm", "--test", "attacks"];

/// `vm-test`: vm-prepare, then `cargo test` (or `cargo nextest run`) of the guest suites.
pub fn vm_test(opts: &Options, nextest: bool, test_args: &[String]) -> Result<()> {
    let t0 = Instant::now();
    let art = prepare(opts)?;
    let prep = t0.elapsed();
    let sh = cmd::workspace_shell()?;
    let cargo = cmd::cargo(&sh).env(vm::KERNEL_VAR, &art.kver);
    let cargo = if nextest {
        let c = cargo.args(["nextest", "run", "-p", "vm"]).args(VM_TESTS);
        if test_args.is_empty() {
            c
        } else {
            c.arg("--").args(test_args)
        }
    } else {
        cargo
            .args(["test", "-p", "vm"])
            .args(VM_TESTS)
            .arg("--")
            .args(test_args)
    };
    eprintln!("xtask: running {cargo}");
    let r = cmd::run(cargo);
    eprintln!(
        "xtask: vm-test wall time {:.1}s (prepare {:.1}s, tests {:.1}s)",
        t0.elapsed().as_secs_f64(),
        prep.as_secs_f64(),
        (t0.elapsed() - prep).as_secs_f64()
    );
    r.context("guest tests failed")
}

/// `compat-test`: compat-prepare, then `cargo test -p vm --test compat`.
pub fn compat_test(opts: &compat::Options, test_args: &[String]) -> Result<()> {
    let t0 = Instant::now();
    compat::prepare(opts)?;
    let prep = t0.elapsed();
    let sh = cmd::workspace_shell()?;
    let cargo = cmd::cargo(&sh)
        .args(["test", "-p", "vm", "--test", "compat", "--"])
        .args(test_args);
    eprintln!("xtask: running {cargo}");
    let r = cmd::run(cargo);
    eprintln!(
        "xtask: compat-test wall time {:.1}s (prepare {:.1}s, tests {:.1}s)",
        t0.elapsed().as_secs_f64(),
        prep.as_secs_f64(),
        (t0.elapsed() - prep).as_secs_f64()
    );
    r.context("compat tests failed")
}

/// `demo`: vm-prepare, then one guest in which alice runs `staprun pmod`.
pub fn demo(opts: &Options) -> Result<()> {
    let art = prepare(opts)?;
    let spec = vm::BootSpec::new("demo");
    eprintln!(
        "xtask: booting guest {} ({}) for scenario demo",
        art.kver, art.accel
    );
    let run = vm::boot(&art, &spec)?;
    eprintln!("xtask: console log: {}", run.console_log.display());
    println!(
        "--- guest transcript ({:.2}s) ---",
        run.elapsed.as_secs_f64()
    );
    for e in run.events() {
        println!("{}", e.strip_prefix("LOG ").unwrap_or(e));
    }
    Ok(run.assert_passed()?)
}
