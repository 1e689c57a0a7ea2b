//! Real SystemTap 4.8 modules under our staprun/stapio and under the C ones
//! (Debian's systemtap-runtime), side by side. Host side: `vm/tests/compat.rs`;
//! image: `cargo xtask compat-prepare`; differences: docs/compat.md.
//!
//! Kernel command line: `vmtest.impl=ours,theirs` (which implementations),
//! `vmtest.cases=a,b` (which cases of the scenario; all when absent).
//!
//! Every case runs once per implementation. Its checks are reported as
//! `CASE/ours/NAME` or `CASE/theirs/NAME`; what it observed (exit status,
//! normalized stdout and stderr, files, modules left loaded) is compared
//! between the two and reported as `CASE/same/LABEL`, which passes when equal
//! or when the difference is a known one (listed in `KNOWN`, with its reason).
//!
//! Both implementations are called as `/usr/bin/staprun`: the C staprun lives at
//! /opt/c/usr/bin/staprun and is bind-mounted over ours for the C runs. The C
//! stapio runs `staprun -d` from its build-time path `/usr/bin/staprun`, and the
//! setuid C staprun drops `SYSTEMTAP_STAPRUN` before executing stapio
//! (staprun.c: `unsetenv("SYSTEMTAP_STAPRUN")` when `getuid() != geteuid()`), so
//! for a stapusr caller the variable cannot point it elsewhere.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, chown};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use crate::scenarios::{Scenario, blessed_dir};
use crate::sys;
use crate::util::{self, ALICE, Bg, Out, ROOT, Reporter, STAPUSR, User, command_as};

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("compat_run", compat_run),
    ("compat_options", compat_options),
    ("compat_lifecycle", compat_lifecycle),
    ("compat_flightrec", compat_flightrec),
    ("compat5_run", |r| in_c5(r, compat_run)),
    ("compat5_options", |r| in_c5(r, compat_options)),
    ("compat5_lifecycle", |r| in_c5(r, compat_lifecycle)),
    ("compat5_flightrec", |r| in_c5(r, compat_flightrec)),
];

/// The SystemTap 5.x generation lives in /c5 (xtask `c5_entries`): trixie's C
/// staprun/stapio and libraries, modules built by SystemTap 5.1. These outer
/// directories are bind-mounted into it (`vm::C5_MOUNTS`), among them /usr/bin
/// and /usr/libexec with our staprun/stapio, then the agent chroots into it for
/// the rest of the boot, so the cases run unchanged.
fn in_c5(r: &mut Reporter, group: fn(&mut Reporter)) {
    let enter = || -> Result<(), String> {
        if !Path::new("/c5/opt/c/usr/bin/staprun").exists() {
            return Err(
                "no /c5 tree in the image: run `cargo xtask compat-prepare` without --no-stap5"
                    .into(),
            );
        }
        for d in vm::C5_MOUNTS {
            let (src, dst) = (format!("/{d}"), format!("/c5/{d}"));
            sys::mount(&src, &dst, "", libc::MS_BIND | libc::MS_REC, "")
                .map_err(|e| format!("bind mount {src} on {dst}: {e}"))?;
        }
        std::os::unix::fs::chroot("/c5").map_err(|e| format!("chroot /c5: {e}"))?;
        std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
    };
    let entered = enter();
    let ok = entered.is_ok();
    r.check(
        "compat5_chroot",
        ok,
        entered.err().unwrap_or_else(|| "chrooted into /c5".into()),
    );
    if ok {
        GEN5.store(true, std::sync::atomic::Ordering::Relaxed);
        group(r);
    }
}

const STAPRUN: &str = "/usr/bin/staprun";
const C_STAPRUN: &str = "/opt/c/usr/bin/staprun";
const OUR_STAPIO: &str = "/usr/libexec/staprun/stapio";
const C_STAPIO: &str = "/usr/lib/systemtap/stapio";
const MODS: &str = "/compat/mods";
/// How long a foreground run may take.
const RUN: Duration = Duration::from_secs(60);
/// How long a running session may take to print a line.
const STARTUP: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Ours,
    Theirs,
}

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Theirs => "theirs",
        }
    }

    fn stapio(self) -> &'static str {
        match self {
            Impl::Ours => OUR_STAPIO,
            Impl::Theirs => C_STAPIO,
        }
    }
}

pub fn same_file(a: &str, b: &str) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Makes `/usr/bin/staprun` the implementation under test.
pub fn activate(imp: Impl) -> Result<(), String> {
    let c_active = same_file(STAPRUN, C_STAPRUN);
    match imp {
        Impl::Theirs if !c_active => {
            sys::mount(C_STAPRUN, STAPRUN, "", libc::MS_BIND, "")
                .map_err(|e| format!("bind mount {C_STAPRUN} on {STAPRUN}: {e}"))?;
        }
        Impl::Ours if c_active => {
            let out = util::run_as(&ROOT, &["/bin/umount", STAPRUN], &[]);
            if out.code != Some(0) {
                return Err(format!("umount {STAPRUN}: {}", out.summary()));
            }
        }
        _ => {}
    }
    let now_c = same_file(STAPRUN, C_STAPRUN);
    if now_c != (imp == Impl::Theirs) {
        return Err(format!("{STAPRUN} is not {}'s", imp.name()));
    }
    Ok(())
}

fn cmdline_list(key: &str) -> Option<Vec<String>> {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline.split_whitespace().find_map(|w| {
        w.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
    })
}

fn impls() -> Vec<Impl> {
    match cmdline_list("vmtest.impl") {
        None => vec![Impl::Ours, Impl::Theirs],
        Some(v) => {
            let mut out = Vec::new();
            if v.iter().any(|s| s == "ours" || s == "both") {
                out.push(Impl::Ours);
            }
            if v.iter().any(|s| s == "theirs" || s == "both") {
                out.push(Impl::Theirs);
            }
            out
        }
    }
}

// ---------------------------------------------------------------------------
// One case, run under one implementation.

pub struct Ctx<'r> {
    r: &'r mut Reporter,
    case: &'static str,
    imp: Impl,
    checks: Vec<(String, bool, String)>,
    obs: BTreeMap<String, String>,
}

impl Ctx<'_> {
    fn check(&mut self, name: &str, ok: bool, detail: impl AsRef<str>) -> bool {
        self.checks
            .push((name.to_owned(), ok, detail.as_ref().to_owned()));
        ok
    }

    fn check_eq<T: PartialEq + std::fmt::Debug>(&mut self, name: &str, got: T, want: T) -> bool {
        let ok = got == want;
        self.check(name, ok, format!("got {got:?}, want {want:?}"))
    }

    /// A value compared between the implementations.
    fn observe(&mut self, label: &str, value: impl Into<String>) {
        self.obs.insert(label.to_owned(), value.into());
    }

    fn log(&mut self, text: &str) {
        let prefix = format!("[{} {}] ", self.case, self.imp.name());
        for l in text.lines() {
            self.r.log(&format!("{prefix}{l}"));
        }
    }

    fn transcript(&mut self, prompt: &str, out: &Out) {
        self.log(&format!("$ {prompt}"));
        let lines: Vec<&str> = out.stdout.lines().collect();
        let show = |v: &[&str]| v.join("\n");
        if lines.len() > 30 {
            self.log(&show(&lines[..12]));
            self.log(&format!("... ({} lines) ...", lines.len() - 24));
            self.log(&show(&lines[lines.len() - 12..]));
        } else if !lines.is_empty() {
            self.log(&show(&lines));
        }
        for l in out.stderr.lines().take(40) {
            self.log(&format!("[stderr] {l}"));
        }
        self.log(&format!(
            "[exit {}{}]",
            exit_text(out),
            if out.timed_out { ", timed out" } else { "" }
        ));
    }

    /// Runs `staprun ARGS` as `user` in the foreground and logs the transcript.
    fn staprun(&mut self, user: &User, args: &[&str]) -> Out {
        self.staprun_env(user, args, &[])
    }

    fn staprun_env(&mut self, user: &User, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut argv = vec![STAPRUN];
        argv.extend_from_slice(args);
        let out = util::run(command_as(user, &argv, env), RUN);
        self.transcript(&prompt(user, &argv), &out);
        out
    }

    /// Runs any command as `user` in the foreground and logs the transcript.
    fn command(&mut self, user: &User, argv: &[&str]) -> Out {
        let out = util::run(command_as(user, argv, &[]), RUN);
        self.transcript(&prompt(user, argv), &out);
        out
    }

    fn bg(&mut self, user: &User, args: &[&str]) -> Option<Bg> {
        let mut argv = vec![STAPRUN];
        argv.extend_from_slice(args);
        self.log(&format!("$ {} &", prompt(user, &argv)));
        match Bg::start(command_as(user, &argv, &[])) {
            Ok(p) => Some(p),
            Err(e) => {
                self.check("spawn", false, format!("{argv:?}: {e}"));
                None
            }
        }
    }

    /// Observes exit status, normalized stdout and stderr, and whether `module` stayed loaded.
    fn record(&mut self, label: &str, module: Option<&str>, out: &Out) {
        self.observe(&format!("{label}.exit"), exit_text(out));
        self.observe(&format!("{label}.stdout"), normalize(&out.stdout));
        self.observe(&format!("{label}.stderr"), normalize(&out.stderr));
        if let Some(m) = module {
            self.observe(&format!("{label}.loaded"), loaded_text(m));
        }
    }
}

