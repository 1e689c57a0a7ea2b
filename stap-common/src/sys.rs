//! The thin system layer: every `unsafe` call of both programs lives here,
//! each with a `// SAFETY:` note. Everything returns `io::Result`.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// -1 means failure with errno set; anything else is a result.
fn cerr<T: Copy + PartialEq + From<i8>>(r: T) -> io::Result<T> {
    if r == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Real, effective and saved user and group ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub ruid: u32,
    pub euid: u32,
    pub suid: u32,
    pub rgid: u32,
    pub egid: u32,
    pub sgid: u32,
}

pub fn ids() -> io::Result<Ids> {
    let (mut ruid, mut euid, mut suid) = (0, 0, 0);
    let (mut rgid, mut egid, mut sgid) = (0, 0, 0);
    // SAFETY: the pointers are to live, writable locals of the right type.
    cerr(unsafe { libc::getresuid(&mut ruid, &mut euid, &mut suid) })?;
    // SAFETY: as above.
    cerr(unsafe { libc::getresgid(&mut rgid, &mut egid, &mut sgid) })?;
    Ok(Ids {
        ruid,
        euid,
        suid,
        rgid,
        egid,
        sgid,
    })
}

/// Supplementary groups of the process.
pub fn groups() -> io::Result<Vec<u32>> {
    // SAFETY: size 0 with a null pointer only asks for the count.
    let n = cerr(unsafe { libc::getgroups(0, std::ptr::null_mut()) })?;
    let mut v = vec![0 as libc::gid_t; usize::try_from(n).unwrap_or(0) + 1];
    let len =
        libc::c_int::try_from(v.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `v` has room for `len` gids.
    let n = cerr(unsafe { libc::getgroups(len, v.as_mut_ptr()) })?;
    v.truncate(usize::try_from(n).unwrap_or(0));
    Ok(v)
}

/// Permanently become `uid`/`gid` (real, effective and saved), keeping
/// the supplementary groups (they are already the user's: setuid does not
/// change them), then prove root cannot be regained.
pub fn drop_privileges_for_good(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscalls on integer arguments.
    cerr(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: as above.
    cerr(unsafe { libc::setresuid(uid, uid, uid) })?;
    let now = ids()?;
    if [now.ruid, now.euid, now.suid] != [uid; 3] || [now.rgid, now.egid, now.sgid] != [gid; 3] {
        return Err(io::Error::other("ids did not change as asked"));
    }
    if uid != 0 {
        // SAFETY: as above; this must fail.
        let back = unsafe { libc::setresuid(0, 0, 0) };
        if back == 0 {
            return Err(io::Error::other("root could be regained after the drop"));
        }
    }
    Ok(())
}

/// Set the real uid only (effective and saved stay as they are). With
/// effective root, `set_real_uid(0)` puts the process out of reach of the
/// caller's kill(2); `set_real_uid(caller)` before `init_module` makes
/// the module record the caller as the owner of its control files.
pub fn set_real_uid(uid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on integer arguments (u32::MAX is "unchanged").
    cerr(unsafe { libc::setresuid(uid, u32::MAX, u32::MAX) })?;
    let now = ids()?;
    if now.ruid != uid {
        return Err(io::Error::other("the real uid did not change as asked"));
    }
    Ok(())
}

/// Switch the effective (and so the file-system) ids to `uid`/`gid`, with
/// the saved ids left root so that [`set_effective_ids`] back to 0 works;
/// returns the previous pair. With a non-root effective uid the kernel
/// clears the effective capabilities, so a path lookup made now has only
/// the rights of `uid` (CAP_SYS_PTRACE would still follow /proc magic
/// links after a mere setfsuid). The real ids are not touched.
pub fn set_effective_ids(uid: u32, gid: u32) -> io::Result<(u32, u32)> {
    let before = ids()?;
    if uid == before.euid && gid == before.egid {
        return Ok((before.euid, before.egid));
    }
    // Become root first when going back, so the gid may change.
    if uid == 0 {
        // SAFETY: plain syscall on integer arguments (u32::MAX: unchanged).
        cerr(unsafe { libc::setresuid(u32::MAX, 0, u32::MAX) })?;
        // SAFETY: as above.
        cerr(unsafe { libc::setresgid(u32::MAX, gid, u32::MAX) })?;
    } else {
        // SAFETY: as above.
        cerr(unsafe { libc::setresgid(u32::MAX, gid, u32::MAX) })?;
        // SAFETY: as above.
        cerr(unsafe { libc::setresuid(u32::MAX, uid, u32::MAX) })?;
    }
    let now = ids()?;
    if now.euid != uid || now.egid != gid {
        return Err(io::Error::other("effective ids did not change as asked"));
    }
    Ok((before.euid, before.egid))
}

/// A resource limit's (soft, hard) values.
pub fn get_rlimit(res: libc::__rlimit_resource_t) -> io::Result<(u64, u64)> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `l` is live, writable storage for one rlimit.
    cerr(unsafe { libc::getrlimit(res, &mut l) })?;
    Ok((l.rlim_cur, l.rlim_max))
}

pub fn set_rlimit(res: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let l = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `l` is an initialised rlimit.
    cerr(unsafe { libc::setrlimit(res, &l) })?;
    Ok(())
}

/// Block every signal that can be blocked (SIGKILL and SIGSTOP cannot).
pub fn block_all_signals() -> io::Result<()> {
    // SAFETY: a zeroed sigset is then initialised by sigfillset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigfillset(&mut set) };
    // SAFETY: valid set; old mask not wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Make the signal mask exactly `sigs`.
pub fn set_signal_mask(sigs: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: a zeroed sigset is then initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for s in sigs {
        // SAFETY: as above.
        unsafe { libc::sigaddset(&mut set, *s) };
    }
    // SAFETY: valid set; old mask not wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// The `system.posix_acl_access` extended attribute of the file behind
/// `fd` (any kind of fd, `O_PATH` included, read through
/// `/proc/self/fd`); `None` when the file has no ACL or the file system
/// has none.
pub fn posix_acl(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let name = c"system.posix_acl_access";
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: both strings are NUL-terminated; `buf` is live and
        // writable for its length.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n.unsigned_abs());
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA | libc::EOPNOTSUPP) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < (1 << 20) => {
                let n = buf.len() * 4;
                buf.resize(n, 0);
            }
            _ => return Err(e),
        }
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    let c = cstring(name)?;
    // SAFETY: a zeroed stat is valid storage; fstatat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name, live `st`.
    cerr(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// Mark every descriptor above 2 close-on-exec.
pub fn cloexec_from_3() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Older kernels: walk /proc/self/fd.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        set_cloexec(fd, true).ok();
    }
    Ok(())
}

pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD on an integer fd; a bad fd gives EBADF.
    let flags = cerr(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    cerr(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) })?;
    Ok(())
}

