//! The attacker's tools, run inside the guest as `/init --attack NAME ...` with the
//! attacker's credentials (see [`helper`]): symlink and directory swappers, a module file
//! rewriter, a ptrace racer, a `PTRACE_TRACEME` and a `no_new_privs` exec wrapper, and (as
//! root, for fault injection) a ptrace syscall rewriter that closes stapio's control-channel
//! descriptor. Round 2's tools are in `round2/helpers.rs`.

use std::fs;
use std::io::{self};
use std::os::unix::fs::{FileExt as _, symlink};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::sys::ptrace;
use crate::harness::{self, comm, exit_code, proc_state, proc_uids, sys};

// ---- helpers run inside the guest as `/init --attack NAME ...` --------

/// Entry point of `/init --attack NAME ARGS...`; returns the exit code.
pub fn helper(args: &[String]) -> i32 {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let res = match a.as_slice() {
        ["swap-link", link, x, y, ms] => swap_link(link, x, y, ms),
        ["exchange", x, y, ms] => exchange_loop(x, y, ms),
        ["rewrite", file, x, y, ms, mode] => rewrite(file, x, y, ms, mode),
        ["ptrace-race", delay, argv @ ..] if !argv.is_empty() => return ptrace_race(delay, argv),
        ["traceme", argv @ ..] if !argv.is_empty() => return traceme(argv),
        ["nnp", argv @ ..] if !argv.is_empty() => nnp(argv),
        ["close-fd", pid, fd] => close_fd(pid, fd),
        _ => match super::round2::helper(&a) {
            Some(code) => return code,
            None => Err(format!("unknown attack helper {a:?}")),
        },
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("attack helper: {e}");
            2
        }
    }
}

fn millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("bad milliseconds {s:?}: {e}"))
}

/// Created by the agent to end a helper's loop early.
pub(crate) const STOP_FILE: &str = "/run/attack-stop";

fn stop_requested() -> bool {
    Path::new(STOP_FILE).exists()
}

/// A short pause between swaps: thousands per second are plenty to hit
/// the window, and a busy loop would starve the guest's two vCPUs.
fn pause() {
    std::thread::sleep(Duration::from_micros(100));
}

/// Retargets the symlink `link` between `x` and `y` (symlink + rename, so
/// the name always exists) until the time is up.
fn swap_link(link: &str, x: &str, y: &str, ms: &str) -> Result<(), String> {
    let end = Instant::now() + millis(ms)?;
    let tmp = format!("{link}.swap");
    let mut n = 0u64;
    while Instant::now() < end && !stop_requested() {
        for target in [y, x] {
            let _ = fs::remove_file(&tmp);
            symlink(target, &tmp).map_err(|e| format!("symlink {tmp}: {e}"))?;
            fs::rename(&tmp, link).map_err(|e| format!("rename {tmp} -> {link}: {e}"))?;
            n += 1;
            pause();
        }
    }
    println!("RESULT swaps={n}");
    Ok(())
}

/// Exchanges the two names atomically (renameat2 RENAME_EXCHANGE) until
/// the time is up; the count is always even, so they end where they began.
fn exchange_loop(x: &str, y: &str, ms: &str) -> Result<(), String> {
    let end = Instant::now() + millis(ms)?;
    let cx = std::ffi::CString::new(x).map_err(|e| e.to_string())?;
    let cy = std::ffi::CString::new(y).map_err(|e| e.to_string())?;
    let mut n = 0u64;
    while Instant::now() < end && !stop_requested() {
        for _ in 0..2 {
            sys::rename_exchange(&cx, &cy).map_err(|e| format!("renameat2 {x} {y}: {e}"))?;
            n += 1;
            pause();
        }
    }
    println!("RESULT swaps={n}");
    Ok(())
}

