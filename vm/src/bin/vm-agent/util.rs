//! Reporting on the result channel, users, and running commands with a timeout.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys::{self, Creds};

/// Writes `VMTEST ...` lines to the second serial port and the console.
pub struct Reporter {
    out: Option<File>,
    pub failures: usize,
    pub checks: usize,
}

impl Reporter {
    pub fn open() -> Self {
        let out = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/ttyS1")
            .ok();
        Reporter {
            out,
            failures: 0,
            checks: 0,
        }
    }

    pub fn line(&mut self, text: &str) {
        for l in text.lines() {
            let l = format!("VMTEST {l}\n");
            if let Some(o) = self.out.as_mut() {
                let _ = o.write_all(l.as_bytes());
            }
            // The console only gets the lines worth seeing next to kernel messages.
            if !l.starts_with("VMTEST CHECK PASS") && !l.starts_with("VMTEST LOG") {
                let _ = io::stdout().write_all(l.as_bytes());
            }
        }
    }

    pub fn log(&mut self, text: &str) {
        for l in text.lines() {
            self.line(&format!("LOG {l}"));
        }
        if text.is_empty() {
            self.line("LOG");
        }
    }

    /// Records one check; returns `ok` so callers can branch on it.
    pub fn check(&mut self, name: &str, ok: bool, detail: impl AsRef<str>) -> bool {
        self.checks += 1;
        if !ok {
            self.failures += 1;
        }
        let mut detail = detail.as_ref().replace('\n', "\\n");
        // Keep the report readable: a failing check shows its beginning
        // and its end (the full output is in the console log).
        if detail.len() > 1500 {
            let head: String = detail.chars().take(700).collect();
            let tail: String = detail
                .chars()
                .rev()
                .take(700)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            detail = format!("{head} ...[{} bytes]... {tail}", detail.len());
        }
        self.line(&format!(
            "CHECK {} {name} :: {detail}",
            if ok { "PASS" } else { "FAIL" }
        ));
        ok
    }

    pub fn check_eq<T: PartialEq + std::fmt::Debug>(
        &mut self,
        name: &str,
        got: T,
        want: T,
    ) -> bool {
        let ok = got == want;
        self.check(name, ok, format!("got {got:?}, want {want:?}"))
    }
}

/// A user of the test image (see xtask's /etc/passwd).
#[derive(Clone, Copy, Debug)]
pub struct User {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub groups: &'static [u32],
}

pub const STAPUSR: u32 = 156;
pub const STAPSYS: u32 = 157;
pub const STAPDEV: u32 = 158;

pub const ROOT: User = User {
    name: "root",
    uid: 0,
    gid: 0,
    groups: &[0],
};
pub const ALICE: User = User {
    name: "alice",
    uid: 1001,
    gid: 1001,
    groups: &[STAPUSR],
};
pub const BOB: User = User {
    name: "bob",
    uid: 1002,
    gid: 1002,
    groups: &[STAPDEV, STAPUSR],
};
pub const SAM: User = User {
    name: "sam",
    uid: 1003,
    gid: 1003,
    groups: &[STAPSYS, STAPUSR],
};
pub const CAROL: User = User {
    name: "carol",
    uid: 1004,
    gid: 1004,
    groups: &[],
};

impl User {
    pub fn creds(&self) -> Creds {
        let mut groups = vec![self.gid];
        groups.extend(self.groups.iter().copied().filter(|g| *g != self.gid));
        Creds {
            ruid: self.uid,
            euid: self.uid,
            rgid: self.gid,
            egid: self.gid,
            groups,
        }
    }
}

/// Output of a finished (or killed) command.
#[derive(Debug, Default)]
pub struct Out {
    /// Exit code; `None` when killed by a signal or by the timeout.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn summary(&self) -> String {
        format!(
            "code={:?} signal={:?} timed_out={} stdout={:?} stderr={:?}",
            self.code,
            self.signal,
            self.timed_out,
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }
}

