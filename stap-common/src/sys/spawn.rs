//! Running programs: `execve` in place, forked children (stapio's `-c`
//! command held until the probes start, `system()` commands run detached)
//! and waiting for them.
//!
//! Between `fork` and `execve` a child makes only async-signal-safe libc
//! calls on data prepared before the fork, and allocates nothing: the
//! parent may have other threads, one of which may hold the allocator's
//! lock at the moment of the fork.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::io::Errno;
use rustix::pipe::PipeFlags;
use rustix::process::WaitOptions;

use super::{cerr, cstring};
use crate::ids::Pid;

/// `execve(path, argv, env)`; returns only on error.
pub fn execve(path: &CStr, argv: &[CString], env: &[CString]) -> io::Error {
    match nix::unistd::execve(path, argv, env) {
        Err(e) => e.into(),
        Ok(never) => match never {},
    }
}

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStatus {
    Exited(i32),
    Signaled(i32),
}

impl ChildStatus {
    pub fn success(self) -> bool {
        self == ChildStatus::Exited(0)
    }
}

/// `waitpid(pid)` for one child (a positive pid; EINVAL otherwise):
/// `Ok(None)` with `nohang` when it is still running. EINTR is retried.
pub fn waitpid(pid: Pid, nohang: bool) -> io::Result<Option<ChildStatus>> {
    let rpid = rustix::process::Pid::from_raw(pid.as_raw().max(0)).ok_or_else(super::einval)?;
    let flags = if nohang {
        WaitOptions::NOHANG
    } else {
        WaitOptions::empty()
    };
    loop {
        let status = match rustix::process::waitpid(Some(rpid), flags) {
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(None) => return Ok(None),
            Ok(Some((_, status))) => status,
        };
        if let Some(code) = status.exit_status() {
            return Ok(Some(ChildStatus::Exited(code)));
        }
        if let Some(sig) = status.terminating_signal() {
            return Ok(Some(ChildStatus::Signaled(sig)));
        }
        // Stopped or continued: not an ending; keep waiting when blocking.
        if nohang {
            return Ok(None);
        }
    }
}

/// A program to run in a forked child, prepared before the fork so that
/// the child allocates nothing between `fork` and `execve`.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Written to stderr by the child if `execve` fails.
    failure: Vec<u8>,
}

impl ExecSpec {
    /// `path` is executed as is (no `PATH` search); `env` entries are
    /// `NAME=value`.
    pub fn new<A: AsRef<OsStr>, E: AsRef<OsStr>>(
        path: &OsStr,
        argv: impl IntoIterator<Item = A>,
        env: impl IntoIterator<Item = E>,
    ) -> io::Result<Self> {
        let argv = argv
            .into_iter()
            .map(|a| cstring(a.as_ref()))
            .collect::<io::Result<Vec<_>>>()?;
        let env = env
            .into_iter()
            .map(|a| cstring(a.as_ref()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut failure = b"cannot execute ".to_vec();
        failure.extend_from_slice(path.as_bytes());
        failure.push(b'\n');
        Ok(ExecSpec {
            path: cstring(path)?,
            argv,
            env,
            failure,
        })
    }

    /// The current process environment as `NAME=value` entries.
    pub fn inherited_env() -> Vec<OsString> {
        std::env::vars_os()
            .map(|(k, v)| {
                let mut s = k;
                s.push("=");
                s.push(v);
                s
            })
            .collect()
    }
}

/// Pointer arrays for `execve`, built before `fork`.
struct Prepared<'a> {
    spec: &'a ExecSpec,
    argv: Vec<*const libc::c_char>,
    env: Vec<*const libc::c_char>,
}

impl<'a> Prepared<'a> {
    fn new(spec: &'a ExecSpec) -> Self {
        let mut argv: Vec<_> = spec.argv.iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut env: Vec<_> = spec.env.iter().map(|s| s.as_ptr()).collect();
        env.push(std::ptr::null());
        Prepared { spec, argv, env }
    }

