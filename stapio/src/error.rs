//! stapio's one error type. Each variant names the problem in one line;
//! `main` prints it once.
#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;

use stap_common::cli::CliError;
use stap_common::ids::{Gid, Pid, Uid};
use stap_common::modname::ModName;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Usage(#[from] CliError),
    #[error(
        "stapio must not run setuid or setgid (real uid {ruid}, effective uid {euid}, real gid {rgid}, effective gid {egid})"
    )]
    Setuid {
        ruid: Uid,
        euid: Uid,
        rgid: Gid,
        egid: Gid,
    },
    #[error("cannot set up the process: {0}")]
    Setup(io::Error),
    #[error("{0}")]
    MonitorRefused(&'static str),
    #[error("cannot set up the monitor screen (-M): {0}")]
    Monitor(io::Error),
    #[error("option -d is for staprun, not stapio")]
    DeleteUnsupported,
    #[error("Invalid relay directory descriptor -F {fd}: {source}")]
    RelayDirFd { fd: i32, source: io::Error },
    #[error(
        "Cannot attach to module {module} control channel; not running? ({})",
        reason(source)
    )]
    ModuleDir { module: ModName, source: io::Error },
    #[error("Cannot attach to module {module} control channel: {}", reason(source))]
    ControlOpen { module: ModName, source: io::Error },
    #[error("module {module} speaks neither the 4.x nor the 5.x control protocol")]
    UnknownGeneration { module: ModName },
    #[error("Unable to send {what}: {source}")]
    Send {
        what: &'static str,
        source: io::Error,
    },
    #[error("Unexpected error reading the control channel: {0}")]
    Recv(io::Error),
    #[error("Unexpected EOF on the control channel")]
    ControlEof,
    #[error("module {module} has no relay files (trace0 to trace{last})")]
    NoRelay { module: ModName, last: usize },
    #[error("Couldn't open relay file trace{cpu}: {source}")]
    RelayOpen { cpu: usize, source: io::Error },
    #[error("Couldn't read relay file trace{cpu}: {source}")]
    RelayRead { cpu: usize, source: io::Error },
    #[error("Invalid FILE name format '{pattern}': {source}")]
    OutputName { pattern: String, source: io::Error },
    #[error("Couldn't open output file {}: {source}", path.display())]
    OutputOpen { path: PathBuf, source: io::Error },
    #[error("Couldn't write to output {what}: {source}")]
    OutputWrite { what: String, source: io::Error },
    #[error("Couldn't remove old output file {}: {source}", path.display())]
    OutputRemove { path: PathBuf, source: io::Error },
    #[error("failed to create thread: {0}")]
    Thread(io::Error),
    #[error("a relay thread stopped unexpectedly")]
    ThreadPanic,
    #[error("the module's probes failed to start (systemtap_module_init returned {res})")]
    StartFailed { res: i32 },
    #[error("Failed to start -c command '{cmd}': {source}")]
    TargetSpawn { cmd: String, source: io::Error },
    #[error("Failed to release the -c command (pid {pid}): {source}")]
    TargetRelease { pid: Pid, source: io::Error },
    #[error("Failed to daemonize stapio: {0}")]
    Daemon(io::Error),
    #[error("Unable to unload module {module}: {detail}")]
    Unload { module: ModName, detail: String },
    #[error("Failed to open file '{path}': {}", os_text(source))]
    MountNamespace { path: String, source: io::Error },
    #[error("Couldn't open the module's __stdin for -i: {}", os_text(source))]
    InputOpen { source: io::Error },
    #[error("Failed to reconfigure the terminal for -i: {}", os_text(.0))]
    Terminal(io::Error),
}

/// The text of an errno alone, as C's `strerror` gives it.
fn os_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The errno of a control-channel failure, in words a user can act on.
fn reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EBUSY) => {
            "it is busy (another stapio is attached to it, or it is being unloaded)".into()
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "permission denied (the module belongs to another user)".into()
        }
        Some(libc::ENOENT) => "no such SystemTap module is loaded".into(),
        _ => e.to_string(),
    }
}
