//! Attack scenarios (issue 5): each one tries, as an unprivileged user,
//! to make the setuid staprun (or stapio) do what it must not, and checks
//! that the attempt fails, that nothing ran as root that should not, and
//! that no module was loaded or left loaded.
//!
//! Tools the attacks need inside the guest are subcommands of the agent
//! binary itself (`/init --attack NAME ...`, see [`helper`]), run with the
//! attacker's credentials: symlink and directory swappers, a module file
//! rewriter, a ptrace racer, a `PTRACE_TRACEME` and a `no_new_privs`
//! exec wrapper, and (as root, for fault injection) a ptrace syscall
//! rewriter that closes stapio's control-channel descriptor.
//!
//! `docs/attacks.md` lists every attack with its observed result.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read as _};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _, PermissionsExt as _, chown, symlink};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::scenarios::{FIXTURES, Scenario, blessed_dir, insmod_as, prepare_blessed_dir, rmmod};
use crate::sys;
use crate::util::{
    self, ALICE, BOB, Bg, CAROL, Out, ROOT, Reporter, SAM, STAPDEV, STAPUSR, User, command_as, run,
};

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("attack_cve_2009_0784", cve_2009_0784),
    ("attack_cve_2010_4170", cve_2010_4170),
    ("attack_cve_2010_4171", cve_2010_4171),
    ("attack_cve_2011_2502", cve_2011_2502),
    ("attack_cve_2011_2503", cve_2011_2503),
    ("attack_obs_weaknesses", obs_weaknesses),
    ("attack_module_paths", module_paths),
    ("attack_process_state", process_state),
    ("attack_faults", faults),
];

pub(crate) const STAPRUN: &str = "/usr/bin/staprun";
pub(crate) const STAPIO: &str = "/usr/libexec/staprun/stapio";
pub(crate) const HELLO: &str = "pmod: hello from begin";
pub(crate) const END: &str = "pmod: end";
pub(crate) const RUN: Duration = Duration::from_secs(60);
/// The module an attacker wants loaded: a fixture with a name of its own.
const EVIL: &str = "fixture_b";
/// Kernel log texts that mean the kernel was hurt.
const KERNEL_TROUBLE: &[&str] = &[
    "Oops",
    "BUG:",
    "general protection fault",
    "WARNING: CPU:",
    "Kernel panic",
    "soft lockup",
];

// ---- raw system calls (all `unsafe` of this file) ----------------------

pub(crate) mod raw {
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

