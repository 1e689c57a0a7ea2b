//! Shared pieces of `staprun` and `stapio`.
//!
//! * [`cli`]: the getopt-compatible option set both programs parse.
//! * [`protocol`]: typed control messages of both SystemTap generations.
//! * [`relay`]: relay record framing (per-CPU `traceN` files).
//! * [`kernel`]: the `KernelOps` boundary, with the real Linux implementation
//!   and a simulated kernel used by host tests.
//! * [`sys`]: the thin system layer; the only place with `unsafe`.

pub mod cli;
pub mod elf;
pub mod kernel;
pub mod merge;
pub mod modname;
pub mod protocol;
pub mod relay;
pub mod sys;

/// Version string printed by `-V`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