/// Is `fd` open?
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on an integer fd has no side effect.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Make sure fds 0, 1 and 2 are open (on /dev/null), so files we open
/// later never land on them.
pub fn ensure_std_fds() -> io::Result<()> {
    for fd in 0..3 {
        if !fd_is_open(fd) {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            let raw = f.as_raw_fd();
            if raw != fd {
                // SAFETY: dup2 onto a closed descriptor number.
                cerr(unsafe { libc::dup2(raw, fd) })?;
            } else {
                std::mem::forget(f);
            }
        }
    }
    Ok(())
}

/// `openat(dir, name, flags | O_CLOEXEC)`.
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    // SAFETY: `c` is a valid NUL-terminated string; `dir` is a live fd.
    let fd =
        cerr(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, 0) })?;
    // SAFETY: openat returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `open(path, flags | O_CLOEXEC)`.
pub fn open(path: &OsStr, flags: i32) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: valid C string.
    let fd = cerr(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `faccessat(dir, name, R_OK|W_OK, 0)`: checked with the **real** ids.
pub fn access_rw_as_real_user(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid C string and live fd.
    cerr(unsafe { libc::faccessat(dir.as_raw_fd(), c.as_ptr(), libc::R_OK | libc::W_OK, 0) })?;
    Ok(())
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid value of a plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable and `fd` is live.
    cerr(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `statfs` magic of an open file.
pub fn fstatfs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    // SAFETY: zeroed statfs is a valid value of a plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable and `fd` is live.
    cerr(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st.f_type)
}

pub const DEBUGFS_MAGIC: i64 = 0x6462_6720;

/// `init_module(image, params)`.
pub fn init_module(image: &[u8], params: &str) -> io::Result<()> {
    let p = CString::new(params).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the image pointer and length describe a live slice; params is a C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len() as libc::c_ulong,
            p.as_ptr(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `delete_module(name, O_NONBLOCK)`.
pub fn delete_module(name: &str) -> io::Result<()> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C string.
    let r = unsafe { libc::syscall(libc::SYS_delete_module, c.as_ptr(), libc::O_NONBLOCK) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Kernel release (`uname -r`).
pub fn kernel_release() -> io::Result<String> {
    // Not uname(2): the UNAME26 personality, which survives a setuid exec,
    // makes it report 2.6.x. procfs shows the running kernel's release.
    let fd = open(
        OsStr::new("/proc/sys/kernel/osrelease"),
        libc::O_RDONLY | libc::O_NOFOLLOW,
    )?;
    if fstatfs_type(std::os::fd::AsFd::as_fd(&fd))? != PROC_SUPER_MAGIC {
        return Err(io::Error::other("/proc is not procfs"));
    }
    let mut buf = [0u8; 256];
    let n = read(std::os::fd::AsFd::as_fd(&fd), &mut buf)?;
    let text = std::str::from_utf8(&buf[..n])
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?
        .trim_end_matches('\n');
    if text.is_empty() || text.contains(['/', '\0']) || text.starts_with('.') {
        return Err(io::Error::other("unusable kernel release in /proc"));
    }
    Ok(text.to_owned())
}

pub const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Whether the kernel runs in FIPS mode (`/proc/sys/crypto/fips_enabled`
/// is non-zero). A missing file means no.
pub fn fips_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/crypto/fips_enabled")
        .map(|s| s.trim() != "0" && !s.trim().is_empty())
        .unwrap_or(false)
}

/// User plus system CPU time of this process so far, threads that have
/// ended included (`getrusage(RUSAGE_SELF)`, microsecond resolution).
pub fn cpu_time() -> io::Result<Duration> {
    // SAFETY: rusage is plain integers; all zeros is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage.
    cerr(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) })?;
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.unsigned_abs())
            + Duration::from_micros(t.tv_usec.unsigned_abs())
    };
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// User plus system CPU time of the calling thread so far
/// (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`).
pub fn thread_cpu_time() -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec.
    cerr(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) })?;
    Ok(Duration::from_secs(ts.tv_sec.unsigned_abs())
        + Duration::from_nanos(ts.tv_nsec.unsigned_abs()))
}

