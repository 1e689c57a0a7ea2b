//! Scenario `bench` (guest side of `cargo xtask bench`, compat image): relay
//! throughput and start-up of our stapio against the C stapio 4.8 on the
//! fixture module, plus the copy ceiling of the same guest.
//!
//! Every run is alice (stapusr) running `staprun -o OUT pmod records=R
//! record_size=S [bulk=1] [rate=P]` with pmod in the blessed directory, the
//! implementation chosen by bind-mounting the C staprun over ours (as the
//! compat suite does). Results go out as `BENCH ...` lines (key=value); the
//! host turns them into the table of docs/bench.md.
//!
//! Kernel command line (all optional): `bench.mib=N` MiB of payload per CPU
//! per run (default 64), `bench.sizes=64,1024,16384`, `bench.tools=ours,theirs`,
//! `bench.startup=N` start-up runs per tool (default 7), `bench.outs=tmpfs,null`,
//! `bench.modes=serial,bulk`, `bench.reps=3` (runs per max row; the median
//! stands), `bench.loads=max,r50,r90` (rNN: NN% of the best
//! throughput either implementation delivered at max, for 4 s).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::compat::{self, Impl};

/// An implementation under test: ours, a baseline build of our stapio
/// (`cargo xtask bench --baseline REV` puts it at /opt/base/stapio), or C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Ours,
    Base,
    Theirs,
}

const OUR_STAPIO: &str = "/usr/libexec/staprun/stapio";
const BASE_STAPIO: &str = "/opt/base/stapio";

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Ours => "ours",
            Tool::Base => "base",
            Tool::Theirs => "theirs",
        }
    }

    /// Makes /usr/bin/staprun (and for ours, its stapio) this tool's.
    fn activate(self) -> Result<(), String> {
        let base_mounted = compat::same_file(OUR_STAPIO, BASE_STAPIO);
        if base_mounted && self != Tool::Base {
            sys::umount(OUR_STAPIO).map_err(|e| format!("umount {OUR_STAPIO}: {e}"))?;
        }
        if self == Tool::Base && !base_mounted {
            sys::mount(BASE_STAPIO, OUR_STAPIO, "", libc::MS_BIND, "")
                .map_err(|e| format!("bind mount {BASE_STAPIO} on {OUR_STAPIO}: {e}"))?;
        }
        compat::activate(if self == Tool::Theirs {
            Impl::Theirs
        } else {
            Impl::Ours
        })
    }
}
use crate::scenarios::{FIXTURES, Scenario, blessed_dir, install_fixture};
use crate::sys;
use crate::util::{ALICE, Reporter, command_as};

pub const SCENARIOS: &[(&str, Scenario)] = &[("bench", bench)];

const STAPRUN: &str = "/usr/bin/staprun";
const OUT_DIR: &str = "/tmp/bench";
/// 4.x relay record header (the fixture pmod is a 4.x module, like the C 4.8 tools).
const HLEN: u64 = 8;
/// Largest record the fixture puts in one 4 KiB sub-buffer.
const MAX_PIECE: u64 = 4096 - HLEN;
/// The begin and end lines of pmod ("pmod: hello from begin\n", "pmod: end\n").
const FRAME_LINES: [u64; 2] = [23, 10];
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// How long a fixed-rate run prints.
const RATE_SECS: u64 = 4;

fn param(key: &str) -> Option<String> {
    fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_owned)
        })
}

