//! The VM tooling: preparing guests (kernel, fixture modules, static binaries, initramfs),
//! booting them through the `vm` crate's runner, and the suites built on that: vm-test, demo,
//! matrix, compat, bench, vm-install-test and the Debian guest.
//!
//! (Inside xtask, `crate::vm` is this module; `vm::` in its submodules names the `vm` crate.)

pub mod bench;
pub mod compat;
pub mod cpio;
pub mod debian;
mod fixture;
pub mod fleet;
mod initramfs;
pub mod install_test;
pub mod kernel;
pub mod matrix;
mod prepare;
pub mod run;

pub use initramfs::{STAPDEV, STAPSYS, STAPUSR, TARGET, cargo_static, release_bin};
pub use prepare::{Options, prepare};
