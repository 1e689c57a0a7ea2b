//! Security round 2 (issue 12): one scenario per item of the audit, each
//! named after its item (`attack_r2_<n>_<what>`). Every scenario tries the
//! attack as an unprivileged user on a real kernel and checks that it
//! fails and that no module is left loaded. `docs/attacks.md` has a row
//! for each.
//!
//! Helpers run as `/init --attack NAME ...` (see [`helper`]):
//! `stop-after-load` (a stapusr member trying to freeze staprun once its
//! module is in), `signal` (kill(2) as the caller), `trace` (as root: run
//! staprun as a user under ptrace, log its system calls and act at one of
//! them), `rlimit` and `personality` (set one, then exec).

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{PermissionsExt as _, chown};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::attacks::{
    self, HELLO, RUN, STAPRUN, check_nothing_loaded, comm, fixture, full_run, helper_run,
    installed, log_out, proc_state, publish, put, refused, result_field, result_num, sr,
    staprun_os, syslog_lines, syslog_start,
};
use crate::scenarios::blessed_dir;
use crate::sys;
use crate::util::{self, ALICE, BOB, Bg, CAROL, ROOT, Reporter, SAM, STAPDEV, User, command_as};

pub const SCENARIOS: &[(&str, crate::scenarios::Scenario)] = &[
    ("attack_r2_1_privileged_window", privileged_window),
    ("attack_r2_2_caller_path", caller_path),
    ("attack_r2_3_audit_before_load", audit_before_load),
    ("attack_r2_4_param_split", param_split),
    ("attack_r2_5_acl", acl),
    ("attack_r2_6_large_groups", large_groups),
    ("attack_r2_7_failed_start", failed_start),
    ("attack_r2_8_small_items", small_items),
];

// ---- raw system calls (test-side only) ---------------------------------

mod raw {
    use std::ffi::CStr;
    use std::io;

    fn check(rc: libc::c_int) -> io::Result<()> {
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn setrlimit(res: libc::__rlimit_resource_t, v: u64) -> io::Result<()> {
        let l = libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        // SAFETY: `l` is a live, initialised rlimit.
        check(unsafe { libc::setrlimit(res, &l) })
    }

    pub fn personality(p: u64) -> io::Result<()> {
        // SAFETY: integer argument only.
        let rc = unsafe { libc::personality(p as libc::c_ulong) };
        check(rc)
    }

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

    pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
        // SAFETY: both strings are NUL-terminated.
        check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })
    }

    pub fn set_ptrace_options(pid: i32, opts: i32) -> io::Result<()> {
        // SAFETY: PTRACE_SETOPTIONS takes integers only.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_SETOPTIONS,
                pid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::without_provenance_mut::<libc::c_void>(opts as usize),
            )
        };
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

