//! Running commands with a timeout (captured, or in the background with their output in
//! files), and what /proc says about processes.

use std::fs::{self, File};
use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

/// A thread reading all of `child`'s stderr (an empty string without a pipe).
pub fn drain_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    match child.stderr.take() {
        Some(p) => drain(p),
        None => std::thread::spawn(String::new),
    }
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

/// Waits up to `timeout` for `child`, then kills it: its status (`None` if waiting failed)
/// and whether the timeout struck.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> (Option<ExitStatus>, bool) {
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    (status, timed_out)
}

impl Out {
    fn ended(status: Option<ExitStatus>, timed_out: bool, stdout: String, stderr: String) -> Out {
        use std::os::unix::process::ExitStatusExt as _;
        Out {
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            timed_out,
            stdout,
            stderr,
        }
    }
}

impl Running {
    /// Waits up to `timeout`, then kills the command.
    pub fn wait(mut self, timeout: Duration) -> Out {
        let (status, timed_out) = wait_or_kill(&mut self.child, timeout);
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
        Out::ended(status, timed_out, stdout, stderr)
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
        super::sys::kill(self.pid(), sig).is_ok()
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
        let (status, timed_out) = wait_or_kill(&mut self.child, timeout);
        Out::ended(status, timed_out, self.stdout(), self.stderr())
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

pub fn proc_uids(pid: u32) -> Vec<u32> {
    proc_status(pid)
        .into_iter()
        .find(|(k, _)| k == "Uid")
        .map(|(_, v)| {
            v.split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub fn proc_state(pid: u32) -> char {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .unwrap_or('?')
}

pub fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
