//! One case under one implementation: [`Ctx`] (checks, observations compared between
//! the implementations, transcripts), running staprun as a user, and the normalization of
//! what legitimately differs between runs (docs/compat.md, "Normalization").

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt as _, chown};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{self, Bg, Out, ROOT, Reporter, STAPRUN, User, blessed_dir, command_as, sys};

use super::{Impl, MODS, RUN};

// ---------------------------------------------------------------------------
// One case, run under one implementation.

pub(crate) struct Ctx<'r> {
    pub(crate) r: &'r mut Reporter,
    pub(crate) case: &'static str,
    pub(crate) imp: Impl,
    pub(crate) checks: Vec<(String, bool, String)>,
    pub(crate) obs: BTreeMap<String, String>,
}

impl Ctx<'_> {
    pub(crate) fn check(&mut self, name: &str, ok: bool, detail: impl AsRef<str>) -> bool {
        self.checks
            .push((name.to_owned(), ok, detail.as_ref().to_owned()));
        ok
    }

    pub(crate) fn check_eq<T: PartialEq + std::fmt::Debug>(
        &mut self,
        name: &str,
        got: T,
        want: T,
    ) -> bool {
        let ok = got == want;
        self.check(name, ok, format!("got {got:?}, want {want:?}"))
    }

    /// A value compared between the implementations.
    pub(crate) fn observe(&mut self, label: &str, value: impl Into<String>) {
        self.obs.insert(label.to_owned(), value.into());
    }

    pub(crate) fn log(&mut self, text: &str) {
        let prefix = format!("[{} {}] ", self.case, self.imp.name());
        for l in text.lines() {
            self.r.log(&format!("{prefix}{l}"));
        }
    }

    pub(crate) fn transcript(&mut self, prompt: &str, out: &Out) {
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
    pub(crate) fn staprun(&mut self, user: &User, args: &[&str]) -> Out {
        self.staprun_env(user, args, &[])
    }

    pub(crate) fn staprun_env(&mut self, user: &User, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut argv = vec![STAPRUN];
        argv.extend_from_slice(args);
        let out = harness::run(command_as(user, &argv, env), RUN);
        self.transcript(&prompt(user, &argv), &out);
        out
    }

    /// Runs any command as `user` in the foreground and logs the transcript.
    pub(crate) fn command(&mut self, user: &User, argv: &[&str]) -> Out {
        let out = harness::run(command_as(user, argv, &[]), RUN);
        self.transcript(&prompt(user, argv), &out);
        out
    }

    pub(crate) fn bg(&mut self, user: &User, args: &[&str]) -> Option<Bg> {
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
    pub(crate) fn record(&mut self, label: &str, module: Option<&str>, out: &Out) {
        self.observe(&format!("{label}.exit"), exit_text(out));
        self.observe(&format!("{label}.stdout"), normalize(&out.stdout));
        self.observe(&format!("{label}.stderr"), normalize(&out.stderr));
        if let Some(m) = module {
            self.observe(&format!("{label}.loaded"), loaded_text(m));
        }
    }
}

pub(crate) fn prompt(user: &User, argv: &[&str]) -> String {
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

pub(crate) fn exit_text(out: &Out) -> String {
    match (out.code, out.signal, out.timed_out) {
        (_, _, true) => "timed out (killed)".into(),
        (Some(c), _, _) => c.to_string(),
        (None, Some(s), _) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

pub(crate) fn loaded_text(module: &str) -> String {
    let left = loaded_like(module);
    if left.is_empty() {
        "unloaded".into()
    } else {
        format!("loaded: {}", normalize(&left.join(" ")))
    }
}

/// Loaded modules named `module`, or renamed from it by `-R`.
pub(crate) fn loaded_like(module: &str) -> Vec<String> {
    harness::loaded_modules()
        .into_iter()
        .filter(|m| m == module || is_renamed(module, m))
        .collect()
}

/// `-R` renames NAME in memory to `<first part of NAME>_<pid>`, of NAME's length
/// (staprun_funcs.c `rename_module`: `"%.*s_%d"`), e.g. ticker -> ti_123.
pub(crate) fn is_renamed(module: &str, name: &str) -> bool {
    name.len() == module.len()
        && name != module
        && name.rsplit_once('_').is_some_and(|(head, pid)| {
            !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) && module.starts_with(head)
        })
}

/// Our messages start with the program name; the C ones do not.
pub(crate) const PREFIXES: &[&str] = &["staprun: ", "stapio: "];
/// The hint ours adds after an option error (the C staprun prints its usage text on stdout).
pub(crate) const USAGE_HINT: &str = "ERROR: Run 'staprun -h' for usage.";
/// The first line of the C staprun's usage text.
pub(crate) const C_USAGE_START: &str = " [-v] [-w] [-V] [-h] [-u] [-c cmd ] [-x pid]";

/// Replaces what legitimately differs between runs and the listed wording
/// differences (docs/compat.md, "Normalization"):
/// - process ids: `target=N`, a number alone on a line (`-D` prints the daemon's
///   pid), module names renamed by `-R`;
/// - timer output: lines `timer probe fired` are dropped (their number depends on timing);
/// - the `staprun: `/`stapio: ` prefix of our messages, and the final `.` of an
///   `ERROR:`/`WARNING:` line;
/// - our `ERROR: Run 'staprun -h' for usage.` hint, and the C usage text (as `<usage>`).
pub(crate) fn normalize(s: &str) -> String {
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
pub(crate) fn rename_tokens(line: &str, names: &[String]) -> String {
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

pub(crate) fn replace_numbers_after(s: &str, prefix: &str) -> String {
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
pub(crate) fn module_names() -> Vec<String> {
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
pub(crate) fn publish(name: &str) -> Result<PathBuf, String> {
    let dest = blessed_dir().join(format!("{name}.ko"));
    fs::copy(Path::new(MODS).join(format!("{name}.ko")), &dest)
        .map_err(|e| format!("copy {name}.ko: {e}"))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("chmod {}: {e}", dest.display()))?;
    chown(&dest, Some(0), Some(0)).map_err(|e| format!("chown {}: {e}", dest.display()))?;
    Ok(dest)
}

/// The blessed path of a published module, as a string argument.
pub(crate) fn mpath(name: &str) -> String {
    blessed_dir()
        .join(format!("{name}.ko"))
        .to_string_lossy()
        .into_owned()
}

/// Unloads every compat module (renamed ones included) with rmmod; returns their names.
pub(crate) fn unload_all() -> Vec<String> {
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
        let _ = harness::run_as(&ROOT, &["/sbin/rmmod", m], &[]);
    }
    left
}

/// True while `pid` exists and is not a zombie. A `-D` daemon is reparented
/// to the agent (PID 1), which does not reap it: a zombie has exited.
pub(crate) fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// Live stapio processes.
pub(crate) fn live_stapio() -> Vec<u32> {
    harness::pids_named("stapio")
        .into_iter()
        .filter(|p| alive(*p))
        .collect()
}

/// Kills every stapio still running (a case that failed half-way).
pub(crate) fn kill_stray_stapio() -> usize {
    let pids = live_stapio();
    for p in &pids {
        let _ = sys::kill(*p, libc::SIGKILL);
    }
    if !pids.is_empty() {
        harness::wait_until(Duration::from_secs(5), || live_stapio().is_empty());
    }
    pids.len()
}

pub(crate) fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

pub(crate) const HELLO: &str = "hello from begin";
pub(crate) const END: &str = "end probe fired";
pub(crate) const BEGIN: &str = "begin probe fired";
pub(crate) const TIMER: &str = "timer probe fired";