fn prompt(user: &User, argv: &[&str]) -> String {
    format!(
        "{}{} {}",
        user.name,
        if user.uid == 0 { "#" } else { "$" },
        argv.iter()
            .map(|a| {
                if a.contains('\'') {
                    format!("\"{a}\"")
                } else if a.is_empty() || a.contains([' ', '"']) {
                    format!("'{a}'")
                } else {
                    (*a).to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn exit_text(out: &Out) -> String {
    match (out.code, out.signal, out.timed_out) {
        (_, _, true) => "timed out (killed)".into(),
        (Some(c), _, _) => c.to_string(),
        (None, Some(s), _) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

fn loaded_text(module: &str) -> String {
    let left = loaded_like(module);
    if left.is_empty() {
        "unloaded".into()
    } else {
        format!("loaded: {}", normalize(&left.join(" ")))
    }
}

/// Loaded modules named `module`, or renamed from it by `-R`.
fn loaded_like(module: &str) -> Vec<String> {
    util::loaded_modules()
        .into_iter()
        .filter(|m| m == module || is_renamed(module, m))
        .collect()
}

/// `-R` renames NAME in memory to `<first part of NAME>_<pid>`, of NAME's length
/// (staprun_funcs.c `rename_module`: `"%.*s_%d"`), e.g. ticker -> ti_123.
fn is_renamed(module: &str, name: &str) -> bool {
    name.len() == module.len()
        && name != module
        && name.rsplit_once('_').is_some_and(|(head, pid)| {
            !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) && module.starts_with(head)
        })
}

/// Our messages start with the program name; the C ones do not.
const PREFIXES: &[&str] = &["staprun: ", "stapio: "];
/// The hint ours adds after an option error (the C staprun prints its usage text on stdout).
const USAGE_HINT: &str = "ERROR: Run 'staprun -h' for usage.";
/// The first line of the C staprun's usage text.
const C_USAGE_START: &str = " [-v] [-w] [-V] [-h] [-u] [-c cmd ] [-x pid]";

/// Replaces what legitimately differs between runs and the listed wording
/// differences (docs/compat.md, "Normalization"):
/// - process ids: `target=N`, a number alone on a line (`-D` prints the daemon's
///   pid), module names renamed by `-R`;
/// - timer output: lines `timer probe fired` are dropped (their number depends on timing);
/// - the `staprun: `/`stapio: ` prefix of our messages, and the final `.` of an
///   `ERROR:`/`WARNING:` line;
/// - our `ERROR: Run 'staprun -h' for usage.` hint, and the C usage text (as `<usage>`).
pub fn normalize(s: &str) -> String {
    let names = module_names();
    let mut out: Vec<String> = Vec::new();
    let mut in_usage = false;
    for line in s.lines() {
        let mut l = line.to_owned();
        for p in PREFIXES {
            if let Some(rest) = l.strip_prefix(p) {
                l = rest.to_owned();
            }
        }
        if l.contains(C_USAGE_START) {
            in_usage = true;
            out.push("<usage>".into());
            continue;
        }
        if in_usage {
            continue;
        }
        if l == TIMER || l == USAGE_HINT {
            continue;
        }
        if (l.starts_with("ERROR: ") || l.starts_with("WARNING: ")) && l.ends_with('.') {
            l.pop();
        }
        if !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()) {
            l = "<N>".into();
        }
        l = replace_numbers_after(&l, "target=");
        l = rename_tokens(&l, &names);
        out.push(l);
    }
    // The C usage text starts with an empty line.
    if let Some(i) = out.iter().position(|l| l == "<usage>") {
        if i > 0 && out[i - 1].is_empty() {
            out.remove(i - 1);
        }
    }
    out.join("\n")
}

/// Replaces every `-R`-renamed module name in `line` by `<NAME renamed>`.
fn rename_tokens(line: &str, names: &[String]) -> String {
    let mut out = String::new();
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        match names.iter().find(|n| is_renamed(n, token)) {
            Some(n) => out.push_str(&format!("<{n} renamed>")),
            None => out.push_str(token),
        }
        token.clear();
    };
    for ch in line.chars() {
        if ch.is_ascii_alphanumeric() || ch == '_' {
            token.push(ch);
        } else {
            flush(&mut token, &mut out);
            out.push(ch);
        }
    }
    flush(&mut token, &mut out);
    out
}

fn replace_numbers_after(s: &str, prefix: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(prefix) {
        let (head, tail) = rest.split_at(i + prefix.len());
        out.push_str(head);
        let digits = tail.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 {
            out.push_str("<N>");
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// Names of the modules shipped in /compat/mods.
fn module_names() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(MODS)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".ko"))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    // Longest first, so `flightb_` is not seen as `flight_` + `b...`.
    v.sort_by_key(|n| std::cmp::Reverse(n.len()));
    v
}

/// Copies /compat/mods/NAME.ko into the blessed directory, 0644 root:root.
fn publish(name: &str) -> Result<PathBuf, String> {
    let dest = blessed_dir().join(format!("{name}.ko"));
    fs::copy(Path::new(MODS).join(format!("{name}.ko")), &dest)
        .map_err(|e| format!("copy {name}.ko: {e}"))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("chmod {}: {e}", dest.display()))?;
    chown(&dest, Some(0), Some(0)).map_err(|e| format!("chown {}: {e}", dest.display()))?;
    Ok(dest)
}

/// The blessed path of a published module, as a string argument.
fn mpath(name: &str) -> String {
    blessed_dir()
        .join(format!("{name}.ko"))
        .to_string_lossy()
        .into_owned()
}

/// Unloads every compat module (renamed ones included) with rmmod; returns their names.
fn unload_all() -> Vec<String> {
    let names = module_names();
    let mut left = Vec::new();
    for n in &names {
        for m in loaded_like(n) {
            if !left.contains(&m) {
                left.push(m);
            }
        }
    }
    for m in &left {
        let _ = util::run_as(&ROOT, &["/sbin/rmmod", m], &[]);
    }
    left
}

/// True while `pid` exists and is not a zombie. A `-D` daemon is reparented
/// to the agent (PID 1), which does not reap it: a zombie has exited.
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// Live stapio processes.
fn live_stapio() -> Vec<u32> {
    util::pids_named("stapio")
        .into_iter()
        .filter(|p| alive(*p))
        .collect()
}

/// Kills every stapio still running (a case that failed half-way).
fn kill_stray_stapio() -> usize {
    let pids = live_stapio();
    for p in &pids {
        let _ = sys::kill(*p, libc::SIGKILL);
    }
    if !pids.is_empty() {
        util::wait_until(Duration::from_secs(5), || live_stapio().is_empty());
    }
    pids.len()
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

// ---------------------------------------------------------------------------
// The driver.

/// The SystemTap generation of a boot: 4.x, or 5.x (the compat5 scenarios, in /c5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gen {
    V4,
    V5,
}

static GEN5: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn generation() -> Gen {
    if GEN5.load(std::sync::atomic::Ordering::Relaxed) {
        Gen::V5
    } else {
        Gen::V4
    }
}

/// How the C tools of a generation deviate from a ported testsuite case
/// (docs/compat.md, "C deviations").
#[derive(Clone, Copy, Debug)]
pub enum CDev {
    /// They fail it every time: their run must fail (and a pass is reported, so the entry goes).
    Fails(&'static str),
    /// They fail it some of the time: their checks are logged, not asserted.
    Flaky(&'static str),
}

/// One case: a function run once per implementation.
#[derive(Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub f: fn(&mut Ctx),
    /// Modules the case publishes in the blessed directory.
    pub modules: &'static [&'static str],
    /// The generations whose C tools fail this case, and why (their run then must fail).
    pub c_fails: &'static [(Gen, CDev)],
}

/// A known, explained difference: (case, observation label, reason).
/// `*` as case or label matches any. docs/compat.md lists the same ones.
const KNOWN: &[(Option<Gen>, &str, &str, &str)] = &[
    (
        None,
        "cmdline*",
        "run.stdout",
        "D1: after an option error the C staprun prints its whole usage text on stdout; ours prints \
         `ERROR: Run 'staprun -h' for usage.` on stderr",
    ),
    (
        None,
        "cmdline09",
        "run.error",
        "D2: wording of the too-long module name error (ours also names the limit)",
    ),
    (Some(Gen::V4), "flightrec4", "files_*", C3),
    (Some(Gen::V5), "flightrec5", "files_*", C4),
];

fn known(case: &str, label: &str) -> Option<&'static str> {
    KNOWN
        .iter()
        .find(|(g, c, l, _)| g.is_none_or(|g| g == generation()) && glob(c, case) && glob(l, label))
        .map(|(_, _, _, why)| *why)
}

/// `*` matches anything, `prefix*` what starts with prefix, `*suffix` what ends with it.
fn glob(pattern: &str, s: &str) -> bool {
    if pattern == "*" || pattern == s {
        return true;
    }
    if let Some(p) = pattern.strip_suffix('*') {
        return s.starts_with(p);
    }
    if let Some(x) = pattern.strip_prefix('*') {
        return s.ends_with(x);
    }
    false
}

fn run_group(r: &mut Reporter, cases: &[Case]) {
    let selected = cmdline_list("vmtest.cases");
    let impls = impls();
    r.log(&format!(
        "compat: implementations {:?}, cases {}",
        impls.iter().map(|i| i.name()).collect::<Vec<_>>(),
        selected
            .as_ref()
            .map_or_else(|| "all".to_owned(), |v| v.join(","))
    ));
    if !image_ok(r) {
        return;
    }
    for case in cases {
        if selected
            .as_ref()
            .is_some_and(|v| !v.iter().any(|s| s == case.name))
        {
            continue;
        }
        let mut seen: Vec<(Impl, BTreeMap<String, String>)> = Vec::new();
        for &imp in &impls {
            let obs = run_case(r, case, imp);
            seen.push((imp, obs));
        }
        if let [(Impl::Ours, ours), (Impl::Theirs, theirs)] = seen.as_slice() {
            compare(r, case, ours, theirs);
        }
    }
    if let Err(e) = activate(Impl::Ours) {
        r.check("compat_restore_staprun", false, e);
    }
}

fn run_case(r: &mut Reporter, case: &Case, imp: Impl) -> BTreeMap<String, String> {
    let t0 = Instant::now();
    let mut ctx = Ctx {
        r,
        case: case.name,
        imp,
        checks: Vec::new(),
        obs: BTreeMap::new(),
    };
    let ready = activate(imp).and_then(|()| {
        let _ = fs::remove_dir_all(blessed_dir());
        crate::scenarios::prepare_blessed_dir()?;
        for m in case.modules {
            publish(m)?;
        }
        Ok(())
    });
    match ready {
        Ok(()) => (case.f)(&mut ctx),
        Err(e) => {
            ctx.check("setup", false, e);
        }
    }
    // Nothing may be left behind; clean up whatever was.
    let stray = kill_stray_stapio();
    ctx.check(
        "no_stapio_left",
        stray == 0,
        format!("{stray} stapio process(es) still running after the case (killed)"),
    );
    sleep_ms(100);
    let left = unload_all();
    ctx.check(
        "nothing_left_loaded",
        left.is_empty(),
        format!("modules left loaded (rmmod'ed now): {left:?}"),
    );
    let Ctx { checks, obs, .. } = ctx;
    let prefix = format!("{}/{}", case.name, imp.name());
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(n, _, _)| n.as_str())
        .collect();
    let deviation = case
        .c_fails
        .iter()
        .find(|(g, _)| *g == generation())
        .map(|(_, d)| *d);
    match (imp, deviation) {
        (Impl::Theirs, Some(dev)) => {
            for (name, ok, detail) in &checks {
                r.log(&format!(
                    "[{prefix}] {} {name} :: {detail}",
                    if *ok { "pass" } else { "FAIL" }
                ));
            }
            match dev {
                CDev::Fails(why) => r.check(
                    &format!("{prefix}/c_fails_as_known"),
                    !failed.is_empty(),
                    if failed.is_empty() {
                        format!("the C tools pass this case now: drop the entry ({why})")
                    } else {
                        format!("expected: {why}; failed checks: {failed:?}")
                    },
                ),
                CDev::Flaky(why) => r.check(
                    &format!("{prefix}/c_result_not_asserted"),
                    true,
                    format!("{why}; failed checks this time: {failed:?}"),
                ),
            };
        }
        _ => {
            for (name, ok, detail) in &checks {
                r.check(&format!("{prefix}/{name}"), *ok, detail);
            }
        }
    }
    r.log(&format!(
        "[{prefix}] {} checks, {} failed, {:.1}s",
        checks.len(),
        failed.len(),
        t0.elapsed().as_secs_f64()
    ));
    obs
}

fn compare(
    r: &mut Reporter,
    case: &Case,
    ours: &BTreeMap<String, String>,
    theirs: &BTreeMap<String, String>,
) {
    let labels: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    if labels.is_empty() {
        r.check(
            &format!("{}/same/observed", case.name),
            false,
            "nothing observed",
        );
    }
    for label in labels {
        let (a, b) = (ours.get(label), theirs.get(label));
        let name = format!("{}/same/{label}", case.name);
        if a == b {
            r.check(&name, true, format!("{:?}", a.map_or("", String::as_str)));
        } else if let Some(why) = known(case.name, label) {
            r.check(
                &name,
                true,
                format!("known difference ({why}): ours {a:?}, theirs {b:?}"),
            );
        } else {
            r.check(&name, false, format!("ours {a:?}\ntheirs {b:?}"));
        }
    }
}

/// The compat image is there: C binaries, their loader, the modules.
fn image_ok(r: &mut Reporter) -> bool {
    let mut ok = r.check_eq(
        "compat_c_staprun_04110_root_stapusr",
        util::stat(C_STAPRUN),
        Some((0o4110, 0, STAPUSR)),
    );
    ok &= r.check_eq(
        "compat_c_stapio_0755",
        util::stat(C_STAPIO),
        Some((0o755, 0, 0)),
    );
    ok &= r.check(
        "compat_modules_present",
        !module_names().is_empty(),
        format!("{MODS}: {:?}", module_names()),
    );
    ok
}

// ---------------------------------------------------------------------------
// Checks shared by the cases.

fn contains_line(s: &str, line: &str) -> bool {
    s.lines().any(|l| l == line)
}

/// exit 0, and the module gone.
fn expect_clean_exit(c: &mut Ctx, label: &str, module: &str, out: &Out) {
    c.check(
        &format!("{label}_exit_0"),
        out.code == Some(0),
        out.summary(),
    );
    c.check(
        &format!("{label}_unloaded"),
        loaded_like(module).is_empty(),
        loaded_text(module),
    );
}

// ---------------------------------------------------------------------------
// Group compat_run: the basic runs, as root and as alice.

const HELLO: &str = "hello from begin";
const END: &str = "end probe fired";
const BEGIN: &str = "begin probe fired";
const TIMER: &str = "timer probe fired";

fn hello(c: &mut Ctx, user: &User) {
    let m = if user.uid == 0 {
        mpath("hello")
    } else {
        "hello".into()
    };
    let out = c.staprun(user, &[&m]);
    c.record("run", Some("hello"), &out);
    expect_clean_exit(c, "run", "hello", &out);
    c.check_eq(
        "stdout",
        out.stdout.as_str(),
        "hello from begin\nend probe fired\n",
    );
    c.check_eq("stderr_empty", out.stderr.as_str(), "");
    c.check(
        "procfs_gone",
        !Path::new("/proc/systemtap/hello").exists(),
        "/proc/systemtap/hello",
    );
}

fn hello_root(c: &mut Ctx) {
    hello(c, &ROOT);
}

fn hello_alice(c: &mut Ctx) {
    hello(c, &ALICE);
}

fn ticker_signal(c: &mut Ctx, user: &User, sig: libc::c_int) {
    let m = if user.uid == 0 {
        mpath("ticker")
    } else {
        "ticker".into()
    };
    let Some(mut p) = c.bg(user, &[&m]) else {
        return;
    };
    let started = p.wait_stdout(TIMER, STARTUP);
    c.check("timer_output_seen", started, p.stdout());
    p.signal(sig);
    let out = p.wait(RUN);
    c.transcript(&format!("(signal {sig})"), &out);
    c.record("run", Some("ticker"), &out);
    expect_clean_exit(c, "run", "ticker", &out);
    let lines: Vec<&str> = out.stdout.lines().collect();
    c.check_eq("begin_first", lines.first().copied(), Some(BEGIN));
    c.check_eq("end_last", lines.last().copied(), Some(END));
    c.check_eq("stderr_empty", out.stderr.as_str(), "");
}

fn sigint_root(c: &mut Ctx) {
    ticker_signal(c, &ROOT, libc::SIGINT);
}

fn sigint_alice(c: &mut Ctx) {
    ticker_signal(c, &ALICE, libc::SIGINT);
}

fn sigterm_alice(c: &mut Ctx) {
    ticker_signal(c, &ALICE, libc::SIGTERM);
}

fn sighup_alice(c: &mut Ctx) {
    ticker_signal(c, &ALICE, libc::SIGHUP);
}

const SYSID_OUT: &str = "/tmp/compat-sysid.out";

fn system(c: &mut Ctx, user: &User) {
    let _ = fs::remove_file(SYSID_OUT);
    let m = if user.uid == 0 {
        mpath("sysid")
    } else {
        "sysid".into()
    };
    let out = c.staprun(user, &[&m]);
    c.record("run", Some("sysid"), &out);
    expect_clean_exit(c, "run", "sysid", &out);
    // system() is asynchronous: give the shell a moment if stapio did not wait.
    util::wait_until(Duration::from_secs(3), || Path::new(SYSID_OUT).exists());
    let content = fs::read_to_string(SYSID_OUT).unwrap_or_else(|e| format!("<{e}>"));
    let owner = util::stat(SYSID_OUT).map(|(_, uid, _)| uid);
    c.observe("file", format!("{content:?} owner {owner:?}"));
    c.check_eq(
        "file_says_uid",
        content.trim(),
        user.uid.to_string().as_str(),
    );
    c.check_eq("file_owner", owner, Some(user.uid));
    c.check_eq("stdout", out.stdout.as_str(), "end probe fired\n");
}

fn system_root(c: &mut Ctx) {
    system(c, &ROOT);
}

fn system_alice(c: &mut Ctx) {
    system(c, &ALICE);
}

fn target_value(stdout: &str) -> Option<i64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("target="))
        .and_then(|v| v.trim().parse().ok())
}

