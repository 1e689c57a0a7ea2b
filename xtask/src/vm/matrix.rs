//! `cargo xtask matrix`: the guest suite on every kernel of the compatibility matrix
//! (Debian bookworm's 6.1, bookworm-backports' 6.12, trixie-backports' 7.x; docs/matrix.md).
//!
//! For each kernel: vm-prepare for it (cached per kernel ABI), `cargo test -p vm --test vm`
//! (and `--test attacks` with `--attacks`) with `VMTEST_KERNEL` naming it, then the boot
//! variants (the `demo` scenario booted with `module.sig_enforce=1` and with
//! `lockdown=integrity`, where the load must be refused cleanly). Prints a Markdown table,
//! kernel x scenario, with the first failing check of every failure and the wall times; the
//! table also goes to target/vm-logs/matrix.md, each test binary's output to
//! target/vm-logs/matrix-KV-BIN.log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cmd;
use crate::error::{Result, bail};
use crate::files;

#[derive(clap::Args, Clone, Debug)]
#[group(id = "matrix_options")]
pub struct Options {
    /// Kernels, comma-separated: aliases (6.1, 6.12, 7) or ABIs.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "6.1,6.12,7"
    )]
    pub kernels: Vec<String>,
    /// Also run the attack suite (`cargo test -p vm --test attacks`) on every kernel.
    #[arg(long)]
    pub attacks: bool,
    /// Leave out the boot variants (module.sig_enforce=1, lockdown=integrity).
    #[arg(long)]
    pub no_variants: bool,
    /// Also write the Markdown table to FILE.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Arguments passed to the test binaries (libtest syntax: filters, --skip NAME ...).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// A boot of the `demo` scenario (alice runs `staprun pmod`) with extra kernel parameters under
/// which the load must fail: staprun exits non-zero, its error names the cause, and nothing
/// stays loaded (the agent's own `demo_module_unloaded` and `no_module_left_loaded` pass).
struct Variant {
    name: &'static str,
    append: &'static str,
    /// staprun's stderr must contain one of these.
    expect: &'static [&'static str],
    /// The kernel's own report of the refusal, on the console.
    console: &'static str,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "variant sig_enforce: demo + module.sig_enforce=1",
        append: "module.sig_enforce=1",
        expect: &["Key was rejected by service"],
        console: "Loading of unsigned module is rejected",
    },
    Variant {
        name: "variant lockdown: demo + lockdown=integrity",
        append: "lockdown=integrity",
        expect: &["Operation not permitted", "lockdown", "Key was rejected"],
        console: "unsigned module loading is restricted",
    },
];

/// The checks of `demo` that fail when the load is refused.
const VARIANT_EXPECTED_FAILS: &[&str] = &["demo_exit_0", "demo_begin_output"];

#[derive(Clone, Debug)]
enum Outcome {
    Pass,
    Fail(String),
    /// Passed on a second boot after the first died in the kernel before the agent ran.
    PassOnRetry(String),
}

/// A failure in which the guest kernel died before the agent started the scenario (no
/// `VMTEST BEGIN` in the transcript): an emulator or boot problem, not a result of the
/// scenario. The matrix boots such a scenario once more and says so.
fn is_boot_flake(msg: &str) -> bool {
    msg.contains("guest kernel failure") && !msg.contains("VMTEST BEGIN")
}

struct KernelRun {
    wanted: String,
    kver: String,
    prepare: Duration,
    tests: Duration,
    variants: Duration,
    /// Scenario name -> outcome, in run order.
    results: Vec<(String, Outcome)>,
    /// Whole-kernel failure (prepare, or a test binary that did not run).
    error: Option<String>,
}

/// One line, at most `n` characters, safe in a Markdown table cell.
fn cell(s: &str, n: usize) -> String {
    let one: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|");
    if one.chars().count() > n {
        format!("{}...", one.chars().take(n).collect::<String>())
    } else {
        one
    }
}

/// The failure reason of one libtest-mimic failure message: the first failing check
/// (`name :: detail`), or the first line, plus the console line of a kernel failure.
fn reason(msg: &str) -> String {
    let first = msg
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no message)");
    let first = match first.split_once(": ") {
        Some((head, rest)) if head.starts_with("scenario ") => rest,
        _ => first,
    };
    let mut r = match first.split_once("check(s) failed: ") {
        Some((_, rest)) => rest.split(" | ").next().unwrap_or(rest).to_owned(),
        None => first.to_owned(),
    };
    if r.contains("guest kernel failure")
        && let Some(line) = msg.lines().find(|l| {
            vm::KERNEL_FAILURE_MARKERS
                .iter()
                .any(|m| l.contains(m) && !l.contains("console shows"))
        })
    {
        let _ = write!(r, " [console: {}]", line.trim());
    }
    r
}

