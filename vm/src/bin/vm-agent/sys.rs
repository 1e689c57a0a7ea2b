//! The few raw system calls the guest agent needs. All `unsafe` of the agent is here.

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2). `data` may be empty.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) })
}

/// Flushes file systems and powers the machine off. Never returns on success.
pub fn power_off() -> io::Error {
    // SAFETY: sync and reboot take no pointers; as PID 1 with CAP_SYS_BOOT this powers off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    io::Error::last_os_error()
}

/// setresuid(2) for the calling (single-threaded) process.
pub fn setresuid(r: u32, e: u32, s: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(r, e, s) })
}

/// The credentials a child process gets before exec.
#[derive(Clone, Debug)]
pub struct Creds {
    pub ruid: u32,
    pub euid: u32,
    pub rgid: u32,
    pub egid: u32,
    pub groups: Vec<u32>,
}

/// Makes `cmd` switch to `creds` (groups, then gids, then uids) before exec.
pub fn set_creds(cmd: &mut Command, creds: Creds) {
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (setgroups, setresgid, setresuid) on data
    // that was fully built before fork.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::setgroups(creds.groups.len(), creds.groups.as_ptr()))?;
            check(libc::setresgid(creds.rgid, creds.egid, creds.egid))?;
            check(libc::setresuid(creds.ruid, creds.euid, creds.euid))?;
            Ok(())
        });
    }
}

/// kill(2).
pub fn kill(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::kill(pid, sig) })
}

/// uname(2) release string.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// finit_module(2) of the file at `path` with `params`.
pub fn finit_module(path: &str, params: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(path)?;
    let p = cstr(params)?;
    // SAFETY: the fd is open for the duration of the call and `p` is a valid C string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), p.as_ptr(), 0) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