/// Rewrites `file` with the bytes of `x` and `y` in turn until the time is
/// up: `rename` writes a temporary file and renames it over `file`,
/// `inplace` overwrites the existing file page by page.
fn rewrite(file: &str, x: &str, y: &str, ms: &str, mode: &str) -> Result<(), String> {
    let end = Instant::now() + millis(ms)?;
    let read = |p: &str| fs::read(p).map_err(|e| format!("read {p}: {e}"));
    let images = [read(y)?, read(x)?];
    let tmp = format!("{file}.tmp");
    let mut n = 0u64;
    while Instant::now() < end && !stop_requested() {
        for img in &images {
            match mode {
                "rename" => {
                    fs::write(&tmp, img).map_err(|e| format!("write {tmp}: {e}"))?;
                    fs::rename(&tmp, file).map_err(|e| format!("rename {tmp}: {e}"))?;
                }
                "inplace" => {
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(file)
                        .map_err(|e| format!("open {file}: {e}"))?;
                    for (i, chunk) in img.chunks(4096).enumerate() {
                        f.write_all_at(chunk, (i * 4096) as u64)
                            .map_err(|e| format!("pwrite {file}: {e}"))?;
                    }
                }
                _ => return Err(format!("bad mode {mode}")),
            }
            n += 1;
            pause();
        }
    }
    println!("RESULT writes={n}");
    Ok(())
}

pub(crate) fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[derive(Default)]
struct AttachStats {
    attempts: u64,
    eperm: u64,
    esrch: u64,
    other: u64,
    attached_root: u64,
    attached_user: u64,
}

impl AttachStats {
    fn attempt(&mut self, pid: u32) {
        let Ok(p) = i32::try_from(pid) else { return };
        self.attempts += 1;
        match ptrace::attach(p) {
            Ok(()) => {
                if proc_uids(pid).contains(&0) {
                    self.attached_root += 1;
                } else {
                    self.attached_user += 1;
                }
                let _ = sys::waitpid(p, libc::__WALL);
                let _ = ptrace::detach(p, 0);
                // The attach's SIGSTOP stopped the other threads too.
                let _ = sys::kill(pid, libc::SIGCONT);
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => self.eperm += 1,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => self.esrch += 1,
            Err(_) => self.other += 1,
        }
    }
}

/// Runs `argv` (staprun) as a child and tries PTRACE_ATTACH on it for as
/// long as it is staprun; after `delay` ms (or, with `loaded`, once the
/// module is loaded) it is also stopped with SIGSTOP, attached to while
/// stopped, and continued.
fn ptrace_race(delay: &str, argv: &[&str]) -> i32 {
    // "loaded": stop it once the module is in the kernel (staprun is then
    // sending the privileged setup messages); else after DELAY ms.
    let when_loaded = delay == "loaded";
    let delay = match if when_loaded {
        Ok(Duration::ZERO)
    } else {
        millis(delay)
    } {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let mut child = match Command::new(argv[0]).args(&argv[1..]).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spawn {}: {e}", argv[0]);
            return 2;
        }
    };
    let pid = child.id();
    let t0 = Instant::now();
    let mut st = AttachStats::default();
    let mut stopped_in = "never".to_owned();
    let mut stopped = false;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        let c = comm(pid);
        if c == "stapio" || t0.elapsed() > Duration::from_secs(30) {
            break None;
        }
        if c != "staprun" {
            continue; // still the forked helper before exec
        }
        if !stopped && t0.elapsed() >= delay && (!when_loaded || harness::is_loaded("pmod")) {
            stopped = true;
            let _ = sys::kill(pid, libc::SIGSTOP);
            harness::wait_until(Duration::from_secs(2), || proc_state(pid) == 'T');
            stopped_in = format!(
                "state={}:uids={}:pmod_loaded={}",
                proc_state(pid),
                join(&proc_uids(pid)),
                harness::is_loaded("pmod")
            );
            for _ in 0..20 {
                st.attempt(pid);
            }
            let _ = sys::kill(pid, libc::SIGCONT);
        }
        st.attempt(pid);
    };
    let status = status.or_else(|| child.wait().ok());
    let code = status.map_or(255, exit_code);
    println!(
        "RESULT attempts={} eperm={} esrch={} other={} attached_root={} attached_user={} code={code} stopped_in={stopped_in}",
        st.attempts, st.eperm, st.esrch, st.other, st.attached_root, st.attached_user
    );
    code
}