/// Wait up to `timeout` until `fd` is readable or `wake` is readable;
/// returns (fd readable, wake readable).
pub fn poll_in_or_wake(
    fd: BorrowedFd<'_>,
    wake: BorrowedFd<'_>,
    timeout: Duration,
) -> io::Result<(bool, bool)> {
    let mut p = [
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let ready = |r: i16| r & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    // SAFETY: `p` is an array of two valid pollfds for the duration of the call.
    match unsafe { libc::poll(p.as_mut_ptr(), 2, ms) } {
        -1 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok((false, false))
            } else {
                Err(e)
            }
        }
        0 => Ok((false, false)),
        _ => Ok((ready(p[0].revents), ready(p[1].revents))),
    }
}

/// Wait for `events` on `fd` for up to `timeout`.
pub fn poll_one(fd: BorrowedFd<'_>, events: i16, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut p, 1, ms) } {
        -1 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(p.revents & (events | libc::POLLERR | libc::POLLHUP) != 0),
    }
}

/// `read(2)` on a borrowed fd.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live writable slice of that length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// `pread(2)` on a borrowed fd.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `buf` is a live writable slice of that length.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// `write(2)` on a borrowed fd.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice of that length.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// Set the process name shown by ps (`PR_SET_NAME`).
pub fn set_process_name(name: &CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// `PR_GET_NO_NEW_PRIVS`.
pub fn no_new_privs() -> bool {
    // SAFETY: a query with no pointers.
    unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 }
}

/// Make the process non-dumpable (no core with root's data, no ptrace by
/// the user while privileged).
pub fn set_dumpable(on: bool) {
    // SAFETY: PR_SET_DUMPABLE with 0 or 1.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on)) };
}

/// Signal handling mode for [`set_signal`].
#[derive(Debug, Clone, Copy)]
pub enum Disposition {
    Default,
    Ignore,
    /// Run the given async-signal-safe handler.
    Handler(extern "C" fn(libc::c_int)),
}

