//! Real SystemTap 4.8 modules under our staprun/stapio and under the C ones, side by side
//! (guest side: `vm/src/bin/vm-agent/compat.rs`; differences: docs/compat.md).
//!
//! `cargo xtask compat-test` (or `cargo xtask compat-prepare`, then
//! `cargo test -p vm --test compat`). One test per case and implementation:
//! `GROUP::CASE::ours`, `GROUP::CASE::theirs`, and `GROUP::CASE::same` (the two
//! agree, or differ only as docs/compat.md explains). The cases of a group share
//! one guest boot, which runs only the selected cases.
//!
//! `STAPRUN_UNDER_TEST=ours|theirs|both` (default both) selects the implementations;
//! `theirs` checks the tests themselves against the C reference.
//!
//! Under `cargo nextest` (one process per test) the first test of a group boots the
//! whole group and leaves `target/vm-logs/compat-GROUP-RUNID.shared` for the others.
//!
//! The groups and their cases are those of `vm::registry::SCENARIOS` with suite `Compat`.
//! Every test that ran is also written to `target/vm-logs/compat-results.json` (group,
//! case, side, pass, the exit statuses of the side's commands, the problem): one file per
//! run, which the tests of one nextest run share.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use serde::{Deserialize, Serialize};
use vm::registry::{self, Suite};

const COMPAT_ENV: &str = "compat.env";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Ours,
    Theirs,
    Same,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Theirs => "theirs",
            Side::Same => "same",
        }
    }
}

fn under_test() -> Vec<Side> {
    let v = std::env::var("STAPRUN_UNDER_TEST").unwrap_or_else(|_| "both".into());
    match v.as_str() {
        "ours" => vec![Side::Ours],
        "theirs" => vec![Side::Theirs],
        "both" | "" => vec![Side::Ours, Side::Theirs, Side::Same],
        other => {
            eprintln!("STAPRUN_UNDER_TEST={other:?}: expected ours, theirs or both");
            std::process::exit(2);
        }
    }
}

/// What one guest boot reported, or why it did not.
type Boot = Arc<Result<vm::GuestRun, String>>;

struct Plan {
    /// group -> selected cases
    selected: BTreeMap<&'static str, BTreeSet<&'static str>>,
    impls: Vec<Side>,
    boots: Mutex<BTreeMap<&'static str, Boot>>,
}

fn artifacts() -> Result<vm::Artifacts, String> {
    let mut art = vm::Artifacts::load()?;
    let env = vm::cache_dir().join(COMPAT_ENV);
    let text = fs::read_to_string(&env).map_err(|e| {
        format!(
            "compat artifacts not prepared ({}: {e}): run `cargo xtask compat-prepare`",
            env.display()
        )
    })?;
    let initrd = text
        .lines()
        .find_map(|l| l.strip_prefix("initrd="))
        .ok_or_else(|| format!("{} has no initrd= line", env.display()))?;
    let kver = text.lines().find_map(|l| l.strip_prefix("kver="));
    if kver != Some(art.kver.as_str()) {
        return Err(format!(
            "{} was prepared for kernel {kver:?}, the tests use {}: run `cargo xtask compat-prepare --kernel {}`",
            env.display(),
            art.kver,
            art.kver
        ));
    }
    art.initrd = initrd.into();
    if !art.initrd.is_file() {
        return Err(format!(
            "{} is missing: run `cargo xtask compat-prepare`",
            art.initrd.display()
        ));
    }
    Ok(art)
}

impl Plan {
    fn boot(&self, group: &'static str) -> Boot {
        let mut boots = self.boots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = boots.get(group) {
            return Arc::clone(b);
        }
        // nextest runs every test in a process of its own: the first test of a group
        // boots the whole group and leaves the result for the others of the same run.
        let shared = std::env::var("NEXTEST_RUN_ID")
            .ok()
            .map(|id| vm::log_dir().join(format!("compat-{group}-{id}.shared")));
        if let Some(b) = shared.as_deref().and_then(load_shared) {
            let b = Arc::new(b);
            boots.insert(group, Arc::clone(&b));
            return b;
        }
        let t0 = Instant::now();
        let cases = match shared {
            Some(_) => all_cases(group),
            None => self.selected.get(group).cloned().unwrap_or_default(),
        };
        let impls: Vec<&str> = self
            .impls
            .iter()
            .filter(|s| **s != Side::Same)
            .map(|s| s.name())
            .collect();
        let result = artifacts().and_then(|art| {
            let mut spec = registry::find(group)
                .ok_or_else(|| format!("{group}: not in vm::registry"))?
                .spec();
            spec.append.push(format!("vmtest.impl={}", impls.join(",")));
            spec.append.push(format!(
                "vmtest.cases={}",
                cases.iter().copied().collect::<Vec<_>>().join(",")
            ));
            vm::boot(&art, &spec)
        });
        match &result {
            Ok(run) => eprintln!(
                "[compat] {group}: {} case(s) x {impls:?}, guest {:.1}s, wall {:.1}s, results {}",
                cases.len(),
                run.elapsed.as_secs_f64(),
                t0.elapsed().as_secs_f64(),
                run.results_log.display()
            ),
            Err(_) => eprintln!(
                "[compat] {group}: boot FAILED after {:.1}s",
                t0.elapsed().as_secs_f64()
            ),
        }
        if let Some(path) = &shared {
            store_shared(path, &result);
        }
        let b = Arc::new(result);
        boots.insert(group, Arc::clone(&b));
        b
    }
}