/// Parses libtest's pretty output: `test NAME ... ok|FAILED|ignored` lines and the
/// `---- NAME ----` failure messages.
fn parse_libtest(stdout: &str) -> Vec<(String, Outcome, bool)> {
    let mut order = Vec::new();
    let mut status = BTreeMap::new();
    for l in stdout.lines() {
        if let Some(rest) = l.strip_prefix("test ")
            && let Some((name, res)) = rest.split_once(" ... ")
        {
            order.push(name.trim().to_owned());
            status.insert(name.trim().to_owned(), res.trim().to_owned());
        }
    }
    let mut messages: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for l in stdout.lines() {
        if let Some(name) = l
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" ----"))
        {
            current = Some(name.to_owned());
            continue;
        }
        if l == "failures:" {
            current = None;
            continue;
        }
        if let Some(c) = &current {
            let m = messages.entry(c.clone()).or_default();
            m.push_str(l);
            m.push('\n');
        }
    }
    order
        .into_iter()
        .filter(|n| status.get(n).is_some_and(|s| s != "ignored"))
        .map(|n| {
            let msg = messages.get(&n).map_or("", String::as_str);
            if status.get(&n).is_some_and(|s| s == "ok") {
                (n, Outcome::Pass, false)
            } else {
                (n, Outcome::Fail(reason(msg)), is_boot_flake(msg))
            }
        })
        .collect()
}

/// Runs one guest test binary for kernel `kver`; its stdout is kept for parsing and in
/// target/vm-logs/matrix-KV-BIN.log, its stderr (progress lines) goes to the terminal.
fn run_binary(bin: &str, kver: &str, test_args: &[String]) -> Result<Vec<(String, Outcome)>> {
    let results = run_binary_once(bin, kver, test_args, "")?;
    let mut out = Vec::new();
    for (name, outcome, flake) in results {
        let Outcome::Fail(first) = &outcome else {
            out.push((name, outcome));
            continue;
        };
        if !flake {
            out.push((name, outcome));
            continue;
        }
        eprintln!(
            "xtask: matrix: {kver}: {name}: the guest died while booting ({first}): once more"
        );
        let args = [name.clone(), "--exact".to_owned()];
        let again = run_binary_once(bin, kver, &args, "-retry")?;
        let o = match again.into_iter().find(|(n, _, _)| *n == name) {
            Some((_, Outcome::Pass, _)) => Outcome::PassOnRetry(first.clone()),
            Some((_, Outcome::Fail(second), _)) => {
                Outcome::Fail(format!("{second} (first boot: {first})"))
            }
            _ => outcome,
        };
        out.push((name, o));
    }
    Ok(out)
}

fn run_binary_once(
    bin: &str,
    kver: &str,
    test_args: &[String],
    log_suffix: &str,
) -> Result<Vec<(String, Outcome, bool)>> {
    let sh = cmd::workspace_shell()?;
    let cargo = cmd::cargo(&sh)
        .args(["test", "-p", "vm", "--test", bin, "--", "--color", "never"])
        .args(test_args)
        .env(vm::KERNEL_VAR, kver);
    eprintln!("xtask: matrix: {kver}: running {cargo}");
    let (status, stdout) = cmd::stdout_and_status(cargo)?;
    let logs = vm::log_dir();
    let _ = fs::create_dir_all(&logs);
    let log = logs.join(format!("matrix-{kver}-{bin}{log_suffix}.log"));
    let _ = fs::write(&log, &stdout);
    let results = parse_libtest(&stdout);
    if results.is_empty() && !status.success() {
        bail!(
            "cargo test --test {bin} failed ({status}) before running any test (see {})",
            log.display()
        );
    }
    Ok(results)
}

