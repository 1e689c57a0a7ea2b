//! `cargo xtask bench`: relay throughput and start-up of our stapio against
//! the C stapio 4.8, in QEMU guests with 2 and 4 vCPUs (guest side:
//! `vm/src/bin/vm-agent/bench.rs`; results and how to read them:
//! docs/bench.md).
//!
//! Each guest boots the compat image (which holds the C tools) with scenario
//! `bench`; its `BENCH ...` lines become one markdown report, printed and
//! written to `target/bench/report.md` (raw lines: `target/bench/raw-N.txt`; the parsed
//! results of every guest as JSON: `target/bench/raw.json`, see [`RawResults`]).

mod chart;
mod report;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cpio::{self, Entry};
use super::{TARGET, cargo_static, compat};
use crate::cmd::{self, cmd, step, workspace_root};
use crate::error::{Context as _, Result};
use crate::files;
use report::{GuestResults, parse, report, targets_section};

#[derive(clap::Args, Clone, Debug)]
#[group(id = "bench_options")]
pub struct Options {
    #[command(flatten)]
    pub compat: compat::Options,
    /// vCPU counts, one guest each.
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    pub cpus: Vec<u32>,
    /// MiB of payload per CPU per run.
    #[arg(long, default_value_t = 64)]
    pub mib: u32,
    /// Print sizes in bytes (a print over 4088 bytes is several relay records).
    #[arg(long, default_value = "64,1024,16384")]
    pub sizes: String,
    /// Implementations: ours, theirs (the C stapio 4.8).
    #[arg(long, default_value = "ours,theirs")]
    pub tools: String,
    /// serial, bulk.
    #[arg(long, default_value = "serial,bulk")]
    pub modes: String,
    /// tmpfs, null.
    #[arg(long, default_value = "tmpfs,null")]
    pub outs: String,
    /// max (as fast as the module prints), rNN (NN% of the best MB/s either implementation
    /// delivered at max, for 4 s).
    #[arg(long, default_value = "max,r50,r90")]
    pub loads: String,
    /// Runs per max-load row and implementation (the run with the median MB/s is reported,
    /// with the range).
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// Start-up runs per implementation (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub startup: u32,
    /// Guest memory in MiB (relay buffers are 16 MiB per CPU; tmpfs holds the output).
    #[arg(long, default_value_t = 2048)]
    pub mem: u32,
    /// Also run our stapio as built from this git revision (tool "base"), to see whether a
    /// change helped.
    #[arg(long, value_name = "REV")]
    pub baseline: Option<String>,
    #[command(flatten)]
    pub real: Box<RealOptions>,
    /// Boot nothing: render the report again from an earlier run's DIR/raw.json, or
    /// DIR/raw-N.txt for an N (in --cpus) it does not hold.
    #[arg(long, value_name = "DIR")]
    pub from_raw: Option<std::path::PathBuf>,
}

/// Which workloads run, and the real ones' rate sweep (boxed in [`Options`]: the options of
/// one subcommand are one variant of xtask's command enum).
#[derive(clap::Args, Clone, Debug)]
#[group(id = "bench_real_options")]
pub struct RealOptions {
    /// Workloads: fixture (the test module pmod, the rows above), real (SystemTap 4.8 and 5.1
    /// modules, compat/bench_*.stp, at rising rates; see docs/bench.md "Real workloads").
    #[arg(long, value_delimiter = ',', default_value = "fixture,real")]
    pub workloads: Vec<String>,
    /// Real workloads: SystemTap generations (4: built by 4.8, C tools 4.8; 5: 5.1).
    #[arg(long, default_value = "4,5")]
    pub gens: String,
    /// Real workloads: timer (timer.profile on every CPU), event (a tracepoint under a load
    /// generator).
    #[arg(long, default_value = "timer,event")]
    pub real: String,
    /// Real timer workload: lines per probe hit, one run each (a K=0 run comes first).
    #[arg(long, default_value = "4,16,64")]
    pub real_lines: String,
    /// Real event workload: signals per second per CPU from the load generator (a line each).
    #[arg(long, default_value = "500,2000,8000,32000")]
    pub real_rates: String,
    /// Real workloads: seconds each script runs.
    #[arg(long, default_value_t = 2)]
    pub real_secs: u32,
    /// Real workloads: bytes per line (32-2048).
    #[arg(long, default_value_t = 1024)]
    pub real_size: u32,
}

