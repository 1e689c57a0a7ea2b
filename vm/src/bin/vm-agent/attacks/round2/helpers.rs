//! The round-2 attacker's tools, run as `/init --attack NAME ...` (see [`helper`]).

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::sys::ptrace;
use crate::harness::{self, comm, proc_state, sys};

/// `/init --attack NAME ...` for the round-2 helpers; `None` if NAME is
/// not one of them.
pub fn helper(a: &[&str]) -> Option<i32> {
    let res = match a {
        ["stop-after-load", pid, module, ms] => stop_after_load(pid, module, ms),
        ["signal", pid, sigs @ ..] => signal(pid, sigs),
        ["trace", action, arg, user, argv @ ..] if !argv.is_empty() => {
            return Some(trace(action, arg, user, argv));
        }
        ["rlimit", res, value, argv @ ..] if !argv.is_empty() => rlimit(res, value, argv),
        ["personality", p, argv @ ..] if !argv.is_empty() => personality(p, argv),
        _ => return None,
    };
    Some(match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("attack helper: {e}");
            2
        }
    })
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what} {s:?}"))
}

/// As the caller: SIGSTOP staprun over and over; once it is stopped with
/// its module in the kernel, leave it stopped. Counts the kill(2) calls
/// the kernel refused (EPERM: the process is out of the caller's reach).
fn stop_after_load(pid: &str, module: &str, ms: &str) -> Result<(), String> {
    let pid: u32 = parse(pid, "pid")?;
    let end = Instant::now() + Duration::from_millis(parse(ms, "ms")?);
    let dir = format!("/proc/systemtap/{module}");
    let (mut tries, mut eperm, mut stopped) = (0u64, 0u64, false);
    let mut seen_staprun = false;
    while Instant::now() < end && Path::new(&format!("/proc/{pid}")).exists() {
        let c = comm(pid);
        if c == "staprun" {
            seen_staprun = true;
        } else if seen_staprun {
            break; // it became stapio (or exited): too late
        }
        tries += 1;
        match sys::kill(pid, libc::SIGSTOP) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eperm += 1;
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            Err(_) => break,
            Ok(()) => {}
        }
        harness::wait_until(Duration::from_secs(1), || {
            proc_state(pid) == 'T' || !Path::new(&format!("/proc/{pid}")).exists()
        });
        if proc_state(pid) == 'T' && comm(pid) == "staprun" && Path::new(&dir).exists() {
            stopped = true;
            break;
        }
        let _ = sys::kill(pid, libc::SIGCONT);
        std::thread::sleep(Duration::from_micros(300));
    }
    println!(
        "RESULT stopped={} tries={tries} eperm={eperm} comm={}",
        u8::from(stopped),
        comm(pid)
    );
    Ok(())
}

fn signal(pid: &str, sigs: &[&str]) -> Result<(), String> {
    let pid: u32 = parse(pid, "pid")?;
    let mut res = Vec::new();
    for s in sigs {
        let sig = match *s {
            "INT" => libc::SIGINT,
            "CONT" => libc::SIGCONT,
            "KILL" => libc::SIGKILL,
            "STOP" => libc::SIGSTOP,
            "TERM" => libc::SIGTERM,
            _ => return Err(format!("unknown signal {s}")),
        };
        res.push(match sys::kill(pid, sig) {
            Ok(()) => format!("{s}:ok"),
            Err(e) => format!("{s}:{}", e.raw_os_error().unwrap_or(0)),
        });
    }
    println!("RESULT sent={}", res.join(","));
    Ok(())
}

fn rlimit(res: &str, value: &str, argv: &[&str]) -> Result<(), String> {
    let r = match res {
        "nproc" => libc::RLIMIT_NPROC,
        "nofile" => libc::RLIMIT_NOFILE,
        "as" => libc::RLIMIT_AS,
        "cpu" => libc::RLIMIT_CPU,
        _ => return Err(format!("unknown resource {res}")),
    };
    sys::setrlimit(r, parse(value, "limit")?).map_err(|e| format!("setrlimit {res}: {e}"))?;
    let e = std::process::Command::new(argv[0]).args(&argv[1..]).exec();
    Err(format!("exec {}: {e}", argv[0]))
}

fn personality(p: &str, argv: &[&str]) -> Result<(), String> {
    let v = u64::from_str_radix(p.trim_start_matches("0x"), 16)
        .map_err(|e| format!("personality {p}: {e}"))?;
    sys::personality(v).map_err(|e| format!("personality: {e}"))?;
    let e = std::process::Command::new(argv[0]).args(&argv[1..]).exec();
    Err(format!("exec {}: {e}", argv[0]))
}