fn target_c(c: &mut Ctx) {
    let out = c.staprun(&ALICE, &["-c", "sleep 1", "target"]);
    c.record("run", Some("target"), &out);
    expect_clean_exit(c, "run", "target", &out);
    let t = target_value(&out.stdout);
    c.check(
        "target_is_child_pid",
        t.is_some_and(|t| t > 1),
        format!("{t:?}"),
    );
    c.check(
        "ends_with_child",
        contains_line(&out.stdout, END) && !contains_line(&out.stdout, "timer expired"),
        &out.stdout,
    );
}

fn target_c_fails(c: &mut Ctx) {
    let out = c.staprun(&ALICE, &["-c", "sh -c 'exit 3'", "target"]);
    c.record("run", Some("target"), &out);
    c.check(
        "exit_nonzero",
        out.code.is_some_and(|x| x != 0),
        out.summary(),
    );
    c.check(
        "warns_child_status",
        out.stderr.contains("exited with status 3") || out.stderr.contains("status 3"),
        &out.stderr,
    );
    c.check(
        "unloaded",
        loaded_like("target").is_empty(),
        loaded_text("target"),
    );
}

fn target_x(c: &mut Ctx) {
    let sleeper = Bg::start(command_as(&ALICE, &["/bin/sleep", "30"], &[]));
    let Ok(sleeper) = sleeper else {
        c.check("spawn_sleep", false, "cannot start sleep");
        return;
    };
    let pid = sleeper.pid().to_string();
    let out = c.staprun(&ALICE, &["-x", &pid, "target"]);
    let _ = sleeper.signal(libc::SIGKILL);
    let _ = sleeper.wait(Duration::from_secs(5));
    c.record("run", Some("target"), &out);
    expect_clean_exit(c, "run", "target", &out);
    c.check_eq(
        "target_is_x_pid",
        target_value(&out.stdout),
        pid.parse().ok(),
    );
    c.check(
        "timer_ended_it",
        contains_line(&out.stdout, "timer expired") && contains_line(&out.stdout, END),
        &out.stdout,
    );
}

