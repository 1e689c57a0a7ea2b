//! The hand-over to stapio: what is executed, as a plan built without side
//! effects ([`ExecPlan`]), and the guard that unloads a module this staprun
//! loaded unless the hand-over gets as far as the privilege drop
//! ([`UndoGuard`]). The system calls themselves are in `process.rs`.

use std::ffi::{CString, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use stap_common::cli::Options;
use stap_common::modname::ModName;

use crate::{Context, StaprunError, env, unload};

/// `staprun --undo-start MODULE`: `staprun -d MODULE` (the same checks)
/// for a module whose stapio could not start; exits 1.
pub const UNDO_START: &str = "--undo-start";

/// One `execve`: the program, its argv and its whole environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPlan {
    pub path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

fn c_string(s: impl Into<OsString>) -> CString {
    // Arguments and environment strings come from the kernel's own
    // NUL-terminated arrays and cannot hold a NUL.
    CString::new(s.into().into_vec()).unwrap_or_default()
}

impl ExecPlan {
    /// stapio for module `name`: the caller's options as stapio parses
    /// them, the module directory's fd as `-F`, and [`env::for_stapio`]:
    /// stapio's own allowlist of the environment the caller gave, plus
    /// `SYSTEMTAP_VERBOSE` and `SYSTEMTAP_MODULE`, and apart from it the
    /// set stapio gives its children (`-c`, `system()`).
    pub fn stapio(
        stapio: &Path,
        opts: &Options,
        name: &ModName,
        relay_fd: Option<RawFd>,
        captured: Vec<(String, String)>,
    ) -> ExecPlan {
        let mut argv = vec![c_string(stapio.as_os_str())];
        argv.extend(
            opts.to_args(name.as_str(), relay_fd)
                .into_iter()
                .map(c_string),
        );
        let envp = env::for_stapio(captured, opts.verbose, name.as_str());
        ExecPlan {
            path: c_string(stapio.as_os_str()),
            argv,
            envp: envp
                .into_iter()
                .map(|(k, v)| c_string(format!("{k}={v}")))
                .collect(),
        }
    }

    /// `staprun --undo-start MODULE`, with an empty environment: what runs
    /// when stapio cannot be executed after the privilege drop.
    pub fn undo_start(staprun: &Path, name: &ModName) -> ExecPlan {
        ExecPlan {
            path: c_string(staprun.as_os_str()),
            argv: vec![
                c_string(staprun.as_os_str()),
                c_string(UNDO_START),
                c_string(name.as_str()),
            ],
            envp: Vec::new(),
        }
    }

    /// The argv as text (tests, messages).
    pub fn args(&self) -> Vec<String> {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The environment as `(name, value)` pairs.
    pub fn env(&self) -> Vec<(String, String)> {
        self.envp
            .iter()
            .filter_map(|e| {
                let e = e.to_string_lossy();
                let (k, v) = e.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect()
    }
}

/// A module this staprun loaded: unloaded again, through the checks of
/// `staprun -d` ([`unload::undo`]), when the guard is dropped or
/// [`fail`](UndoGuard::fail)s, unless it was [`disarm`](UndoGuard::disarm)ed
/// at the privilege drop (after which only `staprun --undo-start` can
/// unload it). A module staprun attached to (`-A`) is never unloaded.
pub struct UndoGuard<'c, 'a> {
    ctx: &'c Context<'a>,
    name: ModName,
    armed: bool,
}

impl<'c, 'a> UndoGuard<'c, 'a> {
    pub fn new(ctx: &'c Context<'a>, name: ModName, loaded_by_us: bool) -> Self {
        UndoGuard {
            ctx,
            name,
            armed: loaded_by_us,
        }
    }

    pub fn name(&self) -> &ModName {
        &self.name
    }

    /// The hand-over failed with `error`: unload the module (if this
    /// staprun loaded it) and say what the undo did.
    pub fn fail(mut self, error: StaprunError) -> StaprunError {
        if !std::mem::replace(&mut self.armed, false) {
            return error;
        }
        StaprunError::Undone {
            error: Box::new(error),
            undo: unload::undo(self.ctx, &self.name),
        }
    }

    /// The privilege is dropped for good: from here on an undo is
    /// `staprun --undo-start`'s. Returns whether this staprun loaded the
    /// module (so that a failed exec must undo it that way).
    pub fn disarm(mut self) -> bool {
        std::mem::replace(&mut self.armed, false)
    }
}

impl Drop for UndoGuard<'_, '_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = unload::undo(self.ctx, &self.name);
        }
    }
}