fn syscall_name(nr: i64) -> Option<&'static str> {
    Some(match nr {
        libc::SYS_init_module => "init_module",
        libc::SYS_finit_module => "finit_module",
        libc::SYS_delete_module => "delete_module",
        libc::SYS_sendto => "sendto",
        libc::SYS_connect => "connect",
        libc::SYS_execve => "execve",
        libc::SYS_setresuid => "setresuid",
        _ => return None,
    })
}

/// As root: run `argv` as `user` under ptrace (PTRACE_TRACEME by a root
/// tracer, so the setuid exec keeps its privilege) and log the system
/// calls that matter. ACTION, done once:
/// - `rm-at-sendto PATH`: at the first sendto entry (the first syslog
///   line), remove PATH;
/// - `kill-after-init -`: SIGKILL the tracee when init_module returns;
/// - `fail-exec -`: the first execve after start fails (ENOSYS).
fn trace(action: &str, arg: &str, user: &str, argv: &[&str]) -> i32 {
    let Some(user) = harness::users::named(user) else {
        eprintln!("unknown user {user}");
        return 2;
    };
    // PTRACE_TRACEME while the child is still root: the kernel records
    // the tracer's credentials then, and a root tracer keeps the setuid
    // exec privileged. The child then becomes `user` and execs.
    let mut cmd = std::process::Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(harness::user_env(&user))
        .current_dir("/tmp");
    ptrace::traceme_before_exec(&mut cmd);
    sys::set_creds(&mut cmd, user.creds());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spawn {}: {e}", argv[0]);
            return 2;
        }
    };
    let pid = i32::try_from(child.id()).unwrap_or(-1);
    let mut order: Vec<String> = Vec::new();
    let mut done = false;
    let mut code = 255;
    // The stop after the exec of argv[0].
    match sys::waitpid(pid, libc::__WALL) {
        Ok(st) if libc::WIFSTOPPED(st) => {}
        other => {
            eprintln!("no exec stop: {other:?}");
            return 2;
        }
    }
    if let Err(e) = ptrace::set_options(pid, libc::PTRACE_O_TRACESYSGOOD) {
        eprintln!("PTRACE_SETOPTIONS: {e}");
    }
    let mut sig = 0;
    let t0 = Instant::now();
    loop {
        if ptrace::syscall(pid, sig).is_err() {
            break;
        }
        sig = 0;
        let Ok(st) = sys::waitpid(pid, libc::__WALL) else {
            break;
        };
        if libc::WIFEXITED(st) {
            code = libc::WEXITSTATUS(st);
            break;
        }
        if libc::WIFSIGNALED(st) {
            code = 128 + libc::WTERMSIG(st);
            break;
        }
        if !libc::WIFSTOPPED(st) {
            continue;
        }
        let s = libc::WSTOPSIG(st);
        if s != (libc::SIGTRAP | 0x80) {
            // A signal for the tracee (not the exec trap): pass it on.
            if s != libc::SIGTRAP {
                sig = s;
            }
            continue;
        }
        let Ok(op) = ptrace::syscall_op(pid) else {
            continue;
        };
        let Ok(mut regs) = ptrace::getregs(pid) else {
            continue;
        };
        let nr = regs.orig_rax as i64;
        let Some(name) = syscall_name(nr) else {
            continue;
        };
        if op == 1 {
            order.push(name.to_owned());
            if !done && action == "rm-at-sendto" && name == "sendto" {
                done = fs::remove_file(arg).is_ok();
                order.push("REMOVED".into());
            }
            if !done && action == "fail-exec" && name == "execve" {
                regs.orig_rax = u64::MAX;
                done = ptrace::setregs(pid, &regs).is_ok();
                order.push("FAILED".into());
            }
        } else if op == 2
            && !done
            && action == "kill-after-init"
            && (name == "init_module" || name == "finit_module")
        {
            done = sys::kill(child.id(), libc::SIGKILL).is_ok();
            order.push("KILLED".into());
        }
        if t0.elapsed() > Duration::from_secs(90) {
            let _ = sys::kill(child.id(), libc::SIGKILL);
        }
    }
    let _ = child.wait();
    println!(
        "RESULT order={} done={} code={code}",
        order.join(","),
        u8::from(done)
    );
    code
}