const MODARGS: &str = "initializedname=foo initializednumber=999 name=charley number=-1";

/// testsuite/systemtap.base/modargs.exp
fn modargs(c: &mut Ctx) {
    let m = mpath("modargs");
    let mut args = vec![m.as_str()];
    args.extend(MODARGS.split(' '));
    let out = c.staprun(&ROOT, &args);
    c.record("run", Some("modargs"), &out);
    expect_clean_exit(c, "run", "modargs", &out);
    c.check_eq("echoes_values", out.stdout.as_str(), MODARGS);
}

fn modopt_alice(c: &mut Ctx) {
    let out = c.staprun(&ALICE, &["modargs", "number=42"]);
    c.record("run", Some("modargs"), &out);
    expect_clean_exit(c, "run", "modargs", &out);
    c.check("prints_42", out.stdout.contains("number=42"), &out.stdout);
}

/// testsuite/systemtap.base/global_opt_invalid.exp (staprun part: `ERROR.*Invalid`).
fn global_opt_invalid(c: &mut Ctx) {
    let out = c.staprun(&ALICE, &["modargs", "number=z29"]);
    c.record("run", Some("modargs"), &out);
    c.check(
        "exit_nonzero",
        out.code.is_some_and(|x| x != 0),
        out.summary(),
    );
    c.check(
        "error_invalid",
        out.stderr
            .lines()
            .any(|l| l.contains("ERROR") && l[l.find("ERROR").unwrap_or(0)..].contains("Invalid")),
        &out.stderr,
    );
    c.check(
        "not_loaded",
        loaded_like("modargs").is_empty(),
        loaded_text("modargs"),
    );
    c.check_eq("no_output", out.stdout.as_str(), "");
}

/// Per-CPU record counts and whether each CPU's sequence is 1..=n in order.
fn stream_summary(stdout: &str) -> (BTreeMap<u32, (u64, bool)>, usize) {
    let mut per: BTreeMap<u32, (u64, bool)> = BTreeMap::new();
    let mut other = 0;
    for l in stdout.lines() {
        let parsed = l.strip_prefix("cpu=").and_then(|r| {
            let (cpu, rest) = r.split_once(" seq=")?;
            let seq = rest.split(' ').next()?;
            Some((cpu.parse::<u32>().ok()?, seq.parse::<u64>().ok()?))
        });
        match parsed {
            Some((cpu, seq)) => {
                let e = per.entry(cpu).or_insert((0, true));
                e.0 += 1;
                if seq != e.0 {
                    e.1 = false;
                }
            }
            None => other += 1,
        }
    }
    (per, other)
}