// ---- helpers run inside the guest ---------------------------------------

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
        util::wait_until(Duration::from_secs(1), || {
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
    raw::setrlimit(r, parse(value, "limit")?).map_err(|e| format!("setrlimit {res}: {e}"))?;
    let e = std::process::Command::new(argv[0]).args(&argv[1..]).exec();
    Err(format!("exec {}: {e}", argv[0]))
}

fn personality(p: &str, argv: &[&str]) -> Result<(), String> {
    let v = u64::from_str_radix(p.trim_start_matches("0x"), 16)
        .map_err(|e| format!("personality {p}: {e}"))?;
    raw::personality(v).map_err(|e| format!("personality: {e}"))?;
    let e = std::process::Command::new(argv[0]).args(&argv[1..]).exec();
    Err(format!("exec {}: {e}", argv[0]))
}

fn user_named(name: &str) -> Option<User> {
    [ROOT, ALICE, BOB, SAM, CAROL]
        .into_iter()
        .find(|u| u.name == name)
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
    let Some(user) = user_named(user) else {
        eprintln!("unknown user {user}");
        return 2;
    };
    // PTRACE_TRACEME while the child is still root: the kernel records
    // the tracer's credentials then, and a root tracer keeps the setuid
    // exec privileged. The child then becomes `user` and execs.
    let mut cmd = std::process::Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(util::user_env(&user))
        .current_dir("/tmp");
    attacks::raw::traceme_before_exec(&mut cmd);
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
    match attacks::raw::waitpid(pid, libc::__WALL) {
        Ok(st) if libc::WIFSTOPPED(st) => {}
        other => {
            eprintln!("no exec stop: {other:?}");
            return 2;
        }
    }
    if let Err(e) = raw::set_ptrace_options(pid, libc::PTRACE_O_TRACESYSGOOD) {
        eprintln!("PTRACE_SETOPTIONS: {e}");
    }
    let mut sig = 0;
    let t0 = Instant::now();
    loop {
        if attacks::raw::syscall(pid, sig).is_err() {
            break;
        }
        sig = 0;
        let Ok(st) = attacks::raw::waitpid(pid, libc::__WALL) else {
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
        let Ok(op) = attacks::raw::syscall_op(pid) else {
            continue;
        };
        let Ok(mut regs) = attacks::raw::getregs(pid) else {
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
                done = attacks::raw::setregs(pid, &regs).is_ok();
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

// ---- shared bits ---------------------------------------------------------

fn cmd_owner(module: &str) -> Option<u32> {
    util::stat(format!("/proc/systemtap/{module}/.cmd")).map(|s| s.1)
}

fn cstr(p: impl AsRef<Path>) -> CString {
    CString::new(p.as_ref().as_os_str().as_bytes()).unwrap_or_default()
}

fn chmod(p: impl AsRef<Path>, mode: u32) -> io::Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

// ---- item 1: the privileged window ---------------------------------------

/// Alice freezes her staprun once its module is loaded, unloads that
/// module, lets bob load his module of the same name, then makes her
/// staprun go on (SIGINT + SIGCONT). Her staprun must neither write into
/// bob's control file nor unload bob's module; and between its decision
/// and its privilege drop she must not be able to signal it at all.
fn privileged_window(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    publish("pmod");
    let mut eperm = 0u64;
    let mut caught = 0;
    for attempt in 0..6 {
        let alice = Bg::start(command_as(
            &ALICE,
            &[STAPRUN, "pmod", "run_ms=100", "exit_after_ms=1000"],
            &[],
        ));
        let Ok(alice) = alice else {
            r.check("spawn_alice", false, "");
            return;
        };
        let pid = alice.pid().to_string();
        let h = helper_run(&ALICE, &["stop-after-load", &pid, "pmod", "20000"]);
        r.log(&format!("attempt {attempt}: {}", first_line(&h.stdout)));
        eperm += result_num(&h, "eperm");
        if result_field(&h, "stopped").as_deref() != Some("1") {
            let out = alice.wait(RUN);
            log_out(r, &format!("attempt {attempt}: alice$ staprun pmod"), &out);
            r.check(
                &format!("attempt{attempt}_alice_run_unharmed"),
                full_run(&out),
                out.summary(),
            );
            check_nothing_loaded(r, &format!("attempt{attempt}"), &[]);
            continue;
        }
        caught += 1;
        // Her own module, nobody attached: -d removes it.
        let d = sr(&ALICE, &["-d", "pmod"]);
        log_out(
            r,
            "alice$ staprun -d pmod (hers, while her staprun is stopped)",
            &d,
        );
        // Bob starts his module detached (-L): loaded, running, nobody
        // attached, so any root process could open its control file.
        let b = sr(&BOB, &["-L", "pmod", "run_ms=100"]);
        log_out(r, "bob$ staprun -L pmod run_ms=100", &b);
        r.check(
            "bob_module_running",
            b.code == Some(0) && cmd_owner("pmod") == Some(BOB.uid),
            format!("owner {:?}", cmd_owner("pmod")),
        );
        let s = helper_run(&ALICE, &["signal", &pid, "INT", "CONT"]);
        r.log(&format!(
            "alice signals her staprun: {}",
            first_line(&s.stdout)
        ));
        let out = alice.wait(RUN);
        log_out(r, "alice's staprun after SIGINT+SIGCONT", &out);
        r.check(
            "bob_module_still_loaded_and_his",
            util::is_loaded("pmod") && cmd_owner("pmod") == Some(BOB.uid),
            format!(
                "loaded {} owner {:?}",
                util::is_loaded("pmod"),
                cmd_owner("pmod")
            ),
        );
        r.check("alice_staprun_failed", out.code != Some(0), out.summary());
        r.check(
            "alice_never_reached_bobs_module",
            !out.stdout.contains(HELLO),
            out.summary(),
        );
        // Bob's module is intact: he ends it.
        let d = sr(&BOB, &["-d", "pmod"]);
        log_out(r, "bob$ staprun -d pmod", &d);
        r.check(
            "bob_module_ends_by_bob",
            !util::is_loaded("pmod"),
            d.summary(),
        );
        check_nothing_loaded(r, "after_race", &[]);
        break;
    }
    r.log(&format!(
        "stopped after the load in {caught} attempt(s); kill(2) refused {eperm} times"
    ));
    r.check(
        "caller_cannot_signal_staprun_in_window",
        eperm > 0,
        format!("kill(2) by the caller refused {eperm} times"),
    );
    check_nothing_loaded(r, "end", &[]);
}

// ---- item 2: the caller's path is resolved with the caller's rights ------

fn caller_path(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    publish("pmod");
    let rel = sys::kernel_release();
    let _ = chmod("/root", 0o700);
    let _ = chown("/root", Some(0), Some(0));
    let through_secret = format!("/root/secret/../../lib/modules/{rel}/systemtap/pmod.ko");
    let answer = |r: &mut Reporter, exists: bool, args: &[&str]| {
        if exists {
            let _ = fs::create_dir_all("/root/secret");
        } else {
            let _ = fs::remove_dir("/root/secret");
        }
        let out = sr(&ALICE, args);
        log_out(
            r,
            &format!(
                "alice$ staprun {} (/root/secret {})",
                args.join(" "),
                if exists { "exists" } else { "absent" }
            ),
            &out,
        );
        out
    };
    let with = answer(r, true, &["--explain", &through_secret]);
    let without = answer(r, false, &["--explain", &through_secret]);
    r.check(
        "explain_is_no_oracle",
        with.code == without.code && with.stdout == without.stdout,
        format!("with: {} | without: {}", with.summary(), without.summary()),
    );
    r.check(
        "explain_refuses_a_path_the_caller_cannot_resolve",
        with.code == Some(1),
        with.summary(),
    );
    let load = answer(r, true, &[&through_secret]);
    r.check(
        "load_through_unsearchable_dir_refused",
        refused(&load),
        load.summary(),
    );
    check_nothing_loaded(r, "secret", &[]);
    // /proc magic links are followed with the caller's rights only.
    let magic = format!("/proc/1/root/lib/modules/{rel}/systemtap/pmod.ko");
    let out = sr(&ALICE, &["--explain", &magic]);
    log_out(r, &format!("alice$ staprun --explain {magic}"), &out);
    r.check(
        "magic_link_not_followed_for_caller",
        out.code == Some(1),
        out.summary(),
    );
    let out = sr(&ALICE, &[&magic]);
    r.check("magic_link_load_refused", refused(&out), out.summary());
    check_nothing_loaded(r, "magic", &[]);
    // The ordinary ways still work.
    let out = sr(&ALICE, &["--explain", "pmod"]);
    r.check(
        "explain_by_name_allowed",
        out.code == Some(0),
        out.summary(),
    );
    let full = format!("/lib/modules/{rel}/systemtap/pmod.ko");
    let out = sr(&ALICE, &[&full]);
    r.check("load_by_full_path_runs", full_run(&out), out.summary());
    check_nothing_loaded(r, "end", &[]);
}

// ---- item 3: audit before acting ------------------------------------------

fn audit_before_load(r: &mut Reporter) {
    if !installed(r) || !syslog_start(r) {
        return;
    }
    let module = publish("pmod");
    let ko = module.display().to_string();
    // The module disappears from the blessed directory between the
    // decision and the load (root removes it while staprun logs).
    let from = syslog_lines().len();
    let out = helper_run(
        &ROOT,
        &["trace", "rm-at-sendto", &ko, "alice", STAPRUN, "pmod"],
    );
    log_out(
        r,
        "alice$ staprun pmod (traced; pmod.ko removed at the first syslog line)",
        &out,
    );
    let order = result_field(&out, "order").unwrap_or_default();
    let pos = |n: &str| order.split(',').position(|x| x == n);
    r.check(
        "audit_line_sent_before_init_module",
        matches!((pos("sendto"), pos("init_module")), (Some(s), Some(i)) if s < i)
            || (pos("sendto").is_some() && pos("init_module").is_none()),
        &order,
    );
    r.check(
        "removed_module_not_loaded",
        pos("REMOVED").is_some()
            && pos("init_module").is_none_or(|i| i < pos("REMOVED").unwrap_or(0)),
        &order,
    );
    r.check(
        "refused_with_reason",
        out.code.is_some_and(|c| c != 0) && out.stderr.contains("removed"),
        out.summary(),
    );
    check_nothing_loaded(r, "removed", &[]);
    let lines: Vec<String> = syslog_lines().into_iter().skip(from).collect();
    r.log(&format!("syslog: {lines:?}"));
    r.check(
        "attempt_logged_with_path_and_hash",
        lines
            .iter()
            .any(|l| l.contains("LOADING") && l.contains(&ko) && l.contains("sha256=")),
        format!("{lines:?}"),
    );
    // A SIGKILL right after init_module: the module stays loaded, and the
    // audit trail says who loaded what.
    let module = publish("pmod");
    let from = syslog_lines().len();
    let out = helper_run(
        &ROOT,
        &["trace", "kill-after-init", "-", "alice", STAPRUN, "pmod"],
    );
    log_out(
        r,
        "alice$ staprun pmod (traced; SIGKILL when init_module returns)",
        &out,
    );
    let lines: Vec<String> = syslog_lines().into_iter().skip(from).collect();
    r.log(&format!("syslog: {lines:?}"));
    r.check(
        "killed_after_init_leaves_a_trace",
        lines.iter().any(|l| {
            l.contains("LOADING")
                && l.contains("user=\"alice\"")
                && l.contains(&module.display().to_string())
        }),
        format!("{lines:?}"),
    );
    // Alice cleans up her own module.
    let d = sr(&ALICE, &["-d", "pmod"]);
    log_out(r, "alice$ staprun -d pmod", &d);
    // A normal run logs the attempt, then the outcome, with one hash.
    let from = syslog_lines().len();
    let out = sr(&ALICE, &["pmod"]);
    r.check("normal_run", full_run(&out), out.summary());
    let lines: Vec<String> = syslog_lines().into_iter().skip(from).collect();
    let hash = |tag: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!(": {tag} ")))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("sha256="))
                    .map(str::to_owned)
            })
    };
    r.check(
        "attempt_then_outcome_same_hash",
        hash("LOADING").is_some() && hash("LOADING") == hash("LOAD"),
        format!("{lines:?}"),
    );
    check_nothing_loaded(r, "end", &[]);
}