/// Our stapio as built from `rev` (a throwaway worktree, its own target directory).
fn baseline_stapio(rev: &str) -> Result<Vec<u8>> {
    let sh = cmd::shell_in(&workspace_root())?;
    let dir = vm::target_dir().join("bench").join("baseline-src");
    let remove = || cmd::run(cmd!(sh, "git worktree remove --force {dir}"));
    if dir.exists() {
        let _ = remove();
        let _ = fs::remove_dir_all(&dir);
    }
    cmd::run(cmd!(sh, "git worktree add --detach {dir} {rev}").ignore_stdout())?;
    let target = vm::target_dir().join("bench").join("baseline-target");
    let in_worktree = cmd::shell_in(&dir)?;
    let built =
        cmd::run(cargo_static(&in_worktree, &["stapio"], &[]).env("CARGO_TARGET_DIR", &target));
    let _ = remove();
    built?;
    files::read(&target.join(TARGET).join("release").join("stapio"))
}

/// The compat initramfs plus /opt/base/stapio.
fn with_baseline(initrd: &Path, stapio: Vec<u8>, out: &Path) -> Result<()> {
    let extras = [
        Entry::dir("opt/base", 0o755),
        Entry::file("opt/base/stapio", 0o755, stapio),
    ];
    files::write(out, cpio::append(initrd, &extras)?)
}

/// The machine-readable results of a bench run (target/bench/raw.json): every guest's `BENCH`
/// lines, parsed, with the guest kernel they ran on.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RawResults {
    pub kver: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// One per vCPU count, in the order they ran.
    pub guests: Vec<GuestResults>,
}

const RAW_JSON: &str = "raw.json";

/// The report of an earlier run: each vCPU count from DIR/raw.json, or when that does not hold
/// it, parsed again from DIR/raw-N.txt.
fn rerender(opts: &Options, dir: &Path) -> Result<()> {
    let json = dir.join(RAW_JSON);
    let saved: RawResults = if json.is_file() {
        serde_json::from_str(&files::read_to_string(&json)?)
            .with_context(|| format!("{}", json.display()))?
    } else {
        RawResults::default()
    };
    let mut text = format!(
        "## Relay throughput and start-up, ours vs the C stapio (Debian systemtap-runtime 4.8)\n\nRendered from {}.\n\n",
        if saved.guests.is_empty() {
            format!("{}/raw-N.txt", dir.display())
        } else {
            json.display().to_string()
        }
    );
    let mut targets = Vec::new();
    for &cpus in &opts.cpus {
        let parsed;
        let g = match saved.guests.iter().find(|g| g.cpus == cpus) {
            Some(g) => g,
            None => {
                let all = files::read_to_string(&dir.join(format!("raw-{cpus}.txt")))?;
                let lines: Vec<&str> = all.lines().collect();
                parsed = parse(cpus, &lines);
                &parsed
            }
        };
        text.push_str(&report(g, &mut targets));
        text.push('\n');
    }
    targets_section(&mut text, &targets);
    println!("{text}");
    let guests: Vec<GuestResults> = opts
        .cpus
        .iter()
        .filter_map(|&c| saved.guests.iter().find(|g| g.cpus == c).cloned())
        .collect();
    write_chart(dir, &guests)?;
    Ok(())
}

const CHART: &str = "throughput.svg";

/// DIR/throughput.svg from these guests' results (none when they hold nothing to plot).
fn write_chart(dir: &Path, guests: &[GuestResults]) -> Result<()> {
    if let Some(svg) = chart::render(guests)? {
        let path = dir.join(CHART);
        files::write(&path, svg)?;
        eprintln!("xtask: chart written to {}", path.display());
    }
    Ok(())
}

