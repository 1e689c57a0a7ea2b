//! One test per guest scenario: each boots its own QEMU guest (see the `vm` crate).
//!
//! `cargo test -p vm --test vm` or `cargo nextest run -p vm`; prepare first with
//! `cargo xtask vm-prepare` (or run everything with `cargo xtask vm-test`).
//! A missing kernel, initramfs or QEMU is a failure, never a skip.
//!
//! The scenarios are those of `vm::registry::SCENARIOS` with suite `Vm` (`boot`, the KVM
//! probe, and `demo`, `cargo xtask demo`, are not tests of their own).

mod common;

/// The harness boots a guest once more when it died before its agent
/// started (QEMU TCG's rare early-boot hangs), and says so when the second
/// boot dies too: here both die at once (no init to run).
fn infra_early_death_is_retried() -> Result<(), libtest_mimic::Failed> {
    let art = vm::Artifacts::load()?;
    let mut spec = vm::BootSpec::new("infra_boot");
    spec.append.push("init=/nonexistent".into());
    spec.append.push("rdinit=/nonexistent".into());
    let t0 = std::time::Instant::now();
    match vm::boot(&art, &spec) {
        Ok(run) => Err(format!("a guest without init booted:\n{}", run.transcript()).into()),
        Err(e) if e.contains("an earlier boot had died before its agent started too") => {
            eprintln!(
                "[vm] infra_early_death_is_retried: two boots, {:.1}s",
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Err(e) => Err(format!("not retried as an early death: {e}").into()),
    }
}

fn main() {
    common::main(
        "vm",
        vm::registry::Suite::Vm,
        vec![libtest_mimic::Trial::test(
            "infra_early_death_is_retried",
            infra_early_death_is_retried,
        )],
    );
}
