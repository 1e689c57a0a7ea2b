//! Shared pieces of `staprun` and `stapio`.
//!
//! * [`cli`]: the getopt-compatible option set both programs parse.
//! * [`protocol`]: typed control messages of both SystemTap generations.
//! * [`record`]: the relay record's wire format (per-CPU `traceN` files).
//! * [`kernel`]: the `KernelOps` boundary, with the real Linux implementation
//!   and (feature `sim`, for tests and benchmarks only) a simulated kernel.
//! * [`sys`]: the thin system layer; the only place with `unsafe`.

pub mod cli;
pub mod elf;
pub mod kernel;
pub mod modname;
pub mod protocol;
pub mod record;
pub mod sys;

/// Version string printed by `-V`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