    /// In a forked child: default signal dispositions (Rust ignores
    /// SIGPIPE, the parent may catch others), an empty signal mask, then
    /// `execve`. Only async-signal-safe calls; never returns.
    fn exec_in_child(&self) -> ! {
        for sig in [
            libc::SIGPIPE,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGCHLD,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            // SAFETY: signal(2) with SIG_DFL is async-signal-safe.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        // SAFETY: a zeroed sigset_t on the stack, emptied, then installed;
        // sigemptyset and sigprocmask are async-signal-safe.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        }
        // SAFETY: NULL-terminated arrays of C strings owned by `spec`,
        // which outlives this call (the child never returns).
        unsafe {
            libc::execve(
                self.spec.path.as_ptr(),
                self.argv.as_ptr(),
                self.env.as_ptr(),
            );
        }
        let msg = &self.spec.failure;
        // SAFETY: write(2) of a live buffer, then _exit(2); both
        // async-signal-safe.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    }
}

/// Close every descriptor from 3 up (in a forked child).
fn close_from_3_in_child() {
    // SAFETY: close_range(2) only closes descriptors of this (child) process.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// Fork a child that waits, before `exec`, until the returned descriptor
/// is written to (one byte) — SystemTap's `-c` hold until the probes have
/// started. If the descriptor is closed without a write, the child exits
/// with status 1 without running anything. The child closes descriptors
/// from 3 up (but the gate) before waiting, and the gate before `exec`.
pub fn spawn_held(spec: &ExecSpec) -> io::Result<(Pid, OwnedFd)> {
    let prepared = Prepared::new(spec);
    let (rd, wr) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    // SAFETY: the child below only makes async-signal-safe calls (read,
    // close_range, signal, sigprocmask, execve, write, _exit) on data
    // prepared before the fork, so it is sound in a multithreaded parent.
    let pid = cerr(unsafe { libc::fork() })?;
    if pid == 0 {
        // Hold nothing but the gate while waiting, so no other process's
        // pipe stays open because of us.
        let keep = rd.as_raw_fd() as libc::c_uint;
        // SAFETY: close_range(2) on this (child) process's descriptors,
        // around the one we keep.
        unsafe {
            if keep > 3 {
                libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32);
            }
            libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
        }
        let mut b = [0u8; 1];
        loop {
            // SAFETY: read(2) into a one-byte stack buffer.
            let n = unsafe { libc::read(rd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
            if n == 1 {
                break;
            }
            if n == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // SAFETY: _exit(2) is async-signal-safe.
            unsafe { libc::_exit(1) };
        }
        close_from_3_in_child();
        prepared.exec_in_child();
    }
    drop(rd);
    Ok((Pid::from_raw(pid), wr))
}

/// Run a program without waiting for it (SystemTap's `system()`): fork a
/// child that closes descriptors from 3 up and forks again; the grandchild
/// execs, the child exits at once and is reaped here, so no zombie and no
/// wait for the command itself.
pub fn spawn_detached(spec: &ExecSpec) -> io::Result<()> {
    let prepared = Prepared::new(spec);
    // SAFETY: as in `spawn_held`, the child and grandchild only make
    // async-signal-safe calls on data prepared before the fork.
    let pid = cerr(unsafe { libc::fork() })?;
    if pid == 0 {
        close_from_3_in_child();
        // SAFETY: as above.
        match unsafe { libc::fork() } {
            0 => prepared.exec_in_child(),
            // SAFETY: _exit(2) is async-signal-safe.
            -1 => unsafe { libc::_exit(1) },
            // SAFETY: as above.
            _ => unsafe { libc::_exit(0) },
        }
    }
    match waitpid(Pid::from_raw(pid), false)? {
        Some(ChildStatus::Exited(0)) => Ok(()),
        _ => Err(io::Error::other("could not fork the command")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    fn spec(path: &str, argv: &[&str]) -> ExecSpec {
        ExecSpec::new(OsStr::new(path), argv, ExecSpec::inherited_env()).unwrap()
    }

    fn release(gate: &OwnedFd) {
        assert_eq!(crate::sys::write(gate.as_fd(), b"g").unwrap(), 1);
    }

    #[test]
    fn held_true_and_false() {
        let (pid, gate) = spawn_held(&spec("/bin/true", &["true"])).unwrap();
        assert!(pid.as_raw() > 0);
        // Held: still there until the gate opens.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(waitpid(pid, true).unwrap(), None);
        release(&gate);
        assert_eq!(waitpid(pid, false).unwrap(), Some(ChildStatus::Exited(0)));
        assert!(ChildStatus::Exited(0).success());

        let (pid, gate) = spawn_held(&spec("/bin/false", &["false"])).unwrap();
        release(&gate);
        let st = waitpid(pid, false).unwrap().unwrap();
        assert_eq!(st, ChildStatus::Exited(1));
        assert!(!st.success());
        // Reaped: waiting again is ECHILD.
        let e = waitpid(pid, false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECHILD));
    }

    #[test]
    fn gate_closed_without_a_write_runs_nothing() {
        let dir = std::env::temp_dir().join(format!("stap-sys-spawn-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let s = spec("/bin/touch", &["touch", dir.to_str().unwrap()]);
        let (pid, gate) = spawn_held(&s).unwrap();
        drop(gate);
        assert_eq!(waitpid(pid, false).unwrap(), Some(ChildStatus::Exited(1)));
        assert!(!dir.exists());
    }

    #[test]
    fn exec_failure_and_signals() {
        let (pid, gate) = spawn_held(&spec("/nonexistent/prog", &["prog"])).unwrap();
        release(&gate);
        assert_eq!(waitpid(pid, false).unwrap(), Some(ChildStatus::Exited(127)));

        let (pid, gate) = spawn_held(&spec("/bin/sleep", &["sleep", "60"])).unwrap();
        release(&gate);
        crate::sys::kill(pid, libc::SIGKILL).unwrap();
        assert_eq!(
            waitpid(pid, false).unwrap(),
            Some(ChildStatus::Signaled(libc::SIGKILL))
        );
        let e = waitpid(Pid::from_raw(0), true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn detached_runs_and_leaves_no_child() {
        let out = std::env::temp_dir().join(format!("stap-sys-detached-{}", std::process::id()));
        let _ = std::fs::remove_file(&out);
        spawn_detached(&spec("/bin/touch", &["touch", out.to_str().unwrap()])).unwrap();
        let t = Instant::now();
        while !out.exists() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(out.exists());
        std::fs::remove_file(&out).unwrap();
    }

    #[test]
    fn exec_spec_refuses_nul() {
        let e = ExecSpec::new(OsStr::new("/bin/true"), ["a\0b"], [""; 0]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn execve_failure_returns() {
        let e = execve(c"/nonexistent/prog", &[c"prog".into()], &[]);
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