const STREAM_COUNT: u64 = 50_000;

fn stream(c: &mut Ctx) {
    let t0 = Instant::now();
    let out = c.staprun(&ALICE, &["stream"]);
    let secs = t0.elapsed().as_secs_f64();
    let (per, other) = stream_summary(&out.stdout);
    c.log(&format!(
        "stream: {} bytes in {secs:.1}s, per cpu {per:?}, {other} other lines",
        out.stdout.len()
    ));
    c.observe("exit", exit_text(&out));
    c.observe("stderr", normalize(&out.stderr));
    c.observe("per_cpu", format!("{per:?}"));
    c.observe(
        "other_lines",
        out.stdout
            .lines()
            .filter(|l| !l.starts_with("cpu="))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    expect_clean_exit(c, "run", "stream", &out);
    let cpus = crate::num_cpus() as u32;
    let want: BTreeMap<u32, (u64, bool)> = (0..cpus).map(|i| (i, (STREAM_COUNT, true))).collect();
    c.check_eq("every_cpu_complete_in_order", per, want);
    c.check_eq("end_last", out.stdout.lines().last(), Some(END));
    c.check(
        "no_timeout",
        !out.stdout.contains("stream timeout"),
        "the module's 30 s safety timer fired",
    );
    c.check_eq("stderr_empty", out.stderr.as_str(), "");
}

fn warn_error(c: &mut Ctx) {
    let out = c.staprun(&ALICE, &["warnerr"]);
    c.record("run", Some("warnerr"), &out);
    c.check("exit_1", out.code == Some(1), out.summary());
    c.check(
        "unloaded",
        loaded_like("warnerr").is_empty(),
        loaded_text("warnerr"),
    );
    let count = |needle: &str| out.stderr.lines().filter(|l| l.contains(needle)).count();
    c.check_eq("warning_one_once", count("WARNING: compat warning one"), 1);
    c.check_eq("warning_two_once", count("WARNING: compat warning two"), 1);
    c.check_eq("error_once", count("ERROR: compat error"), 1);
    // error() ends the session at once: the end probe does not run.
    c.check_eq("stdout", out.stdout.as_str(), "before error\n");
}

pub const RUN_CASES: &[Case] = &[
    Case {
        name: "hello_root",
        f: hello_root,
        modules: &["hello"],
        c_fails: &[],
    },
    Case {
        name: "hello_alice",
        f: hello_alice,
        modules: &["hello"],
        c_fails: &[],
    },
    Case {
        name: "sigint_root",
        f: sigint_root,
        modules: &["ticker"],
        c_fails: &[],
    },
    Case {
        name: "sigint_alice",
        f: sigint_alice,
        modules: &["ticker"],
        c_fails: &[],
    },
    Case {
        name: "sigterm_alice",
        f: sigterm_alice,
        modules: &["ticker"],
        c_fails: &[],
    },
    Case {
        name: "sighup_alice",
        f: sighup_alice,
        modules: &["ticker"],
        c_fails: &[],
    },
    Case {
        name: "system_root",
        f: system_root,
        modules: &["sysid"],
        c_fails: &[],
    },
    Case {
        name: "system_alice",
        f: system_alice,
        modules: &["sysid"],
        c_fails: &[],
    },
    Case {
        name: "target_c",
        f: target_c,
        modules: &["target"],
        c_fails: &[],
    },
    Case {
        name: "target_c_fails",
        f: target_c_fails,
        modules: &["target"],
        c_fails: &[],
    },
    Case {
        name: "target_x",
        f: target_x,
        modules: &["target"],
        c_fails: &[],
    },
    Case {
        name: "modargs",
        f: modargs,
        modules: &["modargs"],
        c_fails: &[],
    },
    Case {
        name: "modopt_alice",
        f: modopt_alice,
        modules: &["modargs"],
        c_fails: &[],
    },
    Case {
        name: "global_opt_invalid",
        f: global_opt_invalid,
        modules: &["modargs"],
        c_fails: &[],
    },
    Case {
        name: "stream",
        f: stream,
        modules: &["stream"],
        c_fails: &[],
    },
    Case {
        name: "warn_error",
        f: warn_error,
        modules: &["warnerr"],
        c_fails: &[],
    },
];

fn compat_run(r: &mut Reporter) {
    run_group(r, RUN_CASES);
}

// ---------------------------------------------------------------------------
// Group compat_options: testsuite/parseko cmdline09-21 and helpout.exp.

/// (case, arguments): each must fail (parseko.exp: a non-zero exit).
/// cmdline15 is a `stap` option test, not staprun's.
const PARSEKO: &[(&str, &[&str])] = &[
    (
        "cmdline09",
        &["stap_123456789012345678901234567890123456789012345678901234567890"],
    ),
    ("cmdline10", &["-b", "0", "fake_module"]),
    ("cmdline11", &["-L", "-A", "fake_module"]),
    ("cmdline12", &["-A", "-b", "2", "fake_module"]),
    ("cmdline13", &["-A", "-c", "bash", "fake_module"]),
    ("cmdline14", &["-A", "-x", "100", "fake_module"]),
    ("cmdline16", &["-c", "/bin/ls", "-x", "100", "fake_module"]),
    ("cmdline17", &["-L", "-D", "fake_module"]),
    ("cmdline18", &["-d", "-D", "fake_module"]),
    ("cmdline19", &["-c", "/bin/ls", "-D", "fake_module"]),
    ("cmdline20", &["-D", "fake_module"]),
    ("cmdline21", &["-S", "1,1", "fake_module"]),
];

fn parseko_args(case: &str) -> &'static [&'static str] {
    PARSEKO
        .iter()
        .find(|(n, _)| *n == case)
        .map_or(&[], |(_, a)| a)
}

fn parseko(c: &mut Ctx) {
    let args = parseko_args(c.case);
    let out = c.staprun(&ALICE, args);
    c.observe("run.exit", exit_text(&out));
    c.observe("run.stdout", normalize(&out.stdout));
    let error = first_error(&out.stderr);
    c.observe("run.error", error.clone().unwrap_or_default());
    c.check(
        "exit_nonzero",
        out.code.is_some_and(|x| x != 0),
        out.summary(),
    );
    c.check("says_why", error.is_some(), "an ERROR line on stderr");
}

/// The first `ERROR:` line, normalized, up to the end of its first sentence
/// (the C staprun explains some option conflicts in a second sentence).
fn first_error(stderr: &str) -> Option<String> {
    let n = normalize(stderr);
    let l = n.lines().find(|l| l.starts_with("ERROR: "))?;
    Some(l.split(".  ").next().unwrap_or(l).to_owned())
}

/// testsuite/systemtap.base/helpout.exp: `-V` and `-h` exit 0 with nothing on stderr.
fn helpout(c: &mut Ctx) {
    let stapio = c.imp.stapio();
    for (label, argv) in [
        ("staprun_V", [STAPRUN, "-V"]),
        ("staprun_h", [STAPRUN, "-h"]),
        ("stapio_V", [stapio, "-V"]),
        ("stapio_h", [stapio, "-h"]),
    ] {
        let out = c.command(&ALICE, &argv);
        c.observe(&format!("{label}.exit"), exit_text(&out));
        c.observe(
            &format!("{label}.stderr_empty"),
            out.stderr.is_empty().to_string(),
        );
        c.check(
            &format!("{label}_exit_0_stderr_empty"),
            out.code == Some(0) && out.stderr.is_empty(),
            out.summary(),
        );
    }
}

macro_rules! parseko_cases {
    ($($name:literal),*) => {
        &[$(Case { name: $name, f: parseko, modules: &[], c_fails: &[] }),*]
    };
}

