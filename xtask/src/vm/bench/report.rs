//! The bench's results: the guest's `BENCH` lines parsed ([`parse`]), kept as JSON
//! (target/bench/raw.json), and rendered as the markdown report with the targets it misses.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One `BENCH run` line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub tool: String,
    pub mode: String,
    pub out: String,
    pub size: u64,
    pub load: String,
    pub mbps: f64,
    /// Range over the repetitions of the row.
    pub mbps_min: f64,
    pub mbps_max: f64,
    pub lost: u64,
    pub expected: u64,
    pub cpu_s: f64,
    pub payload: u64,
    pub rss_kib: u64,
    /// Prints per second per CPU of a fixed-rate row (0: max).
    #[serde(default)]
    pub rate: u64,
    /// Seconds from the begin probes having run to the exit of staprun.
    #[serde(default)]
    pub secs: f64,
}

impl Run {
    /// The payload the module was asked to print over the run's time, MB/s: what was offered
    /// (at max, a lower bound: the module printed it in less).
    pub fn offered_mbps(&self) -> f64 {
        (self.expected * self.size) as f64 / 1e6 / self.secs.max(1e-9)
    }
}

/// One `BENCH real` line: a real SystemTap module (`gen` 4: built by 4.8, run with the C
/// tools 4.8; 5: 5.1) at one offered rate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RealRun {
    pub generation: u32,
    /// timer (timer.profile on every CPU, `lines` per hit) or event (a tracepoint hit by a
    /// load generator, `rate` signals per second per CPU, one line each).
    pub kind: String,
    pub mode: String,
    pub tool: String,
    /// lines per hit (timer; 0 is the session that prints nothing) or rate (event).
    pub step: u64,
    pub size: u64,
    /// The script's own duration (it ends itself after that).
    pub secs: f64,
    /// Lines the probes attempted (the module's count, from the kernel log).
    pub produced: u64,
    /// Lines found in the output files.
    pub delivered: u64,
    pub lost: u64,
    /// "There were N transport failures" on stderr.
    pub failures: u64,
    /// "skipped probes: N" on stderr.
    pub skipped: u64,
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub exit: String,
}

impl RealRun {
    pub fn offered_mbps(&self) -> f64 {
        (self.produced * self.size) as f64 / 1e6 / self.secs.max(1e-9)
    }

    pub fn delivered_mbps(&self) -> f64 {
        (self.delivered * self.size) as f64 / 1e6 / self.secs.max(1e-9)
    }

    pub fn lost_pct(&self) -> f64 {
        if self.produced == 0 {
            0.0
        } else {
            100.0 * self.lost as f64 / self.produced as f64
        }
    }

    /// "4.x timer", the set of runs it belongs to (with the mode aside).
    pub fn workload(&self) -> String {
        format!("{}.x {}", self.generation, self.kind)
    }
}

/// The `key=value` words of a line.
fn kv(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// Parsed results of one guest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestResults {
    pub cpus: u32,
    pub membw: f64,
    /// Median ms from the spawn: loaded, started, first byte, unloaded, exit.
    pub startup: BTreeMap<String, [f64; 5]>,
    /// Median CPU ms of a start-up run (load, handshake, unload): the fixed
    /// cost that CPU s/GB leaves out.
    pub fixed_cpu_ms: BTreeMap<String, f64>,
    pub ceiling: BTreeMap<u64, f64>,
    pub runs: Vec<Run>,
    /// What splice(2) from a relay file gave.
    pub splice: String,
    /// ms: all of /proc/kallsyms, up to the four symbols, module sections.
    pub setup: Option<(f64, f64, f64)>,
    /// The real SystemTap workloads (`BENCH real`), absent from runs before they existed.
    #[serde(default)]
    pub real: Vec<RealRun>,
}