pub fn set_signal(sig: libc::c_int, d: Disposition) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; we fill the handler and mask.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = match d {
        Disposition::Default => libc::SIG_DFL,
        Disposition::Ignore => libc::SIG_IGN,
        Disposition::Handler(f) => f as usize,
    };
    // SAFETY: sa_mask is a valid sigset_t inside `sa`.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa` is fully initialised; old action not wanted.
    cerr(unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) })?;
    Ok(())
}

/// Block (`true`) or unblock the given signals in this thread.
pub fn mask_signals(sigs: &[libc::c_int], block: bool) -> io::Result<()> {
    // SAFETY: a zeroed sigset is then initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for s in sigs {
        // SAFETY: as above.
        unsafe { libc::sigaddset(&mut set, *s) };
    }
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: valid set; old mask not wanted.
    let r = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Unblock every signal (a caller may have blocked some before exec).
pub fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: a zeroed sigset is then initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: valid set; SIG_SETMASK to the empty set.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

pub fn kill(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    cerr(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

pub fn getpid() -> i32 {
    // SAFETY: always succeeds.
    unsafe { libc::getpid() }
}

/// Pin the calling thread to `cpu` (best effort).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays in bounds for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < 1024 {
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// `strftime` of `fmt` in local time at `t` (seconds since the epoch).
pub fn strftime_local(fmt: &str, t: i64) -> io::Result<String> {
    let c = CString::new(fmt).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a zeroed tm is valid and localtime_r fills it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let tt: libc::time_t = t;
    // SAFETY: valid pointers to locals.
    if unsafe { libc::localtime_r(&tt, &mut tm) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf has buf.len() bytes; c and tm are valid.
    let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c.as_ptr(), &tm) };
    if n == 0 && !fmt.is_empty() {
        return Err(io::Error::other("strftime result empty or too long"));
    }
    buf.truncate(n);
    String::from_utf8(buf).map_err(|_| io::Error::from_raw_os_error(libc::EILSEQ))
}

/// Local time zone: (seconds east of UTC, abbreviation), from `localtime_r`.
pub fn local_timezone(t: i64) -> (i64, String) {
    // SAFETY: a zeroed tm is valid; localtime_r fills it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() || tm.tm_zone.is_null() {
        return (0, "UTC".into());
    }
    // SAFETY: tm_zone points to a NUL-terminated static string set by libc.
    let name = unsafe { CStr::from_ptr(tm.tm_zone) }
        .to_string_lossy()
        .into_owned();
    (tm.tm_gmtoff, name)
}

/// Look up a group id by name in the group database (`getgrnam_r`).
pub fn group_id(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16384];
    loop {
        // SAFETY: a zeroed group struct is valid storage for getgrnam_r.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::group = std::ptr::null_mut();
        // SAFETY: all pointers are to live locals of the documented sizes.
        let r = unsafe {
            libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut res)
        };
        if r == libc::ERANGE && grow(&mut buf) {
            continue;
        }
        return (r == 0 && !res.is_null()).then_some(grp.gr_gid);
    }
}