const PARSEKO_CASES: &[Case] = parseko_cases!(
    "cmdline09",
    "cmdline10",
    "cmdline11",
    "cmdline12",
    "cmdline13",
    "cmdline14",
    "cmdline16",
    "cmdline17",
    "cmdline18",
    "cmdline19",
    "cmdline20",
    "cmdline21"
);

const HELPOUT: &[Case] = &[Case {
    name: "helpout",
    f: helpout,
    modules: &[],
    c_fails: &[],
}];

fn compat_options(r: &mut Reporter) {
    let all: Vec<Case> = PARSEKO_CASES.iter().chain(HELPOUT).copied().collect();
    run_group(r, &all);
}

// ---------------------------------------------------------------------------
// Group compat_lifecycle: attach_detach, pr13158, rename_module, pr10854,
// sigusr2, staprunwait.

const DISCONNECT: &str = "Disconnecting from systemtap module.";

fn reconnect_line(module: &str) -> String {
    format!("To reconnect, type \"staprun -A {module}\"")
}

/// testsuite/systemtap.base/attach_detach.exp (root; 300 ms timer instead of 5 s).
fn attach_detach(c: &mut Ctx) {
    let m = mpath("ticker");
    // 1. -L: loads, starts, detaches; no begin output; the module stays.
    let out = c.staprun(&ROOT, &["-L", &m]);
    c.record("load_L", Some("ticker"), &out);
    c.check("L_exit_0", out.code == Some(0), out.summary());
    // The disconnect message goes to stderr (the expect test reads both).
    let both = format!("{}{}", out.stdout, out.stderr);
    c.check("L_disconnect", contains_line(&both, DISCONNECT), &both);
    c.check(
        "L_reconnect_hint",
        contains_line(&both, &reconnect_line("ticker")),
        &both,
    );
    c.check(
        "L_no_begin_output",
        !out.stdout.contains(BEGIN),
        &out.stdout,
    );
    if !c.check(
        "L_still_loaded",
        util::is_loaded("ticker"),
        loaded_text("ticker"),
    ) {
        return;
    }
    // 2. -A, then SIGQUIT: begin output from the buffer, timer output, detach.
    let Some(mut p) = c.bg(&ROOT, &["-A", "ticker"]) else {
        return;
    };
    c.check("A1_timer_seen", p.wait_stdout(TIMER, STARTUP), p.stdout());
    p.signal(libc::SIGQUIT);
    let out = p.wait(RUN);
    c.transcript("(SIGQUIT)", &out);
    c.record("attach_quit", Some("ticker"), &out);
    c.check("A1_exit_0", out.code == Some(0), out.summary());
    c.check(
        "A1_begin_from_buffer",
        contains_line(&out.stdout, BEGIN),
        &out.stdout,
    );
    c.check("A1_no_end", !out.stdout.contains(END), &out.stdout);
    let both = format!("{}{}", out.stdout, out.stderr);
    c.check(
        "A1_disconnect",
        contains_line(&both, DISCONNECT) && contains_line(&both, &reconnect_line("ticker")),
        &both,
    );
    if !c.check(
        "A1_still_loaded",
        util::is_loaded("ticker"),
        loaded_text("ticker"),
    ) {
        return;
    }
    // 3. -A, then SIGTERM: timer output, end probe, unloaded, no disconnect.
    let Some(mut p) = c.bg(&ROOT, &["-A", "ticker"]) else {
        return;
    };
    c.check("A2_timer_seen", p.wait_stdout(TIMER, STARTUP), p.stdout());
    p.signal(libc::SIGTERM);
    let out = p.wait(RUN);
    c.transcript("(SIGTERM)", &out);
    c.record("attach_term", Some("ticker"), &out);
    c.check("A2_exit_0", out.code == Some(0), out.summary());
    c.check("A2_no_begin", !out.stdout.contains(BEGIN), &out.stdout);
    c.check("A2_end", contains_line(&out.stdout, END), &out.stdout);
    c.check(
        "A2_no_disconnect",
        !out.stdout.contains(DISCONNECT) && !out.stderr.contains(DISCONNECT),
        out.summary(),
    );
    c.check(
        "A2_unloaded",
        !util::is_loaded("ticker"),
        loaded_text("ticker"),
    );
}

/// The same as alice (stapusr), by module name.
fn attach_detach_alice(c: &mut Ctx) {
    let out = c.staprun(&ALICE, &["-L", "ticker"]);
    c.record("load_L", Some("ticker"), &out);
    c.check("L_exit_0", out.code == Some(0), out.summary());
    if !c.check(
        "L_still_loaded",
        util::is_loaded("ticker"),
        loaded_text("ticker"),
    ) {
        return;
    }
    let Some(mut p) = c.bg(&ALICE, &["-A", "ticker"]) else {
        return;
    };
    c.check("A_timer_seen", p.wait_stdout(TIMER, STARTUP), p.stdout());
    p.signal(libc::SIGQUIT);
    let out = p.wait(RUN);
    c.transcript("(SIGQUIT)", &out);
    c.record("attach_quit", Some("ticker"), &out);
    c.check("A_exit_0", out.code == Some(0), out.summary());
    c.check(
        "A_begin_from_buffer",
        contains_line(&out.stdout, BEGIN),
        &out.stdout,
    );
    let out = c.staprun(&ALICE, &["-d", "ticker"]);
    c.record("unload_d", Some("ticker"), &out);
    c.check("d_exit_0", out.code == Some(0), out.summary());
    c.check(
        "d_unloaded",
        !util::is_loaded("ticker"),
        loaded_text("ticker"),
    );
}

/// pr13158.exp's expect loop: only these two lines (after the listed
/// normalization: the original regexes are anchored at `^ERROR:`, which our
/// `staprun: ` prefix would not match; see docs/compat.md, N1).
fn eexist_lines_only(stderr: &str, stdout: &str) -> bool {
    let mut saw = 0;
    let text = format!("{}\n{}", normalize(stderr), normalize(stdout));
    for l in text.lines().filter(|l| !l.is_empty()) {
        if (l.starts_with("ERROR: Couldn't insert module ") && l.ends_with(": File exists"))
            || l == "ERROR: Rerun with staprun option '-R' to rename this module"
        {
            saw += 1;
        } else {
            return false;
        }
    }
    saw == 2
}

/// testsuite/systemtap.base/pr13158.exp (and rename_module.exp's "without -R" part).
fn pr13158(c: &mut Ctx) {
    let m = mpath("ticker");
    let Some(mut first) = c.bg(&ROOT, &[&m]) else {
        return;
    };
    if !c.check(
        "first_started",
        first.wait_stdout(BEGIN, STARTUP),
        first.stdout(),
    ) {
        first.signal(libc::SIGINT);
        let _ = first.wait(RUN);
        return;
    }
    let second = c.staprun(&ROOT, &[&m]);
    c.record("second", None, &second);
    c.check(
        "second_fails",
        second.code.is_some_and(|x| x != 0),
        second.summary(),
    );
    c.check(
        "second_says_eexist_and_rename_hint_only",
        eexist_lines_only(&second.stderr, &second.stdout),
        second.summary(),
    );
    first.signal(libc::SIGINT);
    let out = first.wait(RUN);
    c.transcript("(first, SIGINT)", &out);
    c.record("first", Some("ticker"), &out);
    c.check("first_exit_0", out.code == Some(0), out.summary());
    c.check("removed", !util::is_loaded("ticker"), loaded_text("ticker"));
}