fn all_cases(group: &str) -> BTreeSet<&'static str> {
    registry::find(group)
        .map(|s| s.cases.iter().copied().collect())
        .unwrap_or_default()
}

/// Writes where a boot's logs are (or why it failed) for the other test processes.
fn store_shared(path: &std::path::Path, result: &Result<vm::GuestRun, String>) {
    let text = match result {
        Ok(run) => format!(
            "ok\nresults={}\nconsole={}\nelapsed_ms={}\n",
            run.results_log.display(),
            run.console_log.display(),
            run.elapsed.as_millis()
        ),
        Err(e) => format!("err\n{e}"),
    };
    let _ = fs::create_dir_all(vm::log_dir());
    let _ = fs::write(path, text);
}

fn load_shared(path: &std::path::Path) -> Option<Result<vm::GuestRun, String>> {
    let text = fs::read_to_string(path).ok()?;
    if let Some(e) = text.strip_prefix("err\n") {
        return Some(Err(e.to_owned()));
    }
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
    };
    let results_log = std::path::PathBuf::from(get("results")?);
    let console_log = std::path::PathBuf::from(get("console")?);
    let elapsed = Duration::from_millis(get("elapsed_ms")?.parse().ok()?);
    let read = |p: &std::path::Path| {
        fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    Some(Ok(vm::GuestRun {
        scenario: path.display().to_string(),
        console: read(&console_log),
        results: read(&results_log)
            .lines()
            .map(|l| l.trim_end_matches('\r').to_owned())
            .collect(),
        elapsed,
        console_log,
        results_log,
    }))
}

