//! The last step of a normal end: unloading the module, by running
//! `staprun -d` (setuid; it checks that the module is ours and not
//! attached), or, when even that cannot be started, by executing
//! `staprun --undo-start` in place of stapio.

use std::os::fd::OwnedFd;

use stap_common::cli::ColorMode;
use stap_common::modname::ModName;

use crate::error::Error;

/// The last step of a normal end: unload the module.
pub trait Unloader {
    fn unload(&self, module: &ModName) -> Result<(), Error>;

    /// Unload from the mount namespace `orig` (`-N` with a 5.1+ module,
    /// when the module left this thread in another one): the unloading
    /// child switches back to it first.
    fn unload_in_mount_ns(&self, module: &ModName, orig: Option<OwnedFd>) -> Result<(), Error> {
        drop(orig);
        self.unload(module)
    }
}

impl<F: Fn(&ModName) -> Result<(), Error>> Unloader for F {
    fn unload(&self, module: &ModName) -> Result<(), Error> {
        self(module)
    }
}

/// The build-time path of staprun.
pub const STAPRUN_PATH: &str = match option_env!("STAPRUN_PATH") {
    Some(p) => p,
    None => "/usr/bin/staprun",
};

/// Environment variables passed on to `staprun -d`.
const UNLOAD_ENV: [&str; 7] = [
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_MESSAGES",
    "TERM",
    "SYSTEMTAP_COLORS",
];

/// Unload by running `staprun [-v..] -d -C MODE -- MODULE` (setuid; it
/// checks that the module is ours and not attached).
#[derive(Debug)]
pub struct StaprunUnloader {
    pub staprun: std::path::PathBuf,
    pub verbose: u32,
    pub color: ColorMode,
    /// `unload` was called.
    attempted: std::sync::atomic::AtomicBool,
    /// `staprun -d` could not even be started (no processes, no memory):
    /// the caller must then execute `staprun --undo-start` in its place.
    spawn_failed: std::sync::atomic::AtomicBool,
}

impl StaprunUnloader {
    pub fn new(verbose: u32, color: ColorMode) -> Self {
        StaprunUnloader {
            staprun: STAPRUN_PATH.into(),
            verbose,
            color,
            attempted: false.into(),
            spawn_failed: false.into(),
        }
    }

    pub fn attempted(&self) -> bool {
        self.attempted.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn spawn_failed(&self) -> bool {
        self.spawn_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replace this process with `staprun --undo-start MODULE` (the
    /// checks of `staprun -d`, then exit 1). Returns only on failure.
    pub fn exec_undo(&self, module: &ModName) -> std::io::Error {
        use std::ffi::CString;
        let c = |s: &str| CString::new(s).unwrap_or_default();
        let path = CString::new(self.staprun.as_os_str().as_encoded_bytes()).unwrap_or_default();
        let argv = [path.clone(), c("--undo-start"), c(module.as_str())];
        let env: Vec<CString> = UNLOAD_ENV
            .iter()
            .filter_map(|k| Some(c(&format!("{k}={}", std::env::var(k).ok()?))))
            .collect();
        stap_common::sys::execve(&path, &argv, &env)
    }

    /// The argv after argv\[0\].
    pub fn args(&self, module: &ModName) -> Vec<String> {
        let mut a: Vec<String> = (0..self.verbose.min(2)).map(|_| "-v".into()).collect();
        a.extend(["-d", "-C", self.color.as_str(), "--", module.as_str()].map(String::from));
        a
    }
}

impl Unloader for StaprunUnloader {
    fn unload(&self, module: &ModName) -> Result<(), Error> {
        self.unload_in_mount_ns(module, None)
    }

    fn unload_in_mount_ns(&self, module: &ModName, orig: Option<OwnedFd>) -> Result<(), Error> {
        self.attempted
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut cmd = std::process::Command::new(&self.staprun);
        cmd.args(self.args(module)).env_clear();
        for k in UNLOAD_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        if let Some(ns) = orig {
            stap_common::sys::enter_mount_ns_before_exec(&mut cmd, ns);
        }
        let status = cmd.status().map_err(|e| {
            // Out of processes, memory or descriptors: staprun can still
            // be executed in place of this process.
            if matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE)
            ) {
                self.spawn_failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Error::Unload {
                module: module.clone(),
                detail: format!("cannot run {}: {e}", self.staprun.display()),
            }
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Unload {
                module: module.clone(),
                detail: format!("{} -d {status}", self.staprun.display()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unload_runs_staprun_d_with_verbosity_and_colour() {
        let m = ModName::new("-odd").unwrap();
        let u = StaprunUnloader::new(3, ColorMode::Never);
        assert_eq!(u.args(&m), ["-v", "-v", "-d", "-C", "never", "--", "-odd"]);
        let u = StaprunUnloader::new(0, ColorMode::Always);
        assert_eq!(u.args(&m), ["-d", "-C", "always", "--", "-odd"]);
    }
}