/// testsuite/systemtap.base/rename_module.exp: two `staprun -R` at once, and a
/// name too short to rename.
fn rename_module(c: &mut Ctx) {
    let m = mpath("ticker");
    let (Some(mut a), Some(mut b)) = (c.bg(&ROOT, &["-R", &m]), c.bg(&ROOT, &["-R", &m])) else {
        return;
    };
    c.check("first_runs", a.wait_stdout(BEGIN, STARTUP), a.stdout());
    c.check("second_runs", b.wait_stdout(BEGIN, STARTUP), b.stdout());
    let names = loaded_like("ticker");
    c.check(
        "two_renamed_modules",
        names.len() == 2 && names.iter().all(|n| is_renamed("ticker", n)),
        format!("{names:?}"),
    );
    a.signal(libc::SIGINT);
    b.signal(libc::SIGINT);
    let (oa, ob) = (a.wait(RUN), b.wait(RUN));
    c.transcript("(first -R, SIGINT)", &oa);
    c.transcript("(second -R, SIGINT)", &ob);
    c.record("first", None, &oa);
    c.record("second", None, &ob);
    c.check(
        "both_exit_0",
        oa.code == Some(0) && ob.code == Some(0),
        format!("{} | {}", oa.summary(), ob.summary()),
    );
    c.check(
        "none_left",
        loaded_like("ticker").is_empty(),
        loaded_text("ticker"),
    );
    // -R on a module called "x": a warning, and it still runs.
    let x = mpath("x");
    let Some(mut p) = c.bg(&ROOT, &["-R", &x]) else {
        return;
    };
    c.check("short_runs", p.wait_stdout(BEGIN, STARTUP), p.stdout());
    p.signal(libc::SIGINT);
    let out = p.wait(RUN);
    c.transcript("(x, SIGINT)", &out);
    c.record("short", Some("x"), &out);
    c.check(
        "short_warns",
        out.stderr
            .lines()
            .chain(out.stdout.lines())
            .any(|l| l.contains("WARNING: Old module name")),
        &out.stderr,
    );
    c.check("short_unloaded", !util::is_loaded("x"), loaded_text("x"));
}

/// testsuite/systemtap.base/pr10854.exp: start, then TERM and KILL stapio at
/// once, ten times (ticker stands in for the kernel.function script); then
/// `staprun -d`. The kernel must survive (the host watches the console).
fn pr10854(c: &mut Ctx) {
    let m = mpath("ticker");
    for i in 0..10 {
        let Some(p) = c.bg(&ROOT, &[&m, "-o", "/dev/null"]) else {
            return;
        };
        sleep_ms(if i % 2 == 0 { 1000 } else { 300 });
        p.signal(libc::SIGTERM);
        p.signal(libc::SIGKILL);
        let out = p.wait(RUN);
        c.log(&format!(
            "run {i}: exit {}, stderr {:?}",
            exit_text(&out),
            out.stderr
        ));
    }
    // Let a cleanup `staprun -d` that was already forked finish.
    sleep_ms(1000);
    let left = util::is_loaded("ticker");
    c.log(&format!("after the loop: {}", loaded_text("ticker")));
    let out = c.staprun(&ROOT, &["-d", "ticker"]);
    if left {
        c.check("d_exit_0", out.code == Some(0), out.summary());
    }
    c.observe("final", loaded_text("ticker"));
    c.check(
        "unloaded",
        !util::is_loaded("ticker"),
        loaded_text("ticker"),
    );
    let alive = c.staprun(&ROOT, &[&mpath("hello")]);
    c.check(
        "system_alive",
        alive.code == Some(0) && alive.stdout.contains(HELLO),
        alive.summary(),
    );
}

/// testsuite/systemtap.base/sigusr2.exp: SIGUSR2 raised in stapio by the begin probe.
fn sigusr2(c: &mut Ctx) {
    let Some(mut p) = c.bg(&ROOT, &[&mpath("sigusr2")]) else {
        return;
    };
    c.check(
        "starting",
        p.wait_stdout("systemtap starting probe", STARTUP),
        p.stdout(),
    );
    sleep_ms(300);
    p.signal(libc::SIGINT);
    let out = p.wait(RUN);
    c.transcript("(SIGINT)", &out);
    c.record("run", Some("sigusr2"), &out);
    expect_clean_exit(c, "run", "sigusr2", &out);
    c.check(
        "ending_and_success",
        contains_line(&out.stdout, "systemtap ending probe")
            && contains_line(&out.stdout, "systemtap test success"),
        &out.stdout,
    );
    c.check_eq("no_error", out.stderr.as_str(), "");
}

/// sigusr2.exp, bulk part: `-c true` on a bulk-mode module must not hang.
fn sigusr2_bulk(c: &mut Ctx) {
    let dir = "/tmp/compat-bulk";
    let _ = fs::remove_dir_all(dir);
    let _ = fs::create_dir_all(dir);
    let mut cmd = command_as(&ROOT, &[STAPRUN, "-c", "true", &mpath("sigusr2b")], &[]);
    cmd.current_dir(dir);
    let out = util::run(cmd, RUN);
    c.transcript("(in /tmp/compat-bulk) staprun -c true sigusr2b.ko", &out);
    c.record("run", Some("sigusr2b"), &out);
    c.check("no_hang", !out.timed_out, out.summary());
    expect_clean_exit(c, "run", "sigusr2b", &out);
    let mut files: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    c.log(&format!("files: {files:?}"));
    c.observe("files", files.join(" "));
}

/// testsuite/systemtap.base/staprunwait.exp: `-c "sleep N"` returns 0 (N=3, not 120).
fn staprunwait(c: &mut Ctx) {
    let out = c.staprun(&ALICE, &["-c", "sleep 3", "ticker"]);
    c.record("run", Some("ticker"), &out);
    expect_clean_exit(c, "run", "ticker", &out);
}

const LIFECYCLE_CASES: &[Case] = &[
    Case {
        name: "attach_detach",
        f: attach_detach,
        modules: &["ticker"],
        c_fails: &[],
    },
    Case {
        name: "attach_detach_alice",
        f: attach_detach_alice,
        modules: &["ticker"],
        c_fails: &[],
    },
    Case {
        name: "pr13158",
        f: pr13158,
        modules: &["ticker"],
        c_fails: &[],
    },
    Case {
        name: "rename_module",
        f: rename_module,
        modules: &["ticker", "x"],
        c_fails: &[],
    },
    Case {
        name: "pr10854",
        f: pr10854,
        modules: &["ticker", "hello"],
        c_fails: &[],
    },
    Case {
        name: "sigusr2",
        f: sigusr2,
        modules: &["sigusr2"],
        c_fails: &[],
    },
    Case {
        name: "sigusr2_bulk",
        f: sigusr2_bulk,
        modules: &["sigusr2b"],
        c_fails: &[],
    },
    Case {
        name: "staprunwait",
        f: staprunwait,
        modules: &["ticker"],
        c_fails: &[],
    },
];

fn compat_lifecycle(r: &mut Reporter) {
    run_group(r, LIFECYCLE_CASES);
}

// ---------------------------------------------------------------------------
// Group compat_flightrec: flightrec1-5 (`stap -F -o FILE` is `staprun -D -o FILE`).

const FR: &str = "/tmp/compat-fr";

fn fresh_dir(dir: &str) {
    let _ = fs::remove_dir_all(dir);
    let _ = fs::create_dir_all(dir);
}