pub fn bench(opts: &Options) -> Result<()> {
    if let Some(dir) = &opts.from_raw {
        return rerender(opts, dir);
    }
    let t0 = Instant::now();
    let mut art = compat::prepare(&opts.compat)?;
    let dir = vm::target_dir().join("bench");
    files::mkdir(&dir)?;
    let mut tools = opts.tools.clone();
    if let Some(rev) = &opts.baseline {
        let stapio = step(&format!("stapio at {rev} (baseline)"), || {
            baseline_stapio(rev)
        })?;
        let initrd = dir.join("initramfs-bench.cpio");
        with_baseline(&art.initrd, stapio, &initrd)?;
        art.initrd = initrd;
        if !tools.split(',').any(|t| t == "base") {
            tools.push_str(",base");
        }
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "## Relay throughput and start-up, ours vs the C stapio (Debian systemtap-runtime 4.8)\n"
    );
    let _ = writeln!(
        text,
        "Command: `cargo xtask bench --cpus {} --mib {} --sizes {} --tools {} --modes {} --outs {} --loads {} --reps {} --startup {}{} --workloads {} --gens {} --real {} --real-lines {} --real-rates {} --real-secs {} --real-size {}`; guest kernel {} ({}), {} MiB; fixture pmod (4.x transport), alice (stapusr) runs `staprun -o OUT pmod records=N record_size=S [bulk=1] [rate=R]`.\n",
        opts.cpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        opts.mib,
        opts.sizes,
        opts.tools,
        opts.modes,
        opts.outs,
        opts.loads,
        opts.reps,
        opts.startup,
        opts.baseline
            .as_ref()
            .map_or(String::new(), |r| format!(" --baseline {r}")),
        opts.real.workloads.join(","),
        opts.real.gens,
        opts.real.real,
        opts.real.real_lines,
        opts.real.real_rates,
        opts.real.real_secs,
        opts.real.real_size,
        art.kver,
        art.accel,
        opts.mem
    );
    let mut raw = RawResults {
        kver: art.kver.clone(),
        accel: art.accel.clone(),
        guests: Vec::new(),
    };
    let mut targets = Vec::new();
    for &cpus in &opts.cpus {
        let mut spec = vm::BootSpec::new("bench");
        spec.smp = cpus;
        spec.mem_mib = opts.mem;
        spec.timeout = Duration::from_secs(3600);
        spec.append.extend([
            format!("bench.mib={}", opts.mib),
            format!("bench.sizes={}", opts.sizes),
            format!("bench.tools={tools}"),
            format!("bench.modes={}", opts.modes),
            format!("bench.outs={}", opts.outs),
            format!("bench.loads={}", opts.loads),
            format!("bench.startup={}", opts.startup),
            format!("bench.reps={}", opts.reps),
            format!("bench.workloads={}", opts.real.workloads.join(",")),
            format!("bench.gens={}", opts.real.gens),
            format!("bench.real={}", opts.real.real),
            format!("bench.real_lines={}", opts.real.real_lines),
            format!("bench.real_rates={}", opts.real.real_rates),
            format!("bench.real_secs={}", opts.real.real_secs),
            format!("bench.real_size={}", opts.real.real_size),
            // A soft lockup (the TCG livelock of docs/compat.md) panics the guest, which ends
            // the boot at once with the lockup on its console, instead of hanging the bench.
            "softlockup_panic=1".into(),
        ]);
        eprintln!("xtask: bench guest with {cpus} vCPUs ({})", art.accel);
        let run = vm::boot(&art, &spec).map_err(|e| {
            format!(
                "bench guest ({cpus} vCPUs) failed: {e}\n(a soft lockup or a timeout here is most likely the TCG livelock of docs/compat.md; what it measured before is in {})",
                dir.display()
            )
        })?;
        let lines: Vec<&str> = run.events().collect();
        files::write(
            &dir.join(format!("raw-{cpus}.txt")),
            lines.join("\n") + "\n",
        )?;
        for l in lines.iter().filter(|l| l.starts_with("BENCH ")) {
            eprintln!("xtask: {l}");
        }
        run.assert_passed()
            .with_context(|| format!("bench guest ({cpus} vCPUs) failed"))?;
        let g = parse(cpus, &lines);
        text.push_str(&report(&g, &mut targets));
        text.push('\n');
        // Rewritten after every guest, so an interrupted run keeps what it measured.
        raw.guests.push(g);
        files::write(
            &dir.join(RAW_JSON),
            serde_json::to_string_pretty(&raw)? + "\n",
        )?;
        write_chart(&dir, &raw.guests)?;
    }
    targets_section(&mut text, &targets);
    let _ = writeln!(text, "\nWall time {:.0} s.", t0.elapsed().as_secs_f64());
    let path = dir.join("report.md");
    files::write(&path, &text)?;
    println!("{text}");
    eprintln!(
        "xtask: report written to {} (results as JSON: {})",
        path.display(),
        dir.join(RAW_JSON).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_results_round_trip_through_json() {
        let lines = [
            "BENCH membw gbps=2.5",
            "BENCH setup kallsyms_ms=30 kallsyms_upto_ms=12 sections_ms=4",
            "BENCH splice result=errno:22",
            "BENCH startup tool=ours runs=3 loaded_ms=10 started_ms=20 first_ms=50.0 unloaded_ms=70 exit_ms=80.0 cpu_ms=9",
            "BENCH ceiling size=1024 secs=1 mbps=200.0",
            "BENCH run tool=ours mode=bulk out=null size=1024 load=max rate=0 secs=1 mbps=100.00 mbps_min=90 mbps_max=110 payload=100000000 expected=10 lost=0 dropped=0 cpu_s=0.5 rss_kib=2048 exit=0",
        ];
        let raw = RawResults {
            kver: "6.1.0-57-cloud-amd64".into(),
            accel: "tcg".into(),
            guests: vec![parse(2, &lines)],
        };
        let text = serde_json::to_string_pretty(&raw).unwrap();
        assert!(text.contains("\"mbps_max\": 110.0"), "{text}");
        let back: RawResults = serde_json::from_str(&text).unwrap();
        assert_eq!(back, raw);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(
            report(&back.guests[0], &mut a),
            report(&raw.guests[0], &mut b)
        );
    }
}
