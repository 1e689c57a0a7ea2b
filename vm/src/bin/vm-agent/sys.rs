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

/// What wait4(2) reports about a child that ended.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    /// Exit code, or `None` when a signal ended it.
    pub code: Option<i32>,
    /// User + system CPU seconds of the child and the children it waited for.
    pub cpu_secs: f64,
    /// Largest resident set size (KiB) of the child or of any child it waited for.
    pub maxrss_kib: u64,
}

/// Blocks in wait4(2) for `pid` (a child that nothing else waits for).
pub fn wait4(pid: u32) -> io::Result<Ended> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `ru` are valid for writes for the duration of the call.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if rc == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Ended {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        cpu_secs: secs(ru.ru_utime) + secs(ru.ru_stime),
        maxrss_kib: ru.ru_maxrss.max(0) as u64,
    })
}

/// delete_module(2) of `name` (O_NONBLOCK, as rmmod).
pub fn delete_module(name: &str) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: `n` is a valid C string for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_delete_module, n.as_ptr(), libc::O_NONBLOCK) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET and
    // sched_setaffinity only touch that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// poll(2) on one descriptor; the number of ready descriptors (0 on timeout or error).
pub fn poll(pfd: &mut libc::pollfd, timeout_ms: i32) -> i32 {
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    unsafe { libc::poll(pfd, 1, timeout_ms) }.max(0)
}

/// umount(2).
pub fn umount(target: &str) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: `t` is a valid C string for the duration of the call.
    check(unsafe { libc::umount(t.as_ptr()) })
}

/// splice(2) of up to `len` bytes from `fd` into a fresh pipe (non-blocking);
/// the bytes moved.
pub fn splice_to_pipe(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    let mut p = [0 as libc::c_int; 2];
    // SAFETY: `p` has room for the two descriptors pipe2 returns.
    check(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: plain descriptors and null offsets (the files' own positions).
    let n = unsafe {
        libc::splice(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            p[1],
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    let r = if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    };
    // SAFETY: the two pipe descriptors are ours and closed once.
    unsafe {
        libc::close(p[0]);
        libc::close(p[1]);
    }
    r
}
