//! The few raw system calls the guest agent needs. All `unsafe` of the agent is here
//! (the crate denies `unsafe_code` everywhere else); every block says why it is sound.

use std::ffi::{CStr, CString};
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

/// waitpid(2); returns the raw status.
pub fn waitpid(pid: i32, flags: i32) -> io::Result<i32> {
    let mut status = 0;
    // SAFETY: `status` is a live local.
    let rc = unsafe { libc::waitpid(pid, &mut status, flags) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(status)
    }
}

/// prctl(PR_SET_NO_NEW_PRIVS) for the calling process.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

/// renameat2(a, b, RENAME_EXCHANGE).
pub fn rename_exchange(a: &CStr, b: &CStr) -> io::Result<()> {
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    })
}

/// setrlimit(2): soft and hard limit of `res` to `v`.
pub fn setrlimit(res: libc::__rlimit_resource_t, v: u64) -> io::Result<()> {
    let l = libc::rlimit {
        rlim_cur: v,
        rlim_max: v,
    };
    // SAFETY: `l` is a live, initialised rlimit.
    check(unsafe { libc::setrlimit(res, &l) })
}

/// personality(2).
pub fn personality(p: u64) -> io::Result<()> {
    // SAFETY: integer argument only.
    let rc = unsafe { libc::personality(p as libc::c_ulong) };
    check(rc)
}

/// setxattr(2) of `name` on `path`.
pub fn setxattr(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and `value` is a live
    // buffer of the given length.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// removexattr(2) of `name` on `path`.
pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })
}

/// ptrace(2), for the attack helpers (tracers, racers, the fault injector).
pub mod ptrace {
    use std::ffi::c_void;
    use std::io;
    use std::ptr;

    fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn req(
        request: libc::c_uint,
        pid: i32,
        addr: *mut c_void,
        data: *mut c_void,
    ) -> io::Result<()> {
        // SAFETY: every caller passes either integers (as pointers without
        // provenance) or a pointer to a live buffer of the size the request
        // writes (GETREGS, SETREGS, GET_SYSCALL_INFO).
        check(unsafe { libc::ptrace(request, pid, addr, data) }).map(|_| ())
    }

    fn int(v: usize) -> *mut c_void {
        ptr::without_provenance_mut(v)
    }

    pub fn attach(pid: i32) -> io::Result<()> {
        req(libc::PTRACE_ATTACH, pid, int(0), int(0))
    }

    pub fn detach(pid: i32, sig: i32) -> io::Result<()> {
        req(
            libc::PTRACE_DETACH,
            pid,
            int(0),
            int(usize::try_from(sig).unwrap_or(0)),
        )
    }

    pub fn seize(pid: i32, options: i32) -> io::Result<()> {
        req(
            libc::PTRACE_SEIZE,
            pid,
            int(0),
            int(usize::try_from(options).unwrap_or(0)),
        )
    }

    pub fn interrupt(pid: i32) -> io::Result<()> {
        req(libc::PTRACE_INTERRUPT, pid, int(0), int(0))
    }

    /// PTRACE_SETOPTIONS.
    pub fn set_options(pid: i32, opts: i32) -> io::Result<()> {
        req(
            libc::PTRACE_SETOPTIONS,
            pid,
            ptr::null_mut(),
            int(opts as usize),
        )
    }

    /// Resume until the next system-call entry or exit.
    pub fn syscall(pid: i32, sig: i32) -> io::Result<()> {
        req(
            libc::PTRACE_SYSCALL,
            pid,
            int(0),
            int(usize::try_from(sig).unwrap_or(0)),
        )
    }

    pub fn getregs(pid: i32) -> io::Result<libc::user_regs_struct> {
        // SAFETY: an all-zero user_regs_struct (integers only) is valid.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        req(libc::PTRACE_GETREGS, pid, int(0), (&raw mut regs).cast())?;
        Ok(regs)
    }

    pub fn setregs(pid: i32, regs: &libc::user_regs_struct) -> io::Result<()> {
        let p: *const libc::user_regs_struct = regs;
        req(libc::PTRACE_SETREGS, pid, int(0), p.cast_mut().cast())
    }

    /// `op` of PTRACE_GET_SYSCALL_INFO: 1 entry, 2 exit, 0 none.
    pub fn syscall_op(pid: i32) -> io::Result<u8> {
        let mut buf = [0u8; 128];
        req(
            libc::PTRACE_GET_SYSCALL_INFO,
            pid,
            int(buf.len()),
            buf.as_mut_ptr().cast(),
        )?;
        Ok(buf[0])
    }

    /// Makes `cmd` call PTRACE_TRACEME in the child before exec.
    pub fn traceme_before_exec(cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: the closure runs between fork and exec and only makes one
        // async-signal-safe system call.
        unsafe {
            cmd.pre_exec(|| {
                req(libc::PTRACE_TRACEME, 0, int(0), int(0))?;
                Ok(())
            });
        }
    }
}

/// A pseudo-terminal (posix_openpt on /dev/ptmx, which needs devpts on /dev/pts):
/// the master and the slave, the window `cols` x `rows`.
pub fn open_pty(cols: u16, rows: u16) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt as _;
    // SAFETY: plain flags; returns a new descriptor or -1.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: grantpt and unlockpt take the master descriptor, valid here.
    check(unsafe { libc::grantpt(fd) })?;
    // SAFETY: as above.
    check(unsafe { libc::unlockpt(fd) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let rc = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: on success ptsname_r left a NUL-terminated name inside the buffer.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)?
        .into();
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize, which lives across the call.
    check(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    Ok((master, slave))
}

/// Makes `cmd` start a session of its own whose controlling terminal is its stdin
/// (a pty slave), as a login shell's would be.
pub fn controlling_tty(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (setsid, ioctl) with integer arguments.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            check(libc::ioctl(0, libc::TIOCSCTTY, 0))
        });
    }
}