fn list(key: &str, default: &str) -> Vec<String> {
    param(key)
        .unwrap_or_else(|| default.to_owned())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn ncpus() -> usize {
    crate::num_cpus()
}

/// Relay records one print of `size` bytes becomes.
fn pieces(size: u64) -> u64 {
    size.div_ceil(MAX_PIECE)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Serial,
    Bulk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sink {
    Tmpfs,
    Null,
}

/// One run's result.
#[derive(Debug, Default, Clone)]
struct RunResult {
    secs: f64,
    /// Payload bytes the output shows (tmpfs), or expected minus dropped (/dev/null).
    payload: u64,
    prints_expected: u64,
    prints_lost: u64,
    /// Records the module could not place (its buffer was full).
    dropped: u64,
    /// Relay bytes the module placed that were never read.
    unread: u64,
    cpu_secs: f64,
    maxrss_kib: u64,
    exit: Option<i32>,
    stderr: String,
}

impl RunResult {
    fn mbps(&self) -> f64 {
        self.payload as f64 / 1e6 / self.secs.max(1e-9)
    }
}

/// Reads the kernel log lines written since `open_kmsg`.
struct Kmsg(fs::File);

impl Kmsg {
    fn open() -> io::Result<Kmsg> {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        f.seek(SeekFrom::End(0))?;
        Ok(Kmsg(f))
    }

    fn lines(&mut self) -> Vec<String> {
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
struct FixtureReport {
    /// Records that found the relay buffer full.
    dropped: u64,
    /// Relay bytes placed and read: the difference was never read.
    bytes_written: u64,
    bytes_read: u64,
}

/// "pmod: records numbered N, dropped D, bytes written W, bytes read R".
fn fixture_report(lines: &[String]) -> Option<FixtureReport> {
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

fn read_param(name: &str) -> Option<i64> {
    fs::read_to_string(format!("/sys/module/pmod/parameters/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn clean_out_dir() -> io::Result<()> {
    let _ = fs::remove_dir_all(OUT_DIR);
    fs::create_dir(OUT_DIR)?;
    fs::set_permissions(
        OUT_DIR,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
}

fn dir_bytes(dir: &str) -> u64 {
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
fn thread_cpu(stderr: &str) -> Option<(f64, f64)> {
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

fn run_one(tool: Tool, mode: Mode, sink: Sink, size: u64, prints: u64, rate: u64) -> RunResult {
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
    let err_pipe = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = err_pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
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

/// The copy ceiling: pmod started at load (autostart=1, no stapio), one
/// pinned thread per CPU reading its traceN into a 1 MiB buffer that is
/// thrown away. Returns (seconds, payload bytes).
fn ceiling(size: u64, prints: u64) -> Result<(f64, u64), String> {
    let params = format!("autostart=1 records={prints} record_size={size}");
    let path = format!("{FIXTURES}/pmod.ko");
    sys::finit_module(&path, &params).map_err(|e| format!("load pmod: {e}"))?;
    let t0 = Instant::now();
    let total = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for cpu in 0..ncpus() {
        let total = total.clone();
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            sys::pin_to_cpu(cpu);
            let p = format!("/proc/systemtap/pmod/trace{cpu}");
            let mut f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&p)
                .map_err(|e| format!("open {p}: {e}"))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut idle_done = false;
            loop {
                match f.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        total.fetch_add(n as u64, Ordering::Relaxed);
                        idle_done = false;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENODATA) | Some(libc::EAGAIN) | Some(libc::EINTR)
                        ) => {}
                    Err(e) => return Err(format!("read {p}: {e}")),
                }
                // Empty: done once every CPU has printed everything and a
                // last read after that found nothing.
                if idle_done {
                    return Ok(());
                }
                if read_param("producing") == Some(0) {
                    idle_done = true;
                    continue;
                }
                let mut pfd = libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                sys::poll(&mut pfd, 10);
            }
        }));
    }
    let mut err = None;
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            err.get_or_insert(e);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let unload = sys::delete_module("pmod");
    if let Some(e) = err {
        return Err(e);
    }
    unload.map_err(|e| format!("unload pmod: {e}"))?;
    let raw = total.load(Ordering::Relaxed);
    // Payload share of the relay bytes.
    let payload = raw * size / (size + pieces(size) * HLEN);
    Ok((secs, payload))
}

/// Whether splice(2) can move data out of a relay file (it would spare
/// bulk mode a copy): the answer for pmod's procfs trace0.
fn splice_probe() -> String {
    let path = format!("{FIXTURES}/pmod.ko");
    if let Err(e) = sys::finit_module(&path, "autostart=1 records=100 record_size=64") {
        return format!("load_failed:{e}");
    }
    std::thread::sleep(Duration::from_millis(50));
    let r = fs::File::open("/proc/systemtap/pmod/trace0")
        .and_then(|f| sys::splice_to_pipe(std::os::fd::AsFd::as_fd(&f), 4096));
    let _ = sys::delete_module("pmod");
    match r {
        Ok(n) => format!("ok:{n}"),
        Err(e) => format!("errno:{}", e.raw_os_error().unwrap_or(0)),
    }
}

/// Memory bandwidth: GB/s of copying a 64 MiB buffer (read + write counted once).
fn memory_bandwidth() -> f64 {
    let n = 64 << 20;
    let src = vec![0x5au8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src);
    let reps = 8;
    let t0 = Instant::now();
    for i in 0..reps {
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst[i]);
    }
    (n * reps) as f64 / 1e9 / t0.elapsed().as_secs_f64()
}

/// Start-up of one `staprun pmod records=0` (begin line, then exit), in
/// seconds from the spawn: module loaded (/sys/module/pmod appears), begin
/// probes run (STP_START answered), first byte on stdout, module unloaded,
/// exit.
#[derive(Clone, Copy, Debug, Default)]
struct Startup {
    loaded: f64,
    started: f64,
    first: f64,
    unloaded: f64,
    exit: f64,
    /// CPU seconds of the whole run (staprun, stapio, staprun -d).
    cpu: f64,
}

fn startup_once() -> Result<Startup, String> {
    let mut cmd = command_as(&ALICE, &[STAPRUN, "pmod", "records=0"], &[]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout pipe")?;
    let reader = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let first = match out.read(&mut b) {
            Ok(1) => Some(t0.elapsed()),
            _ => None,
        };
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
        first
    });
    let pid = child.id();
    // Phases seen from outside, polled every 2 ms (first byte and exit are exact).
    let watcher = std::thread::spawn(move || {
        let (mut loaded, mut started, mut unloaded) = (None, None, None);
        while unloaded.is_none() && t0.elapsed() < Duration::from_secs(30) {
            let present = Path::new("/sys/module/pmod").exists();
            if present && loaded.is_none() {
                loaded = Some(t0.elapsed());
            }
            if present && started.is_none() && read_param("started") == Some(1) {
                started = Some(t0.elapsed());
            }
            if !present && loaded.is_some() {
                unloaded = Some(t0.elapsed());
            }
            if !present && !crate::compat::alive(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (loaded, started, unloaded)
    });
    let ended = sys::wait4(pid).map_err(|e| format!("wait4: {e}"))?;
    let exit = t0.elapsed();
    std::mem::forget(child);
    let first = reader
        .join()
        .ok()
        .flatten()
        .ok_or("no output from the module")?;
    let (loaded, started, unloaded) = watcher.join().unwrap_or_default();
    if ended.code != Some(0) {
        return Err(format!("exit {:?}", ended.code));
    }
    let s = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    Ok(Startup {
        loaded: s(loaded),
        started: s(started),
        first: first.as_secs_f64(),
        unloaded: s(unloaded),
        exit: exit.as_secs_f64(),
        cpu: ended.cpu_secs,
    })
}

/// What staprun's setup messages cost to gather in this guest (ms): all of
/// /proc/kallsyms, /proc/kallsyms up to the last of the four kernel symbols
/// staprun relocates, and every /sys/module/*/sections/* file.
fn setup_costs() -> (f64, f64, f64, usize) {
    use std::io::BufRead as _;
    let t = Instant::now();
    let full = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let full_ms = t.elapsed().as_secs_f64() * 1e3;
    let lines = full.lines().count();
    let want = [
        "_stext",
        "kallsyms_lookup_name",
        "kallsyms_on_each_symbol",
        "module_kallsyms_on_each_symbol",
    ];
    let t = Instant::now();
    let mut found = 0;
    if let Ok(f) = fs::File::open("/proc/kallsyms") {
        for l in io::BufReader::with_capacity(64 << 10, f).lines() {
            let Ok(l) = l else { break };
            if l.split_whitespace()
                .nth(2)
                .is_some_and(|s| want.contains(&s))
            {
                found += 1;
                if found == want.len() {
                    break;
                }
            }
        }
    }
    let upto_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    for m in fs::read_dir("/sys/module").into_iter().flatten().flatten() {
        for sec in fs::read_dir(m.path().join("sections"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::read_to_string(sec.path());
        }
    }
    let sections_ms = t.elapsed().as_secs_f64() * 1e3;
    (full_ms, upto_ms, sections_ms, lines)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// `tools` starting at the `i`-th: repetitions rotate which implementation
/// runs first (a run can be slowed by what the one before left, such as the
/// freeing of its module's relay buffers).
fn rotated(tools: &[Tool], i: usize) -> Vec<Tool> {
    let n = tools.len().max(1);
    (0..tools.len()).map(|k| tools[(i + k) % n]).collect()
}

fn tools() -> Vec<Tool> {
    list("bench.tools", "ours,theirs")
        .iter()
        .filter_map(|t| match t.as_str() {
            "ours" => Some(Tool::Ours),
            "base" if Path::new(BASE_STAPIO).exists() => Some(Tool::Base),
            "theirs" | "c" => Some(Tool::Theirs),
            _ => None,
        })
        .collect()
}

fn bench(r: &mut Reporter) {
    let cpus = ncpus();
    let mib: u64 = param("bench.mib")
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let sizes: Vec<u64> = list("bench.sizes", "64,1024,16384")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let startup_runs: usize = param("bench.startup")
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let modes: Vec<Mode> = list("bench.modes", "serial,bulk")
        .iter()
        .filter_map(|m| match m.as_str() {
            "serial" => Some(Mode::Serial),
            "bulk" => Some(Mode::Bulk),
            _ => None,
        })
        .collect();
    let sinks: Vec<Sink> = list("bench.outs", "tmpfs,null")
        .iter()
        .filter_map(|m| match m.as_str() {
            "tmpfs" => Some(Sink::Tmpfs),
            "null" => Some(Sink::Null),
            _ => None,
        })
        .collect();
    let loads = list("bench.loads", "max,r50,r90");
    let reps: usize = param("bench.reps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let tools = tools();
    if !r.check(
        "bench_image",
        Path::new("/opt/c/usr/bin/staprun").exists() || !tools.contains(&Tool::Theirs),
        "the C staprun is missing: boot the compat image (cargo xtask bench does)",
    ) {
        return;
    }
    let dest = blessed_dir().join("pmod.ko");
    if !r.check(
        "publish_pmod",
        install_fixture("pmod", &dest, 0o644, 0, 0).is_ok(),
        dest.display().to_string(),
    ) {
        return;
    }
    r.line(&format!("BENCH env cpus={cpus} mib_per_cpu={mib}"));
    r.line(&format!("BENCH membw gbps={:.3}", memory_bandwidth()));
    r.line(&format!("BENCH splice result={}", splice_probe()));
    let (full, upto, secs, lines) = setup_costs();
    r.line(&format!(
        "BENCH setup kallsyms_ms={full:.1} kallsyms_lines={lines} kallsyms_upto_ms={upto:.1} sections_ms={secs:.1}"
    ));

    // Start-up, alternating the tools.
    let mut runs: BTreeMap<&str, Vec<Startup>> = BTreeMap::new();
    for i in 0..startup_runs {
        for t in rotated(&tools, i) {
            if let Err(e) = t.activate() {
                r.check("activate", false, e);
                return;
            }
            match startup_once() {
                Ok(s) => runs.entry(t.name()).or_default().push(s),
                Err(e) => {
                    r.check(&format!("startup_{}", t.name()), false, e);
                }
            }
        }
    }
    for (tool, v) in &runs {
        let m = |f: fn(&Startup) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            median(&mut x) * 1e3
        };
        r.line(&format!(
            "BENCH startup tool={tool} runs={} loaded_ms={:.1} started_ms={:.1} first_ms={:.1} unloaded_ms={:.1} exit_ms={:.1} cpu_ms={:.1}",
            v.len(),
            m(|s| s.loaded),
            m(|s| s.started),
            m(|s| s.first),
            m(|s| s.unloaded),
            m(|s| s.exit),
            m(|s| s.cpu),
        ));
    }

    for &size in &sizes {
        let prints = (mib << 20) / size;
        // The copy ceiling for this record size.
        match ceiling(size, prints) {
            Ok((secs, payload)) => r.line(&format!(
                "BENCH ceiling size={size} secs={secs:.3} mbps={:.1}",
                payload as f64 / 1e6 / secs
            )),
            Err(e) => {
                r.check(&format!("ceiling_{size}"), false, e);
            }
        }
        for &mode in &modes {
            for &sink in &sinks {
                // As fast as the module can print ("max"), then at fixed
                // rates ("rNN": NN% of the best throughput either tool
                // delivered at max) for RATE_SECS.
                let mut max_mbps: BTreeMap<&str, f64> = BTreeMap::new();
                for load in &loads {
                    let (rate, n) = if load == "max" {
                        (0, prints)
                    } else if let Some(pct) =
                        load.strip_prefix('r').and_then(|p| p.parse::<f64>().ok())
                    {
                        let best = max_mbps.values().copied().fold(0.0, f64::max);
                        if best <= 0.0 {
                            continue;
                        }
                        let rate =
                            ((best * pct / 100.0 * 1e6 / size as f64 / cpus as f64) as u64).max(1);
                        (rate, prints.min(rate * RATE_SECS).max(1))
                    } else {
                        continue;
                    };
                    // Repeated (tools interleaved); the run with the median
                    // MB/s stands for the row, with the spread.
                    let reps = if rate == 0 { reps } else { 1 };
                    let mut all: BTreeMap<&str, Vec<RunResult>> = BTreeMap::new();
                    for i in 0..reps {
                        for t in rotated(&tools, i) {
                            if let Err(e) = t.activate() {
                                r.check("activate", false, e);
                                return;
                            }
                            let res = run_one(t, mode, sink, size, n, rate);
                            let ok = res.exit == Some(0) && res.payload > 0;
                            r.check(
                                &format!("run_{}_{mode:?}_{sink:?}_{size}_{load}", t.name()),
                                ok,
                                format!("exit {:?} stderr {:?}", res.exit, res.stderr),
                            );
                            all.entry(t.name()).or_default().push(res);
                        }
                    }
                    for (tool, mut v) in all {
                        v.sort_by(|a, b| a.mbps().total_cmp(&b.mbps()));
                        let (lo, hi) = (v[0].mbps(), v[v.len() - 1].mbps());
                        let res = v.swap_remove(v.len() / 2);
                        if load == "max" {
                            max_mbps.insert(tool, res.mbps());
                        }
                        let (rcpu, mcpu) = thread_cpu(&res.stderr).unwrap_or((f64::NAN, f64::NAN));
                        r.line(&format!(
                            "BENCH run tool={tool} mode={} out={} size={size} load={load} rate={rate} reps={reps} secs={:.3} mbps={:.2} mbps_min={lo:.2} mbps_max={hi:.2} payload={} expected={} lost={} dropped={} unread={} cpu_s={:.3} reader_cpu_s={rcpu:.3} merger_cpu_s={mcpu:.3} rss_kib={} exit={}",
                            match mode {
                                Mode::Serial => "serial",
                                Mode::Bulk => "bulk",
                            },
                            match sink {
                                Sink::Tmpfs => "tmpfs",
                                Sink::Null => "null",
                            },
                            res.secs,
                            res.mbps(),
                            res.payload,
                            res.prints_expected,
                            res.prints_lost,
                            res.dropped,
                            res.unread,
                            res.cpu_secs,
                            res.maxrss_kib,
                            res.exit.map_or("signal".to_owned(), |c| c.to_string()),
                        ));
                    }
                }
            }
        }
    }
    let _ = Tool::Ours.activate();
    let _ = fs::remove_file(&dest);
}
