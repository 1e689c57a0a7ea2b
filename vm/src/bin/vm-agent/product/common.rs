//! What the product scenarios share: running staprun as a test user, judging a run, and
//! reading what a run left (files, modules, processes).

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, chown};
use std::time::Duration;

use crate::harness::{
    self, Bg, END, HELLO, Out, Reporter, STAPRUN, User, command_as, rmmod, run, sys,
};

pub(crate) const RUN: Duration = Duration::from_secs(60);
pub(crate) const QUICK: Duration = Duration::from_secs(1);
/// How long a running session may take to print its begin output.
pub(crate) const STARTUP: Duration = Duration::from_secs(20);

pub(crate) fn staprun_env(user: &User, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut argv = vec![STAPRUN];
    argv.extend_from_slice(args);
    run(command_as(user, &argv, env), RUN)
}

pub(crate) fn staprun(user: &User, args: &[&str]) -> Out {
    staprun_env(user, args, &[])
}

pub(crate) fn staprun_bg(user: &User, args: &[&str]) -> Option<Bg> {
    let mut argv = vec![STAPRUN];
    argv.extend_from_slice(args);
    Bg::start(command_as(user, &argv, &[])).ok()
}

/// Unloads `name` if a scenario step left it loaded (after it was checked).
pub(crate) fn force_unload(name: &str) {
    if harness::is_loaded(name) {
        let _ = rmmod(name);
    }
}

pub(crate) fn stapio_pid() -> Option<u32> {
    let mut pid = None;
    harness::wait_until(Duration::from_secs(5), || {
        pid = harness::pids_named("stapio").first().copied();
        pid.is_some()
    });
    pid
}

/// Sends `sig` to the running stapio; a failed check if there is none.
pub(crate) fn signal_stapio(r: &mut Reporter, check: &str, sig: libc::c_int) -> bool {
    match stapio_pid() {
        Some(pid) => sys::kill(pid, sig).is_ok(),
        None => !r.check(check, false, "no stapio process"),
    }
}

pub(crate) fn log_run(r: &mut Reporter, prompt: &str, out: &Out) {
    r.log(prompt);
    if !out.stdout.is_empty() {
        r.log(out.stdout.trim_end());
    }
    for l in out.stderr.lines() {
        r.log(&format!("[stderr] {l}"));
    }
    r.log(&format!(
        "[exit code {:?} signal {:?}]",
        out.code, out.signal
    ));
}

/// A successful foreground run: exit 0, begin and end output, module gone.
pub(crate) fn check_full_run(r: &mut Reporter, tag: &str, module: &str, out: &Out) -> bool {
    let ok = out.code == Some(0) && out.stdout.contains(HELLO) && out.stdout.contains(END);
    let a = r.check(&format!("{tag}_ok"), ok, out.summary());
    let b = r.check(
        &format!("{tag}_unloaded"),
        !harness::is_loaded(module),
        format!("{module} not in /proc/modules"),
    );
    force_unload(module);
    a && b
}

pub(crate) fn record_lines(stdout: &str) -> usize {
    stdout.lines().filter(|l| l.starts_with("cpu=")).count()
}

/// The loaded modules now, to compare with at the end of a scenario.
pub(crate) fn module_snapshot() -> Vec<String> {
    let mut v = harness::loaded_modules();
    v.sort();
    v
}

/// Checks that no module beyond `before` is loaded (then unloads any).
pub(crate) fn check_no_new_modules(r: &mut Reporter, tag: &str, before: &[String]) -> bool {
    let extra: Vec<String> = module_snapshot()
        .into_iter()
        .filter(|m| !before.contains(m))
        .collect();
    let ok = r.check(
        &format!("{tag}_no_module_left"),
        extra.is_empty(),
        format!("/proc/modules has {extra:?} beyond {before:?}"),
    );
    for m in &extra {
        force_unload(m);
    }
    ok
}

/// No script output (begin/end/record lines) on stdout.
pub(crate) fn no_script_output(stdout: &str) -> bool {
    !stdout.contains("pmod:") && record_lines(stdout) == 0
}

/// A fresh directory owned by `user`, mode 0755.
pub(crate) fn user_dir(path: &str, user: &User) -> String {
    let _ = fs::remove_dir_all(path);
    let _ = fs::create_dir_all(path);
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
    let _ = chown(path, Some(user.uid), Some(user.gid));
    path.to_owned()
}

/// File names in `dir`, sorted.
pub(crate) fn dir_names(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub(crate) fn read_text(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

pub(crate) fn wait_file_contains(path: &str, needle: &str, timeout: Duration) -> bool {
    harness::wait_until(timeout, || read_text(path).contains(needle))
}

/// A root-owned 0755 shell script.
pub(crate) fn root_script(path: &str, body: &str) {
    let _ = fs::write(path, format!("#!/bin/sh\n{body}\n"));
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
    let _ = chown(path, Some(0), Some(0));
}

/// The numbers of the `pmod: tick N` lines, in output order.
pub(crate) fn ticks(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("pmod: tick ")?.trim().parse().ok())
        .collect()
}

pub(crate) fn consecutive(v: &[u32]) -> bool {
    v.windows(2).all(|w| w[1] == w[0] + 1)
}

/// The pid of the `pmod: target=PID` line.
pub(crate) fn target_line(stdout: &str) -> Option<u32> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("pmod: target=")?.trim().parse().ok())
}

/// A process has ended (gone, or a zombie nobody reaps: PID 1 adopts daemons).
pub(crate) fn process_ended(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

pub(crate) fn status_field(pid: u32, key: &str) -> String {
    harness::proc_status(pid)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Exit status as wanted and the module unloaded.
pub(crate) fn check_run_ended(r: &mut Reporter, tag: &str, out: &Out, code: i32) -> bool {
    let a = r.check(
        &format!("{tag}_exit{code}"),
        out.code == Some(code),
        out.summary(),
    );
    let b = r.check(
        &format!("{tag}_unloaded"),
        !harness::is_loaded("pmod"),
        "pmod not in /proc/modules",
    );
    force_unload("pmod");
    a && b
}
