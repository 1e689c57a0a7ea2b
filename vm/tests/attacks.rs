//! The attack suite (issue 5): one test per attack scenario, each booting
//! its own QEMU guest (see the `vm` crate and `docs/attacks.md`).
//!
//! `cargo test -p vm --test attacks [-- NAME]` after `cargo xtask vm-prepare`
//! (or `cargo xtask vm-test`, which runs this binary too). A missing kernel,
//! initramfs or QEMU is a failure, never a skip.
//!
//! The scenarios are those of `vm::registry::SCENARIOS` with suite `Attacks`.

mod common;

fn main() {
    common::main("attacks", vm::registry::Suite::Attacks, Vec::new());
}