// ---- item 4: one argument, one kernel parameter ----------------------------

fn param_split(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    publish("pmod");
    // U+00E0 is C3 A0 in UTF-8; the kernel's isspace() takes A0 as a space.
    let cases: &[(&str, &[u8])] = &[
        ("value", b"system_cmd=\xc3\xa0init_errno=5"),
        ("name", b"x\xc3\xa0init_errno=5"),
        ("nbsp_value", b"system_cmd=true\xc2\xa0init_errno=5"),
    ];
    for (tag, arg) in cases {
        let out = staprun_os(
            &ALICE,
            &[OsStr::new("pmod"), OsStr::from_bytes(arg)],
            &[],
            RUN,
        );
        log_out(
            r,
            &format!("alice$ staprun pmod {:?}", String::from_utf8_lossy(arg)),
            &out,
        );
        // init_errno=5 would make the module's init fail with EIO.
        r.check(
            &format!("{tag}_stays_one_parameter"),
            !out.stderr.contains("Input/output error") && (full_run(&out) || refused(&out)),
            out.summary(),
        );
        check_nothing_loaded(r, tag, &[]);
    }
}

// ---- item 5: POSIX ACLs ------------------------------------------------------

const ACL_XATTR: &str = "system.posix_acl_access";
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const UNDEF: u32 = u32::MAX;
/// (tag, id, permission bits).
type AclEntry = (u16, u32, u16);

