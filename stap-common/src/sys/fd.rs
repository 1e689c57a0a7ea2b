//! Descriptors: the standard three, close-on-exec, inherited numbers,
//! pipes, and reading, writing and polling on borrowed descriptors.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::pipe::PipeFlags;

use super::cerr;

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

/// Set or clear `FD_CLOEXEC` on descriptor number `fd` (EBADF when it is
/// not open).
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

/// `dup2(from, fd)` for one of the standard descriptors 0, 1 and 2
/// (EBADF for any other number); the old one, if open, is closed
/// atomically by the kernel.
fn dup2_std(from: BorrowedFd<'_>, fd: RawFd) -> io::Result<()> {
    match fd {
        0 => rustix::stdio::dup2_stdin(from)?,
        1 => rustix::stdio::dup2_stdout(from)?,
        2 => rustix::stdio::dup2_stderr(from)?,
        _ => return Err(io::Error::from_raw_os_error(libc::EBADF)),
    }
    Ok(())
}

fn open_dev_null() -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
}

/// Make sure fds 0, 1 and 2 are open (on /dev/null), so files we open
/// later never land on them.
pub fn ensure_std_fds() -> io::Result<()> {
    for fd in 0..3 {
        if !fd_is_open(fd) {
            let f = open_dev_null()?;
            if f.as_raw_fd() != fd {
                dup2_std(f.as_fd(), fd)?;
            } else {
                // It landed on the missing number: keep it open there.
                std::mem::forget(f);
            }
        }
    }
    Ok(())
}

/// Point each of `fds` (standard descriptors: 0, 1 or 2; EBADF for
/// another number) at /dev/null.
pub fn redirect_to_dev_null(fds: &[RawFd]) -> io::Result<()> {
    let null = open_dev_null()?;
    for &fd in fds {
        dup2_std(null.as_fd(), fd)?;
    }
    Ok(())
}

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

/// A close-on-exec, non-blocking pipe: (read end, write end).
pub fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(
        PipeFlags::CLOEXEC | PipeFlags::NONBLOCK,
    )?)
}

/// `read(2)` on a borrowed fd.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::io::read(fd, buf)?)
}

/// `pread(2)` on a borrowed fd (EINVAL for an offset past `off_t`).
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    if i64::try_from(offset).is_err() {
        return Err(super::einval());
    }
    Ok(rustix::io::pread(fd, buf, offset)?)
}

/// `write(2)` on a borrowed fd.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::io::write(fd, buf)?)
}

/// `timeout` in whole milliseconds (at most `i32::MAX`), as poll(2)'s
/// argument would be.
fn poll_timeout(timeout: Duration) -> Timespec {
    let ms = i64::from(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX));
    Timespec {
        tv_sec: ms / 1000,
        tv_nsec: ms % 1000 * 1_000_000,
    }
}

/// `poll` on `fds` for up to `timeout`; EINTR counts as a timeout.
fn poll(fds: &mut [PollFd<'_>], timeout: Duration) -> io::Result<usize> {
    match rustix::event::poll(fds, Some(&poll_timeout(timeout))) {
        Err(Errno::INTR) => Ok(0),
        r => Ok(r?),
    }
}

/// Wait up to `timeout` until `fd` is readable or `wake` is readable;
/// returns (fd readable, wake readable).
pub fn poll_in_or_wake(
    fd: BorrowedFd<'_>,
    wake: BorrowedFd<'_>,
    timeout: Duration,
) -> io::Result<(bool, bool)> {
    let mut p = [
        PollFd::from_borrowed_fd(fd, PollFlags::IN),
        PollFd::from_borrowed_fd(wake, PollFlags::IN),
    ];
    let ready = |p: &PollFd<'_>| {
        p.revents()
            .intersects(PollFlags::IN | PollFlags::ERR | PollFlags::HUP)
    };
    match poll(&mut p, timeout)? {
        0 => Ok((false, false)),
        _ => Ok((ready(&p[0]), ready(&p[1]))),
    }
}

