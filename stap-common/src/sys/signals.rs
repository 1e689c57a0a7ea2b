//! Signal dispositions, this thread's signal mask, pending signals, and
//! sending a signal. Signals are `libc::SIG*` numbers; the masks hold the
//! standard signals 1-31 (nix's `Signal`), which are the only ones these
//! programs name.

use std::io;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use super::cerr;
use crate::ids::Pid;

/// Signal handling mode for [`set_signal`].
#[derive(Debug, Clone, Copy)]
pub enum Disposition {
    Default,
    Ignore,
    /// Run the given async-signal-safe handler.
    Handler(extern "C" fn(libc::c_int)),
}

/// Install `d` for `sig`, with `SA_RESTART` and nothing else blocked while
/// a handler runs.
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

/// The set of `sigs` (numbers that are not a standard signal are left out).
fn sigset(sigs: &[libc::c_int]) -> SigSet {
    sigs.iter()
        .filter_map(|s| Signal::try_from(*s).ok())
        .collect()
}

/// `pthread_sigmask(how, set)`, the old mask not wanted.
fn sigmask(how: SigmaskHow, set: &SigSet) -> io::Result<()> {
    pthread_sigmask(how, Some(set), None)?;
    Ok(())
}

/// Block every signal that can be blocked (SIGKILL and SIGSTOP cannot).
pub fn block_all_signals() -> io::Result<()> {
    sigmask(SigmaskHow::SIG_SETMASK, &SigSet::all())
}

/// Make the signal mask exactly `sigs`.
pub fn set_signal_mask(sigs: &[libc::c_int]) -> io::Result<()> {
    sigmask(SigmaskHow::SIG_SETMASK, &sigset(sigs))
}

/// Block (`true`) or unblock the given signals in this thread.
pub fn mask_signals(sigs: &[libc::c_int], block: bool) -> io::Result<()> {
    let how = if block {
        SigmaskHow::SIG_BLOCK
    } else {
        SigmaskHow::SIG_UNBLOCK
    };
    sigmask(how, &sigset(sigs))
}

/// Unblock every signal (a caller may have blocked some before exec).
pub fn unblock_all_signals() -> io::Result<()> {
    sigmask(SigmaskHow::SIG_SETMASK, &SigSet::empty())
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

/// Send `sig` to process `pid` (signal 0: only check that it exists and
/// may be signalled). Only a process (a positive pid; not a group, not -1)
/// and a named signal are accepted: EINVAL otherwise.
pub fn kill(pid: Pid, sig: libc::c_int) -> io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid.as_raw().max(0)).ok_or_else(super::einval)?;
    if sig == 0 {
        return Ok(rustix::process::test_kill_process(pid)?);
    }
    let sig = rustix::process::Signal::from_named_raw(sig).ok_or_else(super::einval)?;
    rustix::process::kill_process(pid, sig)?;
    Ok(())
}

/// This process's id.
pub fn getpid() -> Pid {
    Pid::from_raw(rustix::process::getpid().as_raw_nonzero().get())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread's current mask.
    fn current_mask() -> SigSet {
        SigSet::thread_get_mask().unwrap()
    }

    /// Runs on a thread of its own: masks are per thread, and the test
    /// harness's other threads keep theirs.
    #[test]
    fn masks_and_pending() {
        std::thread::spawn(|| {
            set_signal(libc::SIGUSR1, Disposition::Ignore).unwrap();
            unblock_all_signals().unwrap();
            assert!(!current_mask().contains(Signal::SIGUSR1));

            mask_signals(&[libc::SIGUSR1, libc::SIGUSR2], true).unwrap();
            assert!(current_mask().contains(Signal::SIGUSR1));
            assert!(current_mask().contains(Signal::SIGUSR2));
            assert!(!current_mask().contains(Signal::SIGTERM));
            // Ignored and blocked: raise() leaves it pending.
            assert_eq!(pending_signals(&[libc::SIGUSR1]), Vec::<i32>::new());
            nix::sys::signal::raise(Signal::SIGUSR1).unwrap();
            assert_eq!(
                pending_signals(&[libc::SIGUSR1, libc::SIGUSR2]),
                vec![libc::SIGUSR1]
            );
            // Unblocked with the disposition "ignore", it is discarded.
            mask_signals(&[libc::SIGUSR1], false).unwrap();
            assert!(!current_mask().contains(Signal::SIGUSR1));
            assert!(current_mask().contains(Signal::SIGUSR2));
            assert_eq!(pending_signals(&[libc::SIGUSR1]), Vec::<i32>::new());

            set_signal_mask(&[libc::SIGTERM, libc::SIGHUP]).unwrap();
            let m = current_mask();
            assert!(m.contains(Signal::SIGTERM) && m.contains(Signal::SIGHUP));
            assert!(!m.contains(Signal::SIGUSR2));

            block_all_signals().unwrap();
            let m = current_mask();
            assert!(m.contains(Signal::SIGINT) && m.contains(Signal::SIGCHLD));
            unblock_all_signals().unwrap();
            assert_eq!(current_mask(), SigSet::empty());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn kill_checks_its_arguments() {
        // Groups and unnamed signals are refused before the kernel.
        let me = getpid();
        assert_eq!(me.as_raw(), std::process::id() as i32);
        let e = kill(Pid::from_raw(0), libc::SIGTERM).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let e = kill(Pid::from_raw(-1), libc::SIGTERM).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let e = kill(me, libc::SIGRTMIN() + 1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        kill(me, 0).unwrap();
        let e = kill(Pid::from_raw(i32::MAX), 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn kill_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        kill(Pid::from_raw(child.id() as i32), libc::SIGTERM).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    }
}