pub fn parse(cpus: u32, lines: &[&str]) -> GuestResults {
    let mut g = GuestResults {
        cpus,
        ..GuestResults::default()
    };
    for l in lines {
        let Some(rest) = l.strip_prefix("BENCH ") else {
            continue;
        };
        let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let m = kv(rest);
        let f = |k: &str| m.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let u = |k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let s = |k: &str| m.get(k).copied().unwrap_or("").to_owned();
        match kind {
            "membw" => g.membw = f("gbps"),
            "splice" => g.splice = s("result"),
            "setup" => {
                g.setup = Some((f("kallsyms_ms"), f("kallsyms_upto_ms"), f("sections_ms")));
            }
            "startup" => {
                g.fixed_cpu_ms.insert(s("tool"), f("cpu_ms"));
                g.startup.insert(
                    s("tool"),
                    [
                        f("loaded_ms"),
                        f("started_ms"),
                        f("first_ms"),
                        f("unloaded_ms"),
                        f("exit_ms"),
                    ],
                );
            }
            "ceiling" => {
                g.ceiling.insert(u("size"), f("mbps"));
            }
            "run" => g.runs.push(Run {
                tool: s("tool"),
                mode: s("mode"),
                out: s("out"),
                size: u("size"),
                load: s("load"),
                mbps: f("mbps"),
                mbps_min: f("mbps_min"),
                mbps_max: f("mbps_max"),
                lost: u("lost"),
                expected: u("expected"),
                cpu_s: f("cpu_s"),
                payload: u("payload"),
                rss_kib: u("rss_kib"),
                rate: u("rate"),
                secs: f("secs"),
            }),
            "real" => g.real.push(RealRun {
                generation: u("gen") as u32,
                kind: s("kind"),
                mode: s("mode"),
                tool: s("tool"),
                step: u("step"),
                size: u("size"),
                secs: f("secs"),
                produced: u("produced"),
                delivered: u("delivered"),
                lost: u("lost"),
                failures: u("failures"),
                skipped: u("skipped"),
                cpu_s: f("cpu_s"),
                rss_kib: u("rss_kib"),
                exit: s("exit"),
            }),
            _ => {}
        }
    }
    g
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

/// MB/s, with the range over repetitions when there were several.
fn mbps_cell(r: &Run) -> String {
    if r.mbps_max > r.mbps_min {
        format!("{:.1} ({:.0}-{:.0})", r.mbps, r.mbps_min, r.mbps_max)
    } else {
        format!("{:.1}", r.mbps)
    }
}

/// CPU seconds per GB delivered, less the fixed cost of a run that prints
/// nothing (`fixed_ms`); "-" when nothing was delivered or the run cost no
/// more than that fixed cost.
fn cpu_per_gb(r: &Run, fixed_ms: f64) -> String {
    let cpu = r.cpu_s - fixed_ms / 1e3;
    if r.payload == 0 || cpu <= 0.0 {
        "-".into()
    } else {
        format!("{:.1}", cpu / (r.payload as f64 / 1e9))
    }
}

fn size_name(s: u64) -> String {
    if s >= 1024 && s % 1024 == 0 {
        format!("{} KiB", s / 1024)
    } else {
        format!("{s} B")
    }
}

/// The markdown report of one guest, and the target checks.
pub fn report(g: &GuestResults, targets: &mut Vec<String>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "### {} vCPUs\n", g.cpus);
    let _ = writeln!(
        o,
        "Memory bandwidth (64 MiB memcpy): {:.2} GB/s. Copy ceiling (plain read of the relay files, pinned thread per CPU, payload MB/s): {}.\n",
        g.membw,
        g.ceiling
            .iter()
            .map(|(s, m)| format!("{} {m:.1}", size_name(*s)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some((all, upto, secs)) = g.setup {
        let _ = writeln!(
            o,
            "staprun's setup messages in this guest: reading all of /proc/kallsyms {all:.0} ms, up to the four kernel symbols it relocates {upto:.0} ms, every /sys/module/*/sections/* {secs:.0} ms.\n"
        );
    }
    if !g.splice.is_empty() {
        let _ = writeln!(
            o,
            "splice(2) from a relay file (trace0 of pmod, procfs): {}.\n",
            match g.splice.as_str() {
                "errno:22" =>
                    "EINVAL (the file has no splice support: bulk mode must read and write)"
                        .to_owned(),
                other => other.to_owned(),
            }
        );
    }
    if !g.startup.is_empty() {
        let _ = writeln!(
            o,
            "Start-up of `staprun pmod records=0` as alice (median ms from the spawn):\n"
        );
        let none = [f64::NAN; 5];
        let ours = g.startup.get("ours").unwrap_or(&none);
        let c = g.startup.get("theirs").unwrap_or(&none);
        let base = g.startup.get("base");
        let _ = writeln!(
            o,
            "| phase | ours | C | ours/C |{}\n|---|---:|---:|---:|{}",
            if base.is_some() { " base |" } else { "" },
            if base.is_some() { "---:|" } else { "" }
        );
        for (i, phase) in [
            "module loaded",
            "begin probes done (STP_START answered)",
            "first output byte",
            "module unloaded",
            "exit",
        ]
        .iter()
        .enumerate()
        {
            let _ = writeln!(
                o,
                "| {phase} | {:.0} | {:.0} | {} |{}",
                ours[i],
                c[i],
                ratio(ours[i], c[i]),
                base.map_or(String::new(), |b| format!(" {:.0} |", b[i]))
            );
        }
        o.push('\n');
        if g.startup.contains_key("ours")
            && g.startup.contains_key("theirs")
            && (ours[2] > c[2] || ours[4] > c[4])
        {
            targets.push(format!(
                "{} vCPUs: start-up slower than C (first byte {:.0}/{:.0} ms, exit {:.0}/{:.0} ms)",
                g.cpus, ours[2], c[2], ours[4], c[4]
            ));
        }
    }
    let _ = writeln!(
        o,
        "MB/s: payload delivered / (begin probes done .. exit). Lost: prints of the run never delivered (tmpfs: missing from the files; /dev/null: records the module could not place plus relay bytes never read). CPU s/GB: user+sys of the whole run less a start-up run's ({} ms ours, {} ms C), per GB delivered. Peak RSS: largest of the processes of the run.\n",
        g.fixed_cpu_ms
            .get("ours")
            .map_or("-".into(), |v| format!("{v:.0}")),
        g.fixed_cpu_ms
            .get("theirs")
            .map_or("-".into(), |v| format!("{v:.0}"))
    );
    let has_base = g.runs.iter().any(|r| r.tool == "base");
    let _ = writeln!(
        o,
        "| mode | output | print | load | ours MB/s | C MB/s | ours/C |{} ours lost | C lost | ours CPU s/GB | C CPU s/GB |{} ours peak RSS MiB | C peak RSS MiB | ours % of ceiling |",
        if has_base {
            " base MB/s | ours/base |"
        } else {
            ""
        },
        if has_base { " base CPU s/GB |" } else { "" },
    );
    let _ = writeln!(
        o,
        "|---|---|---|---|---:|---:|---:|{}---:|---:|---:|---:|{}---:|---:|---:|",
        if has_base { "---:|---:|" } else { "" },
        if has_base { "---:|" } else { "" },
    );
    let mut keys: Vec<(String, String, u64, String)> = g
        .runs
        .iter()
        .map(|r| (r.mode.clone(), r.out.clone(), r.size, r.load.clone()))
        .collect();
    keys.sort_by(|a, b| (&a.0, &a.1, a.2, a.3 != "max").cmp(&(&b.0, &b.1, b.2, b.3 != "max")));
    keys.dedup();
    let find = |tool: &str, k: &(String, String, u64, String)| {
        g.runs.iter().find(|r| {
            r.tool == tool && r.mode == k.0 && r.out == k.1 && r.size == k.2 && r.load == k.3
        })
    };
    let fixed = |tool: &str| g.fixed_cpu_ms.get(tool).copied().unwrap_or(0.0);
    for k in &keys {
        let ours = find("ours", k);
        let c = find("theirs", k);
        let num = |r: Option<&Run>, f: &dyn Fn(&Run) -> String| r.map(f).unwrap_or("-".into());
        let ceiling = g.ceiling.get(&k.2).copied().unwrap_or(0.0);
        let base = find("base", k);
        let mut cells = vec![
            k.0.clone(),
            if k.1 == "null" { "/dev/null" } else { "tmpfs" }.to_owned(),
            size_name(k.2),
            match k.3.strip_prefix('r') {
                Some(p) => format!("{p}% of best max"),
                None => k.3.clone(),
            },
            num(ours, &mbps_cell),
            num(c, &mbps_cell),
            match (ours, c) {
                (Some(a), Some(b)) => ratio(a.mbps, b.mbps),
                _ => "-".into(),
            },
        ];
        if has_base {
            cells.push(num(base, &mbps_cell));
            cells.push(match (ours, base) {
                (Some(a), Some(b)) => ratio(a.mbps, b.mbps),
                _ => "-".into(),
            });
        }
        cells.extend([
            num(ours, &|r| format!("{} of {}", r.lost, r.expected)),
            num(c, &|r| format!("{} of {}", r.lost, r.expected)),
            num(ours, &|r| cpu_per_gb(r, fixed("ours"))),
            num(c, &|r| cpu_per_gb(r, fixed("theirs"))),
        ]);
        if has_base {
            cells.push(num(base, &|r| cpu_per_gb(r, fixed("base"))));
        }
        cells.extend([
            num(ours, &|r| format!("{:.1}", r.rss_kib as f64 / 1024.0)),
            num(c, &|r| format!("{:.1}", r.rss_kib as f64 / 1024.0)),
            num(ours, &|r| {
                if ceiling > 0.0 {
                    format!("{:.0}%", 100.0 * r.mbps / ceiling)
                } else {
                    "-".into()
                }
            }),
        ]);
        let _ = writeln!(o, "| {} |", cells.join(" | "));
        if let (Some(a), Some(b)) = (ours, c) {
            let row = format!(
                "{} vCPUs {} {} {} {}",
                g.cpus,
                k.0,
                k.1,
                size_name(k.2),
                k.3
            );
            if k.3 == "max" && a.mbps < b.mbps {
                targets.push(format!("{row}: ours {:.1} < C {:.1} MB/s", a.mbps, b.mbps));
            }
            if k.3 == "max" && k.0 == "bulk" && a.mbps < 1.5 * b.mbps {
                targets.push(format!(
                    "{row}: bulk ours/C {:.2} < 1.5",
                    a.mbps / b.mbps.max(1e-9)
                ));
            }
            if b.lost == 0 && a.lost > 0 {
                targets.push(format!("{row}: ours lost {} where C lost none", a.lost));
            }
        }
        if k.0 == "serial"
            && k.3 == "max"
            && let (Some(s), Some(b)) = (
                ours,
                find("ours", &("bulk".into(), k.1.clone(), k.2, k.3.clone())),
            )
            && s.mbps < 0.85 * b.mbps
        {
            targets.push(format!(
                "{} vCPUs {} {} {}: ours serial {:.1} is {:.0}% of ours bulk {:.1}",
                g.cpus,
                k.1,
                size_name(k.2),
                k.3,
                s.mbps,
                100.0 * s.mbps / b.mbps,
                b.mbps
            ));
        }
    }
    if !g.real.is_empty() {
        o.push('\n');
        real_report(g, &mut o, targets);
    }
    o
}

/// The fixed CPU cost of a real session: the `lines=0` timer run of the same generation, mode
/// and tool.
fn real_fixed_cpu(g: &GuestResults, r: &RealRun) -> f64 {
    g.real
        .iter()
        .find(|x| {
            x.kind == "timer"
                && x.step == 0
                && x.generation == r.generation
                && x.mode == r.mode
                && x.tool == r.tool
        })
        .map_or(0.0, |x| x.cpu_s)
}

fn real_cpu_per_gb(g: &GuestResults, r: &RealRun) -> String {
    let cpu = r.cpu_s - real_fixed_cpu(g, r);
    let gb = (r.delivered * r.size) as f64 / 1e9;
    if gb <= 0.0 || cpu <= 0.0 {
        "-".into()
    } else {
        format!("{:.1}", cpu / gb)
    }
}

fn tool_name(t: &str) -> &str {
    if t == "theirs" { "C" } else { t }
}

/// The step's parameter as the table shows it.
fn real_step(r: &RealRun) -> String {
    match r.kind.as_str() {
        "timer" => format!("{} lines/hit", r.step),
        _ => format!("{}/s/CPU", r.step),
    }
}

/// The real workloads of one guest: per (SystemTap generation, workload, mode) the highest
/// rate each tool delivered without loss and what it lost beyond, then every run.
fn real_report(g: &GuestResults, o: &mut String, targets: &mut Vec<String>) {
    let _ = writeln!(o, "#### Real SystemTap workloads ({} vCPUs)\n", g.cpus);
    let _ = writeln!(
        o,
        "Modules built by SystemTap 4.8 (4.x, run with the C tools 4.8) and 5.1 (5.x, C tools 5.1) from compat/bench_timer.stp (timer.profile on every CPU printing K lines per hit) and compat/bench_event.stp (tracepoint signal:signal_generate, hit by a load generator in the guest at R signals/s per CPU, one line each); lines of {} bytes, each script ends itself after {} s, output to a tmpfs file. Offered: lines the probes attempted (the module's own count) x size / the script's duration; delivered: lines in the output. Transport failures: what the runtime reports on stderr (\"There were N transport failures\"). CPU s/GB: user+sys of staprun/stapio (wait4) less that of a session printing nothing (timer, K=0), per GB delivered.\n",
        g.real.first().map_or(0, |r| r.size),
        g.real.first().map_or(0.0, |r| r.secs)
    );
    let mut sets: Vec<(u32, String, String)> = g
        .real
        .iter()
        .map(|r| (r.generation, r.kind.clone(), r.mode.clone()))
        .collect();
    sets.sort();
    sets.dedup();
    let _ = writeln!(
        o,
        "| SystemTap | workload | mode | ours: highest MB/s without loss (below its first loss) | C: highest MB/s without loss (below its first loss) | ours beyond | C beyond | ours CPU s/GB there | C CPU s/GB there |\n|---|---|---|---:|---:|---|---|---:|---:|"
    );
    for (generation, kind, mode) in &sets {
        let runs = |tool: &str| -> Vec<&RealRun> {
            let mut v: Vec<&RealRun> = g
                .real
                .iter()
                .filter(|r| {
                    r.generation == *generation
                        && &r.kind == kind
                        && &r.mode == mode
                        && r.tool == tool
                        && !(r.kind == "timer" && r.step == 0)
                })
                .collect();
            v.sort_by_key(|r| r.step);
            v
        };
        // The steps below the first that lost (a later step can offer less under TCG).
        let best = |v: &[&RealRun]| -> Option<RealRun> {
            v.iter()
                .take_while(|r| r.lost == 0)
                .filter(|r| r.produced > 0)
                .max_by(|a, b| a.delivered_mbps().total_cmp(&b.delivered_mbps()))
                .map(|r| (*r).clone())
        };
        let beyond = |v: &[&RealRun]| -> String {
            match v.iter().find(|r| r.lost > 0) {
                Some(r) => format!(
                    "at {:.1} MB/s offered ({}): {:.1} delivered, {} of {} lines lost ({:.1}%), {} transport failures",
                    r.offered_mbps(),
                    real_step(r),
                    r.delivered_mbps(),
                    r.lost,
                    r.produced,
                    r.lost_pct(),
                    r.failures
                ),
                None => "no loss up to the highest rate".into(),
            }
        };
        let (ours, c) = (runs("ours"), runs("theirs"));
        let (bo, bc) = (best(&ours), best(&c));
        let cell = |b: &Option<RealRun>| {
            b.as_ref().map_or("none".into(), |r| {
                format!("{:.1} ({})", r.delivered_mbps(), real_step(r))
            })
        };
        let cpu = |b: &Option<RealRun>| b.as_ref().map_or("-".into(), |r| real_cpu_per_gb(g, r));
        let _ = writeln!(
            o,
            "| {generation}.x | {kind} | {mode} | {} | {} | {} | {} | {} | {} |",
            cell(&bo),
            cell(&bc),
            beyond(&ours),
            beyond(&c),
            cpu(&bo),
            cpu(&bc)
        );
        for r in &ours {
            if let Some(cr) = c.iter().find(|x| x.step == r.step)
                && r.lost > 0
                && cr.lost == 0
            {
                targets.push(format!(
                    "{} vCPUs real {generation}.x {kind} {mode} {}: ours lost {} of {} lines where C lost none",
                    g.cpus,
                    real_step(r),
                    r.lost,
                    r.produced
                ));
            }
        }
    }
    let _ = writeln!(
        o,
        "\nEvery run (the K=0 timer runs give the fixed CPU cost):\n\n| SystemTap | workload | mode | step | tool | offered MB/s | delivered MB/s | lost lines | transport failures | skipped probes | CPU s | CPU s/GB | peak RSS MiB |\n|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut all: Vec<&RealRun> = g.real.iter().collect();
    all.sort_by(|a, b| {
        (a.generation, &a.kind, &a.mode, a.step, &a.tool).cmp(&(
            b.generation,
            &b.kind,
            &b.mode,
            b.step,
            &b.tool,
        ))
    });
    for r in all {
        let _ = writeln!(
            o,
            "| {}.x | {} | {} | {} | {} | {:.1} | {:.1} | {} of {} | {} | {} | {:.2} | {} | {:.1} |",
            r.generation,
            r.kind,
            r.mode,
            real_step(r),
            tool_name(&r.tool),
            r.offered_mbps(),
            r.delivered_mbps(),
            r.lost,
            r.produced,
            r.failures,
            r.skipped,
            r.cpu_s,
            real_cpu_per_gb(g, r),
            r.rss_kib as f64 / 1024.0
        );
    }
    o.push('\n');
}

pub fn targets_section(text: &mut String, targets: &[String]) {
    let _ = writeln!(text, "### Targets not met\n");
    if targets.is_empty() {
        let _ = writeln!(text, "None.");
    }
    for t in targets {
        let _ = writeln!(text, "- {t}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_reports_ratios_and_missed_targets() {
        let lines = [
            "BENCH membw gbps=2.5",
            "BENCH startup tool=ours runs=3 loaded_ms=10 started_ms=20 first_ms=50.0 unloaded_ms=70 exit_ms=80.0",
            "BENCH startup tool=theirs runs=3 loaded_ms=10 started_ms=20 first_ms=60.0 unloaded_ms=400 exit_ms=500.0",
            "BENCH ceiling size=64 secs=1 mbps=200.0",
            "BENCH run tool=ours mode=bulk out=null size=64 load=max rate=0 secs=1 mbps=100.00 payload=100000000 expected=10 lost=0 dropped=0 cpu_s=0.5 rss_kib=2048 exit=0",
            "BENCH run tool=theirs mode=bulk out=null size=64 load=max rate=0 secs=1 mbps=80.00 payload=80000000 expected=10 lost=0 dropped=0 cpu_s=0.5 rss_kib=1024 exit=0",
            "BENCH run tool=ours mode=serial out=null size=64 load=max rate=0 secs=1 mbps=50.00 payload=50000000 expected=10 lost=3 dropped=3 cpu_s=0.5 rss_kib=2048 exit=0",
            "BENCH run tool=theirs mode=serial out=null size=64 load=max rate=0 secs=1 mbps=60.00 payload=60000000 expected=10 lost=0 dropped=0 cpu_s=0.5 rss_kib=1024 exit=0",
        ];
        let g = parse(2, &lines);
        assert_eq!(g.runs.len(), 4);
        let mut t = Vec::new();
        let md = report(&g, &mut t);
        assert!(
            md.contains("| bulk | /dev/null | 64 B | max | 100.0 | 80.0 | 1.25 |"),
            "{md}"
        );
        assert!(md.contains("50%"), "{md}");
        assert!(md.contains("| exit | 80 | 500 | 0.16 |"), "{md}");
        // bulk < 1.5x C, serial < C, serial lost where C did not, serial < 85% of bulk
        assert_eq!(t.len(), 4, "{t:?}");
        assert!(t.iter().any(|x| x.contains("bulk ours/C 1.25")));
        assert!(t.iter().any(|x| x.contains("lost 3 where C lost none")));
    }

    #[test]
    fn real_workloads_give_the_highest_lossless_rate_and_the_loss_beyond() {
        let run = |tool: &str,
                   step: u64,
                   produced: u64,
                   delivered: u64,
                   failures: u64,
                   cpu: f64| {
            format!(
                "BENCH real gen=5 kind=timer mode=bulk tool={tool} step={step} lines={step} rate=0 size=1000 secs=2 produced={produced} delivered={delivered} lost={} failures={failures} skipped=0 calls=0 cpu_s={cpu} rss_kib=4096 exit=0",
                produced - delivered
            )
        };
        let lines = [
            run("ours", 0, 0, 0, 0, 0.5),
            run("theirs", 0, 0, 0, 0, 0.4),
            run("ours", 4, 8000, 8000, 0, 0.6),
            run("theirs", 4, 8000, 8000, 0, 0.6),
            run("ours", 16, 32000, 32000, 0, 0.9),
            run("theirs", 16, 32000, 20000, 7, 1.4),
            run("ours", 64, 100000, 90000, 3, 1.5),
            run("theirs", 64, 100000, 30000, 40, 2.0),
        ];
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let g = parse(2, &lines);
        assert_eq!(g.real.len(), 8);
        let mut t = Vec::new();
        let md = report(&g, &mut t);
        // ours: 32000 lines of 1000 B in 2 s = 16 MB/s without loss, (0.9-0.5) s / 0.032 GB
        // = 12.5 s/GB; C: 4 MB/s, (0.6-0.4) / 0.008 = 25 s/GB.
        assert!(
            md.contains("| 5.x | timer | bulk | 16.0 (16 lines/hit) | 4.0 (4 lines/hit) | at 50.0 MB/s offered (64 lines/hit): 45.0 delivered, 10000 of 100000 lines lost (10.0%), 3 transport failures | at 16.0 MB/s offered (16 lines/hit): 10.0 delivered, 12000 of 32000 lines lost (37.5%), 7 transport failures | 12.5 | 25.0 |"),
            "{md}"
        );
        assert!(md.contains("| 5.x | timer | bulk | 0 lines/hit | C | 0.0 | 0.0 | 0 of 0 | 0 | 0 | 0.40 | - | 4.0 |"), "{md}");
        assert!(t.is_empty(), "{t:?}");
        // ours losing where C did not is a missed target.
        let worse = parse(
            2,
            &[
                lines[0],
                lines[1],
                &run("ours", 4, 8000, 7000, 1, 0.6),
                lines[3],
            ],
        );
        let mut t = Vec::new();
        report(&worse, &mut t);
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(
            t[0].contains("ours lost 1000 of 8000 lines where C lost none"),
            "{t:?}"
        );
    }
}
