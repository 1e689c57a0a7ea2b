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
}

/// The `key=value` words of a line.
fn kv(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// Parsed results of one guest.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
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
    o
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
}