/// Boots one variant and judges it (see [`Variant`]).
fn run_variant(art: &vm::Artifacts, v: &Variant) -> Outcome {
    let mut spec = vm::BootSpec::new("demo");
    spec.append.push(v.append.to_owned());
    let run = match vm::boot(art, &spec) {
        Ok(run) => run,
        Err(e) => return Outcome::Fail(reason(&e)),
    };
    // vm::boot names its logs after the scenario and this process: keep a copy per variant.
    let tag = v.append.split('=').next().unwrap_or("variant");
    for (from, ext) in [
        (&run.console_log, "console.log"),
        (&run.results_log, "results.log"),
    ] {
        let _ = fs::copy(
            from,
            vm::log_dir().join(format!("matrix-{}-{tag}.{ext}", art.kver)),
        );
    }
    let verdict = run.verdict();
    let logs: Vec<&str> = run
        .events()
        .filter_map(|e| e.strip_prefix("LOG "))
        .collect();
    let passed: Vec<&str> = run
        .events()
        .filter_map(|e| e.strip_prefix("CHECK PASS "))
        .map(|e| e.split(" :: ").next().unwrap_or(e).trim())
        .collect();
    let staprun_err: Vec<&str> = logs
        .iter()
        .filter_map(|l| l.strip_prefix("[stderr] "))
        .collect();
    let exit = logs
        .iter()
        .find(|l| l.starts_with("[exit code"))
        .copied()
        .unwrap_or("(no exit status logged)");
    let unexpected: Vec<&String> = verdict
        .failed
        .iter()
        .filter(|f| {
            !VARIANT_EXPECTED_FAILS
                .iter()
                .any(|x| f.split(" :: ").next().unwrap_or("").trim() == *x)
        })
        .collect();
    let problem = if verdict.ended.is_none() {
        Some("guest never reported VMTEST END".to_owned())
    } else if let Some(f) = unexpected.first() {
        Some(format!("unexpected failed check {f}"))
    } else if exit.contains("Some(0)") {
        Some(format!("staprun succeeded: {exit}"))
    } else if !staprun_err
        .iter()
        .any(|l| v.expect.iter().any(|x| l.contains(x)))
    {
        Some(format!(
            "staprun's error does not name the cause (want one of {:?}): {:?}",
            v.expect, staprun_err
        ))
    } else if !passed.contains(&"demo_module_unloaded")
        || !passed.contains(&"no_module_left_loaded")
    {
        Some(format!("module left loaded (passed checks: {passed:?})"))
    } else if !run.console.contains(v.console) {
        Some(format!(
            "the kernel did not report {:?}: was `{}` in effect?",
            v.console, v.append
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Outcome::Fail(format!("{p}; staprun: {}", staprun_err.join(" / "))),
        None => {
            eprintln!(
                "xtask: matrix: {}: {}: refused as expected: {} {exit}",
                art.kver,
                v.name,
                staprun_err.join(" / ")
            );
            Outcome::Pass
        }
    }
}

fn run_kernel(opts: &Options, wanted: &str) -> KernelRun {
    let mut kr = KernelRun {
        wanted: wanted.to_owned(),
        kver: wanted.to_owned(),
        prepare: Duration::ZERO,
        tests: Duration::ZERO,
        variants: Duration::ZERO,
        results: Vec::new(),
        error: None,
    };
    let t0 = Instant::now();
    let art = crate::vm::prepare(&crate::vm::Options {
        kernel: Some(wanted.to_owned()),
        infra_only: false,
    });
    kr.prepare = t0.elapsed();
    let art = match art {
        Ok(a) => a,
        Err(e) => {
            kr.error = Some(format!("vm-prepare failed: {e}"));
            return kr;
        }
    };
    kr.kver = art.kver.clone();
    let t1 = Instant::now();
    let mut bins = vec!["vm"];
    if opts.attacks {
        bins.push("attacks");
    }
    for bin in bins {
        match run_binary(bin, &art.kver, &opts.test_args) {
            Ok(r) => kr.results.extend(r),
            Err(e) => {
                kr.error = Some(e.to_string());
            }
        }
    }
    kr.tests = t1.elapsed();
    if !opts.no_variants {
        let t2 = Instant::now();
        for v in VARIANTS {
            let o = run_variant(&art, v);
            kr.results.push((v.name.to_owned(), o));
        }
        kr.variants = t2.elapsed();
    }
    kr
}

fn secs(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

fn table(runs: &[KernelRun]) -> String {
    let mut rows: Vec<String> = Vec::new();
    for r in runs {
        for (n, _) in &r.results {
            if !rows.contains(n) {
                rows.push(n.clone());
            }
        }
    }
    let mut s = String::new();
    let _ = write!(s, "| scenario |");
    for r in runs {
        let _ = write!(s, " {} (`{}`) |", r.kver, r.wanted);
    }
    let _ = write!(s, "\n|---|");
    for _ in runs {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    let mut notes = Vec::new();
    for row in &rows {
        let _ = write!(s, "| {row} |");
        for r in runs {
            let o = r.results.iter().find(|(n, _)| n == row).map(|(_, o)| o);
            match o {
                Some(Outcome::Pass) => s.push_str(" pass |"),
                Some(Outcome::PassOnRetry(why)) => {
                    notes.push(format!(
                        "{} / {row}: passed on a second boot; the first died booting: {}",
                        r.kver,
                        cell(why, 400)
                    ));
                    let _ = write!(s, " pass, 2nd boot [{}] |", notes.len());
                }
                Some(Outcome::Fail(why)) => {
                    notes.push(format!("{} / {row}: {}", r.kver, cell(why, 400)));
                    let _ = write!(s, " **FAIL** [{}] |", notes.len());
                }
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    for (label, f) in [
        (
            "prepare (wall)",
            (|r: &KernelRun| r.prepare) as fn(&KernelRun) -> Duration,
        ),
        ("test binaries (wall)", |r| r.tests),
        ("boot variants (wall)", |r| r.variants),
        ("total (wall)", |r| r.prepare + r.tests + r.variants),
    ] {
        let _ = write!(s, "| *{label}* |");
        for r in runs {
            let _ = write!(s, " {} |", secs(f(r)));
        }
        s.push('\n');
    }
    let passed = |r: &KernelRun| {
        r.results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Pass | Outcome::PassOnRetry(_)))
            .count()
    };
    let _ = write!(s, "| *passed* |");
    for r in runs {
        let _ = write!(s, " {}/{} |", passed(r), r.results.len());
    }
    s.push('\n');
    for r in runs {
        if let Some(e) = &r.error {
            notes.push(format!("{}: {}", r.kver, cell(e, 600)));
        }
    }
    if !notes.is_empty() {
        s.push_str("\nFailures (first failing check):\n\n");
        for (i, n) in notes.iter().enumerate() {
            let _ = writeln!(s, "{}. {n}", i + 1);
        }
    }
    s
}

pub fn matrix(opts: &Options) -> Result<()> {
    let t0 = Instant::now();
    let mut runs = Vec::new();
    for k in &opts.kernels {
        eprintln!("xtask: matrix: === kernel {k} ===");
        let r = run_kernel(opts, k);
        eprintln!(
            "xtask: matrix: === kernel {} done in {} ===",
            r.kver,
            secs(r.prepare + r.tests + r.variants)
        );
        runs.push(r);
    }
    let mut t = table(&runs);
    let _ = writeln!(
        t,
        "\n`cargo xtask matrix` wall time: {}",
        secs(t0.elapsed())
    );
    println!("{t}");
    let logs = vm::log_dir();
    let _ = fs::create_dir_all(&logs);
    let _ = fs::write(logs.join("matrix.md"), &t);
    if let Some(o) = &opts.output {
        files::write(o, &t)?;
    }
    let failed: usize = runs
        .iter()
        .map(|r| {
            r.results
                .iter()
                .filter(|(_, o)| matches!(o, Outcome::Fail(_)))
                .count()
                + usize::from(r.error.is_some())
        })
        .sum();
    if failed != 0 {
        bail!("{failed} failure(s) in the kernel matrix");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_output() {
        let out = "\nrunning 3 tests\ntest infra_boot ... ok\ntest signals ... FAILED\ntest overrun ... ignored\n\nfailures:\n\n---- signals ----\nscenario signals: 2 check(s) failed: sig_int :: exit 1 | sig_term :: x\n--- guest transcript ---\n\n\nfailures:\n    signals\n\ntest result: FAILED. 1 passed; 1 failed; 1 ignored\n";
        let r = parse_libtest(out);
        assert_eq!(r.len(), 2);
        assert!(matches!(r[0].1, Outcome::Pass));
        match &r[1].1 {
            Outcome::Fail(why) => assert_eq!(why, "sig_int :: exit 1"),
            o => panic!("signals: {o:?}"),
        }
        assert!(!r[1].2);
    }

    #[test]
    fn kernel_failure_reason_names_the_console_line() {
        let msg = "scenario x: guest kernel failure: console shows \"BUG:\"\nqemu stderr: \n[  1.0] BUG: kernel NULL pointer dereference\n";
        assert!(is_boot_flake(msg));
        assert!(!is_boot_flake(&format!("{msg}  VMTEST BEGIN x\n")));
        assert_eq!(
            reason(msg),
            "guest kernel failure: console shows \"BUG:\" [console: [  1.0] BUG: kernel NULL pointer dereference]"
        );
    }
}
