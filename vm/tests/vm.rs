//! One test per guest scenario: each boots its own QEMU guest (see the `vm` crate).
//!
//! `cargo test -p vm --test vm` or `cargo nextest run -p vm`; prepare first with
//! `cargo xtask vm-prepare` (or run everything with `cargo xtask vm-test`).
//! A missing kernel, initramfs or QEMU is a failure, never a skip.

mod common;

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

fn main() {
    common::main("vm", SCENARIOS);
}
