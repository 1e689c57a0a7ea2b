//! Group `compat_io`: what stapio passes to the module besides the control protocol's
//! usual messages. `-i`: standard input forwarded to `__stdin` for `probe input.line` /
//! `input.char` scripts (`inline`, `inchar`); `-N PID`: `STP_NAMESPACES_PID` and, with
//! 5.1 modules, `STP_MNT_NS_FDS`, so that a path only visible in PID's mount namespace
//! resolves (`nsprobe`).
//!
//! The `-N` target is one process for the whole group, made before the cases (and, for
//! the 5.x boot, before the agent chroots into /c5, so that its bind mount is on the real
//! /tmp: the module resolves paths from the root of the target's namespace):
//! `unshare -m` + `mount --bind /tmp/compat-ns/src /tmp/compat-ns/only` + `exec sleep`, as
//! root. `/tmp/compat-ns/only/prog` exists in its namespace only. A second process, a
//! `sleep` of alice's, is the `-N` target of her own.

use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{self, ALICE, Out, ROOT, Reporter, STAPRUN, User, command_as};

use super::ctx::{Ctx, END, HELLO, loaded_like, loaded_text, mpath, prompt, sleep_ms};
use super::driver::{CDev, Case, Gen, expect_clean_exit, generation, run_group};
use super::{RUN, STARTUP};

/// The mount-namespace target (root's, in a namespace of its own) and alice's own process.
static NS_TARGET: AtomicU32 = AtomicU32::new(0);
static ALICE_TARGET: AtomicU32 = AtomicU32::new(0);

const NS_DIR: &str = "/tmp/compat-ns";
/// The path `nsprobe` probes: only in NS_TARGET's mount namespace.
const NS_PROG: &str = "/tmp/compat-ns/only/prog";