fn judge(boot: &Boot, group: &str, case: &str, side: Side) -> Result<(), Failed> {
    let run = match boot.as_ref() {
        Ok(run) => run,
        Err(e) => return Err(format!("guest {group} did not run: {e}").into()),
    };
    let prefix = format!("{case}/{}/", side.name());
    let mut passed = 0;
    let mut failed = Vec::new();
    let mut group_failures = Vec::new();
    let mut ended = false;
    for e in run.events() {
        if e.starts_with("END ") {
            ended = true;
        }
        let (ok, rest) = if let Some(r) = e.strip_prefix("CHECK PASS ") {
            (true, r)
        } else if let Some(r) = e.strip_prefix("CHECK FAIL ") {
            (false, r)
        } else {
            continue;
        };
        let name = rest.split(" :: ").next().unwrap_or(rest);
        if name.starts_with(&prefix) {
            if ok {
                passed += 1;
            } else {
                failed.push(rest.to_owned());
            }
        } else if !name.contains('/') && !ok {
            // A check of the whole boot (image, setup): it concerns every case.
            group_failures.push(rest.to_owned());
        }
    }
    let log_tag = match side {
        Side::Same => format!("[{case} "),
        _ => format!("[{case} {}]", side.name()),
    };
    let transcript = || {
        let mut s = String::new();
        for e in run.events() {
            if let Some(l) = e.strip_prefix("LOG ") {
                if l.starts_with(&log_tag) {
                    s.push_str("  ");
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    };
    let problem = if !ended {
        Some("the guest never reported END (agent crashed or timed out)".to_owned())
    } else if !group_failures.is_empty() {
        Some(format!(
            "guest setup failed: {}",
            group_failures.join(" | ")
        ))
    } else if !failed.is_empty() {
        Some(format!(
            "{} check(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        ))
    } else if passed == 0 {
        Some(format!("the guest reported no check for {prefix}*"))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(format!(
            "{group}::{case}::{}: {p}\n--- transcript ---\n{}--- results: {} console: {} ---",
            side.name(),
            transcript(),
            run.results_log.display(),
            run.console_log.display()
        )
        .into()),
    }
}

fn main() {
    let mut args = Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let impls = under_test();
    let mut names = Vec::new();
    for group in registry::tests(Suite::Compat) {
        for case in group.cases {
            for side in &impls {
                names.push((group.name, *case, *side));
            }
        }
    }
    // Which cases each boot must run: those of the trials the filters keep.
    let mut selected: BTreeMap<&'static str, BTreeSet<&'static str>> = BTreeMap::new();
    for (group, case, side) in &names {
        let probe = Trial::test(format!("{group}::{case}::{}", side.name()), || Ok(()));
        if !args.is_filtered_out(&probe) {
            selected.entry(group).or_default().insert(case);
        }
    }
    let plan = Arc::new(Plan {
        selected,
        impls,
        boots: Mutex::new(BTreeMap::new()),
    });
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let trials = names
        .into_iter()
        .map(|(group, case, side)| {
            let plan = Arc::clone(&plan);
            let outcomes = Arc::clone(&outcomes);
            Trial::test(format!("{group}::{case}::{}", side.name()), move || {
                let boot = plan.boot(group);
                let result = judge(&boot, group, case, side);
                let outcome = Outcome::of(&boot, group, case, side, &result);
                outcomes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(outcome);
                result
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|e| e.into_inner()));
    if !outcomes.is_empty() {
        match write_results(outcomes) {
            Ok(path) => eprintln!("[compat] results: {}", path.display()),
            Err(e) => eprintln!("[compat] cannot write the results file: {e}"),
        }
    }
    conclusion.exit();
}

// ---- target/vm-logs/compat-results.json --------------------------------------

/// What one test (a case under one side) came to.
#[derive(Debug, Serialize, Deserialize)]
struct Outcome {
    group: String,
    case: String,
    /// `ours`, `theirs` or `same`.
    side: String,
    pass: bool,
    /// The exit status of every command the case ran on this side, in order, as the
    /// transcript gives it (`0`, `1`, `signal 9`, `timed out (killed)`); empty for `same`.
    exits: Vec<String>,
    /// Why it failed: the first line of the failure.
    problem: Option<String>,
}

/// The results file: the outcomes of one run (one process, or one nextest run).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Results {
    run: String,
    cases: Vec<Outcome>,
}

impl Outcome {
    fn of(boot: &Boot, group: &str, case: &str, side: Side, result: &Result<(), Failed>) -> Self {
        let tag = format!("[{case} {}] [exit ", side.name());
        let exits = match (boot.as_ref(), side) {
            (Ok(run), Side::Ours | Side::Theirs) => run
                .events()
                .filter_map(|e| e.strip_prefix("LOG "))
                .filter_map(|l| l.strip_prefix(&tag))
                .map(|x| {
                    x.trim_end_matches(']')
                        .trim_end_matches(", timed out")
                        .to_owned()
                })
                .collect(),
            _ => Vec::new(),
        };
        Outcome {
            group: group.to_owned(),
            case: case.to_owned(),
            side: side.name().to_owned(),
            pass: result.is_ok(),
            exits,
            problem: result.as_ref().err().map(|f| {
                f.message()
                    .and_then(|m| m.lines().next())
                    .unwrap_or("failed")
                    .to_owned()
            }),
        }
    }

    /// Where it sorts: registry order of group and case, then the side.
    fn key(&self) -> (usize, usize, usize) {
        let groups: Vec<&registry::Scenario> = registry::tests(Suite::Compat).collect();
        let g = groups.iter().position(|s| s.name == self.group);
        let c = g.and_then(|g| groups[g].cases.iter().position(|c| *c == self.case));
        let side = ["ours", "theirs", "same"]
            .iter()
            .position(|s| *s == self.side);
        (
            g.unwrap_or(usize::MAX),
            c.unwrap_or(usize::MAX),
            side.unwrap_or(usize::MAX),
        )
    }
}

/// Writes `outcomes` to target/vm-logs/compat-results.json. Under nextest (one process per
/// test) the file collects the outcomes of every process of the same run: it is merged
/// under a lock file, and replaced when it is of another run.
fn write_results(outcomes: Vec<Outcome>) -> Result<std::path::PathBuf, String> {
    let dir = vm::log_dir();
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("compat-results.json");
    let run = std::env::var("NEXTEST_RUN_ID").ok();
    let _lock = run
        .as_ref()
        .map(|_| Lock::take(&dir.join("compat-results.json.lock")));
    let mut results = match &run {
        Some(id) => fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Results>(&b).ok())
            .filter(|r| r.run == *id)
            .unwrap_or_default(),
        None => Results::default(),
    };
    results.run = run.unwrap_or_else(|| format!("pid-{}", std::process::id()));
    for o in outcomes {
        results
            .cases
            .retain(|x| (&x.group, &x.case, &x.side) != (&o.group, &o.case, &o.side));
        results.cases.push(o);
    }
    results.cases.sort_by_key(Outcome::key);
    let json = serde_json::to_vec_pretty(&results).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!("compat-results.json.{}", std::process::id()));
    fs::write(&tmp, json).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// A lock file, created exclusively and removed on drop; after 30 s of waiting the lock is
/// taken as stale and the writer goes on.
struct Lock(Option<std::path::PathBuf>);

impl Lock {
    fn take(path: &std::path::Path) -> Lock {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .is_ok()
            {
                return Lock(Some(path.to_path_buf()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Lock(None)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}
