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
//! throughput either implementation delivered at max, for 4 s),
//! `bench.workloads=fixture,real` (fixture: the pmod rows; real: SystemTap
//! 4.8 and 5.1 modules, see `real.rs`, run last).
//!
//! `throughput.rs` is one run, `ceiling.rs` the guest's copy ceiling, `startup.rs` the
//! start-up figures; this file drives them.

mod ceiling;
mod real;
mod startup;
mod throughput;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::compat::{self, Impl};
use crate::harness::{self, Reporter, STAPIO, Scenario, blessed_dir, install_fixture, sys};

use ceiling::{ceiling, memory_bandwidth, splice_probe};
use startup::{Startup, setup_costs, startup_once};
use throughput::{Mode, RunResult, Sink, run_one, thread_cpu};

/// An implementation under test: ours, a baseline build of our stapio
/// (`cargo xtask bench --baseline REV` puts it at /opt/base/stapio), or C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Ours,
    Base,
    Theirs,
}

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
        let base_mounted = compat::same_file(STAPIO, BASE_STAPIO);
        if base_mounted && self != Tool::Base {
            sys::umount(STAPIO).map_err(|e| format!("umount {STAPIO}: {e}"))?;
        }
        if self == Tool::Base && !base_mounted {
            sys::mount(BASE_STAPIO, STAPIO, "", libc::MS_BIND, "")
                .map_err(|e| format!("bind mount {BASE_STAPIO} on {STAPIO}: {e}"))?;
        }
        compat::activate(if self == Tool::Theirs {
            Impl::Theirs
        } else {
            Impl::Ours
        })
    }
}

pub const SCENARIOS: &[(&str, Scenario)] = &[("bench", bench)];

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
    harness::num_cpus()
}

/// Relay records one print of `size` bytes becomes.
fn pieces(size: u64) -> u64 {
    size.div_ceil(MAX_PIECE)
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
    let workloads = list("bench.workloads", "fixture,real");
    let sizes: Vec<u64> = list("bench.sizes", "64,1024,16384")
        .iter()
        .filter_map(|s| s.parse().ok())
        .filter(|_| workloads.iter().any(|w| w == "fixture"))
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
    if workloads.iter().any(|w| w == "real") {
        real::real_workloads(r, &tools, &modes);
    }
}
