//! Real SystemTap workloads: modules built by the SystemTap 4.8 and 5.1 translators from
//! compat/bench_timer.stp (per-CPU timer probes printing `lines` lines of `size` bytes per hit)
//! and compat/bench_event.stp (a tracepoint hit by a load generator this agent runs, paced per
//! CPU), under ours and the C tools, at offered rates that go up until both lose data.
//!
//! Every run is alice running `staprun -o /tmp/bench/out NAME lines=K size=S secs=D [gen=PID]`
//! (`NAMEb`, built with `-b`, for bulk mode). The module counts the lines its probes attempted
//! and writes the total to the kernel log at its end probe ("bench: produced N lines"), beyond
//! the reach of transport loss; the lines delivered are counted in the output files (each starts
//! with "BNCH"). What the runtime reports on stderr ("There were N transport failures", "skipped
//! probes: N") is kept.
//!
//! The 5.x generation runs last: the agent bind-mounts the outer directories into /c5 and
//! chroots there (as the compat suite's `compat5_*` groups do), which it does not leave.
//!
//! Kernel command line: `bench.gens=4,5`, `bench.real=timer,event`, `bench.real_size=1024`,
//! `bench.real_secs=2`, `bench.real_lines=4,16,64` (timer: lines per hit; a `lines=0` run
//! first gives the fixed CPU cost of a session), `bench.real_rates=500,2000,8000,32000` (event:
//! signals per second per CPU, one line each).

use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{ALICE, Reporter, STAPRUN, blessed_dir, command_as, sys};

use super::throughput::{Kmsg, Mode, clean_out_dir};
use super::{OUT_DIR, Tool, list, ncpus, param};

/// How long past its own `secs` a session may take before it is called hung and killed.
const HANG_LIMIT: Duration = Duration::from_secs(120);
/// The line every print of the bench scripts starts with.
const MAGIC: &[u8] = b"BNCH";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Timer,
    Event,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Timer => "timer",
            Kind::Event => "event",
        }
    }

    fn module(self, mode: Mode) -> String {
        let base = match self {
            Kind::Timer => "bench_timer",
            Kind::Event => "bench_event",
        };
        match mode {
            Mode::Serial => base.to_owned(),
            Mode::Bulk => format!("{base}b"),
        }
    }
}

/// One run's result.
#[derive(Debug, Default)]
struct RealRun {
    /// Lines the probes attempted (the module's count), None when its report is missing.
    produced: Option<u64>,
    delivered: u64,
    /// "There were N transport failures".
    failures: u64,
    /// "skipped probes: N".
    skipped: u64,
    /// Signals the generator sent (event workload).
    calls: u64,
    cpu_secs: f64,
    maxrss_kib: u64,
    exit: Option<i32>,
    hung: bool,
    stderr: String,
}

/// Count of `what` (a number before it, e.g. "There were 12 transport failures") or after it
/// ("skipped probes: 3") in the session's stderr.
fn number_near(stderr: &str, what: &str, after: bool) -> u64 {
    stderr
        .lines()
        .filter_map(|l| {
            let i = l.find(what)?;
            let text = if after { &l[i + what.len()..] } else { &l[..i] };
            let digits: String = if after {
                text.trim_start()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect()
            } else {
                let rev: String = text
                    .trim_end()
                    .chars()
                    .rev()
                    .take_while(char::is_ascii_digit)
                    .collect();
                rev.chars().rev().collect()
            };
            digits.parse::<u64>().ok()
        })
        .sum()
}

/// Lines starting with [`MAGIC`] in the files of `dir` (bulk files hold record headers too).
fn count_lines(dir: &str) -> u64 {
    let mut n = 0;
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    for e in rd.flatten() {
        let Ok(mut f) = fs::File::open(e.path()) else {
            continue;
        };
        let mut buf = vec![0u8; 1 << 20];
        // Carry the last bytes over so a magic split between two reads is seen.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let got = match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => k,
            };
            let mut chunk = std::mem::take(&mut tail);
            chunk.extend_from_slice(&buf[..got]);
            let mut i = 0;
            while i + MAGIC.len() <= chunk.len() {
                if chunk[i] == MAGIC[0] && &chunk[i..i + MAGIC.len()] == MAGIC {
                    n += 1;
                    i += MAGIC.len();
                } else {
                    i += 1;
                }
            }
            let keep = chunk.len().min(MAGIC.len() - 1);
            tail = chunk[chunk.len() - keep..].to_vec();
        }
    }
    n
}

/// "bench: produced N lines" in the kernel log.
fn produced(lines: &[String]) -> Option<u64> {
    lines.iter().rev().find_map(|l| {
        l.strip_prefix("bench: produced ")?
            .strip_suffix(" lines")?
            .trim()
            .parse()
            .ok()
    })
}