    pub fn set_no_new_privs() -> io::Result<()> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        check(libc::c_long::from(rc)).map(|_| ())
    }

    /// renameat2(a, b, RENAME_EXCHANGE).
    pub fn exchange(a: &std::ffi::CStr, b: &std::ffi::CStr) -> io::Result<()> {
        // SAFETY: both are valid NUL-terminated paths that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        check(libc::c_long::from(rc)).map(|_| ())
    }
}

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
        _ => match crate::attacks_r2::helper(&a) {
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
const STOP_FILE: &str = "/run/attack-stop";

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
            raw::exchange(&cx, &cy).map_err(|e| format!("renameat2 {x} {y}: {e}"))?;
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

pub(crate) fn proc_uids(pid: u32) -> Vec<u32> {
    util::proc_status(pid)
        .into_iter()
        .find(|(k, _)| k == "Uid")
        .map(|(_, v)| {
            v.split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

pub(crate) fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn proc_state(pid: u32) -> char {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .unwrap_or('?')
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
        match raw::attach(p) {
            Ok(()) => {
                if proc_uids(pid).contains(&0) {
                    self.attached_root += 1;
                } else {
                    self.attached_user += 1;
                }
                let _ = raw::waitpid(p, libc::__WALL);
                let _ = raw::detach(p, 0);
                // The attach's SIGSTOP stopped the other threads too.
                let _ = sys::kill(pid, libc::SIGCONT);
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => self.eperm += 1,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => self.esrch += 1,
            Err(_) => self.other += 1,
        }
    }
}

pub(crate) fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
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
        if !stopped && t0.elapsed() >= delay && (!when_loaded || util::is_loaded("pmod")) {
            stopped = true;
            let _ = sys::kill(pid, libc::SIGSTOP);
            util::wait_until(Duration::from_secs(2), || proc_state(pid) == 'T');
            stopped_in = format!(
                "state={}:uids={}:pmod_loaded={}",
                proc_state(pid),
                join(&proc_uids(pid)),
                util::is_loaded("pmod")
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
    raw::traceme_before_exec(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spawn {}: {e}", argv[0]);
            return 2;
        }
    };
    let pid = child.id();
    let p = i32::try_from(pid).unwrap_or(-1);
    let stop = raw::waitpid(p, libc::__WALL);
    let uids = proc_uids(pid);
    let sig = stop.as_ref().map_or(0, |s| {
        if libc::WIFSTOPPED(*s) {
            libc::WSTOPSIG(*s)
        } else {
            0
        }
    });
    let _ = raw::detach(p, 0);
    let code = child.wait().map_or(255, exit_code);
    println!(
        "RESULT stopsig={sig} uids_at_exec={} code={code}",
        join(&uids)
    );
    code
}

fn nnp(argv: &[&str]) -> Result<(), String> {
    raw::set_no_new_privs().map_err(|e| format!("prctl: {e}"))?;
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
    raw::seize(pid, libc::PTRACE_O_TRACESYSGOOD).map_err(e("PTRACE_SEIZE"))?;
    raw::interrupt(pid).map_err(e("PTRACE_INTERRUPT"))?;
    raw::waitpid(pid, libc::__WALL).map_err(e("waitpid"))?;
    let mut sig = 0;
    let mut seen = Vec::new();
    for _ in 0..20_000 {
        raw::syscall(pid, sig).map_err(e("PTRACE_SYSCALL"))?;
        sig = 0;
        let st = raw::waitpid(pid, libc::__WALL).map_err(e("waitpid"))?;
        if !libc::WIFSTOPPED(st) {
            return Err(format!("tracee ended (status {st:#x})"));
        }
        let s = libc::WSTOPSIG(st);
        if s == (libc::SIGTRAP | 0x80) {
            if raw::syscall_op(pid).map_err(e("GET_SYSCALL_INFO"))? != 1 {
                continue;
            }
            let mut regs = raw::getregs(pid).map_err(e("GETREGS"))?;
            let nr = regs.orig_rax as i64;
            if !WANTED.contains(&nr) {
                if seen.len() < 20 {
                    seen.push(nr);
                }
                continue;
            }
            regs.orig_rax = libc::SYS_close as u64;
            regs.rdi = fd;
            raw::setregs(pid, &regs).map_err(e("SETREGS"))?;
            raw::syscall(pid, 0).map_err(e("PTRACE_SYSCALL"))?;
            raw::waitpid(pid, libc::__WALL).map_err(e("waitpid"))?;
            let mut after = raw::getregs(pid).map_err(e("GETREGS"))?;
            let rc = after.rax as i64;
            after.rax = (-i64::from(libc::EINTR)) as u64;
            raw::setregs(pid, &after).map_err(e("SETREGS"))?;
            raw::detach(pid, 0).map_err(e("PTRACE_DETACH"))?;
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
    let _ = raw::detach(pid, 0);
    Err(format!("no blocking system call seen; saw {seen:?}"))
}

// ---- infrastructure ----------------------------------------------------

pub(crate) fn installed(r: &mut Reporter) -> bool {
    let a = r.check_eq(
        "staprun_installed_04110_root_stapusr",
        util::stat(STAPRUN),
        Some((0o4110, 0, STAPUSR)),
    );
    let b = r.check_eq(
        "stapio_installed_0755",
        util::stat(STAPIO),
        Some((0o755, 0, 0)),
    );
    a && b
}

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    fs::read(Path::new(FIXTURES).join(format!("{name}.ko"))).unwrap_or_default()
}

pub(crate) fn put(path: impl AsRef<Path>, bytes: &[u8], mode: u32, owner: &User) -> io::Result<()> {
    let path = path.as_ref();
    fs::write(path, bytes)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    chown(path, Some(owner.uid), Some(owner.gid))
}

pub(crate) fn mkdir(path: impl AsRef<Path>, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    let path = path.as_ref();
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    chown(path, Some(uid), Some(gid))
}

/// Root-owned 0644 copy of fixture `name` in the blessed directory.
pub(crate) fn publish(name: &str) -> PathBuf {
    let p = blessed_dir().join(format!("{name}.ko"));
    let _ = put(&p, &fixture(name), 0o644, &ROOT);
    p
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn staprun_os(
    user: &User,
    args: &[&OsStr],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Out {
    let mut cmd = command_as(user, &[STAPRUN], env);
    cmd.args(args);
    run(cmd, timeout)
}

pub(crate) fn sr_env(user: &User, args: &[&str], env: &[(&str, &str)]) -> Out {
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    staprun_os(user, &a, env, RUN)
}

pub(crate) fn sr(user: &User, args: &[&str]) -> Out {
    sr_env(user, args, &[])
}

/// `/bin/sh -c SCRIPT` as `user`.
pub(crate) fn sh(user: &User, script: &str) -> Out {
    run(command_as(user, &["/bin/sh", "-c", script], &[]), RUN)
}

pub(crate) fn helper_cmd(user: &User, args: &[&str]) -> Command {
    let mut argv = vec!["/init", "--attack"];
    argv.extend_from_slice(args);
    command_as(user, &argv, &[])
}

pub(crate) fn helper_run(user: &User, args: &[&str]) -> Out {
    run(helper_cmd(user, args), RUN)
}

/// `key=value` from the helper's `RESULT ...` line.
pub(crate) fn result_field(out: &Out, key: &str) -> Option<String> {
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("RESULT "))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

pub(crate) fn result_num(out: &Out, key: &str) -> u64 {
    result_field(out, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A complete run of the fixture: exit 0, begin and end output.
pub(crate) fn full_run(out: &Out) -> bool {
    out.code == Some(0) && out.stdout.contains(HELLO) && out.stdout.contains(END)
}

/// A clean refusal: a non-zero exit (not a signal, not a hang), an error
/// message, and no script output.
pub(crate) fn refused(out: &Out) -> bool {
    out.code.is_some_and(|c| c != 0)
        && !out.timed_out
        && !out.stdout.contains(HELLO)
        && !out.stderr.trim().is_empty()
        && !out.stderr.contains("panicked")
}

pub(crate) fn fixtures_loaded() -> Vec<String> {
    util::loaded_modules()
        .into_iter()
        .filter(|m| crate::FIXTURE_MODULES.contains(&m.as_str()))
        .collect()
}

/// No fixture module (but those in `keep`) is loaded; unloads any found.
pub(crate) fn check_nothing_loaded(r: &mut Reporter, tag: &str, keep: &[&str]) -> bool {
    let left: Vec<String> = fixtures_loaded()
        .into_iter()
        .filter(|m| !keep.contains(&m.as_str()))
        .collect();
    let ok = r.check(
        &format!("{tag}_nothing_left_loaded"),
        left.is_empty(),
        format!("loaded: {left:?}"),
    );
    for m in left {
        let _ = rmmod(&m);
    }
    ok
}

pub(crate) fn unload_all_fixtures() {
    for m in fixtures_loaded() {
        let _ = rmmod(&m);
    }
}

/// Processes with uid 0 in any of real/effective/saved that are not
/// expected: the setuid staprun itself, kernel threads, the agent and the
/// agent's own children before they change credentials (`init`) or its
/// cleanup (`rmmod`).
fn unexpected_root_processes() -> Vec<String> {
    let mut v = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid <= 2 {
            continue;
        }
        let st = util::proc_status(pid);
        let get = |k: &str| {
            st.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let ppid: u32 = get("PPid").parse().unwrap_or(u32::MAX);
        let name = get("Name");
        let uids: Vec<u32> = get("Uid")
            .split_whitespace()
            .take(3)
            .filter_map(|s| s.parse().ok())
            .collect();
        if !uids.contains(&0) || ppid == 0 || ppid == 2 || name == "staprun" {
            continue;
        }
        if ppid == 1 && (name == "init" || name == "rmmod") {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        v.push(format!(
            "pid {pid} ppid {ppid} {name} uids {uids:?}: {}",
            cmdline.trim()
        ));
    }
    v
}

#[derive(Debug, Default)]
struct WatchReport {
    samples: u64,
    /// Forbidden modules seen in /proc/modules or /proc/systemtap.
    modules: Vec<String>,
    /// Unexpected root processes seen.
    root: Vec<String>,
}

/// Samples /proc every few ms in a thread while an attack runs.
struct Watch {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<WatchReport>>,
}

impl Watch {
    fn start(forbidden: &'static [&'static str], root: bool) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut rep = WatchReport::default();
            while !flag.load(Ordering::Relaxed) {
                rep.samples += 1;
                for m in util::loaded_modules() {
                    if forbidden.contains(&m.as_str()) && !rep.modules.contains(&m) {
                        rep.modules.push(m);
                    }
                }
                for m in forbidden {
                    let s = format!("/proc/systemtap/{m}");
                    if Path::new(&s).exists() && !rep.modules.contains(&s) {
                        rep.modules.push(s);
                    }
                }
                if root {
                    for p in unexpected_root_processes() {
                        if rep.root.len() < 20 && !rep.root.contains(&p) {
                            rep.root.push(p);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            rep
        });
        Watch {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// Every syslog datagram (staprun's audit trail), from a /dev/log socket
/// the agent binds once per boot.
static SYSLOG: OnceLock<Option<Arc<Mutex<Vec<String>>>>> = OnceLock::new();

pub(crate) fn syslog_start(r: &mut Reporter) -> bool {
    let got = SYSLOG.get_or_init(|| {
        let _ = fs::remove_file("/dev/log");
        let sock = UnixDatagram::bind("/dev/log").ok()?;
        let _ = fs::set_permissions("/dev/log", fs::Permissions::from_mode(0o666));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16384];
            while let Ok(n) = sock.recv(&mut buf) {
                if let Ok(mut v) = sink.lock() {
                    v.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        Some(lines)
    });
    r.check("syslog_listener", got.is_some(), "/dev/log bound")
}

pub(crate) fn syslog_lines() -> Vec<String> {
    // Datagrams already sent are queued; give the reader a moment.
    std::thread::sleep(Duration::from_millis(50));
    SYSLOG
        .get()
        .and_then(Option::as_ref)
        .and_then(|l| l.lock().ok().map(|v| v.clone()))
        .unwrap_or_default()
}

/// (module, sha256) of every `LOAD` audit line from index `from` on.
fn audit_loads(from: usize) -> Vec<(String, String)> {
    syslog_lines()
        .iter()
        .skip(from)
        .filter(|l| l.contains(": LOAD "))
        .map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .unwrap_or("")
                    .to_owned()
            };
            (field("module="), field("sha256="))
        })
        .collect()
}

/// A copy of a module image whose name (the `name` field of `struct
/// module` in `.gnu.linkonce.this_module`, offset 24 on x86_64) is `new`.
fn renamed(image: &[u8], new: &str) -> Option<Vec<u8>> {
    const FIELD: usize = 24;
    const LEN: usize = 56;
    let num = |o: usize, n: usize| -> Option<usize> {
        let b = image.get(o..o + n)?;
        usize::try_from(b.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x))).ok()
    };
    if image.get(0..6) != Some(b"\x7fELF\x02\x01") || new.len() >= LEN {
        return None;
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (num(0x28, 8)?, num(0x3a, 2)?, num(0x3c, 2)?, num(0x3e, 2)?);
    let sec = |i: usize| {
        let h = shoff + i * shentsize;
        Some((num(h, 4)?, num(h + 0x18, 8)?, num(h + 0x20, 8)?))
    };
    let (_, stroff, _) = sec(shstrndx)?;
    for i in 0..shnum {
        let (name, off, size) = sec(i)?;
        let n = image.get(stroff + name..)?;
        let end = n.iter().position(|b| *b == 0)?;
        if &n[..end] != b".gnu.linkonce.this_module" || size < FIELD + LEN {
            continue;
        }
        let mut out = image.to_vec();
        let field = out.get_mut(off + FIELD..off + FIELD + LEN)?;
        field.fill(0);
        field[..new.len()].copy_from_slice(new.as_bytes());
        return Some(out);
    }
    None
}

/// A small xorshift generator (no crates in the guest); the seed is logged.
struct Rng(u64);

impl Rng {
    fn new(r: &mut Reporter) -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        r.log(&format!("random seed {seed}"));
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

pub(crate) fn log_out(r: &mut Reporter, prompt: &str, out: &Out) {
    r.log(&format!(
        "{prompt} -> code {:?} signal {:?}{}",
        out.code,
        out.signal,
        if out.timed_out { " TIMED OUT" } else { "" }
    ));
    for l in out.stderr.lines().take(6) {
        r.log(&format!("  [stderr] {l}"));
    }
}

fn stapio_pids() -> Vec<u32> {
    util::pids_named("stapio")
}

fn read_sysctl(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("<{e}>"))
}

fn debugfs_mounted() -> bool {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("debugfs"))
}

/// Oops-like lines in the kernel log.
fn kernel_trouble() -> Vec<String> {
    let out = run(command_as(&ROOT, &["/bin/dmesg"], &[]), RUN);
    out.stdout
        .lines()
        .filter(|l| KERNEL_TROUBLE.iter().any(|m| l.contains(m)))
        .map(str::to_owned)
        .collect()
}

// ---- race tallies ------------------------------------------------------

/// Outcomes of repeated staprun runs during a race.
#[derive(Debug, Default)]
struct Tally {
    attempts: u64,
    ran: u64,
    refused: u64,
    /// Runs that were neither a complete run nor a clean refusal.
    odd: Vec<String>,
    /// The distinct refusal messages.
    reasons: Vec<String>,
}

/// Runs staprun `args` as `user` over and over, for at least RACE and
/// RACE_ATTEMPTS attempts (with `-T 10`, so that a complete run ends
/// quickly), then asks the attacker's helper to stop. With `forbid_evil`, output naming
/// the evil module also counts as odd.
fn hammer(user: &User, args: &[&str], forbid_evil: bool) -> Tally {
    let mut t = Tally::default();
    let t0 = Instant::now();
    let mut argv = vec!["-T", "10"];
    argv.extend_from_slice(args);
    while t0.elapsed() < RACE_MAX && (t0.elapsed() < RACE || t.attempts < RACE_ATTEMPTS) {
        let out = sr(user, &argv);
        t.attempts += 1;
        let evil = forbid_evil && (out.stdout.contains(EVIL) || out.stderr.contains(EVIL));
        if full_run(&out) && !evil {
            t.ran += 1;
        } else if refused(&out) && !evil {
            t.refused += 1;
            let reason = out.stderr.lines().next().unwrap_or("").to_owned();
            if t.reasons.len() < 5 && !t.reasons.contains(&reason) {
                t.reasons.push(reason);
            }
        } else if t.odd.len() < 5 {
            t.odd.push(out.summary());
        }
        let left = fixtures_loaded();
        if !left.is_empty() {
            if t.odd.len() < 5 {
                t.odd.push(format!("left loaded after a run: {left:?}"));
            }
            unload_all_fixtures();
        }
    }
    // The attacker's helper (swapper, rewriter) stops too.
    let _ = fs::write(STOP_FILE, "");
    t
}

/// A race runs at least this long and this many attempts, at most RACE_MAX.
const RACE: Duration = Duration::from_secs(5);
const RACE_ATTEMPTS: u64 = 8;
const RACE_MAX: Duration = Duration::from_secs(20);

// ---- CVE-2009-0784: check/load race on a path the user controls --------

fn cve_2009_0784(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    syslog_start(r);
    let good = publish("pmod");
    let good_sha = sha256(&fixture("pmod"));
    let race = Path::new("/home/alice/race");
    let _ = fs::remove_dir_all(race);
    let evil_dir = race.join("evil");
    let swap_dir = race.join("x");
    let a = (ALICE.uid, ALICE.gid);
    let setup = mkdir(race, 0o755, a.0, a.1)
        .and_then(|()| mkdir(&evil_dir, 0o755, a.0, a.1))
        .and_then(|()| mkdir(&swap_dir, 0o755, a.0, a.1))
        .and_then(|()| put(evil_dir.join("pmod.ko"), &fixture(EVIL), 0o644, &ALICE))
        .and_then(|()| put(swap_dir.join("pmod.ko"), &fixture(EVIL), 0o644, &ALICE))
        .and_then(|()| symlink(blessed_dir(), race.join("d")))
        .and_then(|()| symlink(&good, race.join("pmod.ko")))
        .and_then(|()| std::os::unix::fs::lchown(race.join("d"), Some(a.0), Some(a.1)))
        .and_then(|()| std::os::unix::fs::lchown(race.join("pmod.ko"), Some(a.0), Some(a.1)));
    if !r.check("race_setup", setup.is_ok(), format!("{setup:?}")) {
        return;
    }
    let s = |p: &Path| p.display().to_string();
    let ms = RACE_MAX.as_millis().to_string();
    let variants: [(&str, Vec<String>, String); 3] = [
        // A symlink alice owns, retargeted between the blessed module and hers.
        (
            "file_symlink",
            vec![
                "swap-link".into(),
                s(&race.join("pmod.ko")),
                s(&good),
                s(&evil_dir.join("pmod.ko")),
                ms.clone(),
            ],
            s(&race.join("pmod.ko")),
        ),
        // A directory symlink alice owns, retargeted between the blessed
        // directory and hers.
        (
            "dir_symlink",
            vec![
                "swap-link".into(),
                s(&race.join("d")),
                s(&blessed_dir()),
                s(&evil_dir),
                ms.clone(),
            ],
            s(&race.join("d/pmod.ko")),
        ),
        // The directory itself swapped atomically (RENAME_EXCHANGE) with a
        // symlink to the blessed directory.
        (
            "dir_exchange",
            vec!["exchange".into(), s(&race.join("d")), s(&swap_dir), ms],
            s(&race.join("d/pmod.ko")),
        ),
    ];
    for (tag, hargs, target) in variants {
        let mark = syslog_lines().len();
        let watch = Watch::start(&[EVIL], true);
        let hargs: Vec<&str> = hargs.iter().map(String::as_str).collect();
        let _ = fs::remove_file(STOP_FILE);
        let bg = Bg::start(helper_cmd(&ALICE, &hargs));
        let tally = hammer(&ALICE, &[&target, "records=1"], true);
        let swapper = bg.map(|b| b.wait(Duration::from_secs(10)));
        let rep = watch.finish();
        let loads = audit_loads(mark);
        let swaps = swapper.as_ref().map_or(0, |o| result_num(o, "swaps"));
        r.log(&format!(
            "{tag}: alice$ staprun {target} records=1 while swapping: {} attempts, {} complete runs (blessed bytes), {} refusals, {swaps} swaps, {} watch samples",
            tally.attempts, tally.ran, tally.refused, rep.samples
        ));
        for reason in &tally.reasons {
            r.log(&format!("  refusal: {reason}"));
        }
        r.check(
            &format!("{tag}_swapper_ran"),
            swapper.as_ref().is_ok_and(|o| o.code == Some(0)) && swaps > 0,
            swapper
                .map(|o| o.summary())
                .unwrap_or_else(|e| e.to_string()),
        );
        r.check(
            &format!("{tag}_attempts"),
            tally.attempts >= RACE_ATTEMPTS,
            format!("{} attempts", tally.attempts),
        );
        let evil_loads: Vec<&(String, String)> =
            loads.iter().filter(|(m, _)| m != "pmod").collect();
        r.check(
            &format!("{tag}_evil_never_loaded"),
            rep.modules.is_empty() && evil_loads.is_empty(),
            format!("seen {:?}; audit loads {evil_loads:?}", rep.modules),
        );
        r.check(
            &format!("{tag}_loads_are_the_blessed_bytes"),
            loads.iter().all(|(m, h)| m == "pmod" && *h == good_sha)
                && loads.len() as u64 >= tally.ran,
            format!("{} runs, audit loads {loads:?}", tally.ran),
        );
        r.check(
            &format!("{tag}_every_run_consistent"),
            tally.odd.is_empty(),
            tally.odd.join(" | "),
        );
        r.check(
            &format!("{tag}_nothing_as_root"),
            rep.root.is_empty(),
            rep.root.join(" | "),
        );
        if tag == "file_symlink" {
            // The module's directory is alice's, never the blessed one.
            r.check(
                "file_symlink_always_refused",
                tally.ran == 0 && tally.refused == tally.attempts,
                format!("{tally:?}"),
            );
        }
    }
    let _ = fs::remove_dir_all(race);
    check_nothing_loaded(r, "end", &[]);
}

// ---- CVE-2010-4170: environment reaching root (modprobe, SYSTEMTAP_*) ---

fn script(path: &str, body: &str, owner: &User) -> io::Result<()> {
    put(
        path,
        format!("#!/bin/sh\n{body}\n").as_bytes(),
        0o755,
        owner,
    )
}

fn cve_2010_4170(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    publish("pmod");
    for d in ["/tmp/evil", "/tmp/evilrt"] {
        let _ = fs::remove_dir_all(d);
    }
    let setup = mkdir("/tmp/evil", 0o755, ALICE.uid, ALICE.gid)
        .and_then(|()| mkdir("/tmp/evilrt/uprobes", 0o755, ALICE.uid, ALICE.gid))
        .and_then(|()| {
            let conf = ["uprobes", "pmod", EVIL]
                .iter()
                .map(|m| format!("install {m} /bin/sh -c \"id > /tmp/pwned-modprobe\"\n"))
                .collect::<String>();
            put("/tmp/x.conf", conf.as_bytes(), 0o644, &ALICE)
        })
        .and_then(|()| {
            script(
                "/tmp/evil/stapio",
                &format!("id > /tmp/pwned-stapio\nexec {STAPIO} \"$@\""),
                &ALICE,
            )
        })
        .and_then(|()| {
            script(
                "/tmp/evil/staprun",
                &format!("id > /tmp/pwned-staprun\nexec {STAPRUN} \"$@\""),
                &ALICE,
            )
        })
        .and_then(|()| {
            script(
                "/tmp/evilrt/stapio",
                &format!("id > /tmp/pwned-runtime\nexec {STAPIO} \"$@\""),
                &ALICE,
            )
        })
        .and_then(|()| {
            put(
                "/tmp/evilrt/uprobes/uprobes.ko",
                &fixture(EVIL),
                0o644,
                &ALICE,
            )
        });
    if !r.check("env_setup", setup.is_ok(), format!("{setup:?}")) {
        return;
    }
    let env: &[(&str, &str)] = &[
        ("MODPROBE_OPTIONS", "-C /tmp/x.conf"),
        ("SYSTEMTAP_STAPIO", "/tmp/evil/stapio"),
        ("SYSTEMTAP_STAPRUN", "/tmp/evil/staprun"),
        ("SYSTEMTAP_RUNTIME", "/tmp/evilrt"),
    ];
    let watch = Watch::start(&[EVIL], true);
    // (user, args, must run): the exploit's `staprun -u <random>`, -u with
    // and without a path, and plain runs that must simply work.
    let cases: &[(User, &[&str], bool)] = &[
        (ALICE, &["-u", "x7Kq2"], false),
        (ALICE, &["-u", "pmod"], false),
        (ALICE, &["-ux7Kq2", "pmod"], false),
        (ALICE, &["pmod"], true),
        (SAM, &["-u", "pmod"], false),
        (BOB, &["-u", "pmod"], false),
        (BOB, &["pmod"], true),
    ];
    for (user, args, runs) in cases {
        let tag = format!("{}_{}", user.name, args.join("_").replace(['-', '/'], ""));
        let out = sr_env(user, args, env);
        log_out(
            r,
            &format!("{}$ <evil env> staprun {}", user.name, args.join(" ")),
            &out,
        );
        if *runs {
            r.check(
                &format!("{tag}_runs_normally"),
                full_run(&out),
                out.summary(),
            );
        } else {
            r.check(&format!("{tag}_refused"), refused(&out), out.summary());
        }
        check_nothing_loaded(r, &tag, &[]);
    }
    let rep = watch.finish();
    let mut written = Vec::new();
    let mut by_root = Vec::new();
    if let Ok(rd) = fs::read_dir("/tmp") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pwned-") {
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                if text.contains("uid=0") || util::stat(e.path()).is_some_and(|s| s.1 == 0) {
                    by_root.push(format!("{name}: {text}"));
                }
                written.push(format!("{name}: {}", text.trim()));
            }
        }
    }
    r.check(
        "nothing_written_by_root",
        by_root.is_empty(),
        by_root.join(" | "),
    );
    r.check(
        "no_override_honoured_at_all",
        written.is_empty(),
        written.join(" | "),
    );
    r.check(
        "no_root_process_but_staprun",
        rep.root.is_empty(),
        rep.root.join(" | "),
    );
    r.check(
        "evil_uprobes_never_loaded",
        rep.modules.is_empty(),
        format!("{:?}", rep.modules),
    );
    check_nothing_loaded(r, "end", &[]);
}

// ---- CVE-2010-4171: unloading modules that are not yours ---------------

fn cmd_owner(module: &str) -> Option<u32> {
    util::stat(format!("/proc/systemtap/{module}/.cmd")).map(|s| s.1)
}

fn cve_2010_4171(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    publish("pmod");
    let out = insmod_as(ROOT.creds(), &Path::new(FIXTURES).join("plainmod.ko"), &[]);
    if !r.check(
        "root_loads_plainmod",
        out.code == Some(0) && util::is_loaded("plainmod"),
        out.summary(),
    ) {
        return;
    }
    for user in [ALICE, BOB, SAM, ROOT] {
        let out = sr(&user, &["-d", "plainmod"]);
        r.check(
            &format!("{}_d_plainmod_refused", user.name),
            refused(&out),
            out.summary(),
        );
        r.check(
            &format!("{}_d_plainmod_still_loaded", user.name),
            util::is_loaded("plainmod"),
            "",
        );
    }
    for user in [ALICE, BOB] {
        let out = sr(&user, &["-d", "*"]);
        log_out(r, &format!("{}$ staprun -d '*'", user.name), &out);
        r.check(
            &format!("{}_d_star_leaves_plainmod", user.name),
            util::is_loaded("plainmod") && out.signal.is_none() && !out.timed_out,
            out.summary(),
        );
    }

    // bob's detached module: alice may neither unload nor attach to it.
    let out = sr(&BOB, &["-L", "pmod", "run_ms=200"]);
    let bobs = r.check(
        "bob_L_pmod",
        out.code == Some(0) && util::is_loaded("pmod"),
        out.summary(),
    );
    if bobs {
        let cases: &[(User, &[&str], bool)] = &[
            (ALICE, &["-d", "pmod"], true),
            (SAM, &["-d", "pmod"], true),
            (ALICE, &["-A", "pmod"], true),
            (ALICE, &["-d", "*"], false),
        ];
        for (user, args, must_fail) in cases {
            let tag = format!(
                "{}_{}_bobs",
                user.name,
                args.join("").replace(['-', '*'], "")
            );
            let out = sr(user, args);
            if *must_fail {
                r.check(&format!("{tag}_refused"), refused(&out), out.summary());
            }
            r.check(
                &format!("{tag}_still_loaded_and_bobs"),
                util::is_loaded("pmod") && cmd_owner("pmod") == Some(BOB.uid),
                format!("owner {:?}; {}", cmd_owner("pmod"), out.summary()),
            );
        }
    }

    // The EEXIST path: loading a module whose name is taken must never
    // unload the module that has the name.
    let plain_named = renamed(&fixture(EVIL), "plainmod").unwrap_or_default();
    let p = blessed_dir().join("plainmod.ko");
    let put_ok = !plain_named.is_empty() && put(&p, &plain_named, 0o644, &ROOT).is_ok();
    if r.check("eexist_module_made", put_ok, p.display().to_string()) {
        let out = sr(&ALICE, &["plainmod"]);
        log_out(
            r,
            "alice$ staprun plainmod   (name taken by root's plainmod)",
            &out,
        );
        r.check(
            "eexist_plainmod_refused",
            refused(&out) && out.stderr.contains("exists"),
            out.summary(),
        );
        r.check(
            "eexist_plainmod_still_loaded",
            util::is_loaded("plainmod"),
            "",
        );
    }
    if bobs {
        let out = sr(&ALICE, &["pmod"]);
        r.check(
            "eexist_bobs_pmod_refused",
            refused(&out) && out.stderr.contains("exists"),
            out.summary(),
        );
        r.check(
            "eexist_bobs_pmod_untouched",
            util::is_loaded("pmod") && cmd_owner("pmod") == Some(BOB.uid),
            format!("owner {:?}", cmd_owner("pmod")),
        );
        let out = sr(&BOB, &["-d", "pmod"]);
        r.check(
            "bob_d_own_module",
            out.code == Some(0) && !util::is_loaded("pmod"),
            out.summary(),
        );
    }
    let out = rmmod("plainmod");
    r.check("root_rmmod_plainmod", out.code == Some(0), out.summary());
    let _ = fs::remove_file(&p);
    check_nothing_loaded(r, "end", &[]);
}

// ---- CVE-2011-2502: -u loads any module as "uprobes" --------------------

fn cve_2011_2502(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    publish("pmod");
    let blessed_evil = publish(EVIL);
    let setup = put("/tmp/evil.ko", &fixture(EVIL), 0o644, &ALICE);
    if !r.check("uprobes_setup", setup.is_ok(), format!("{setup:?}")) {
        return;
    }
    let in_blessed = format!("-u{}", blessed_evil.display());
    let watch = Watch::start(&[EVIL], true);
    let cases: &[(User, &[&str])] = &[
        (ALICE, &["-u/tmp/evil.ko", "pmod"]),
        (SAM, &["-u/tmp/evil.ko", "pmod"]),
        (ALICE, &[&in_blessed, "pmod"]),
        (ALICE, &["-u", "/tmp/evil.ko"]),
    ];
    for (user, args) in cases {
        let tag = format!(
            "{}_{}",
            user.name,
            args.join("_").replace(['-', '/', '.'], "")
        );
        let out = sr(user, args);
        log_out(
            r,
            &format!("{}$ staprun {}", user.name, args.join(" ")),
            &out,
        );
        r.check(&format!("{tag}_refused"), refused(&out), out.summary());
        check_nothing_loaded(r, &tag, &[]);
    }
    let rep = watch.finish();
    r.check(
        "evil_never_loaded",
        rep.modules.is_empty(),
        format!("{:?}", rep.modules),
    );
    r.check("nothing_as_root", rep.root.is_empty(), rep.root.join(" | "));
    // stapdev may: the module runs, and the "uprobes" module stays loaded.
    let out = sr(&BOB, &["-u/tmp/evil.ko", "pmod"]);
    log_out(r, "bob$ staprun -u/tmp/evil.ko pmod", &out);
    r.check("bob_u_allowed_runs", full_run(&out), out.summary());
    r.check("bob_u_loaded_uprobes", util::is_loaded(EVIL), "");
    let out = rmmod(EVIL);
    r.check("root_rmmod_uprobes", out.code == Some(0), out.summary());
    let _ = fs::remove_file("/tmp/evil.ko");
    check_nothing_loaded(r, "end", &[]);
}

// ---- CVE-2011-2503: the module file changes while it is loaded ---------

fn cve_2011_2503(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    syslog_start(r);
    // Two images of one length, so an in-place rewrite never changes the size.
    let (mut a, mut b) = (fixture("pmod"), fixture(EVIL));
    let len = a.len().max(b.len());
    a.resize(len, 0);
    b.resize(len, 0);
    let (sha_a, sha_b) = (sha256(&a), sha256(&b));
    let d = blessed_dir();
    let ko = d.join("pmod.ko");
    let setup = put("/tmp/A.ko", &a, 0o644, &ROOT)
        .and_then(|()| put("/tmp/B.ko", &b, 0o644, &ROOT))
        .and_then(|()| chown(&d, Some(0), Some(STAPDEV)))
        .and_then(|()| fs::set_permissions(&d, fs::Permissions::from_mode(0o775)));
    if !r.check(
        "layout_775_root_stapdev",
        setup.is_ok(),
        format!("{setup:?}"),
    ) {
        return;
    }
    let ms = RACE_MAX.as_millis().to_string();
    let kos = ko.display().to_string();
    for mode in ["rename", "inplace"] {
        let _ = fs::remove_file(&ko);
        if let Err(e) = put(&ko, &a, 0o644, &BOB) {
            r.check(&format!("{mode}_setup"), false, e.to_string());
            continue;
        }
        let mark = syslog_lines().len();
        let watch = Watch::start(&[], true);
        let _ = fs::remove_file(STOP_FILE);
        let bg = Bg::start(helper_cmd(
            &BOB,
            &["rewrite", &kos, "/tmp/A.ko", "/tmp/B.ko", &ms, mode],
        ));
        let tally = hammer(&ALICE, &["pmod", "records=1"], false);
        let writer = bg.map(|b| b.wait(Duration::from_secs(10)));
        let rep = watch.finish();
        let loads = audit_loads(mark);
        let (mut na, mut nb) = (0, 0);
        let mut mixed = Vec::new();
        for (m, h) in &loads {
            if m == "pmod" && *h == sha_a {
                na += 1;
            } else if m == EVIL && *h == sha_b {
                nb += 1;
            } else {
                mixed.push(format!("{m} {h}"));
            }
        }
        let writes = writer.as_ref().map_or(0, |o| result_num(o, "writes"));
        r.log(&format!(
            "{mode}: bob rewrote pmod.ko {writes} times; alice ran staprun pmod {} times: {} complete runs, {} refusals; loaded {na} x pmod bytes, {nb} x fixture_b bytes, {} other",
            tally.attempts,
            tally.ran,
            tally.refused,
            mixed.len()
        ));
        for reason in &tally.reasons {
            r.log(&format!("  refusal: {reason}"));
        }
        r.check(
            &format!("{mode}_writer_ran"),
            writer.as_ref().is_ok_and(|o| o.code == Some(0)) && writes > 0,
            writer
                .map(|o| o.summary())
                .unwrap_or_else(|e| e.to_string()),
        );
        r.check(
            &format!("{mode}_attempts"),
            tally.attempts >= RACE_ATTEMPTS,
            format!("{tally:?}"),
        );
        r.check(
            &format!("{mode}_every_load_is_one_whole_file"),
            mixed.is_empty(),
            format!("loads not matching pmod.ko or fixture_b.ko: {mixed:?}"),
        );
        r.check(
            &format!("{mode}_every_run_accounted"),
            loads.len() as u64 >= tally.ran,
            format!("{} complete runs, {} audited loads", tally.ran, loads.len()),
        );
        r.check(
            &format!("{mode}_every_run_consistent"),
            tally.odd.is_empty(),
            tally.odd.join(" | "),
        );
        r.check(
            &format!("{mode}_nothing_as_root"),
            rep.root.is_empty(),
            rep.root.join(" | "),
        );
    }
    let trouble = kernel_trouble();
    r.check("kernel_log_clean", trouble.is_empty(), trouble.join(" | "));
    let _ = fs::remove_dir_all(&d);
    let _ = prepare_blessed_dir();
    check_nothing_loaded(r, "end", &[]);
}

// ---- the reference's [obs] weaknesses ------------------------------------

const KPROBES_OPT: &str = "/proc/sys/debug/kprobes-optimization";
const KPTR: &str = "/proc/sys/kernel/kptr_restrict";
const ELSEWHERE: &str = "/tmp/x/pmod.ko";

fn place_elsewhere() -> io::Result<()> {
    mkdir("/tmp/x", 0o755, 0, 0)?;
    put(ELSEWHERE, &fixture("pmod"), 0o644, &ROOT)
}

fn obs_weaknesses(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    publish("pmod");
    let _ = place_elsewhere();

    // 1. Nothing privileged happens before the decision: no debugfs mount,
    //    no kprobes-optimization or kptr_restrict write for a refused load.
    let um = run(
        command_as(&ROOT, &["/bin/umount", "/sys/kernel/debug"], &[]),
        RUN,
    );
    let _ = fs::write(KPROBES_OPT, "1");
    let _ = fs::write(KPTR, "0");
    let state = || {
        (
            debugfs_mounted(),
            read_sysctl(KPROBES_OPT),
            read_sysctl(KPTR),
        )
    };
    let before = state();
    r.check(
        "precondition_debugfs_unmounted_kptr0",
        !before.0 && before.2 == "0",
        format!("umount: {}; state {before:?}", um.summary()),
    );
    let cases: &[(User, &[&str])] = &[
        (ALICE, &[ELSEWHERE]),
        (SAM, &[ELSEWHERE]),
        (ALICE, &["-u", "pmod"]),
        (ALICE, &["nosuchmodule"]),
        (ALICE, &["-d", "nosuchmodule"]),
        (ALICE, &["-A", "nosuchmodule"]),
        (CAROL, &["pmod"]),
    ];
    for (user, args) in cases {
        let tag = format!(
            "{}_{}",
            user.name,
            args.join("_").replace(['-', '/', '.'], "")
        );
        let out = sr(user, args);
        let denied = if user.uid == CAROL.uid {
            out.code.is_none() && out.stderr.contains("Permission denied")
        } else {
            refused(&out)
        };
        r.check(&format!("{tag}_refused"), denied, out.summary());
        r.check_eq(&format!("{tag}_no_side_effect"), state(), before.clone());
        check_nothing_loaded(r, &tag, &[]);
    }
    // A permitted load: still no debugfs mount and no kprobes change;
    // kptr_restrict 0 is raised to 1 after the load (documented).
    let out = sr(&ALICE, &["pmod"]);
    r.check("permitted_run", full_run(&out), out.summary());
    let after = state();
    r.check(
        "permitted_run_no_debugfs_no_kprobes_change",
        !after.0 && after.1 == before.1,
        format!("{after:?}"),
    );
    r.log(&format!("after a permitted run: kptr_restrict {}", after.2));

    // 2. Override variables have no effect.
    let _ = fs::write(KPTR, "0");
    let out = sr_env(&ALICE, &["pmod"], &[("STAP_BZ1552745_OVERRIDE", "1")]);
    r.check("bz1552745_override_run", full_run(&out), out.summary());
    r.check_eq(
        "bz1552745_override_ignored_kptr_raised",
        read_sysctl(KPTR),
        "1".to_owned(),
    );
    let _ = fs::write(KPTR, "0");
    let _ = fs::write(KPROBES_OPT, "1");
    let out = sr_env(&ALICE, &["pmod"], &[("STAP_PR13193_OVERRIDE", "1")]);
    r.check("pr13193_override_run", full_run(&out), out.summary());
    r.check_eq(
        "pr13193_override_no_effect",
        read_sysctl(KPROBES_OPT),
        "1".to_owned(),
    );
    let overrides: &[(&str, &str)] = &[
        ("STAP_FIPS_OVERRIDE", "1"),
        ("SYSTEMTAP_SYNC", "1"),
        ("STAP_PR13193_OVERRIDE", "1"),
        ("STAP_BZ1552745_OVERRIDE", "1"),
        ("SYSTEMTAP_REAL_UID", "0"),
        ("SYSTEMTAP_REAL_GID", "0"),
    ];
    for (user, arg) in [(ALICE, ELSEWHERE), (SAM, ELSEWHERE), (ALICE, "-u")] {
        let args: Vec<&str> = if arg == "-u" {
            vec!["-u", "pmod"]
        } else {
            vec![arg]
        };
        let plain = sr(&user, &args);
        let with = sr_env(&user, &args, overrides);
        let tag = format!("{}_{}", user.name, arg.replace(['-', '/', '.'], ""));
        r.check(
            &format!("overrides_{tag}_same_refusal"),
            refused(&with) && with.code == plain.code && with.stderr == plain.stderr,
            format!(
                "plain: {} | with overrides: {}",
                plain.summary(),
                with.summary()
            ),
        );
    }
    // Nor do they reach stapio or the script's system() commands.
    let _ = fs::remove_file("/tmp/envdump.out");
    let _ = script("/tmp/envdump.sh", "env > /tmp/envdump.out", &ROOT);
    let out = sr_env(&ALICE, &["pmod", "system_cmd=/tmp/envdump.sh"], overrides);
    r.check("overrides_run", full_run(&out), out.summary());
    util::wait_until(Duration::from_secs(10), || {
        Path::new("/tmp/envdump.out").exists()
    });
    let dump = fs::read_to_string("/tmp/envdump.out").unwrap_or_default();
    let leaked: Vec<&str> = dump
        .lines()
        .filter(|l| {
            overrides
                .iter()
                .any(|(k, _)| l.starts_with(&format!("{k}=")))
        })
        .collect();
    r.check(
        "overrides_not_passed_on",
        !dump.is_empty() && leaked.is_empty(),
        format!("leaked {leaked:?}; env {dump:?}"),
    );
    let _ = sys::mount("debugfs", "/sys/kernel/debug", "debugfs", 0, "");

    // 3. A directory under the blessed one is not the blessed directory:
    //    alice's own subdirectory (which she could fill), and root's.
    let d = blessed_dir();
    let sub = d.join("sub");
    let rsub = d.join("rsub");
    let setup = mkdir(&sub, 0o755, ALICE.uid, ALICE.gid)
        .and_then(|()| put(sub.join("pmod.ko"), &fixture("pmod"), 0o644, &ROOT))
        .and_then(|()| mkdir(&rsub, 0o755, 0, 0))
        .and_then(|()| put(rsub.join("pmod.ko"), &fixture("pmod"), 0o644, &ROOT));
    if r.check("subdirs_setup", setup.is_ok(), format!("{setup:?}")) {
        for (tag, p) in [("alice_subdir", &sub), ("root_subdir", &rsub)] {
            let path = p.join("pmod.ko").display().to_string();
            let out = sr(&ALICE, &[&path]);
            log_out(r, &format!("alice$ staprun {path}"), &out);
            r.check(&format!("{tag}_refused"), refused(&out), out.summary());
            check_nothing_loaded(r, tag, &[]);
        }
        // Through alice's directory and back up: the blessed file itself.
        let path = format!("{}/../pmod.ko", sub.display());
        let out = sr(&ALICE, &[&path]);
        log_out(r, &format!("alice$ staprun {path}"), &out);
        r.check(
            "dotdot_through_subdir_is_blessed_file",
            full_run(&out) || refused(&out),
            out.summary(),
        );
        check_nothing_loaded(r, "dotdot", &[]);
    }
    let _ = fs::remove_dir_all(&sub);
    let _ = fs::remove_dir_all(&rsub);

    // 4. -F (a descriptor injected into the setuid program) is a usage error.
    let cases: &[(User, &[&str])] = &[
        (ALICE, &["-F3", "pmod"]),
        (ALICE, &["-F", "3", "pmod"]),
        (ALICE, &["-vF3", "pmod"]),
        (ALICE, &["-F3", "-d", "pmod"]),
        (ALICE, &["-F3", "-A", "pmod"]),
        (ROOT, &["-F3", "pmod"]),
    ];
    for (user, args) in cases {
        let tag = format!("{}_{}", user.name, args.join("_").replace('-', ""));
        let out = sr(user, args);
        r.check(
            &format!("F_{tag}_usage_error"),
            out.code == Some(1) && out.stderr.contains("-F") && !out.stdout.contains(HELLO),
            out.summary(),
        );
        check_nothing_loaded(r, &format!("F_{tag}"), &[]);
    }
    let _ = fs::remove_dir_all("/tmp/x");
    check_nothing_loaded(r, "end", &[]);
}

// ---- odd module paths and names -----------------------------------------

/// Tries, while `during` runs, to open `fifo` for writing without
/// blocking: that succeeds only while someone has it open for reading.
fn fifo_reader_seen<T>(fifo: &str, during: impl FnOnce() -> T) -> (T, bool) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let path = fifo.to_owned();
    let probe = std::thread::spawn(move || {
        let mut seen = false;
        while !flag.load(Ordering::Relaxed) {
            if fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .is_ok()
            {
                seen = true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    });
    let t = during();
    stop.store(true, Ordering::Relaxed);
    let seen = probe.join().unwrap_or(true);
    (t, seen)
}

/// Refused within `limit`, not by a signal, nothing loaded.
fn check_quick_refusal(r: &mut Reporter, tag: &str, out: &Out, took: Duration, limit: Duration) {
    r.check(
        &format!("{tag}_refused"),
        refused(out),
        format!("{} in {took:?}", out.summary()),
    );
    r.check(
        &format!("{tag}_quick"),
        took < limit,
        format!("{took:?} (limit {limit:?})"),
    );
    check_nothing_loaded(r, tag, &[]);
}

fn timed(f: impl FnOnce() -> Out) -> (Out, Duration) {
    let t0 = Instant::now();
    let out = f();
    (out, t0.elapsed())
}

fn module_paths(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    let good = publish("pmod");
    let _ = place_elsewhere();
    let quick = Duration::from_secs(5);
    let d = blessed_dir();

    // 1. Descriptor paths: alice opens a module and names it by its fd.
    let cases = [
        (
            "proc_self_fd_elsewhere",
            ELSEWHERE.to_owned(),
            "/proc/self/fd/3",
        ),
        ("dev_fd_elsewhere", ELSEWHERE.to_owned(), "/dev/fd/3"),
        (
            "proc_self_fd_blessed_file",
            good.display().to_string(),
            "/proc/self/fd/3",
        ),
        (
            "proc_self_fd_alices_dir",
            "/home/alice/p".to_owned(),
            "/proc/self/fd/3/pmod.ko",
        ),
    ];
    // devtmpfs has no /dev/fd; make the usual link.
    if !Path::new("/dev/fd").exists() {
        let _ = symlink("/proc/self/fd", "/dev/fd");
    }
    let p = Path::new("/home/alice/p");
    let _ = fs::remove_dir_all(p);
    let setup = mkdir(p, 0o755, ALICE.uid, ALICE.gid)
        .and_then(|()| put(p.join("pmod.ko"), &fixture(EVIL), 0o644, &ALICE));
    r.check("alice_dir_setup", setup.is_ok(), format!("{setup:?}"));
    for (tag, open, arg) in cases {
        let (out, took) = timed(|| sh(&ALICE, &format!("exec 3<{open}; exec {STAPRUN} {arg}")));
        log_out(r, &format!("alice$ exec 3<{open}; staprun {arg}"), &out);
        check_quick_refusal(r, tag, &out, took, quick);
    }
    // The blessed directory by descriptor is still the blessed directory.
    let out = sh(
        &ALICE,
        &format!(
            "exec 3<{}; exec {STAPRUN} /proc/self/fd/3/pmod.ko",
            d.display()
        ),
    );
    log_out(
        r,
        "alice$ exec 3<BLESSED; staprun /proc/self/fd/3/pmod.ko",
        &out,
    );
    r.check(
        "proc_self_fd_blessed_dir_consistent",
        full_run(&out) || refused(&out),
        out.summary(),
    );
    check_nothing_loaded(r, "proc_self_fd_blessed_dir", &[]);

    // 2. A hard link in alice's directory to the blessed module.
    let hl = p.join("linked.ko");
    let linked = fs::hard_link(&good, &hl);
    if r.check("hardlink_made", linked.is_ok(), format!("{linked:?}")) {
        let path = hl.display().to_string();
        let (out, took) = timed(|| sr(&ALICE, &[&path]));
        check_quick_refusal(r, "hardlink_in_alices_dir", &out, took, quick);
        let _ = fs::remove_file(&hl);
    }

    // 3. FIFOs and devices: refused at once, never opened for reading.
    let _ = mkdir("/tmp/p", 0o755, ALICE.uid, ALICE.gid);
    let fifos = [
        "/tmp/p/fifo.ko".to_owned(),
        d.join("fifo.ko").display().to_string(),
    ];
    for f in &fifos {
        let _ = fs::remove_file(f);
        let made = run(command_as(&ROOT, &["/bin/busybox", "mkfifo", f], &[]), RUN);
        if f.starts_with("/tmp") {
            let _ = chown(f, Some(ALICE.uid), Some(ALICE.gid));
        }
        r.check(&format!("mkfifo_{f}"), made.code == Some(0), made.summary());
    }
    // The probe itself sees a reader (a control run).
    let (_, seen) = fifo_reader_seen(&fifos[0], || {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifos[0]);
        std::thread::sleep(Duration::from_millis(100));
        drop(f);
    });
    r.check("fifo_probe_sees_a_reader", seen, "control run");
    let cases: Vec<(&str, User, String)> = vec![
        ("alice_fifo_elsewhere", ALICE, fifos[0].clone()),
        ("bob_fifo_elsewhere", BOB, fifos[0].clone()),
        ("alice_fifo_blessed", ALICE, "fifo".to_owned()),
        ("bob_fifo_blessed", BOB, fifos[1].clone()),
    ];
    for (tag, user, arg) in cases {
        let fifo = if arg == "fifo" || arg == fifos[1] {
            &fifos[1]
        } else {
            &fifos[0]
        };
        let ((out, took), opened) = fifo_reader_seen(fifo, || timed(|| sr(&user, &[&arg])));
        check_quick_refusal(r, tag, &out, took, quick);
        r.check(&format!("{tag}_never_opened"), !opened, "");
    }
    let watchdog = Path::new("/dev/watchdog").exists();
    r.log(&format!("/dev/watchdog present: {watchdog}"));
    let mut devices = vec!["/dev/zero", "/dev/null"];
    if watchdog {
        devices.push("/dev/watchdog");
    }
    for dev in devices {
        for user in [ALICE, BOB] {
            let tag = format!("{}_{}", user.name, dev.replace('/', "_"));
            let (out, took) = timed(|| sr(&user, &[dev]));
            check_quick_refusal(r, &tag, &out, took, quick);
        }
    }
    for f in &fifos {
        let _ = fs::remove_file(f);
    }

    // 4. Huge sparse files in the blessed directory (made by root).
    for (tag, size) in [("sparse_1t", 1u64 << 40), ("sparse_257m", 257 << 20)] {
        let path = d.join(format!("{tag}.ko"));
        let made = fs::File::create(&path).and_then(|f| f.set_len(size));
        if !r.check(&format!("{tag}_made"), made.is_ok(), format!("{made:?}")) {
            continue;
        }
        for user in [ALICE, BOB] {
            let arg = if user.uid == ALICE.uid {
                tag.to_owned()
            } else {
                path.display().to_string()
            };
            let (out, took) = timed(|| sr(&user, &[&arg]));
            log_out(r, &format!("{}$ staprun {arg}", user.name), &out);
            check_quick_refusal(r, &format!("{}_{tag}", user.name), &out, took, quick);
        }
        let _ = fs::remove_file(&path);
    }

    // 5. Odd names: path tricks, control characters, non-UTF-8 bytes.
    let long = "a".repeat(200);
    let names: Vec<(&str, Vec<OsString>)> = vec![
        ("dotdot_pmod", vec!["../pmod".into()]),
        ("dotdot", vec!["..".into()]),
        ("dot", vec![".".into()]),
        ("slash", vec!["/".into()]),
        ("trailing_slash", vec!["pmod/".into()]),
        ("newline", vec!["pm\nod".into()]),
        ("non_utf8", vec![OsString::from_vec(b"pm\xffod".to_vec())]),
        ("empty", vec!["".into()]),
        ("long", vec![long.clone().into()]),
        ("d_slash", vec!["-d".into(), "a/b".into()]),
        ("d_dotdot", vec!["-d".into(), "..".into()]),
        (
            "d_escape_procfs",
            vec!["-d".into(), "../../proc/systemtap/pmod".into()],
        ),
        ("d_newline", vec!["-d".into(), "pm\nod".into()]),
        (
            "d_non_utf8",
            vec!["-d".into(), OsString::from_vec(b"\xff".to_vec())],
        ),
        ("A_dotdot", vec!["-A".into(), "../pmod".into()]),
        ("R_dotdot", vec!["-R".into(), "../pmod".into()]),
    ];
    for (tag, args) in &names {
        let a: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let (out, took) = timed(|| staprun_os(&ALICE, &a, &[], RUN));
        log_out(r, &format!("alice$ staprun {args:?}"), &out);
        check_quick_refusal(r, &format!("name_{tag}"), &out, took, quick);
    }

    // 6. Module options: thousands, the maximum, and one huge value.
    let many: Vec<String> = (0..5000).map(|i| format!("opt{i}=1")).collect();
    let mut args: Vec<&str> = vec!["pmod"];
    args.extend(many.iter().map(String::as_str));
    let (out, took) = timed(|| sr(&ALICE, &args));
    log_out(r, "alice$ staprun pmod opt0=1 ... opt4999=1", &out);
    check_quick_refusal(r, "options_5000", &out, took, quick);
    let mut args: Vec<&str> = vec!["pmod", "records=1"];
    args.extend(many.iter().take(63).map(String::as_str));
    let out = sr(&ALICE, &args);
    r.check("options_64_run", full_run(&out), out.summary());
    check_nothing_loaded(r, "options_64", &[]);
    let big = format!("opt={}", "x".repeat(100_000));
    let out = sr(&ALICE, &["pmod", "records=1", &big]);
    log_out(r, "alice$ staprun pmod records=1 opt=<100000 bytes>", &out);
    r.check(
        "option_100k_consistent",
        (full_run(&out) || refused(&out)) && !out.timed_out,
        out.summary(),
    );
    check_nothing_loaded(r, "option_100k", &[]);

    // 7. No existence oracle: a refusal of a path in a directory alice
    //    cannot search reads the same whether the path exists or not.
    let secret = Path::new("/root/secretdir");
    let _ = mkdir(secret, 0o700, 0, 0);
    let _ = put(secret.join("x.ko"), &fixture("pmod"), 0o600, &ROOT);
    let exists = sr(&ALICE, &["/root/secretdir/x.ko"]);
    let missing = sr(&ALICE, &["/root/nosuchdir/x.ko"]);
    let norm = |o: &Out, p: &str| o.stderr.replace(p, "PATH");
    r.check(
        "no_existence_oracle_for_root_only_dirs",
        refused(&exists)
            && refused(&missing)
            && norm(&exists, "/root/secretdir/x.ko") == norm(&missing, "/root/nosuchdir/x.ko"),
        format!(
            "existing: {:?} | missing: {:?}",
            exists.stderr.trim(),
            missing.stderr.trim()
        ),
    );
    let _ = fs::remove_dir_all(secret);
    let _ = fs::remove_dir_all(p);
    let _ = fs::remove_dir_all("/tmp/p");
    let _ = fs::remove_dir_all("/tmp/x");
    check_nothing_loaded(r, "end", &[]);
}

// ---- the caller's process state -----------------------------------------

/// The run either completed (exit 0, whole output) or failed cleanly; in
/// both cases nothing is left loaded and no stapio is left running.
fn check_consistent(r: &mut Reporter, tag: &str, out: &Out, complete: bool) {
    let ok =
        !out.timed_out && out.signal.is_none() && (complete || out.code.is_some_and(|c| c != 0));
    r.check(
        &format!("{tag}_complete_or_clean_error"),
        ok,
        format!("complete={complete} {}", out.summary()),
    );
    r.check(
        &format!("{tag}_no_stapio_left"),
        stapio_pids().is_empty(),
        format!("{:?}", stapio_pids()),
    );
    check_nothing_loaded(r, tag, &[]);
}

fn process_state(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    publish("pmod");

    // 1. stdin, stdout and stderr closed by the caller.
    let out = sh(
        &ALICE,
        &format!("{STAPRUN} pmod records=1 <&- >&- 2>&-; echo rc=$?"),
    );
    r.check(
        "closed_std_fds_run",
        out.stdout.trim() == "rc=0",
        out.summary(),
    );
    check_nothing_loaded(r, "closed_std_fds", &[]);
    let _ = fs::remove_file("/tmp/closed.out");
    let out = sh(
        &ALICE,
        &format!("{STAPRUN} -o /tmp/closed.out pmod records=1 <&- >&- 2>&-; echo rc=$?"),
    );
    let text = fs::read_to_string("/tmp/closed.out").unwrap_or_default();
    r.check(
        "closed_std_fds_o_file_complete",
        out.stdout.trim() == "rc=0" && text.starts_with(HELLO) && text.trim_end().ends_with(END),
        format!("{} file {:?}", out.summary(), util::clip(&text)),
    );
    check_nothing_loaded(r, "closed_std_fds_o", &[]);

    // 2. Resource limits set by the caller.
    for n in [4, 5, 6, 8, 10, 16] {
        let tag = format!("nofile_{n}");
        let out = sh(
            &ALICE,
            &format!("ulimit -n {n} && exec {STAPRUN} pmod records=1"),
        );
        log_out(r, &format!("alice$ ulimit -n {n}; staprun pmod"), &out);
        check_consistent(r, &tag, &out, full_run(&out));
    }
    let out = sh(
        &ALICE,
        &format!("ulimit -f 0 && exec {STAPRUN} pmod records=1"),
    );
    log_out(r, "alice$ ulimit -f 0; staprun pmod", &out);
    check_consistent(r, "fsize_0_stdout", &out, full_run(&out));
    let _ = fs::remove_file("/tmp/fsize.out");
    let out = sh(
        &ALICE,
        &format!("ulimit -f 0 && exec {STAPRUN} -o /tmp/fsize.out pmod records=1"),
    );
    log_out(
        r,
        "alice$ ulimit -f 0; staprun -o /tmp/fsize.out pmod",
        &out,
    );
    let text = fs::read_to_string("/tmp/fsize.out").unwrap_or_default();
    let complete = out.code == Some(0) && text.contains(HELLO) && text.contains(END);
    check_consistent(r, "fsize_0_o_file", &out, complete);

    // 3. ptrace: alice attaches (and SIGSTOPs, then attaches) to the
    //    setuid staprun at several points of its run.
    r.log(&format!(
        "yama ptrace_scope {}",
        read_sysctl("/proc/sys/kernel/yama/ptrace_scope")
    ));
    let (mut eperm, mut attempts) = (0, 0);
    for delay in ["0", "10", "40", "loaded"] {
        let out = helper_run(
            &ALICE,
            &["ptrace-race", delay, STAPRUN, "pmod", "records=1"],
        );
        let tag = format!("ptrace_stop_{delay}");
        r.log(&format!(
            "{tag}: {}",
            out.stdout
                .lines()
                .rev()
                .find(|l| l.starts_with("RESULT"))
                .unwrap_or("no RESULT")
        ));
        r.check(
            &format!("{tag}_never_attached_privileged"),
            result_field(&out, "attempts").is_some() && result_num(&out, "attached_root") == 0,
            out.summary(),
        );
        r.check(
            &format!("{tag}_run_complete"),
            out.code == Some(0) && out.stdout.contains(HELLO) && out.stdout.contains(END),
            out.summary(),
        );
        if delay == "loaded" {
            // It was caught between init_module and the privilege drop.
            r.check(
                "ptrace_stopped_while_privileged_with_module_loaded",
                result_field(&out, "stopped_in").is_some_and(|s| {
                    s.contains("uids=1001,0,0,0") && s.contains("pmod_loaded=true")
                }),
                out.summary(),
            );
        }
        check_nothing_loaded(r, &tag, &[]);
        eperm += result_num(&out, "eperm");
        attempts += result_num(&out, "attempts");
    }
    r.check(
        "ptrace_attempts_on_privileged_staprun_got_eperm",
        eperm > 0,
        format!("{eperm} EPERM of {attempts} attempts"),
    );
    // A traced exec does not get the setuid bit at all.
    let out = helper_run(&ALICE, &["traceme", STAPRUN, "pmod"]);
    log_out(r, "alice$ (PTRACE_TRACEME) exec staprun pmod", &out);
    r.check_eq(
        "traceme_exec_runs_unprivileged",
        result_field(&out, "uids_at_exec"),
        Some("1001,1001,1001,1001".to_owned()),
    );
    r.check(
        "traceme_staprun_refuses",
        out.code.is_some_and(|c| c != 0)
            && out.stderr.contains("setuid")
            && !out.stdout.contains(HELLO),
        out.summary(),
    );
    check_nothing_loaded(r, "traceme", &[]);

    // 4. no_new_privs: the setuid bit is ignored, and staprun says why.
    let out = helper_run(&ALICE, &["nnp", STAPRUN, "pmod"]);
    log_out(r, "alice$ (no_new_privs) staprun pmod", &out);
    r.check(
        "nnp_refused_with_reason",
        refused(&out) && out.stderr.contains("no_new_privs"),
        out.summary(),
    );
    check_nothing_loaded(r, "nnp", &[]);

    // 5. SIGSTOP / SIGCONT at random points of the run.
    let mut rng = Rng::new(r);
    for i in 0..6 {
        let delay = Duration::from_millis(rng.below(1500));
        let running = match util::spawn(command_as(&ALICE, &[STAPRUN, "pmod", "records=1"], &[])) {
            Ok(rn) => rn,
            Err(e) => {
                r.check(&format!("stopcont_{i}_spawn"), false, e.to_string());
                continue;
            }
        };
        std::thread::sleep(delay);
        let pid = running.child.id();
        let what = comm(pid);
        let _ = sys::kill(pid, libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(300));
        let _ = sys::kill(pid, libc::SIGCONT);
        let out = running.wait(RUN);
        r.log(&format!(
            "SIGSTOP after {delay:?} (in {what:?}), SIGCONT 300 ms later: code {:?}",
            out.code
        ));
        check_consistent(r, &format!("stopcont_{i}"), &out, full_run(&out));
    }
    check_nothing_loaded(r, "end", &[]);
}

// ---- fault injection ------------------------------------------------------

/// The fd number of `module`'s `.cmd` in process `pid`.
fn cmd_fd(pid: u32, module: &str) -> Option<String> {
    let want = format!("/proc/systemtap/{module}/.cmd");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|e| fs::read_link(e.path()).is_ok_and(|t| t == Path::new(&want)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// Record lines of the fixture ("cpu=C n=N seq=S ...") as sequence numbers.
fn seqs(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.starts_with("cpu="))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("seq="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

/// `text` is a prefix of a lossless stream of the fixture: the begin
/// line, then whole records of `size` bytes with consecutive sequence
/// numbers from 2; only the very last line may be cut short.
fn valid_prefix(text: &str, size: usize) -> Result<usize, String> {
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    let last_partial = lines.last().is_some_and(|l| !l.ends_with('\n'));
    let partial = if last_partial { lines.pop() } else { None };
    let mut it = lines.iter();
    if it.next().map(|l| l.trim_end()) != Some(HELLO) {
        return Err(format!(
            "does not start with the begin line: {:?}",
            util::clip(text)
        ));
    }
    let mut want = 2u64;
    for l in it {
        let seq = seqs(l).first().copied();
        if l.len() != size || !l.trim_end().ends_with('.') || seq != Some(want) {
            return Err(format!("record {want}: bad line {l:?}"));
        }
        want += 1;
    }
    if let Some(p) = partial {
        let ok = p.starts_with("cpu=") || "cpu=".starts_with(p);
        if !ok || p.len() >= size {
            return Err(format!("bad last partial line {p:?}"));
        }
    }
    Ok(usize::try_from(want - 2).unwrap_or(0))
}

fn faults(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    publish("pmod");

    // 1. The module's init fails.
    let out = sr(&ALICE, &["pmod", "init_errno=12"]);
    log_out(r, "alice$ staprun pmod init_errno=12", &out);
    r.check(
        "init_fails_clear_error",
        refused(&out) && out.stderr.contains("Cannot allocate memory"),
        out.summary(),
    );
    r.check("init_fails_no_stapio", stapio_pids().is_empty(), "");
    check_nothing_loaded(r, "init_fails", &[]);

    // 2. The control channel breaks mid-run: root closes stapio's .cmd
    //    descriptor under it (a ptrace-injected close()).
    match util::spawn(command_as(&ALICE, &[STAPRUN, "pmod", "run_ms=100"], &[])) {
        Err(e) => {
            r.check("ctl_break_spawn", false, e.to_string());
        }
        Ok(mut running) => {
            let mut target = None;
            util::wait_until(Duration::from_secs(20), || {
                target = stapio_pids()
                    .into_iter()
                    .find_map(|p| cmd_fd(p, "pmod").map(|fd| (p, fd)));
                target.is_some()
                    && fs::read_to_string("/sys/module/pmod/parameters/started")
                        .is_ok_and(|s| s.trim() == "1")
            });
            let injected = target.as_ref().map(|(pid, fd)| {
                std::thread::sleep(Duration::from_millis(300));
                helper_run(&ROOT, &["close-fd", &pid.to_string(), fd])
            });
            // If stapio does not end, record where its threads wait.
            let pid = target.as_ref().map(|(p, _)| *p);
            if !util::wait_until(Duration::from_secs(20), || {
                !matches!(running.child.try_wait(), Ok(None))
            }) && let Some(p) = pid
            {
                for t in fs::read_dir(format!("/proc/{p}/task"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let at = |f: &str| {
                        fs::read_to_string(t.path().join(f))
                            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                            .unwrap_or_default()
                    };
                    r.log(&format!(
                        "  stapio task {}: {} wchan {} syscall {}",
                        t.file_name().to_string_lossy(),
                        at("comm"),
                        at("wchan"),
                        at("syscall")
                    ));
                }
                if let Ok(fds) = fs::read_dir(format!("/proc/{p}/fd")) {
                    let v: Vec<String> = fds
                        .flatten()
                        .map(|e| {
                            format!(
                                "{}->{}",
                                e.file_name().to_string_lossy(),
                                fs::read_link(e.path())
                                    .map(|l| l.display().to_string())
                                    .unwrap_or_default()
                            )
                        })
                        .collect();
                    r.log(&format!("  stapio fds: {}", v.join(" ")));
                }
            }
            let out = running.wait(Duration::from_secs(1));
            log_out(
                r,
                "alice$ staprun pmod run_ms=100   (root closes stapio's .cmd fd)",
                &out,
            );
            let inj_ok = injected.as_ref().is_some_and(|o| o.code == Some(0));
            r.check(
                "ctl_break_injected",
                inj_ok,
                format!(
                    "target {target:?}: {}",
                    injected.map(|o| o.summary()).unwrap_or_default()
                ),
            );
            r.check(
                "ctl_break_stapio_ends_with_error",
                inj_ok
                    && !out.timed_out
                    && out.signal.is_none()
                    && out.code.is_some_and(|c| c != 0)
                    && !out.stderr.trim().is_empty(),
                out.summary(),
            );
            r.check(
                "ctl_break_module_unloaded",
                !util::is_loaded("pmod") && !Path::new("/proc/systemtap/pmod").exists(),
                "",
            );
            check_nothing_loaded(r, "ctl_break", &[]);
        }
    }

    // 3. SIGKILL at random points (staprun or stapio), then `staprun -d`
    //    cleans up (PR10854).
    let mut rng = Rng::new(r);
    for i in 0..10 {
        let delay = Duration::from_millis(rng.below(2000));
        let running = match util::spawn(command_as(&ALICE, &[STAPRUN, "pmod", "run_ms=100"], &[])) {
            Ok(rn) => rn,
            Err(e) => {
                r.check(&format!("kill_{i}_spawn"), false, e.to_string());
                continue;
            }
        };
        std::thread::sleep(delay);
        let pid = running.child.id();
        let what = comm(pid);
        let _ = sys::kill(pid, libc::SIGKILL);
        let out = running.wait(Duration::from_secs(10));
        let loaded = util::is_loaded("pmod");
        let d = sr(&ALICE, &["-d", "pmod"]);
        r.log(&format!(
            "SIGKILL {what} after {delay:?}: signal {:?}; pmod loaded after: {loaded}; staprun -d: code {:?}",
            out.signal, d.code
        ));
        r.check(
            &format!("kill_{i}_d_cleans_up"),
            !util::is_loaded("pmod")
                && !Path::new("/proc/systemtap/pmod").exists()
                && (!loaded || d.code == Some(0)),
            format!("killed {what} after {delay:?}; -d: {}", d.summary()),
        );
        r.check(
            &format!("kill_{i}_no_stapio_left"),
            util::wait_until(Duration::from_secs(5), || stapio_pids().is_empty()),
            format!("{:?}", stapio_pids()),
        );
        check_nothing_loaded(r, &format!("kill_{i}"), &[]);
    }

    // 4. Output file system full.
    let full = "/tmp/full";
    let _ = fs::create_dir_all(full);
    let mounted = sys::mount("tmpfs", full, "tmpfs", 0, "size=64k,mode=1777");
    if r.check("full_fs_mounted", mounted.is_ok(), format!("{mounted:?}")) {
        let size = 200;
        let out = sr(
            &ALICE,
            &[
                "-o",
                "/tmp/full/out",
                "pmod",
                "records=2000",
                &format!("record_size={size}"),
            ],
        );
        log_out(
            r,
            "alice$ staprun -o /tmp/full/out pmod records=2000 record_size=200  (64 KiB fs)",
            &out,
        );
        let text = fs::read("/tmp/full/out")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        r.check(
            "full_fs_clear_error_nonzero",
            refused_after_start(&out) && out.stderr.contains("No space left on device"),
            out.summary(),
        );
        let prefix = valid_prefix(&text, size);
        r.log(&format!(
            "{} bytes written before the fs filled: {prefix:?}",
            text.len()
        ));
        r.check(
            "full_fs_data_is_intact_prefix",
            prefix.as_ref().is_ok_and(|n| *n > 0) && text.len() > 32 * 1024,
            format!("{} bytes: {prefix:?}", text.len()),
        );
        check_nothing_loaded(r, "full_fs", &[]);
        // The same with a module that keeps running (a timer probe): the
        // session must still end, unload, and say why.
        let _ = fs::remove_file("/tmp/full/out");
        let out = run(
            command_as(
                &ALICE,
                &[
                    STAPRUN,
                    "-o",
                    "/tmp/full/out",
                    "pmod",
                    "records=2000",
                    "record_size=200",
                    "run_ms=50",
                ],
                &[],
            ),
            Duration::from_secs(30),
        );
        log_out(
            r,
            "alice$ staprun -o /tmp/full/out pmod records=2000 record_size=200 run_ms=50  (64 KiB fs)",
            &out,
        );
        r.check(
            "full_fs_running_module_ends_with_error",
            refused_after_start(&out) && out.stderr.contains("No space left on device"),
            out.summary(),
        );
        check_nothing_loaded(r, "full_fs_running_module", &[]);
        let um = run(command_as(&ROOT, &["/bin/umount", full], &[]), RUN);
        r.check("full_fs_umount", um.code == Some(0), um.summary());
    }

    // 5. Relay overrun: stapio stopped for 2 s while the module writes
    //    far more than its 1 MiB buffers hold; the loss is counted.
    overrun_while_stopped(r);
    check_nothing_loaded(r, "end", &[]);
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<char> = s.chars().collect();
    v[v.len().saturating_sub(n)..].iter().collect()
}

/// Failed after the module started: non-zero exit, a message, no hang.
fn refused_after_start(out: &Out) -> bool {
    out.code.is_some_and(|c| c != 0)
        && !out.timed_out
        && out.signal.is_none()
        && !out.stderr.trim().is_empty()
}

fn overrun_while_stopped(r: &mut Reporter) {
    let mut cmd = command_as(
        &ALICE,
        &[
            STAPRUN,
            "-b",
            "1",
            "pmod",
            "records=3000",
            "record_size=2048",
        ],
        &[],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            r.check("overrun_spawn", false, e.to_string());
            return;
        }
    };
    let err = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let mut stdout = child.stdout.take();
    // The begin line, byte by byte, then stop stapio.
    let mut first = Vec::new();
    if let Some(o) = stdout.as_mut() {
        let mut b = [0u8; 1];
        while first.len() < 200 && !first.ends_with(b"\n") {
            match o.read(&mut b) {
                Ok(1) => first.push(b[0]),
                _ => break,
            }
        }
    }
    let stapio = stapio_pids().first().copied();
    if let Some(p) = stapio {
        let _ = sys::kill(p, libc::SIGSTOP);
        std::thread::sleep(Duration::from_secs(2));
        let _ = sys::kill(p, libc::SIGCONT);
    }
    let rest = stdout.map(|mut o| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = o.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    });
    let ended = util::wait_until(Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
    }
    let status = child.wait().ok();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&first),
        rest.and_then(|h| h.join().ok()).unwrap_or_default()
    );
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    for l in stderr.lines().take(5) {
        r.log(&format!("[overrun stderr] {l}"));
    }
    r.check(
        "overrun_stopped_stapio",
        stapio.is_some() && first.starts_with(HELLO.as_bytes()),
        format!(
            "stapio {stapio:?}, first line {:?}",
            String::from_utf8_lossy(&first)
        ),
    );
    r.check(
        "overrun_run_ends_normally",
        ended && status.and_then(|s| s.code()) == Some(0) && text.starts_with(HELLO),
        format!("status {status:?}, tail {:?}", tail(&text, 200)),
    );
    // The end line itself may be lost (written while the buffers are still
    // full); the count covers the gaps up to the last record delivered.
    let s = seqs(&text);
    let ncpu = crate::num_cpus() as u64;
    let total = 2 + 3000 * ncpu;
    let with_end = text.trim_end().ends_with(END);
    let delivered = s.len() as u64 + 1 + u64::from(with_end);
    let last = if with_end {
        total
    } else {
        s.iter().copied().max().unwrap_or(1)
    };
    let lost = stderr
        .lines()
        .find(|l| l.contains("lost messages"))
        .and_then(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "were")
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
        });
    r.check(
        "overrun_in_order",
        s.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers increase",
    );
    r.check(
        "overrun_loss_reported_and_counted",
        delivered < total && lost == Some(last.saturating_sub(delivered)),
        format!(
            "{delivered} of {total} records delivered (end line {with_end}, last seq {last}); warning says {lost:?} lost; stderr {stderr:?}"
        ),
    );
}