/// Starts the two `-N` targets (once per boot); a failure is a check of the whole group.
pub(crate) fn prepare_targets(r: &mut Reporter) {
    if NS_TARGET.load(Ordering::Relaxed) != 0 {
        return;
    }
    let made = (|| -> Result<(u32, u32), String> {
        let src = format!("{NS_DIR}/src");
        let only = format!("{NS_DIR}/only");
        for d in [NS_DIR, &src, &only] {
            fs::create_dir_all(d).map_err(|e| format!("mkdir {d}: {e}"))?;
        }
        let prog = format!("{src}/prog");
        fs::write(&prog, "#!/bin/sh\nexit 0\n").map_err(|e| format!("{prog}: {e}"))?;
        fs::set_permissions(&prog, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {prog}: {e}"))?;
        let script = format!("mount --bind {src} {only} && exec sleep 100000");
        let ns = harness::Bg::start(command_as(
            &ROOT,
            &[
                "/usr/bin/unshare",
                "-m",
                "--propagation",
                "private",
                "/bin/sh",
                "-c",
                &script,
            ],
            &[],
        ))
        .map_err(|e| format!("unshare: {e}"))?;
        let pid = ns.pid();
        // Ready once the shell has become `sleep` (after the mount).
        let ready = harness::wait_until(Duration::from_secs(10), || harness::comm(pid) == "sleep");
        let visible = Path::new(&format!("/proc/{pid}/root{NS_PROG}")).exists();
        if !ready || !visible || Path::new(NS_PROG).exists() {
            return Err(format!(
                "namespace target {pid}: comm {:?}, {NS_PROG} there {visible}, here {}; {}",
                harness::comm(pid),
                Path::new(NS_PROG).exists(),
                ns.stderr()
            ));
        }
        let own = harness::Bg::start(command_as(&ALICE, &["/bin/sleep", "100000"], &[]))
            .map_err(|e| format!("alice's sleep: {e}"))?;
        // Both stay for the whole boot (dropping a `Bg` leaves its process running;
        // the guest powers off at the end).
        Ok((pid, own.pid()))
    })();
    let ok = made.is_ok();
    let detail = match &made {
        Ok((ns, own)) => format!("namespace target {ns} (sees {NS_PROG}), alice's sleep {own}"),
        Err(e) => e.clone(),
    };
    r.check("compat_io_targets", ok, detail);
    if let Ok((ns, own)) = made {
        NS_TARGET.store(ns, Ordering::Relaxed);
        ALICE_TARGET.store(own, Ordering::Relaxed);
    }
}

pub(crate) fn compat_io(r: &mut Reporter) {
    prepare_targets(r);
    run_group(r, IO_CASES);
}

// ---------------------------------------------------------------------------
// A staprun whose standard input the case writes to.

struct Fed {
    child: Child,
    stdin: Option<ChildStdin>,
    out_path: String,
    err_path: String,
}

static FED_COUNT: AtomicU32 = AtomicU32::new(0);

impl Fed {
    fn start(c: &mut Ctx, user: &User, args: &[&str]) -> Option<Fed> {
        let mut argv = vec![STAPRUN];
        argv.extend_from_slice(args);
        c.log(&format!("$ {} <(fed by the case) &", prompt(user, &argv)));
        let n = FED_COUNT.fetch_add(1, Ordering::Relaxed);
        let (out_path, err_path) = (format!("/run/fed{n}.out"), format!("/run/fed{n}.err"));
        let started = (|| -> std::io::Result<Child> {
            let mut cmd = command_as(user, &argv, &[]);
            cmd.stdin(Stdio::piped())
                .stdout(File::create(&out_path)?)
                .stderr(File::create(&err_path)?);
            cmd.spawn()
        })();
        match started {
            Ok(mut child) => Some(Fed {
                stdin: child.stdin.take(),
                child,
                out_path,
                err_path,
            }),
            Err(e) => {
                c.check("spawn", false, format!("{argv:?}: {e}"));
                None
            }
        }
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    fn feed(&mut self, c: &mut Ctx, bytes: &str) {
        c.log(&format!("(typed {bytes:?})"));
        if let Some(w) = self.stdin.as_mut()
            && let Err(e) = w.write_all(bytes.as_bytes()).and_then(|()| w.flush())
        {
            c.check("feed", false, format!("writing {bytes:?}: {e}"));
        }
    }

    /// End of file on staprun's standard input.
    fn close(&mut self, c: &mut Ctx) {
        c.log("(stdin closed)");
        self.stdin = None;
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until stdout contains `needle`; false if it does not (or the command ended).
    fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline || !self.running() {
                return self.stdout().contains(needle);
            }
            sleep_ms(20);
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let _ = harness::sys::kill(self.child.id(), sig);
    }

    /// Waits up to `timeout` (then kills it); stdin is closed first.
    fn wait(mut self, timeout: Duration) -> Out {
        use std::os::unix::process::ExitStatusExt as _;
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
                Ok(None) => sleep_ms(20),
                Err(_) => break None,
            }
        };
        Out {
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            timed_out,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

/// Root runs a module by its blessed path, alice by name.
fn module_arg(user: &User, name: &str) -> String {
    if user.uid == 0 {
        mpath(name)
    } else {
        name.to_owned()
    }
}

/// The output so far is `want` exactly (a check), after waiting for its last line.
fn expect_so_far(c: &mut Ctx, p: &mut Fed, name: &str, want: &str) -> bool {
    let last = want.lines().last().unwrap_or_default();
    p.wait_stdout(last, STARTUP);
    let got = p.stdout();
    c.check(name, got == want, format!("stdout {got:?}, want {want:?}"))
}

/// Finishes a fed run: its observations, a clean exit, the output and an empty stderr.
fn finish(c: &mut Ctx, p: Fed, module: &str, stdout: &str) {
    let out = p.wait(RUN);
    c.transcript("(end)", &out);
    c.record("run", Some(module), &out);
    expect_clean_exit(c, "run", module, &out);
    c.check_eq("stdout", out.stdout.as_str(), stdout);
    c.check_eq("stderr_empty", out.stderr.as_str(), "");
}

// ---------------------------------------------------------------------------
// -i

/// Lines typed in pieces: each reaches `input.line` once complete; "quit" ends the script.
fn stdin_line(c: &mut Ctx) {
    let Some(mut p) = Fed::start(c, &ALICE, &["-i", "inline"]) else {
        return;
    };
    expect_so_far(c, &mut p, "begin_first", "begin\n");
    p.feed(c, "alpha\nbe");
    expect_so_far(c, &mut p, "first_line", "begin\nline:alpha\n");
    p.feed(c, "ta\n");
    expect_so_far(c, &mut p, "second_line", "begin\nline:alpha\nline:beta\n");
    p.feed(c, "quit\n");
    finish(
        c,
        p,
        "inline",
        "begin\nline:alpha\nline:beta\nline:quit\nend\n",
    );
}

/// Every byte fires `input.char` once (the newline too); "q" ends the script. As root.
fn stdin_char(c: &mut Ctx) {
    let m = module_arg(&ROOT, "inchar");
    let Some(mut p) = Fed::start(c, &ROOT, &["-i", &m]) else {
        return;
    };
    expect_so_far(c, &mut p, "begin_first", "begin\n");
    p.feed(c, "ab\n");
    expect_so_far(
        c,
        &mut p,
        "three_chars",
        "begin\nchar:97\nchar:98\nchar:10\n",
    );
    p.feed(c, "q");
    finish(
        c,
        p,
        "inchar",
        "begin\nchar:97\nchar:98\nchar:10\nchar:113\nend\n",
    );
}

/// End of file: forwarding stops, the script runs on (the partial "two" is never
/// delivered) until it is told to stop.
fn stdin_eof(c: &mut Ctx) {
    let Some(mut p) = Fed::start(c, &ALICE, &["-i", "inline"]) else {
        return;
    };
    expect_so_far(c, &mut p, "begin_first", "begin\n");
    p.feed(c, "one\ntwo");
    p.close(c);
    expect_so_far(c, &mut p, "first_line", "begin\nline:one\n");
    sleep_ms(1500);
    c.check(
        "runs_on_after_eof",
        p.running(),
        "staprun ended at end of input",
    );
    let so_far = p.stdout();
    c.check_eq("nothing_more", so_far.as_str(), "begin\nline:one\n");
    p.signal(libc::SIGTERM);
    finish(c, p, "inline", "begin\nline:one\nend\n");
}

/// Without -i nothing is read: "quit" on stdin does not end the script.
fn stdin_not_forwarded(c: &mut Ctx) {
    let Some(mut p) = Fed::start(c, &ALICE, &["inline"]) else {
        return;
    };
    expect_so_far(c, &mut p, "begin_first", "begin\n");
    p.feed(c, "quit\n");
    sleep_ms(1500);
    c.check("still_running", p.running(), "the script ended");
    let so_far = p.stdout();
    c.check_eq("no_line", so_far.as_str(), "begin\n");
    p.signal(libc::SIGTERM);
    finish(c, p, "inline", "begin\nend\n");
}

/// -i with a script without input probes (no __stdin): it runs as without -i.
fn stdin_no_input_probe(c: &mut Ctx) {
    let Some(mut p) = Fed::start(c, &ALICE, &["-i", "hello"]) else {
        return;
    };
    p.feed(c, "x\n");
    p.close(c);
    finish(c, p, "hello", &format!("{HELLO}\n{END}\n"));
}

// ---------------------------------------------------------------------------
// -N

fn ns_target() -> String {
    NS_TARGET.load(Ordering::Relaxed).to_string()
}

const RESOLVE_ERROR: &str = "Couldn't resolve target program file path '/tmp/compat-ns/only/prog'";

/// `-N` the namespaced process: 5.1 resolves the path in its namespace; 4.8 never resolves it.
fn ns_target_root(c: &mut Ctx) {
    let (pid, m) = (ns_target(), mpath("nsprobe"));
    let out = c.staprun(&ROOT, &["-N", &pid, &m]);
    c.record("run", Some("nsprobe"), &out);
    expect_clean_exit(c, "run", "nsprobe", &out);
    c.check_eq("stdout", out.stdout.as_str(), "begin\nend\n");
    c.check_eq("stderr_empty", out.stderr.as_str(), "");
}

/// The control: without `-N`, 5.1 cannot resolve the path (the probes fail to start);
/// 4.8 starts.
fn ns_none_root(c: &mut Ctx) {
    let m = mpath("nsprobe");
    let out = c.staprun(&ROOT, &[&m]);
    c.record("run", Some("nsprobe"), &out);
    match generation() {
        Gen::V5 => {
            c.check("exit_1", out.code == Some(1), out.summary());
            c.check(
                "resolve_error",
                out.stderr.contains(RESOLVE_ERROR),
                &out.stderr,
            );
            c.check(
                "unloaded",
                loaded_like("nsprobe").is_empty(),
                loaded_text("nsprobe"),
            );
        }
        Gen::V4 => {
            expect_clean_exit(c, "run", "nsprobe", &out);
            c.check_eq("stdout", out.stdout.as_str(), "begin\nend\n");
        }
    }
}

/// alice names root's process: 5.1's stapio may not open its namespace (run ends,
/// unloaded); 4.8's only passes the pid.
fn ns_alice_denied(c: &mut Ctx) {
    let pid = ns_target();
    let out = c.staprun(&ALICE, &["-N", &pid, "nsprobe"]);
    c.record("run", Some("nsprobe"), &out);
    match generation() {
        Gen::V5 => {
            c.check("exit_1", out.code == Some(1), out.summary());
            c.check(
                "open_refused",
                out.stderr.contains(&format!(
                    "Failed to open file '/proc/{pid}/ns/mnt': Permission denied"
                )),
                &out.stderr,
            );
            c.check_eq("no_output", out.stdout.as_str(), "");
            c.check(
                "unloaded",
                loaded_like("nsprobe").is_empty(),
                loaded_text("nsprobe"),
            );
        }
        Gen::V4 => {
            expect_clean_exit(c, "run", "nsprobe", &out);
            c.check_eq("stdout", out.stdout.as_str(), "begin\nend\n");
        }
    }
}

/// alice names her own process (same namespaces as stapio's): the script runs, and
/// nothing is said at the end.
fn ns_alice_own(c: &mut Ctx) {
    let pid = ALICE_TARGET.load(Ordering::Relaxed).to_string();
    let out = c.staprun(&ALICE, &["-N", &pid, "hello"]);
    c.record("run", Some("hello"), &out);
    expect_clean_exit(c, "run", "hello", &out);
    c.check_eq("stdout", out.stdout.as_str(), &format!("{HELLO}\n{END}\n"));
    c.check_eq("stderr_empty", out.stderr.as_str(), "");
}

/// docs/compat.md, C deviations.
const C_IO1: &str = "C-io1: the C 5.1 child that runs staprun -d calls setns(orig_mnt_ns_fd) \
                     even when already there; unprivileged, it fails and says so on stderr";

pub(crate) const IO_CASES: &[Case] = &[
    Case {
        name: "stdin_line",
        f: stdin_line,
        modules: &["inline"],
        c_fails: &[],
    },
    Case {
        name: "stdin_char",
        f: stdin_char,
        modules: &["inchar"],
        c_fails: &[],
    },
    Case {
        name: "stdin_eof",
        f: stdin_eof,
        modules: &["inline"],
        c_fails: &[],
    },
    Case {
        name: "stdin_not_forwarded",
        f: stdin_not_forwarded,
        modules: &["inline"],
        c_fails: &[],
    },
    Case {
        name: "stdin_no_input_probe",
        f: stdin_no_input_probe,
        modules: &["hello"],
        c_fails: &[],
    },
    Case {
        name: "ns_target_root",
        f: ns_target_root,
        modules: &["nsprobe"],
        c_fails: &[],
    },
    Case {
        name: "ns_none_root",
        f: ns_none_root,
        modules: &["nsprobe"],
        c_fails: &[],
    },
    Case {
        name: "ns_alice_denied",
        f: ns_alice_denied,
        modules: &["nsprobe"],
        c_fails: &[],
    },
    Case {
        name: "ns_alice_own",
        f: ns_alice_own,
        modules: &["hello"],
        c_fails: &[(Gen::V5, CDev::Fails(C_IO1))],
    },
];