/// File names in `dir` starting with `prefix`, sorted, with sizes.
fn files_with(dir: &str, prefix: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    n.starts_with(prefix).then_some((n, size))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn names(v: &[(String, u64)]) -> String {
    v.iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `staprun -D ...`: prints the daemon's pid and exits 0. Returns the pid.
fn start_daemon(c: &mut Ctx, args: &[&str]) -> Option<u32> {
    let out = c.staprun(&ROOT, args);
    c.record("start", None, &out);
    let pid = out.stdout.trim().parse::<u32>().ok();
    c.check(
        "prints_pid_exit_0",
        out.code == Some(0) && pid.is_some(),
        out.summary(),
    );
    let pid = pid?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    c.check_eq("daemon_is_stapio", comm.trim(), "stapio");
    Some(pid)
}

/// SIGTERM the daemon; it must exit and unload `module` within 20 s.
fn stop_daemon(c: &mut Ctx, pid: u32, module: &str) {
    let _ = sys::kill(pid, libc::SIGTERM);
    let gone = util::wait_until(Duration::from_secs(20), || {
        !alive(pid) && loaded_like(module).is_empty()
    });
    c.check("term_exits_and_unloads", gone, loaded_text(module));
    c.observe("after_term", loaded_text(module));
}

fn usr2(pid: u32) {
    let _ = sys::kill(pid, libc::SIGUSR2);
}

/// flightrec1: -D -o F; SIGUSR2 switches F to F.1.
fn flightrec1(c: &mut Ctx) {
    fresh_dir(FR);
    let f = format!("{FR}/fr1.out");
    let Some(pid) = start_daemon(c, &["-D", "-o", &f, &mpath("ticker")]) else {
        return;
    };
    sleep_ms(2000);
    usr2(pid);
    sleep_ms(2000);
    let before = files_with(FR, "fr1.out");
    c.observe("files_after_usr2", names(&before));
    c.check("output_file", Path::new(&f).exists(), names(&before));
    stop_daemon(c, pid, "ticker");
    c.check(
        "switched_output_file",
        Path::new(&format!("{f}.1")).exists(),
        names(&files_with(FR, "fr1.out")),
    );
    c.observe("files_at_end", names(&files_with(FR, "fr1.out")));
}

/// flightrec2: -D -o F -S 1,3 on steady output: at most 3 files, each <= 1 MiB.
fn flightrec2(c: &mut Ctx) {
    fresh_dir(FR);
    let f = format!("{FR}/flightlog.out");
    let Some(pid) = start_daemon(c, &["-D", "-o", &f, "-S", "1,3", &mpath("flight")]) else {
        return;
    };
    for (i, wait) in [(1, 4000), (2, 3000)] {
        sleep_ms(wait);
        let v = files_with(FR, "flightlog.out.");
        c.log(&format!("look {i}: {v:?}"));
        c.check_eq(&format!("look{i}_three_files"), v.len(), 3);
        c.check(
            &format!("look{i}_sizes_le_1MiB"),
            v.iter().all(|(_, s)| *s <= 1 << 20),
            format!("{v:?}"),
        );
        c.observe(&format!("look{i}_count"), v.len().to_string());
    }
    stop_daemon(c, pid, "flight");
}

fn bulk_counts(v: &[(String, u64)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (n, _) in v {
        let cpu = n
            .strip_prefix("flightlog.out_cpu")
            .and_then(|r| r.split('.').next())
            .unwrap_or("?")
            .to_owned();
        *m.entry(cpu).or_insert(0) += 1;
    }
    m
}

/// flightrec3: bulk mode, -S 1,3: per-CPU files F_cpuN.M, each <= 1 MiB, <= 6 per CPU.
fn flightrec3(c: &mut Ctx) {
    fresh_dir(FR);
    let f = format!("{FR}/flightlog.out");
    let Some(pid) = start_daemon(c, &["-D", "-o", &f, "-S", "1,3", &mpath("flightb")]) else {
        return;
    };
    for (i, wait) in [(1, 4000), (2, 3000)] {
        sleep_ms(wait);
        let _ = sys::kill(pid, libc::SIGSTOP);
        sleep_ms(500);
        let v = files_with(FR, "flightlog.out_cpu");
        let _ = sys::kill(pid, libc::SIGCONT);
        c.log(&format!("look {i}: {v:?}"));
        let counts = bulk_counts(&v);
        c.check(
            &format!("look{i}_files_per_cpu_1_to_6"),
            !counts.is_empty() && counts.values().all(|n| (1..=6).contains(n)),
            format!("{counts:?}"),
        );
        c.check(
            &format!("look{i}_sizes_le_1MiB"),
            v.iter().all(|(_, s)| *s <= 1 << 20),
            format!("{v:?}"),
        );
        c.observe(&format!("look{i}_cpus"), counts.len().to_string());
    }
    stop_daemon(c, pid, "flightb");
}

/// flightrec4: -D -S 1,2 -o F: F.0 at first; after three SIGUSR2, .1 is gone, .2 and .3 exist.
fn flightrec4(c: &mut Ctx) {
    fresh_dir(FR);
    let f = format!("{FR}/fr4.out");
    let Some(pid) = start_daemon(c, &["-D", "-S", "1,2", "-o", &f, &mpath("ticker")]) else {
        return;
    };
    sleep_ms(2000);
    usr2(pid);
    let first = files_with(FR, "fr4.out");
    c.observe("files_after_1st_usr2", names(&first));
    c.check(
        "output_file_0",
        fs::remove_file(format!("{f}.0")).is_ok(),
        names(&first),
    );
    sleep_ms(2000);
    usr2(pid);
    sleep_ms(2000);
    usr2(pid);
    sleep_ms(2000);
    let v = files_with(FR, "fr4.out");
    c.observe("files_after_3rd_usr2", names(&v));
    c.check(
        "old_file_1_removed",
        !Path::new(&format!("{f}.1")).exists(),
        names(&v),
    );
    stop_daemon(c, pid, "ticker");
    c.check(
        "files_2_and_3",
        Path::new(&format!("{f}.2")).exists() && Path::new(&format!("{f}.3")).exists(),
        names(&files_with(FR, "fr4.out")),
    );
}

/// flightrec5: bulk, -D -S 1,2: F_cpuN.0 first; .1 removed after the third switch.
fn flightrec5(c: &mut Ctx) {
    fresh_dir(FR);
    let f = format!("{FR}/fr5.out");
    let Some(pid) = start_daemon(
        c,
        &["-D", "-S", "1,2", "-o", &f, &mpath("flightb"), "quiet=1"],
    ) else {
        return;
    };
    sleep_ms(2000);
    usr2(pid);
    sleep_ms(2000);
    let v = files_with(FR, "fr5.out_cpu");
    c.observe("files_after_1st_usr2", names(&v));
    let zeros: Vec<&(String, u64)> = v.iter().filter(|(n, _)| n.ends_with(".0")).collect();
    c.check("output_files_0", !zeros.is_empty(), names(&v));
    for (n, _) in zeros {
        let _ = fs::remove_file(format!("{FR}/{n}"));
    }
    usr2(pid);
    sleep_ms(2000);
    usr2(pid);
    sleep_ms(2000);
    stop_daemon(c, pid, "flightb");
    sleep_ms(500);
    let v = files_with(FR, "fr5.out_cpu");
    c.observe("files_at_end", names(&v));
    c.check(
        "old_files_1_removed",
        !v.iter().any(|(n, _)| n.ends_with(".1")),
        names(&v),
    );
    c.check("switched_files", !v.is_empty(), names(&v));
}

const C1: &str = "C1: the C 4.8 stapio lets bulk-mode -S files grow past the limit \
                  (1051008 > 1048576 bytes)";
const C2: &str = "C2: the C 5.1 stapio switches files only before writing the next record, \
                  so -S files grow past the limit (1049400, 1050700 > 1048576 bytes)";
const C3: &str = "C3: in non-bulk -S mode each C 4.8 reader thread keeps its own file number \
                  (relay.c reader_thread: local fnum, out_fd[cpu]) for names without a CPU, \
                  so a SIGUSR2 can switch twice (.3 .4 left instead of .2 .3)";
const C4: &str = "C4: the C 5.1 stapio switches bulk files only when data arrives, so a silent \
                  module gets no .1 after SIGUSR2, and no output file is left after SIGTERM";

const FLIGHTREC_CASES: &[Case] = &[
    Case {
        name: "flightrec1",
        f: flightrec1,
        modules: &["ticker"],
        c_fails: &[],
    },
    Case {
        name: "flightrec2",
        f: flightrec2,
        modules: &["flight"],
        c_fails: &[(Gen::V5, CDev::Fails(C2))],
    },
    Case {
        name: "flightrec3",
        f: flightrec3,
        modules: &["flightb"],
        c_fails: &[(Gen::V4, CDev::Fails(C1)), (Gen::V5, CDev::Fails(C2))],
    },
    Case {
        name: "flightrec4",
        f: flightrec4,
        modules: &["ticker"],
        c_fails: &[(Gen::V4, CDev::Flaky(C3))],
    },
    Case {
        name: "flightrec5",
        f: flightrec5,
        modules: &["flightb"],
        c_fails: &[(Gen::V5, CDev::Fails(C4))],
    },
];

fn compat_flightrec(r: &mut Reporter) {
    run_group(r, FLIGHTREC_CASES);
}
