//! staprun as a library: the flow is argv -> a decision -> a load -> a
//! hand-over, with every kernel operation behind `KernelOps` so that host
//! tests drive it through the simulated kernel.
//!
//! `process.rs` is the real process (the caller, the privileged window,
//! the system calls of the hand-over); `main.rs` only sanitizes, calls it
//! and prints.
//!
//! No `unsafe` anywhere in staprun: every system call is in
//! `stap_common::sys`.
#![forbid(unsafe_code)]

pub mod audit;
pub mod creds;
pub mod env;
pub mod error;
pub mod facts;
pub mod handover;
pub mod load;
pub mod policy;
pub mod process;
pub mod unload;

pub use error::StaprunError;

use std::io;
use std::path::PathBuf;

use stap_common::ids::{Gid, Pid, Uid};
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
    pub real_uid: Uid,
    pub real_gid: Gid,
    pub class: Class,
    /// The file-system ids with which a caller-supplied module path is
    /// resolved: the caller's own for stapusr/stapsys members (so the
    /// lookup can reach nothing the caller could not), `None` (root's) for
    /// root and stapdev, who may load from anywhere.
    pub lookup_ids: Option<(Uid, Gid)>,
    /// The privileged window (see [`Window`]).
    pub window: &'a dyn Window,
    /// Audit events that must be logged while the operation runs (the
    /// attempt before `init_module`); main writes them to syslog.
    pub audit: &'a dyn Fn(&audit::Event<'_>),
    /// Used to make `-R` names unique.
    pub pid: Pid,
    /// True once INT/TERM/HUP/QUIT arrived (checked around the load).
    pub interrupted: &'a dyn Fn() -> bool,
    /// Non-fatal warnings, printed by main.
    pub warn: &'a dyn Fn(&str),
}

/// The real blessed directory for this kernel.
pub fn blessed_dir_for(release: &str) -> PathBuf {
    PathBuf::from(format!("/lib/modules/{release}/systemtap"))
}

/// The privileged window: from the permission decision to the privilege
/// drop, the caller must not be able to signal (stop, kill, interrupt)
/// staprun. kill(2) is allowed when the sender's uid matches the target's
/// real or saved uid, so the real uid is made root for the window; it is
/// the caller's only around `init_module`, because the module records the
/// real uid of its loader as the owner of its control files.
pub trait Window {
    /// Close the window: real uid root from now on.
    fn close(&self) -> io::Result<()>;
    /// Run `f` (the `init_module` call) with the caller as real uid, and
    /// make the real uid root again afterwards.
    fn init_as_caller(&self, f: &mut dyn FnMut() -> io::Result<()>) -> io::Result<()>;
}

/// No credential changes (host tests, and the simulated kernel).
#[derive(Debug, Default)]
pub struct NoWindow;

impl Window for NoWindow {
    fn close(&self) -> io::Result<()> {
        Ok(())
    }
    fn init_as_caller(&self, f: &mut dyn FnMut() -> io::Result<()>) -> io::Result<()> {
        f()
    }
}

/// An audit sink that drops every event (tests).
pub fn no_audit(_: &audit::Event<'_>) {}
