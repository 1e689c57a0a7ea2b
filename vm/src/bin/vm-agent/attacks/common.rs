//! What the attack scenarios share: running staprun as the attacker, judging a run, the
//! watchers (modules and root processes during a race, the syslog listener for staprun's
//! audit lines), the kernel's health, and the race driver (`hammer`).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::helpers::STOP_FILE;
use crate::harness::{
    self, END, HELLO, Out, ROOT, Reporter, STAPRUN, User, command_as, fixture, fixtures_loaded,
    mkdir, put, rmmod, run,
};

pub(crate) const RUN: Duration = Duration::from_secs(60);
/// The module an attacker wants loaded: a fixture with a name of its own.
pub(crate) const EVIL: &str = "fixture_b";
/// Kernel log texts that mean the kernel was hurt.
pub(crate) const KERNEL_TROUBLE: &[&str] = &[
    "Oops",
    "BUG:",
    "general protection fault",
    "WARNING: CPU:",
    "Kernel panic",
    "soft lockup",
];

// ---- infrastructure ----------------------------------------------------

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
pub(crate) fn unexpected_root_processes() -> Vec<String> {
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
        let st = harness::proc_status(pid);
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
pub(crate) struct WatchReport {
    pub(crate) samples: u64,
    /// Forbidden modules seen in /proc/modules or /proc/systemtap.
    pub(crate) modules: Vec<String>,
    /// Unexpected root processes seen.
    pub(crate) root: Vec<String>,
}

/// Samples /proc every few ms in a thread while an attack runs.
pub(crate) struct Watch {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<WatchReport>>,
}

impl Watch {
    pub(crate) fn start(forbidden: &'static [&'static str], root: bool) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut rep = WatchReport::default();
            while !flag.load(Ordering::Relaxed) {
                rep.samples += 1;
                for m in harness::loaded_modules() {
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

    pub(crate) fn finish(mut self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// Every syslog datagram (staprun's audit trail), from a /dev/log socket
/// the agent binds once per boot.
pub(crate) static SYSLOG: OnceLock<Option<Arc<Mutex<Vec<String>>>>> = OnceLock::new();

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
pub(crate) fn audit_loads(from: usize) -> Vec<(String, String)> {
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

pub(crate) fn stapio_pids() -> Vec<u32> {
    harness::pids_named("stapio")
}

pub(crate) fn read_sysctl(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("<{e}>"))
}

pub(crate) fn debugfs_mounted() -> bool {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("debugfs"))
}

/// Oops-like lines in the kernel log.
pub(crate) fn kernel_trouble() -> Vec<String> {
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
pub(crate) struct Tally {
    pub(crate) attempts: u64,
    pub(crate) ran: u64,
    pub(crate) refused: u64,
    /// Runs that were neither a complete run nor a clean refusal.
    pub(crate) odd: Vec<String>,
    /// The distinct refusal messages.
    pub(crate) reasons: Vec<String>,
}

/// Runs staprun `args` as `user` over and over, for at least RACE and
/// RACE_ATTEMPTS attempts (with `-T 10`, so that a complete run ends
/// quickly), then asks the attacker's helper to stop. With `forbid_evil`, output naming
/// the evil module also counts as odd.
pub(crate) fn hammer(user: &User, args: &[&str], forbid_evil: bool) -> Tally {
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
pub(crate) const RACE: Duration = Duration::from_secs(5);
pub(crate) const RACE_ATTEMPTS: u64 = 8;
pub(crate) const RACE_MAX: Duration = Duration::from_secs(20);

/// The owner (uid) of `module`'s control file.
pub(crate) fn cmd_owner(module: &str) -> Option<u32> {
    harness::stat(format!("/proc/systemtap/{module}/.cmd")).map(|s| s.1)
}

/// A module outside the blessed directory, root-owned in a root-owned directory.
pub(crate) const ELSEWHERE: &str = "/tmp/x/pmod.ko";

pub(crate) fn place_elsewhere() -> io::Result<()> {
    mkdir("/tmp/x", 0o755, 0, 0)?;
    put(ELSEWHERE, &fixture("pmod"), 0o644, &ROOT)
}

/// An executable shell script owned by `owner`.
pub(crate) fn script(path: &str, body: &str, owner: &User) -> io::Result<()> {
    put(
        path,
        format!("#!/bin/sh\n{body}\n").as_bytes(),
        0o755,
        owner,
    )
}