/// An access ACL: owner rwx, owning group r-x, the named `extra` entries,
/// mask rwx, other r-x.
fn acl_bytes(extra: &[(u16, u32, u16)]) -> Vec<u8> {
    let mut e = vec![(ACL_USER_OBJ, UNDEF, 7u16), (ACL_GROUP_OBJ, UNDEF, 5)];
    e.extend(extra.iter().map(|&(t, id, p)| (t, id, p)));
    e.push((ACL_MASK, UNDEF, 7));
    e.push((ACL_OTHER, UNDEF, 5));
    e.sort_by_key(|&(t, id, _)| (t, id));
    let mut v = 2u32.to_le_bytes().to_vec();
    for (t, id, p) in e {
        v.extend_from_slice(&t.to_le_bytes());
        v.extend_from_slice(&p.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn set_acl(p: &Path, extra: &[(u16, u32, u16)]) -> io::Result<()> {
    raw::setxattr(&cstr(p), &cstr(ACL_XATTR), &acl_bytes(extra))
}

fn clear_acl(p: &Path, mode: u32) {
    let _ = raw::removexattr(&cstr(p), &cstr(ACL_XATTR));
    let _ = chmod(p, mode);
}

fn acl(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    let module = publish("pmod");
    let blessed = blessed_dir();
    let parent = blessed.parent().map(Path::to_path_buf).unwrap_or_default();
    let supported = set_acl(&module, &[(ACL_USER, ALICE.uid, 4)]);
    if !r.check("acl_supported", supported.is_ok(), format!("{supported:?}")) {
        return;
    }
    // A read-only grant is harmless.
    let out = sr(&ALICE, &["pmod"]);
    r.check("read_only_acl_runs", full_run(&out), out.summary());
    clear_acl(&module, 0o644);
    let cases: &[(&str, &PathBuf, u32, AclEntry)] = &[
        (
            "module_user_alice_rw",
            &module,
            0o644,
            (ACL_USER, ALICE.uid, 6),
        ),
        (
            "blessed_dir_user_alice_rwx",
            &blessed,
            0o755,
            (ACL_USER, ALICE.uid, 7),
        ),
        (
            "blessed_dir_group_alice_rwx",
            &blessed,
            0o755,
            (ACL_GROUP, ALICE.gid, 7),
        ),
        (
            "ancestor_user_alice_rwx",
            &parent,
            0o755,
            (ACL_USER, ALICE.uid, 7),
        ),
    ];
    for (tag, path, mode, entry) in cases {
        let set = set_acl(path, &[*entry]);
        let st = util::stat(path);
        r.log(&format!(
            "{tag}: acl on {} ({set:?}), stat {st:?}",
            path.display()
        ));
        let out = sr(&ALICE, &["pmod"]);
        log_out(r, &format!("alice$ staprun pmod ({tag})"), &out);
        r.check(
            &format!("{tag}_refused_naming_acl"),
            refused(&out) && out.stderr.contains("ACL") && out.stderr.contains("alice"),
            out.summary(),
        );
        let ex = sr(&ALICE, &["--explain", "pmod"]);
        r.check(
            &format!("{tag}_explain_agrees"),
            ex.code == Some(1) && ex.stdout.contains("ACL"),
            ex.summary(),
        );
        check_nothing_loaded(r, tag, &[]);
        clear_acl(path, *mode);
    }
    // Write granted to stapdev (the 775 root:stapdev layout's publishers) is allowed.
    let set = set_acl(&blessed, &[(ACL_GROUP, STAPDEV, 7)]);
    r.log(&format!("stapdev acl on the blessed dir: {set:?}"));
    let out = sr(&ALICE, &["pmod"]);
    r.check("stapdev_group_acl_runs", full_run(&out), out.summary());
    clear_acl(&blessed, 0o755);
    check_nothing_loaded(r, "end", &[]);
}

// ---- item 6: large groups ------------------------------------------------------

fn large_groups(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    publish("pmod");
    let saved = fs::read_to_string("/etc/group").unwrap_or_default();
    let many: Vec<String> = (0..5000).map(|i| format!("member_{i:05}")).collect();
    let many = many.join(",");
    let grown: String = saved
        .lines()
        .map(|l| {
            if l.starts_with("stapusr:") || l.starts_with("stapdev:") || l.starts_with("stapsys:") {
                format!("{l},{many}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    if !r.check(
        "group_file_grown",
        fs::write("/etc/group", &grown).is_ok() && grown.len() > 2 * 65536,
        format!("{} bytes", grown.len()),
    ) {
        return;
    }
    let out = sr(&ALICE, &["pmod"]);
    log_out(r, "alice$ staprun pmod (5000 members in stapusr)", &out);
    r.check("stapusr_member_runs", full_run(&out), out.summary());
    let ex = sr(&ALICE, &["--explain", "pmod"]);
    r.check(
        "explain_names_stapusr",
        ex.code == Some(0) && ex.stdout.contains("stapusr"),
        ex.summary(),
    );
    // stapdev: any path.
    let _ = put("/tmp/elsewhere.ko", &fixture("pmod"), 0o644, &BOB);
    let out = sr(&BOB, &["/tmp/elsewhere.ko"]);
    log_out(
        r,
        "bob$ staprun /tmp/elsewhere.ko (5000 members in stapdev)",
        &out,
    );
    r.check(
        "stapdev_member_runs_any_path",
        full_run(&out),
        out.summary(),
    );
    // The 775 root:stapdev layout: a module owned by a stapdev member.
    let blessed = blessed_dir();
    let _ = chmod(&blessed, 0o775);
    let _ = chown(&blessed, Some(0), Some(STAPDEV));
    let _ = put(blessed.join("pmod.ko"), &fixture("pmod"), 0o644, &BOB);
    let out = sr(&ALICE, &["pmod"]);
    log_out(
        r,
        "alice$ staprun pmod (775 root:stapdev, owned by bob)",
        &out,
    );
    r.check("stapdev_owned_module_runs", full_run(&out), out.summary());
    let _ = chmod(&blessed, 0o755);
    let _ = chown(&blessed, Some(0), Some(0));
    publish("pmod");
    let _ = fs::write("/etc/group", saved);
    let _ = fs::remove_file("/tmp/elsewhere.ko");
    check_nothing_loaded(r, "end", &[]);
}

// ---- item 7: a failed start unloads ---------------------------------------------

fn failed_start(r: &mut Reporter) {
    if !installed(r) || !syslog_start(r) {
        return;
    }
    publish("pmod");
    // An option stapio refuses is refused before anything is loaded.
    let from = syslog_lines().len();
    let out = sr(&ALICE, &["-M", "1", "pmod"]);
    log_out(r, "alice$ staprun -M 1 pmod", &out);
    r.check("monitor_refused", refused(&out), out.summary());
    let lines: Vec<String> = syslog_lines().into_iter().skip(from).collect();
    r.check(
        "monitor_refused_before_load",
        !lines.iter().any(|l| l.contains("LOAD")),
        format!("{lines:?}"),
    );
    check_nothing_loaded(r, "monitor", &[]);
    // No processes: stapio cannot create its threads.
    let out = helper_run(&ALICE, &["rlimit", "nproc", "0", STAPRUN, "pmod"]);
    log_out(r, "alice$ ulimit -u 0; staprun pmod", &out);
    r.check(
        "nproc0_fails_cleanly",
        out.code.is_some_and(|c| c != 0) && !out.timed_out,
        out.summary(),
    );
    check_nothing_loaded(r, "nproc0", &[]);
    // stapio cannot be executed.
    let out = helper_run(
        &ROOT,
        &["trace", "fail-exec", "-", "alice", STAPRUN, "pmod"],
    );
    log_out(
        r,
        "alice$ staprun pmod (traced; the exec of stapio fails)",
        &out,
    );
    r.check(
        "exec_failure_fails_cleanly",
        result_field(&out, "done").as_deref() == Some("1") && out.code.is_some_and(|c| c != 0),
        out.summary(),
    );
    check_nothing_loaded(r, "exec_failure", &[]);
    // Few file descriptors, little memory: every limit either runs the
    // script or fails, and never leaves the module loaded.
    let limits: &[(&str, &[u64])] = &[
        ("nofile", &[4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 20]),
        (
            "as",
            &[
                4 << 20,
                8 << 20,
                12 << 20,
                16 << 20,
                24 << 20,
                32 << 20,
                48 << 20,
                64 << 20,
                96 << 20,
            ],
        ),
    ];
    for (res, values) in limits {
        let mut after_load = 0;
        let mut ran = 0;
        for v in *values {
            let from = syslog_lines().len();
            let out = helper_run(&ALICE, &["rlimit", res, &v.to_string(), STAPRUN, "pmod"]);
            let lines: Vec<String> = syslog_lines().into_iter().skip(from).collect();
            let loaded = lines.iter().any(|l| l.contains("LOAD"));
            r.log(&format!(
                "{res}={v}: exit {:?} signal {:?} loaded {loaded} | {}",
                out.code,
                out.signal,
                first_line(&out.stderr)
            ));
            let tag = format!("{res}_{v}");
            r.check(
                &format!("{tag}_ran_or_failed"),
                !out.timed_out && (full_run(&out) || out.code.is_some_and(|c| c != 0)),
                out.summary(),
            );
            if full_run(&out) {
                ran += 1;
            } else if loaded {
                after_load += 1;
            }
            check_nothing_loaded(r, &tag, &[]);
        }
        r.log(&format!(
            "{res}: {ran} full runs, {after_load} failures after the load"
        ));
        r.check(
            &format!("{res}_some_limit_fails_after_the_load"),
            after_load > 0,
            format!("{after_load}"),
        );
    }
    check_nothing_loaded(r, "end", &[]);
}

// ---- item 8: smaller items ----------------------------------------------------

/// A copy of a module with a decoy `.gnu.linkonce.this_module` section
/// (not SHF_ALLOC, so the kernel ignores it) placed before the real one
/// and naming `decoy`. The real section moves to the end of the section
/// table; relocation sections and symbols that referred to it follow.
pub fn with_decoy_name(image: &[u8], decoy: &str) -> Option<Vec<u8>> {
    let rd = |b: &[u8], o: usize, n: usize| -> Option<u64> {
        let s = b.get(o..o + n)?;
        Some(s.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
    };
    let us = |v: u64| usize::try_from(v).ok();
    if image.get(0..6) != Some(b"\x7fELF\x02\x01") {
        return None;
    }
    let shoff = us(rd(image, 0x28, 8)?)?;
    let shentsize = us(rd(image, 0x3a, 2)?)?;
    let shnum = us(rd(image, 0x3c, 2)?)?;
    let shstrndx = us(rd(image, 0x3e, 2)?)?;
    let hdr = |i: usize| shoff + i * shentsize;
    let stroff = us(rd(image, hdr(shstrndx) + 0x18, 8)?)?;
    let real = (0..shnum).find(|&i| {
        let name = rd(image, hdr(i), 4).and_then(us).unwrap_or(usize::MAX);
        image
            .get(stroff + name..)
            .is_some_and(|n| n.starts_with(b".gnu.linkonce.this_module\0"))
    })?;
    let mut out = image.to_vec();
    // The decoy's bytes: the real section with another name.
    let (off, size) = (
        us(rd(image, hdr(real) + 0x18, 8)?)?,
        us(rd(image, hdr(real) + 0x20, 8)?)?,
    );
    let mut blob = image.get(off..off + size)?.to_vec();
    let field = blob.get_mut(24..24 + 56)?;
    field.fill(0);
    field
        .get_mut(..decoy.len())?
        .copy_from_slice(decoy.as_bytes());
    while out.len() % 8 != 0 {
        out.push(0);
    }
    let blob_off = out.len();
    out.extend_from_slice(&blob);
    while out.len() % 8 != 0 {
        out.push(0);
    }
    // New section table: the old one plus the real section at the end.
    let new_shoff = out.len();
    let mut table = image.get(shoff..shoff + shnum * shentsize)?.to_vec();
    let real_hdr = table[real * shentsize..(real + 1) * shentsize].to_vec();
    table.extend_from_slice(&real_hdr);
    let moved = shnum;
    {
        let d = &mut table[real * shentsize..(real + 1) * shentsize];
        d[4..8].copy_from_slice(&1u32.to_le_bytes()); // SHT_PROGBITS
        d[8..16].copy_from_slice(&0u64.to_le_bytes()); // flags: not SHF_ALLOC
        d[16..24].copy_from_slice(&0u64.to_le_bytes()); // addr
        d[24..32].copy_from_slice(&(blob_off as u64).to_le_bytes());
        d[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        d[40..48].copy_from_slice(&0u64.to_le_bytes()); // link, info
    }
    for i in 0..=shnum {
        let h = i * shentsize;
        let ty = rd(&table, h + 4, 4)?;
        let info = rd(&table, h + 44, 4)?;
        if (ty == 4 || ty == 9) && us(info)? == real {
            table[h + 44..h + 48].copy_from_slice(&(moved as u32).to_le_bytes());
        }
        if ty == 2 {
            // .symtab: st_shndx (u16 at +6) of every 24-byte symbol.
            let (so, ss) = (us(rd(&table, h + 24, 8)?)?, us(rd(&table, h + 32, 8)?)?);
            for s in (so..so + ss).step_by(24) {
                if us(rd(&out, s + 6, 2)?)? == real {
                    out[s + 6..s + 8].copy_from_slice(&(moved as u16).to_le_bytes());
                }
            }
        }
    }
    out.extend_from_slice(&table);
    out[0x28..0x30].copy_from_slice(&(new_shoff as u64).to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&u16::try_from(shnum + 1).ok()?.to_le_bytes());
    Some(out)
}

fn small_items(r: &mut Reporter) {
    if !installed(r) {
        return;
    }
    publish("pmod");
    let rel = sys::kernel_release();
    // UNAME26 makes uname(2) report 2.6.x: the blessed directory must not follow.
    let out = helper_run(
        &ALICE,
        &["personality", "0x0020000", STAPRUN, "--explain", "pmod"],
    );
    log_out(r, "alice$ setarch --uname-2.6 staprun --explain pmod", &out);
    r.check(
        "uname26_keeps_the_real_blessed_dir",
        out.code == Some(0) && out.stdout.contains(&rel),
        out.summary(),
    );
    let out = helper_run(&ALICE, &["personality", "0x0020000", STAPRUN, "pmod"]);
    r.check("uname26_load_runs", full_run(&out), out.summary());
    check_nothing_loaded(r, "uname26", &[]);
    // The name comes from the SHF_ALLOC .gnu.linkonce.this_module only.
    let decoy = with_decoy_name(&fixture("pmod"), "fixture_a");
    if r.check("decoy_built", decoy.is_some(), "") {
        let p = blessed_dir().join("pmod.ko");
        let _ = put(&p, &decoy.unwrap_or_default(), 0o644, &ROOT);
        let out = sr(&ALICE, &["pmod"]);
        log_out(
            r,
            "alice$ staprun pmod (decoy this_module section naming fixture_a)",
            &out,
        );
        r.check("decoy_name_ignored_runs", full_run(&out), out.summary());
        check_nothing_loaded(r, "decoy", &[]);
        publish("pmod");
    }
    // FIPS mode: the C staprun refuses to load; so do we.
    let fips = "/proc/sys/crypto/fips_enabled";
    let _ = fs::write("/run/fips-on", "1\n");
    let mounted =
        Path::new(fips).exists() && sys::mount("/run/fips-on", fips, "", libc::MS_BIND, "").is_ok();
    if r.check("fips_switch_mounted", mounted, fips) {
        let out = sr(&ALICE, &["pmod"]);
        log_out(r, "alice$ staprun pmod (fips_enabled=1)", &out);
        r.check(
            "fips_refused",
            refused(&out) && out.stderr.contains("FIPS"),
            out.summary(),
        );
        check_nothing_loaded(r, "fips", &[]);
        let _ = sys::umount(fips);
    }
    check_nothing_loaded(r, "end", &[]);
}