/// The name of group `gid`, if the group database has one.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: a zeroed group struct is valid storage for getgrgid_r.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    loop {
        let mut res: *mut libc::group = std::ptr::null_mut();
        // SAFETY: all pointers are to live locals of the documented sizes.
        let r = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut res) };
        if r == libc::ERANGE && grow(&mut buf) {
            continue;
        }
        if r != 0 || res.is_null() {
            return None;
        }
        break;
    }
    // SAFETY: gr_name points to a NUL-terminated string inside `buf`.
    Some(
        unsafe { CStr::from_ptr(grp.gr_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Double a lookup buffer after ERANGE, up to 64 MiB; false past that.
fn grow(buf: &mut Vec<libc::c_char>) -> bool {
    const MAX: usize = 64 << 20;
    if buf.len() >= MAX {
        return false;
    }
    let n = (buf.len() * 2).min(MAX);
    buf.resize(n, 0);
    true
}

/// `execv(path, argv)` with the given environment; returns only on error.
pub fn execve(path: &CStr, argv: &[CString], env: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = env.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// Set an rlimit's soft and hard values (used by tests only in practice).
pub fn current_uid_is_root() -> bool {
    // SAFETY: always succeeds.
    unsafe { libc::geteuid() == 0 }
}

/// Is user `uid` a member of group `gid` (primary group or listed member)?
pub fn user_in_group(uid: u32, gid: u32) -> bool {
    let Some((primary, name)) = with_passwd(uid, |pw| {
        // SAFETY: pw_name is a NUL-terminated string inside getpwuid_r's buffer,
        // alive for this call.
        let name = unsafe { CStr::from_ptr(pw.pw_name) };
        (pw.pw_gid, name.to_bytes().to_vec())
    }) else {
        return false;
    };
    if primary == gid {
        return true;
    }
    let mut gbuf = vec![0 as libc::c_char; 65536];
    // SAFETY: zeroed group struct is valid storage.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    loop {
        let mut gres: *mut libc::group = std::ptr::null_mut();
        // SAFETY: pointers to live locals of the documented sizes.
        let r =
            unsafe { libc::getgrgid_r(gid, &mut grp, gbuf.as_mut_ptr(), gbuf.len(), &mut gres) };
        if r == libc::ERANGE && grow(&mut gbuf) {
            continue;
        }
        if r != 0 || gres.is_null() || grp.gr_mem.is_null() {
            return false;
        }
        break;
    }
    let mut i = 0;
    loop {
        // SAFETY: gr_mem is a NULL-terminated array of C strings inside `gbuf`.
        let p = unsafe { *grp.gr_mem.add(i) };
        if p.is_null() {
            return false;
        }
        // SAFETY: each entry is a NUL-terminated string.
        if unsafe { CStr::from_ptr(p) }.to_bytes() == name.as_slice() {
            return true;
        }
        i += 1;
    }
}

/// Remove every variable from this process's environment.
///
/// Must be called while the process has one thread (at the start of
/// `main`), as `clearenv` is not thread-safe.
pub fn clear_environment() {
    // SAFETY: called at the top of main, before any thread exists, so no
    // other code reads the environment concurrently.
    unsafe { libc::clearenv() };
}

/// `readlinkat(dir, name)`.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<std::ffi::OsString> {
    use std::os::unix::ffi::OsStringExt;
    let c = cstring(name)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C string, live fd, writable buffer of that length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n.unsigned_abs());
    Ok(std::ffi::OsString::from_vec(buf))
}

/// Signals pending (blocked and raised) on this thread or process.
pub fn pending_signals(sigs: &[libc::c_int]) -> Vec<libc::c_int> {
    // SAFETY: a zeroed sigset is valid storage; sigpending fills it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable.
    if unsafe { libc::sigpending(&mut set) } != 0 {
        return Vec::new();
    }
    sigs.iter()
        // SAFETY: `set` is an initialised sigset.
        .filter(|s| unsafe { libc::sigismember(&set, **s) } == 1)
        .copied()
        .collect()
}

// ---------------------------------------------------------------------
// Processes: inherited descriptors, fork/exec, wait, daemon (stapio).
// ---------------------------------------------------------------------

/// Take ownership of a descriptor inherited across `exec` and named on the
/// command line (stapio's `-F fd`), marking it close-on-exec. Call it once
/// at start-up, before anything else could have opened that number.
/// Descriptors 0-2 are refused: they are the standard streams.
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 || !fd_is_open(fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    set_cloexec(fd, true)?;
    // SAFETY: the descriptor is open (checked above) and was inherited
    // across exec for this process to own; nothing else in this process
    // has wrapped it, as this runs once at start-up.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

/// `waitpid(pid)`: `Ok(None)` with `nohang` when it is still running.
/// EINTR is retried.
pub fn waitpid(pid: i32, nohang: bool) -> io::Result<Option<ChildStatus>> {
    let flags = if nohang { libc::WNOHANG } else { 0 };
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a writable local.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        if libc::WIFEXITED(status) {
            return Ok(Some(ChildStatus::Exited(libc::WEXITSTATUS(status))));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(Some(ChildStatus::Signaled(libc::WTERMSIG(status))));
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
    pub fn inherited_env() -> Vec<std::ffi::OsString> {
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

/// A close-on-exec, non-blocking pipe: (read end, write end).
pub fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    cerr(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Fork a child that waits, before `exec`, until the returned descriptor
/// is written to (one byte) — SystemTap's `-c` hold until the probes have
/// started. If the descriptor is closed without a write, the child exits
/// with status 1 without running anything. The child closes descriptors
/// from 3 up (but the gate) before waiting, and the gate before `exec`.
pub fn spawn_held(spec: &ExecSpec) -> io::Result<(i32, OwnedFd)> {
    let prepared = Prepared::new(spec);
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    cerr(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
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
    Ok((pid, wr))
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
    match waitpid(pid, false)? {
        Some(ChildStatus::Exited(0)) => Ok(()),
        _ => Err(io::Error::other("could not fork the command")),
    }
}

/// Number of threads of this process (from /proc/self/status).
pub fn thread_count() -> io::Result<usize> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// `daemon(0, 1)`: fork, the parent exits 0, the child starts a new
/// session and changes to `/`; the standard streams stay open. Refused
/// (EBUSY) once the process has more than one thread, as only the calling
/// thread would survive the fork.
pub fn daemonize() -> io::Result<()> {
    if thread_count()? != 1 {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    // SAFETY: the process is single-threaded (checked above), so the
    // child continues with consistent state.
    cerr(unsafe { libc::daemon(0, 1) })?;
    Ok(())
}

/// Point each of `fds` (e.g. 1 and 2) at /dev/null.
pub fn redirect_to_dev_null(fds: &[RawFd]) -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for &fd in fds {
        // SAFETY: dup2 onto a standard descriptor number; the old one, if
        // open, is closed atomically by the kernel.
        cerr(unsafe { libc::dup2(null.as_raw_fd(), fd) })?;
    }
    Ok(())
}

/// Send one line to syslog (facility AUTHPRIV, ident "staprun"), with a
/// constant format so the text is never interpreted.
pub fn syslog_authpriv(priority: libc::c_int, line: &str) {
    static IDENT: &CStr = c"staprun";
    let Ok(msg) = CString::new(line.replace('\0', " ")) else {
        return;
    };
    // SAFETY: IDENT is a static C string (openlog keeps the pointer);
    // the format is a constant "%s" and `msg` a valid C string.
    unsafe {
        libc::openlog(
            IDENT.as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_AUTHPRIV,
        );
        libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr());
    }
}

/// Send one line to syslog with the identity `ident` and the facility
/// `facility` (e.g. `libc::LOG_DAEMON`) at `priority` (e.g.
/// `libc::LOG_ERR`), with a constant format so the text is never
/// interpreted. `ident` is static because `openlog` keeps the pointer; the
/// facility is also given with each record, so it holds even where another
/// `openlog` of the process chose another default.
pub fn syslog(ident: &'static CStr, facility: libc::c_int, priority: libc::c_int, line: &str) {
    let Ok(msg) = CString::new(line.replace('\0', " ")) else {
        return;
    };
    let priority = (priority & libc::LOG_PRIMASK) | (facility & libc::LOG_FACMASK);
    // SAFETY: `ident` is a static C string (openlog keeps the pointer);
    // the format is a constant "%s" and `msg` a valid C string.
    unsafe {
        libc::openlog(
            ident.as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            facility & libc::LOG_FACMASK,
        );
        libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr());
    }
}

/// The user name of `uid`, if the password database has one.
pub fn user_name(uid: u32) -> Option<String> {
    with_passwd(uid, |pw| {
        // SAFETY: pw_name points to a NUL-terminated string inside getpwuid_r's
        // buffer, alive for this call.
        unsafe { CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned()
    })
}

/// `f` on the password-database entry of `uid` (its strings live only during
/// the call); the buffer grows on ERANGE.
fn with_passwd<T>(uid: u32, f: impl FnOnce(&libc::passwd) -> T) -> Option<T> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: a zeroed passwd struct is valid storage for getpwuid_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    loop {
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are to live locals of the documented sizes.
        let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
        if r == libc::ERANGE && grow(&mut buf) {
            continue;
        }
        if r != 0 || res.is_null() {
            return None;
        }
        return Some(f(&pw));
    }
}

/// Take a read lease on `fd` (`F_SETLEASE F_RDLCK`): fails with EAGAIN
/// while anyone has the file open for writing, and while held, an open for
/// writing blocks until the lease is released (the break is signalled with
/// SIGIO, which the caller must ignore).
pub fn take_read_lease(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on a borrowed fd.
    cerr(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) })?;
    Ok(())
}

/// Whether the read lease is still held unbroken.
pub fn read_lease_held(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: fcntl with integer arguments on a borrowed fd.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETLEASE) == libc::F_RDLCK }
}

/// Release a lease taken with [`take_read_lease`].
pub fn release_lease(fd: BorrowedFd<'_>) {
    // SAFETY: fcntl with integer arguments on a borrowed fd.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
}
