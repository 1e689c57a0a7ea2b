//! staprun's one error type. Printed once, in `main`, as `staprun: ERROR: ...`.
#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;

use stap_common::cli::CliError;
use thiserror::Error;

use crate::load::KernelMismatch;

#[derive(Debug, Error)]
pub enum StaprunError {
    #[error("{0}")]
    Usage(#[from] CliError),
    #[error(
        "The effective user ID of staprun must be set to the root user. Check that staprun is a setuid root program{nnp}"
    )]
    NotSetuidRoot { nnp: &'static str },
    #[error("cannot set up the process: {0}")]
    Setup(io::Error),
    #[error("Permission denied loading {path}: {reason}")]
    Denied { path: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("module {path} is {size} bytes, more than the {limit}-byte limit")]
    ModuleTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("module {path} kept changing while it was being read (is it being written?)")]
    ModuleChanged { path: PathBuf },
    #[error("module {path} is empty")]
    ModuleEmpty { path: PathBuf },
    #[error("module {path} is not a loadable kernel module: {detail}")]
    NotAModule { path: PathBuf, detail: String },
    /// Refused before `init_module`, for every caller (see
    /// [`crate::load::built_for_running_kernel`]).
    #[error("module {path} {mismatch}")]
    WrongKernel {
        path: PathBuf,
        mismatch: KernelMismatch,
    },
    #[error("module option '{0}' is reserved for staprun itself")]
    ReservedOption(String),
    #[error("Couldn't insert module '{path}': {text}")]
    Insert {
        path: PathBuf,
        text: String,
        exists: bool,
    },
    #[error("module '{module}' was loaded but its setup failed ({what}: {source})")]
    AfterLoad {
        module: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("module '{module}' speaks neither the 4.x nor the 5.x SystemTap control protocol")]
    UnknownGeneration { module: String },
    #[error("interrupted while loading '{module}'")]
    Interrupted { module: String },
    #[error(
        "the control file of '{module}' belongs to uid {owner}, not to you: it is not the module this staprun loaded (was it unloaded and loaded again meanwhile?)"
    )]
    NotOurModule { module: String, owner: u32 },
    /// A failure after `init_module`, with what the undo did.
    #[error("{error}; {undo}")]
    Undone {
        error: Box<StaprunError>,
        undo: String,
    },
    #[error(
        "module {path} was removed from (or replaced in) the blessed directory after it was checked; nothing was loaded"
    )]
    RemovedBeforeLoad { path: PathBuf },
    #[error(
        "the kernel runs in FIPS mode (/proc/sys/crypto/fips_enabled is set): SystemTap modules are not loaded in FIPS mode"
    )]
    Fips,
    #[error("{0}")]
    Unsupported(String),
    #[error("stapio could not start; module '{module}' has been unloaded")]
    StartFailed { module: String },
    #[error("'{name}' is not a SystemTap module that can be unloaded: {reason}")]
    NotUnloadable { name: String, reason: String },
    #[error("cannot unload '{name}': {source}")]
    Unload {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach to '{name}': {reason}")]
    Attach { name: String, reason: String },
    #[error("stapio at {path} is not usable: {reason}")]
    Stapio { path: PathBuf, reason: String },
    #[error("cannot drop privileges: {0}")]
    Drop(io::Error),
    #[error("cannot run stapio {path}: {source}")]
    Exec {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Module name {0}")]
    BadName(String),
}

impl StaprunError {
    /// A second line of guidance, printed after the error.
    pub fn hint(&self) -> Option<String> {
        match self {
            StaprunError::Insert { exists: true, .. } => {
                Some("Rerun with staprun option '-R' to rename this module.".into())
            }
            StaprunError::Usage(_) => Some("Run 'staprun -h' for usage.".into()),
            StaprunError::Denied { path, .. } => Some(format!(
                "'staprun --explain {}' shows the rules that decide, without loading anything.",
                path.display()
            )),
            StaprunError::Undone { error, .. } => error.hint(),
            _ => None,
        }
    }

    /// Exit status, as the C staprun's: 255 (its `exit(-1)`) for a refusal
    /// by the permission rules, 1 for everything else (usage errors, and a
    /// failed load, which its `init_staprun` reports as 1).
    pub fn exit_code(&self) -> i32 {
        match self {
            StaprunError::Denied { .. } | StaprunError::NotUnloadable { .. } => 255,
            StaprunError::Undone { error, .. } => error.exit_code(),
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_match_the_c_staprun() {
        let refused = StaprunError::Denied {
            path: "/x".into(),
            reason: "r".into(),
        };
        assert_eq!(refused.exit_code(), 255);
        let insert = StaprunError::Insert {
            path: "/x".into(),
            text: "File exists".into(),
            exists: true,
        };
        assert_eq!(insert.exit_code(), 1);
        assert_eq!(StaprunError::Usage(CliError::MissingModule).exit_code(), 1);
        // A module for another kernel is a failed load, not a refusal by
        // the permission rules.
        let wrong = StaprunError::WrongKernel {
            path: "/x.ko".into(),
            mismatch: KernelMismatch::OtherRelease {
                module: "6.1.0-58-cloud-amd64".into(),
                running: "6.1.0-57-cloud-amd64".into(),
            },
        };
        assert_eq!(wrong.exit_code(), 1);
        assert_eq!(
            wrong.to_string(),
            "module /x.ko was built for kernel 6.1.0-58-cloud-amd64, not for the running kernel 6.1.0-57-cloud-amd64"
        );
    }

    #[test]
    fn a_refusal_points_at_explain() {
        let refused = StaprunError::Denied {
            path: "/tmp/p.ko".into(),
            reason: "r".into(),
        };
        let hint = refused.hint().unwrap();
        assert!(hint.contains("staprun --explain /tmp/p.ko"), "{hint}");
        let undone = StaprunError::Undone {
            error: Box::new(refused),
            undo: "it has been unloaded".into(),
        };
        assert_eq!(undone.hint(), Some(hint));
        assert_eq!(StaprunError::Fips.hint(), None);
    }
}