/// PTRACE_TRACEME, then exec `argv`: the kernel must not honour the
/// setuid bit of a traced exec by an unprivileged tracer.
fn traceme(argv: &[&str]) -> i32 {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    ptrace::traceme_before_exec(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spawn {}: {e}", argv[0]);
            return 2;
        }
    };
    let pid = child.id();
    let p = i32::try_from(pid).unwrap_or(-1);
    let stop = sys::waitpid(p, libc::__WALL);
    let uids = proc_uids(pid);
    let sig = stop.as_ref().map_or(0, |s| {
        if libc::WIFSTOPPED(*s) {
            libc::WSTOPSIG(*s)
        } else {
            0
        }
    });
    let _ = ptrace::detach(p, 0);
    let code = child.wait().map_or(255, exit_code);
    println!(
        "RESULT stopsig={sig} uids_at_exec={} code={code}",
        join(&uids)
    );
    code
}

fn nnp(argv: &[&str]) -> Result<(), String> {
    sys::set_no_new_privs().map_err(|e| format!("prctl: {e}"))?;
    let e = Command::new(argv[0]).args(&argv[1..]).exec();
    Err(format!("exec {}: {e}", argv[0]))
}

/// As root: stop the main thread of `pid` at its next blocking system
/// call and replace that call with `close(fd)` (the call then returns
/// EINTR), so the process loses its descriptor `fd` mid-run.
fn close_fd(pid: &str, fd: &str) -> Result<(), String> {
    let pid: i32 = pid.parse().map_err(|e| format!("pid: {e}"))?;
    let fd: u64 = fd.parse().map_err(|e| format!("fd: {e}"))?;
    let e = |what: &'static str| move |err: io::Error| format!("{what}: {err}");
    const WANTED: &[i64] = &[
        libc::SYS_read,
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_select,
        libc::SYS_pselect6,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
    ];
    ptrace::seize(pid, libc::PTRACE_O_TRACESYSGOOD).map_err(e("PTRACE_SEIZE"))?;
    ptrace::interrupt(pid).map_err(e("PTRACE_INTERRUPT"))?;
    sys::waitpid(pid, libc::__WALL).map_err(e("waitpid"))?;
    let mut sig = 0;
    let mut seen = Vec::new();
    for _ in 0..20_000 {
        ptrace::syscall(pid, sig).map_err(e("PTRACE_SYSCALL"))?;
        sig = 0;
        let st = sys::waitpid(pid, libc::__WALL).map_err(e("waitpid"))?;
        if !libc::WIFSTOPPED(st) {
            return Err(format!("tracee ended (status {st:#x})"));
        }
        let s = libc::WSTOPSIG(st);
        if s == (libc::SIGTRAP | 0x80) {
            if ptrace::syscall_op(pid).map_err(e("GET_SYSCALL_INFO"))? != 1 {
                continue;
            }
            let mut regs = ptrace::getregs(pid).map_err(e("GETREGS"))?;
            let nr = regs.orig_rax as i64;
            if !WANTED.contains(&nr) {
                if seen.len() < 20 {
                    seen.push(nr);
                }
                continue;
            }
            regs.orig_rax = libc::SYS_close as u64;
            regs.rdi = fd;
            ptrace::setregs(pid, &regs).map_err(e("SETREGS"))?;
            ptrace::syscall(pid, 0).map_err(e("PTRACE_SYSCALL"))?;
            sys::waitpid(pid, libc::__WALL).map_err(e("waitpid"))?;
            let mut after = ptrace::getregs(pid).map_err(e("GETREGS"))?;
            let rc = after.rax as i64;
            after.rax = (-i64::from(libc::EINTR)) as u64;
            ptrace::setregs(pid, &after).map_err(e("SETREGS"))?;
            ptrace::detach(pid, 0).map_err(e("PTRACE_DETACH"))?;
            println!("RESULT replaced_syscall={nr} close_rc={rc} skipped={seen:?}");
            return if rc == 0 {
                Ok(())
            } else {
                Err(format!("close({fd}) in the tracee returned {rc}"))
            };
        }
        if (st >> 16) != libc::PTRACE_EVENT_STOP {
            sig = s; // a signal for the tracee: pass it on
        }
    }
    let _ = ptrace::detach(pid, 0);
    Err(format!("no blocking system call seen; saw {seen:?}"))
}