/// Wait for `events` (`libc::POLLIN`, ...) on `fd` for up to `timeout`;
/// true when one of them, an error or a hang-up is reported.
pub fn poll_one(fd: BorrowedFd<'_>, events: i16, timeout: Duration) -> io::Result<bool> {
    let events = PollFlags::from_bits_retain(events as u16);
    let mut p = [PollFd::from_borrowed_fd(fd, events)];
    match poll(&mut p, timeout)? {
        0 => Ok(false),
        _ => Ok(p[0]
            .revents()
            .intersects(events | PollFlags::ERR | PollFlags::HUP)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn cloexec_round_trip_on_a_pipe() {
        let (r, _w) = pipe_nonblocking().unwrap();
        let fd = r.as_raw_fd();
        assert!(fd_is_open(fd));
        let cloexec = || rustix::io::fcntl_getfd(&r).unwrap();
        assert!(cloexec().contains(rustix::io::FdFlags::CLOEXEC));
        set_cloexec(fd, false).unwrap();
        assert!(!cloexec().contains(rustix::io::FdFlags::CLOEXEC));
        set_cloexec(fd, true).unwrap();
        assert!(cloexec().contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn closed_numbers() {
        // Far above anything a test process opens.
        assert!(!fd_is_open(1 << 20));
        let e = set_cloexec(1 << 20, true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        let e = adopt_inherited_fd(1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        let e = adopt_inherited_fd(1 << 20).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        let e = redirect_to_dev_null(&[3]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn std_fds_are_open() {
        ensure_std_fds().unwrap();
        assert!((0..3).all(fd_is_open));
    }

    #[test]
    fn pipe_is_nonblocking() {
        let (r, w) = pipe_nonblocking().unwrap();
        let mut b = [0u8; 4];
        let e = read(r.as_fd(), &mut b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(write(w.as_fd(), b"ab").unwrap(), 2);
        assert_eq!(read(r.as_fd(), &mut b).unwrap(), 2);
        assert_eq!(&b[..2], b"ab");
    }

    #[test]
    fn read_write_pread_on_a_file() {
        let path = std::env::temp_dir().join(format!("stap-sys-fd-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(write(f.as_fd(), b"hello world").unwrap(), 11);
        let mut b = [0u8; 5];
        assert_eq!(pread(f.as_fd(), &mut b, 6).unwrap(), 5);
        assert_eq!(&b, b"world");
        // The file offset is at the end: read gives nothing.
        assert_eq!(read(f.as_fd(), &mut b).unwrap(), 0);
        assert_eq!(pread(f.as_fd(), &mut b, 100).unwrap(), 0);
        let e = pread(f.as_fd(), &mut b, u64::MAX).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn poll_timeout_and_readiness() {
        let (r, w) = pipe_nonblocking().unwrap();
        let t = Instant::now();
        assert!(!poll_one(r.as_fd(), libc::POLLIN, Duration::from_millis(50)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(45));
        assert!(!poll_one(r.as_fd(), libc::POLLIN, Duration::ZERO).unwrap());
        // A pipe with room is writable at once.
        assert!(poll_one(w.as_fd(), libc::POLLOUT, Duration::ZERO).unwrap());
        write(w.as_fd(), b"x").unwrap();
        assert!(poll_one(r.as_fd(), libc::POLLIN, Duration::from_secs(5)).unwrap());

        let (r2, w2) = pipe_nonblocking().unwrap();
        assert_eq!(
            poll_in_or_wake(r2.as_fd(), r.as_fd(), Duration::from_secs(5)).unwrap(),
            (false, true)
        );
        write(w2.as_fd(), b"y").unwrap();
        assert_eq!(
            poll_in_or_wake(r2.as_fd(), r.as_fd(), Duration::ZERO).unwrap(),
            (true, true)
        );
        // A closed write end is a hang-up: readable (EOF).
        drop(w2);
        let mut b = [0u8; 1];
        read(r2.as_fd(), &mut b).unwrap();
        assert!(poll_one(r2.as_fd(), libc::POLLIN, Duration::ZERO).unwrap());
    }

    #[test]
    fn timeouts_are_whole_milliseconds() {
        let t = poll_timeout(Duration::from_micros(1500));
        assert_eq!((t.tv_sec, t.tv_nsec), (0, 1_000_000));
        let t = poll_timeout(Duration::from_secs(u64::MAX));
        assert_eq!(
            (t.tv_sec, t.tv_nsec),
            (i64::from(i32::MAX) / 1000, 647_000_000)
        );
    }
}
