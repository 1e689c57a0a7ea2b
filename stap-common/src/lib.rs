//! Shared pieces of `staprun` and `stapio`.
//!
//! * [`cli`]: the getopt-compatible option set both programs parse.
//! * [`color`]: the coloured `ERROR:`/`WARNING:` tags (`-C`, `SYSTEMTAP_COLORS`).
//! * [`child_env`]: how staprun hands stapio the environment of the `-c`
//!   command and `system()` children, apart from stapio's own.
//! * [`protocol`]: typed control messages of both SystemTap generations.
//! * [`record`]: the relay record's wire format (per-CPU `traceN` files).
//! * [`kernel`]: the `KernelOps` boundary, with the real Linux implementation
//!   and (feature `sim`, for tests and benchmarks only) a simulated kernel.
//! * [`ids`]: typed user, group and process ids.
//! * [`sys`]: the thin system layer; the only module allowed `unsafe`
//!   (`deny(unsafe_code)` everywhere else).
#![deny(unsafe_code)]

pub mod child_env;
pub mod cli;
pub mod color;
pub mod elf;
pub mod ids;
pub mod kernel;
pub mod modname;
pub mod protocol;
pub mod record;
#[allow(unsafe_code)]
pub mod sys;

/// Version string printed by `-V`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
