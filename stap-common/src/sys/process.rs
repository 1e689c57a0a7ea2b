//! This process: resource limits, CPU time, CPU affinity, name,
//! dumpability, thread count, the environment, and `daemon`.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use rustix::process::{DumpableBehavior, Rlimit};
use rustix::thread::CpuSet;

use super::cerr;

/// A resource limit (`Resource::Cpu`, `Resource::Nproc`, ...).
pub use rustix::process::Resource;

/// `RLIM_INFINITY` as the u64 [`get_rlimit`] and [`set_rlimit`] use.
fn from_limit(v: Option<u64>) -> u64 {
    v.unwrap_or(libc::RLIM_INFINITY)
}

fn to_limit(v: u64) -> Option<u64> {
    (v != libc::RLIM_INFINITY).then_some(v)
}

/// A resource limit's (soft, hard) values (`libc::RLIM_INFINITY` for no
/// limit).
pub fn get_rlimit(res: Resource) -> io::Result<(u64, u64)> {
    let l = rustix::process::getrlimit(res);
    Ok((from_limit(l.current), from_limit(l.maximum)))
}

/// Set a resource limit's soft and hard values (`libc::RLIM_INFINITY`
/// for no limit).
pub fn set_rlimit(res: Resource, soft: u64, hard: u64) -> io::Result<()> {
    let l = Rlimit {
        current: to_limit(soft),
        maximum: to_limit(hard),
    };
    rustix::process::setrlimit(res, l)?;
    Ok(())
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
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Ok(Duration::from_secs(ts.tv_sec.unsigned_abs())
        + Duration::from_nanos(ts.tv_nsec.unsigned_abs()))
}

/// Pin the calling thread to `cpu` (best effort; nothing for `cpu` past
/// the 1024 CPUs of a `cpu_set_t`).
pub fn pin_to_cpu(cpu: usize) {
    if cpu < CpuSet::MAX_CPU {
        let mut set = CpuSet::new();
        set.set(cpu);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
}

/// Set the process name shown by ps (`PR_SET_NAME`).
pub fn set_process_name(name: &CStr) {
    let _ = rustix::thread::set_name(name);
}

/// Make the process non-dumpable (no core with root's data, no ptrace by
/// the user while privileged).
pub fn set_dumpable(on: bool) {
    let d = if on {
        DumpableBehavior::Dumpable
    } else {
        DumpableBehavior::NotDumpable
    };
    let _ = rustix::process::set_dumpable_behavior(d);
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

/// Remove every variable from this process's environment.
///
/// Must be called while the process has one thread (at the start of
/// `main`), as `clearenv` is not thread-safe.
pub fn clear_environment() {
    // SAFETY: called at the top of main, before any thread exists, so no
    // other code reads the environment concurrently.
    unsafe { libc::clearenv() };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lowering a soft limit needs no privilege and can be undone up to
    /// the hard limit: lower, read back, restore, read back.
    #[test]
    fn rlimit_round_trip() {
        let (soft, hard) = get_rlimit(Resource::Nofile).unwrap();
        assert!(soft <= hard);
        let lower = soft.min(hard).min(4096) - 1;
        set_rlimit(Resource::Nofile, lower, hard).unwrap();
        assert_eq!(get_rlimit(Resource::Nofile).unwrap(), (lower, hard));
        set_rlimit(Resource::Nofile, soft, hard).unwrap();
        assert_eq!(get_rlimit(Resource::Nofile).unwrap(), (soft, hard));
        // A soft limit above the hard one is refused.
        if hard != libc::RLIM_INFINITY {
            let e = set_rlimit(Resource::Nofile, hard + 1, hard).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        }
    }

    #[test]
    fn infinity_maps_both_ways() {
        assert_eq!(to_limit(libc::RLIM_INFINITY), None);
        assert_eq!(to_limit(5), Some(5));
        assert_eq!(from_limit(None), libc::RLIM_INFINITY);
        assert_eq!(from_limit(Some(7)), 7);
    }

    #[test]
    fn cpu_times_grow() {
        let (p0, t0) = (cpu_time().unwrap(), thread_cpu_time().unwrap());
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let (p1, t1) = (cpu_time().unwrap(), thread_cpu_time().unwrap());
        assert!(t1 > t0, "{t0:?} {t1:?}");
        assert!(p1 > p0, "{p0:?} {p1:?}");
        // This thread's time is part of the process's.
        assert!(p1 >= t1 - t0);
    }

    #[test]
    fn threads_are_counted() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        // This test's thread and the one waiting, at least.
        assert!(thread_count().unwrap() >= 2);
        drop(tx);
        h.join().unwrap();
    }

    /// A thread of its own: pinning and naming apply to the calling
    /// thread only.
    #[test]
    fn pin_and_name_a_thread() {
        std::thread::spawn(|| {
            let allowed = rustix::thread::sched_getaffinity(None).unwrap();
            let cpu = (0..CpuSet::MAX_CPU).find(|c| allowed.is_set(*c)).unwrap();
            pin_to_cpu(cpu);
            let now = rustix::thread::sched_getaffinity(None).unwrap();
            assert_eq!(now.count(), 1);
            assert!(now.is_set(cpu));
            pin_to_cpu(CpuSet::MAX_CPU); // out of range: nothing happens
            set_process_name(c"stap-sys-test");
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            assert_eq!(comm.trim_end(), "stap-sys-test");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn daemonize_refuses_threads() {
        let _t = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(200)));
        let e = daemonize().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    }
}
