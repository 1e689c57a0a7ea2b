//! The attack suite (issue 5): one test per attack scenario, each booting
//! its own QEMU guest (see the `vm` crate and `docs/attacks.md`).
//!
//! `cargo test -p vm --test attacks [-- NAME]` after `cargo xtask vm-prepare`
//! (or `cargo xtask vm-test`, which runs this binary too). A missing kernel,
//! initramfs or QEMU is a failure, never a skip.

mod common;

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
    // Security round 2 (issue 12), one per item.
    "attack_r2_1_privileged_window",
    "attack_r2_2_caller_path",
    "attack_r2_3_audit_before_load",
    "attack_r2_4_param_split",
    "attack_r2_5_acl",
    "attack_r2_6_large_groups",
    "attack_r2_7_failed_start",
    "attack_r2_8_small_items",
];

fn main() {
    common::main("attacks", SCENARIOS, Vec::new());
}