pub fn clip(s: &str) -> String {
    if s.len() <= 600 {
        return s.to_owned();
    }
    let mut cut = 600;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...[{} bytes]", &s[..cut], s.len())
}

/// A minimal environment for a user's command.
pub fn user_env(user: &User) -> Vec<(String, String)> {
    let home = if user.uid == 0 {
        "/root".to_owned()
    } else {
        format!("/home/{}", user.name)
    };
    vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), home),
        ("USER".into(), user.name.into()),
        ("LOGNAME".into(), user.name.into()),
        ("LANG".into(), "C".into()),
    ]
}

/// Builds a command that runs as `user` with a clean environment plus `extra_env`.
pub fn command_as(user: &User, argv: &[&str], extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(user_env(user))
        .current_dir("/tmp");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    sys::set_creds(&mut cmd, user.creds());
    cmd
}

/// Spawns with piped output; the pipes are drained by threads.
pub struct Running {
    pub child: Child,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

pub fn spawn(mut cmd: Command) -> io::Result<Running> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    Ok(Running { child, out, err })
}

impl Running {
    /// Waits up to `timeout`, then kills the command.
    pub fn wait(mut self, timeout: Duration) -> Out {
        use std::os::unix::process::ExitStatusExt as _;
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
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break None,
            }
        };
        let stdout = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Out {
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            timed_out,
            stdout,
            stderr,
        }
    }
}

/// Runs a command to completion (with a timeout), capturing output.
pub fn run(cmd: Command, timeout: Duration) -> Out {
    match spawn(cmd) {
        Ok(r) => r.wait(timeout),
        Err(e) => Out {
            stderr: format!("spawn failed: {e}"),
            ..Out::default()
        },
    }
}

/// Runs `argv` as `user`, 30 s timeout.
pub fn run_as(user: &User, argv: &[&str], extra_env: &[(&str, &str)]) -> Out {
    run(command_as(user, argv, extra_env), Duration::from_secs(30))
}

/// Names of the loaded modules, from /proc/modules.
pub fn loaded_modules() -> Vec<String> {
    std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

pub fn is_loaded(name: &str) -> bool {
    loaded_modules().iter().any(|m| m == name)
}

/// (mode & 0o7777, uid, gid) of a path, without following a final symlink.
pub fn stat(path: impl AsRef<Path>) -> Option<(u32, u32, u32)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.mode() & 0o7777, m.uid(), m.gid()))
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command running in the background with stdout/stderr going to files, so
/// that its output can be watched while it runs.
pub struct Bg {
    child: Child,
    out_path: String,
    err_path: String,
}

static BG_COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Bg {
    pub fn start(mut cmd: Command) -> io::Result<Bg> {
        let n = BG_COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out_path = format!("/run/bg{n}.out");
        let err_path = format!("/run/bg{n}.err");
        cmd.stdin(Stdio::null())
            .stdout(File::create(&out_path)?)
            .stderr(File::create(&err_path)?);
        let child = cmd.spawn()?;
        Ok(Bg {
            child,
            out_path,
            err_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the command; false if it could not be sent.
    pub fn signal(&self, sig: libc::c_int) -> bool {
        crate::sys::kill(self.pid(), sig).is_ok()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    /// Waits until stdout contains `needle`; gives up early if the command exits.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> bool {
        let mut exited = false;
        wait_until(timeout, || {
            if self.stdout().contains(needle) {
                return true;
            }
            if exited {
                return true; // one last look was taken above
            }
            exited = !matches!(self.child.try_wait(), Ok(None));
            false
        }) && self.stdout().contains(needle)
    }

    /// Waits up to `timeout` for the exit, killing the command after that.
    pub fn wait(mut self, timeout: Duration) -> Out {
        use std::os::unix::process::ExitStatusExt as _;
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
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
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

/// PIDs of processes whose /proc/PID/comm is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
            {
                v.push(pid);
            }
        }
    }
    v
}

/// Fields of /proc/PID/status as (key, value) pairs.
pub fn proc_status(pid: u32) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        })
        .collect()
}
