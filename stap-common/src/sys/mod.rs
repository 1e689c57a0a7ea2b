//! The thin system layer: every `unsafe` call of both programs lives in
//! this module (the one module of the crate allowed `unsafe_code`), each
//! with a `// SAFETY:` note. Everything returns `io::Result` (or a plain
//! value where failure cannot matter).
//!
//! Split by concern: [`creds`] (the process's ids), [`fd`] (descriptor
//! numbers, reading, writing, polling), [`fs`] (opening and inspecting
//! files), [`signals`], [`process`] (limits, CPU time, names, daemon),
//! [`spawn`] (fork/exec/wait), [`users`] (password and group databases),
//! [`syslog`](mod@syslog), [`module`] (module syscalls, kernel release, FIPS),
//! [`time`], [`ns`] (mount namespaces, `-N`) and [`tty`] (the terminal, `-i`).
//! Everything public is re-exported here, so callers write
//! `stap_common::sys::open` whatever file it lives in.
//!
//! Calls go through **rustix** where it offers the same call with the same
//! semantics (open/openat/fstat/fstatat/fstatfs/faccessat/readlinkat,
//! getxattr, read/pread/write, poll, pipe2, dup2 onto 0-2, F_GETFD/F_SETFD
//! on owned descriptors, getrlimit/setrlimit, waitpid, kill, getpid,
//! getgroups, geteuid, clock_gettime, PR_SET_NAME, PR_GET_NO_NEW_PRIVS,
//! PR_SET_DUMPABLE, sched_setaffinity, setns, isatty/tcgetattr/tcsetattr),
//! and through **nix** for what
//! rustix has no process-wide or no stable form of: getresuid/getresgid,
//! setresuid/setresgid (libc's wrappers change the ids of every thread;
//! rustix's `thread::set_thread_res_uid` changes the calling thread's
//! only, which would leave a setuid program half privileged), the signal
//! masks (`pthread_sigmask`) and `execve`.
//!
//! Hand-written with `libc` and `unsafe`, because neither crate offers
//! them or because a safe wrapper would hide the reason they are unsafe:
//!
//! * `init_module`, `delete_module` ([`module`]): no wrapper in either.
//! * `fcntl` on descriptor *numbers* the process may not own
//!   ([`fd_is_open`], [`set_cloexec`]), `close_range` ([`cloexec_from_3`],
//!   and in forked children), and the lease commands `F_SETLEASE` /
//!   `F_GETLEASE`: not in rustix (its calls take owned or borrowed
//!   descriptors, and it has no close_range or leases).
//! * `sigaction` ([`set_signal`]: nix's `SigAction` leaves part of the C
//!   struct uninitialised; ours is zeroed), `sigpending`/`sigismember`
//!   ([`pending_signals`]: in neither crate).
//! * `fork` and everything a forked child does before `execve`
//!   ([`spawn_held`], [`spawn_detached`]): only async-signal-safe libc
//!   calls on data prepared before the fork, no allocation.
//! * `daemon` ([`daemonize`], a fork that is only sound single-threaded)
//!   and `clearenv` ([`clear_environment`], not thread-safe): the caller's
//!   obligation stays visible.
//! * `getrusage` ([`cpu_time`]): not in rustix.
//! * std's `CommandExt::pre_exec` ([`enter_mount_ns_before_exec`]): the
//!   closure runs between `fork` and `exec` (rustix's setns, nothing else).
//! * `getpwuid_r`, `getgrgid_r`, `getgrnam_r` with a buffer that grows on
//!   ERANGE up to 64 MiB ([`users`]): NSS lookups, libc only.
//! * `openlog`/`syslog` ([`syslog()`]) and `localtime_r`/`strftime`
//!   ([`time`]): libc services.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;

pub mod creds;
pub mod fd;
pub mod fs;
pub mod module;
pub mod ns;
pub mod process;
pub mod signals;
pub mod spawn;
pub mod syslog;
pub mod time;
pub mod tty;
pub mod users;

pub use crate::ids::{Gid, Pid, Uid};
pub use creds::*;
pub use fd::*;
pub use fs::*;
pub use module::*;
pub use ns::*;
pub use process::*;
pub use signals::*;
pub use spawn::*;
pub use syslog::*;
pub use time::*;
pub use tty::*;
pub use users::*;

/// -1 means failure with errno set; anything else is a result.
fn cerr<T: Copy + PartialEq + From<i8>>(r: T) -> io::Result<T> {
    if r == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A C string of `s`; EINVAL when it holds a NUL byte.
fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| einval())
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

#[cfg(test)]
pub(crate) mod tests {
    /// Run the one test `name` of this test binary in a child process,
    /// with `env` added (process-wide state, such as the ids or the time
    /// zone, changes there, not in the test process); panics unless it
    /// ran and passed.
    /// For a test that must run in a child of its own: in the test
    /// process, run it there (marked by `var`) and return true; in that
    /// child, return false so the test body runs.
    pub(crate) fn ran_in_child(name: &str, var: &str) -> bool {
        if std::env::var_os(var).is_some() {
            return false;
        }
        run_test_in_child(name, &[(var, "1")]);
        true
    }

    pub(crate) fn run_test_in_child(name: &str, env: &[(&str, &str)]) {
        let me = std::env::current_exe().unwrap();
        let out = std::process::Command::new(me)
            .args([name, "--exact", "--test-threads=1"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{name} in a child with {env:?}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
