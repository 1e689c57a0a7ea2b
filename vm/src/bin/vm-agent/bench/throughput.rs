//! One throughput run: staprun as alice with the fixture printing at full speed or a fixed
//! rate, and what it cost (wall, CPU, kernel drops).

use std::fs;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::OpenOptionsExt as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{ALICE, STAPRUN, command_as, sys};

use super::{FRAME_LINES, HLEN, OUT_DIR, RUN_LIMIT, Tool, ncpus, pieces};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Mode {
    Serial,
    Bulk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Sink {
    Tmpfs,
    Null,
}

/// One run's result.
#[derive(Debug, Default, Clone)]
pub(crate) struct RunResult {
    pub(crate) secs: f64,
    /// Payload bytes the output shows (tmpfs), or expected minus dropped (/dev/null).
    pub(crate) payload: u64,
    pub(crate) prints_expected: u64,
    pub(crate) prints_lost: u64,
    /// Records the module could not place (its buffer was full).
    pub(crate) dropped: u64,
    /// Relay bytes the module placed that were never read.
    pub(crate) unread: u64,
    pub(crate) cpu_secs: f64,
    pub(crate) maxrss_kib: u64,
    pub(crate) exit: Option<i32>,
    pub(crate) stderr: String,
}

impl RunResult {
    pub(crate) fn mbps(&self) -> f64 {
        self.payload as f64 / 1e6 / self.secs.max(1e-9)
    }
}

/// Reads the kernel log lines written since `open_kmsg`.
pub(crate) struct Kmsg(fs::File);

impl Kmsg {
    pub(crate) fn open() -> io::Result<Kmsg> {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        f.seek(SeekFrom::End(0))?;
        Ok(Kmsg(f))
    }

    pub(crate) fn lines(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let s = String::from_utf8_lossy(&buf[..n]);
                    if let Some((_, msg)) = s.split_once(';') {
                        v.push(msg.lines().next().unwrap_or("").to_owned());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EAGAIN: no more; EPIPE: overwritten records, keep reading.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(_) => break,
            }
        }
        v
    }
}

/// What the fixture reports when it is unloaded.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FixtureReport {
    /// Records that found the relay buffer full.
    dropped: u64,
    /// Relay bytes placed and read: the difference was never read.
    bytes_written: u64,
    bytes_read: u64,
}

/// "pmod: records numbered N, dropped D, bytes written W, bytes read R".
pub(crate) fn fixture_report(lines: &[String]) -> Option<FixtureReport> {
    lines.iter().rev().find_map(|l| {
        let rest = l.strip_prefix("pmod: records numbered ")?;
        let mut nums = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>().ok());
        let _written = nums.next()??;
        Some(FixtureReport {
            dropped: nums.next()??,
            bytes_written: nums.next()??,
            bytes_read: nums.next()??,
        })
    })
}

pub(crate) fn read_param(name: &str) -> Option<i64> {
    fs::read_to_string(format!("/sys/module/pmod/parameters/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(crate) fn clean_out_dir() -> io::Result<()> {
    let _ = fs::remove_dir_all(OUT_DIR);
    fs::create_dir(OUT_DIR)?;
    fs::set_permissions(
        OUT_DIR,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
}

pub(crate) fn dir_bytes(dir: &str) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// One `staprun` run as alice; `prints` per CPU of `size` bytes.
/// Ours with `-vv` reports its threads' CPU time at the end:
/// "... CPU: readers R s, merger M s".
pub(crate) fn thread_cpu(stderr: &str) -> Option<(f64, f64)> {
    let l = stderr
        .lines()
        .rev()
        .find_map(|l| l.split_once("CPU: readers "))?
        .1;
    let (r, m) = l.split_once(" s, merger ")?;
    Some((
        r.trim().parse().ok()?,
        m.trim_end_matches(" s").trim().parse().ok()?,
    ))
}

pub(crate) fn run_one(
    tool: Tool,
    mode: Mode,
    sink: Sink,
    size: u64,
    prints: u64,
    rate: u64,
) -> RunResult {
    let mut res = RunResult {
        prints_expected: prints * ncpus() as u64,
        ..RunResult::default()
    };
    if let Err(e) = clean_out_dir() {
        res.stderr = format!("cannot make {OUT_DIR}: {e}");
        return res;
    }
    let mut kmsg = Kmsg::open().ok();
    let out = match sink {
        Sink::Tmpfs => format!("{OUT_DIR}/out"),
        Sink::Null => "/dev/null".to_owned(),
    };
    let mut argv = vec![STAPRUN.to_owned()];
    if tool != Tool::Theirs {
        argv.push("-vv".into());
    }
    argv.extend([
        "-o".into(),
        out,
        "pmod".into(),
        format!("records={prints}"),
        format!("record_size={size}"),
    ]);
    if mode == Mode::Bulk {
        argv.push("bulk=1".into());
    }
    if rate > 0 {
        argv.push(format!("rate={rate}"));
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut cmd = command_as(&ALICE, &argv, &[]);
    cmd.current_dir(OUT_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t_spawn = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            res.stderr = format!("spawn: {e}");
            return res;
        }
    };
    let err_reader = crate::harness::processes::drain_stderr(&mut child);
    // The clock starts when the module has run its begin probes (STP_START
    // answered): load and handshake are the start-up figure's business.
    let pid = child.id();
    let watcher = std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < RUN_LIMIT {
            if read_param("started") == Some(1) {
                return Some(Instant::now());
            }
            if !crate::compat::alive(pid) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    });
    let ended = sys::wait4(pid);
    let t_end = Instant::now();
    let t_start = watcher.join().ok().flatten().unwrap_or(t_spawn);
    // `child` was reaped by wait4: do not wait on it again.
    std::mem::forget(child);
    res.stderr = err_reader.join().unwrap_or_default();
    res.secs = (t_end - t_start).as_secs_f64();
    match ended {
        Ok(e) => {
            res.exit = e.code;
            res.cpu_secs = e.cpu_secs;
            res.maxrss_kib = e.maxrss_kib;
        }
        Err(e) => res.stderr.push_str(&format!("wait4: {e}")),
    }
    let lines = kmsg.as_mut().map(Kmsg::lines).unwrap_or_default();
    let Some(rep) = fixture_report(&lines) else {
        res.stderr
            .push_str("no unload report of pmod in the kernel log");
        res.exit = None;
        return res;
    };
    res.dropped = rep.dropped;
    res.unread = rep.bytes_written.saturating_sub(rep.bytes_read);
    let per_print = match mode {
        Mode::Serial => size,
        Mode::Bulk => size + pieces(size) * HLEN,
    };
    let frame: u64 = match mode {
        Mode::Serial => FRAME_LINES.iter().sum(),
        Mode::Bulk => FRAME_LINES.iter().map(|l| l + HLEN).sum(),
    };
    let delivered = match sink {
        Sink::Tmpfs => dir_bytes(OUT_DIR).saturating_sub(frame) / per_print,
        // Nothing to count in /dev/null: records the module could not place
        // and relay bytes nobody read are what was lost.
        Sink::Null => {
            let record = HLEN + size.div_ceil(pieces(size));
            let lost_records = rep.dropped + res.unread.div_ceil(record);
            res.prints_expected
                .saturating_sub(lost_records.div_ceil(pieces(size)))
        }
    };
    res.prints_lost = res.prints_expected.saturating_sub(delivered);
    res.payload = delivered * size;
    let _ = fs::remove_dir_all(OUT_DIR);
    res
}