/// The load generator: one thread per CPU, pinned, sending itself an ignored SIGURG
/// (`signal:signal_generate` fires for it) with kill(2) `rate` times a second until `stop`.
fn generator(
    rate: u64,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..ncpus())
        .map(|cpu| {
            let (stop, calls) = (stop.clone(), calls.clone());
            std::thread::spawn(move || {
                sys::pin_to_cpu(cpu);
                let pid = std::process::id();
                let t0 = Instant::now();
                let mut done: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
                    // At most 1 ms worth per round, so `stop` is seen.
                    let n = due.saturating_sub(done).min(rate / 1000 + 1);
                    for _ in 0..n {
                        // A signal whose default action is to be ignored.
                        let _ = sys::kill(pid, libc::SIGURG);
                    }
                    done += n;
                    if n == 0 {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
                calls.fetch_add(done, Ordering::Relaxed);
            })
        })
        .collect()
}

/// One session of `module` as alice with `params`; `rate` > 0 runs the load generator.
fn run_real(module: &str, params: &[String], secs: u64, rate: u64) -> RealRun {
    let mut res = RealRun::default();
    if let Err(e) = clean_out_dir() {
        res.stderr = format!("cannot make {OUT_DIR}: {e}");
        return res;
    }
    let mut kmsg = Kmsg::open().ok();
    let mut argv: Vec<String> = vec![
        STAPRUN.into(),
        "-o".into(),
        format!("{OUT_DIR}/out"),
        module.into(),
    ];
    argv.extend(params.iter().cloned());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut cmd = command_as(&ALICE, &argv, &[]);
    cmd.current_dir(OUT_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let gens = if rate > 0 {
        generator(rate, stop.clone(), calls.clone())
    } else {
        Vec::new()
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            res.stderr = format!("spawn: {e}");
            return res;
        }
    };
    let err_reader = crate::harness::processes::drain_stderr(&mut child);
    // A session that outlives its own `secs` by HANG_LIMIT is killed and reported.
    let pid = child.id();
    let ended = Arc::new(AtomicBool::new(false));
    let hung = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (ended, hung) = (ended.clone(), hung.clone());
        let limit = Duration::from_secs(secs) + HANG_LIMIT;
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !ended.load(Ordering::Relaxed) {
                if t0.elapsed() > limit {
                    hung.store(true, Ordering::Relaxed);
                    let _ = sys::kill(pid, libc::SIGKILL);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let waited = sys::wait4(pid);
    ended.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    // `child` was reaped by wait4: do not wait on it again.
    std::mem::forget(child);
    let _ = watchdog.join();
    for g in gens {
        let _ = g.join();
    }
    res.calls = calls.load(Ordering::Relaxed);
    res.hung = hung.load(Ordering::Relaxed);
    res.stderr = err_reader.join().unwrap_or_default();
    match waited {
        Ok(e) => {
            res.exit = e.code;
            res.cpu_secs = e.cpu_secs;
            res.maxrss_kib = e.maxrss_kib;
        }
        Err(e) => res.stderr.push_str(&format!("wait4: {e}")),
    }
    if res.hung {
        // Best effort: the module may still be loaded.
        let _ = sys::delete_module(module);
    }
    let lines = kmsg.as_mut().map(Kmsg::lines).unwrap_or_default();
    res.produced = produced(&lines);
    res.delivered = count_lines(OUT_DIR);
    res.failures = number_near(&res.stderr, "transport failures", false);
    res.skipped = number_near(&res.stderr, "skipped probes:", true);
    let _ = fs::remove_dir_all(OUT_DIR);
    res
}

/// Copies /compat/mods/NAME.ko (of the generation the agent sees) into the blessed directory.
fn publish(name: &str) -> Result<(), String> {
    let dir = blessed_dir();
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let src = Path::new("/compat/mods").join(format!("{name}.ko"));
    fs::copy(&src, dir.join(format!("{name}.ko")))
        .map(|_| ())
        .map_err(|e| format!("copy {}: {e}", src.display()))
}

/// Enters /c5 for the 5.x generation (as the compat suite does), with ours
/// at /usr/bin/staprun when /usr/bin is bound in.
fn enter_c5() -> Result<(), String> {
    Tool::Ours.activate()?;
    crate::compat::enter_c5()
}

fn num_list(key: &str, default: &str) -> Vec<u64> {
    list(key, default)
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Runs the real workloads (a hung session stops them, with a failed check saying so).
pub(crate) fn real_workloads(r: &mut Reporter, tools: &[Tool], modes: &[Mode]) {
    let tools: Vec<Tool> = tools.iter().copied().filter(|t| *t != Tool::Base).collect();
    let gens = list("bench.gens", "4,5");
    let kinds: Vec<Kind> = list("bench.real", "timer,event")
        .iter()
        .filter_map(|k| match k.as_str() {
            "timer" => Some(Kind::Timer),
            "event" => Some(Kind::Event),
            _ => None,
        })
        .collect();
    let size: u64 = param("bench.real_size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024)
        .clamp(32, 2048);
    let secs: u64 = param("bench.real_secs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
        .max(1);
    let lines_steps = num_list("bench.real_lines", "4,16,64");
    let rate_steps = num_list("bench.real_rates", "500,2000,8000,32000");
    let me = std::process::id();
    for gen_name in &gens {
        let generation: u32 = match gen_name.as_str() {
            "4" => 4,
            "5" => 5,
            _ => continue,
        };
        if generation == 5 {
            let entered = enter_c5();
            let ok = entered.is_ok();
            r.check(
                "real_c5_chroot",
                ok,
                entered.err().unwrap_or_else(|| "chrooted into /c5".into()),
            );
            if !ok {
                return;
            }
        }
        for &kind in &kinds {
            for &mode in modes {
                let module = kind.module(mode);
                if let Err(e) = publish(&module) {
                    r.check(&format!("real_publish_{generation}_{module}"), false, e);
                    continue;
                }
                // Step 0 of the timer: lines=0, a session that prints nothing (its CPU is the
                // fixed cost the host subtracts).
                let steps: Vec<u64> = match kind {
                    Kind::Timer => std::iter::once(0)
                        .chain(lines_steps.iter().copied())
                        .collect(),
                    Kind::Event => rate_steps.clone(),
                };
                for &step in &steps {
                    let (lines, rate) = match kind {
                        Kind::Timer => (step, 0),
                        Kind::Event => (1, step),
                    };
                    let mut params = vec![
                        format!("lines={lines}"),
                        format!("size={size}"),
                        format!("secs={secs}"),
                    ];
                    if kind == Kind::Event {
                        params.push(format!("gen={me}"));
                    }
                    let mut all_lost = !tools.is_empty();
                    for &t in &tools {
                        if let Err(e) = t.activate() {
                            r.check("activate", false, e);
                            return;
                        }
                        let res = run_real(&module, &params, secs, rate);
                        let label = format!(
                            "real_{generation}_{}_{}_{}_{step}",
                            kind.name(),
                            module,
                            t.name()
                        );
                        if res.hung {
                            r.check(
                                &label,
                                false,
                                format!(
                                    "HUNG: the session of {module} ({}) did not end within {} s of its {secs} s and was killed; the guest kernel may be livelocked (TCG, see docs/compat.md \"TCG livelock\"); stopping the real workloads. stderr {:?}",
                                    t.name(),
                                    HANG_LIMIT.as_secs(),
                                    res.stderr
                                ),
                            );
                            return;
                        }
                        let ok = res.exit == Some(0) && res.produced.is_some();
                        r.check(
                            &label,
                            ok,
                            format!(
                                "exit {:?} produced {:?} stderr {:?}",
                                res.exit, res.produced, res.stderr
                            ),
                        );
                        let produced = res.produced.unwrap_or(0);
                        let lost = produced.saturating_sub(res.delivered);
                        if lost == 0 || step == 0 {
                            all_lost = false;
                        }
                        r.line(&format!(
                            "BENCH real gen={generation} kind={} mode={} tool={} step={step} lines={lines} rate={rate} size={size} secs={secs} produced={produced} delivered={} lost={lost} failures={} skipped={} calls={} cpu_s={:.3} rss_kib={} exit={}",
                            kind.name(),
                            match mode {
                                Mode::Serial => "serial",
                                Mode::Bulk => "bulk",
                            },
                            t.name(),
                            res.delivered,
                            res.failures,
                            res.skipped,
                            res.calls,
                            res.cpu_secs,
                            res.maxrss_kib,
                            res.exit.map_or("signal".to_owned(), |c| c.to_string()),
                        ));
                    }
                    // Higher rates only lose more: stop once every tool lost.
                    if all_lost {
                        break;
                    }
                }
                let _ = fs::remove_file(blessed_dir().join(format!("{module}.ko")));
            }
        }
    }
    let _ = Tool::Ours.activate();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_runtime_figures() {
        let err = "WARNING: There were 17 transport failures.\nWARNING: Number of errors: 0, skipped probes: 3\n";
        assert_eq!(number_near(err, "transport failures", false), 17);
        assert_eq!(number_near(err, "skipped probes:", true), 3);
        assert_eq!(number_near("nothing\n", "transport failures", false), 0);
        let log = vec!["x".to_owned(), "bench: produced 1234 lines".to_owned()];
        assert_eq!(produced(&log), Some(1234));
    }
}
