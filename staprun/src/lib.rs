//! staprun as a library: the flow is argv -> a decision -> a load -> a
//! hand-over, with every kernel operation behind `KernelOps` so that host
//! tests drive it through the simulated kernel.
//!
//! The only place that prints is `main.rs`.

pub mod audit;
pub mod creds;
pub mod env;
pub mod error;
pub mod facts;
pub mod load;
pub mod policy;
pub mod unload;

pub use error::StaprunError;

use std::path::PathBuf;

use stap_common::kernel::KernelOps;

use crate::facts::GroupDb;
use crate::policy::Class;

/// Everything a staprun operation needs to know about its world.
pub struct Context<'a> {
    pub kernel: &'a dyn KernelOps,
    pub groups: &'a dyn GroupDb,
    /// `/lib/modules/$(uname -r)/systemtap` in the real program; tests
    /// give a temporary tree through this library API only.
    pub blessed_dir: PathBuf,
    pub real_uid: u32,
    pub class: Class,
    /// Used to make `-R` names unique.
    pub pid: u32,
    /// True once INT/TERM/HUP/QUIT arrived (checked around the load).
    pub interrupted: &'a dyn Fn() -> bool,
    /// Non-fatal warnings, printed by main.
    pub warn: &'a dyn Fn(&str),
}

/// The real blessed directory for this kernel.
pub fn blessed_dir_for(release: &str) -> PathBuf {
    PathBuf::from(format!("/lib/modules/{release}/systemtap"))
}
