//! Scenarios that run our staprun/stapio as the test users.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, chown, symlink};
use std::path::Path;
use std::time::Duration;

use crate::scenarios::{blessed_dir, insmod_as, install_fixture, prepare_blessed_dir, rmmod};
use crate::sys;
use crate::util::{
    self, ALICE, BOB, Bg, CAROL, Out, ROOT, Reporter, SAM, STAPDEV, STAPUSR, User, command_as, run,
};

pub const STAPRUN: &str = "/usr/bin/staprun";
pub const STAPIO: &str = "/usr/libexec/staprun/stapio";
const HELLO: &str = "pmod: hello from begin";
const END: &str = "pmod: end";
const RUN: Duration = Duration::from_secs(60);
const QUICK: Duration = Duration::from_secs(1);
/// How long a running session may take to print its begin output.
const STARTUP: Duration = Duration::from_secs(20);

fn staprun_env(user: &User, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut argv = vec![STAPRUN];
    argv.extend_from_slice(args);
    run(command_as(user, &argv, env), RUN)
}

fn staprun(user: &User, args: &[&str]) -> Out {
    staprun_env(user, args, &[])
}

fn staprun_bg(user: &User, args: &[&str]) -> Option<Bg> {
    let mut argv = vec![STAPRUN];
    argv.extend_from_slice(args);
    Bg::start(command_as(user, &argv, &[])).ok()
}

/// The product is installed as the RPM does it; false (and a failed check) if not.
fn product_installed(r: &mut Reporter) -> bool {
    let a = r.check_eq(
        "staprun_installed_04110_root_stapusr",
        util::stat(STAPRUN),
        Some((0o4110, 0, STAPUSR)),
    );
    let b = r.check_eq(
        "stapio_installed_0755",
        util::stat(STAPIO),
        Some((0o755, 0, 0)),
    );
    a && b
}

fn publish(module: &str) {
    let _ = install_fixture(
        module,
        &blessed_dir().join(format!("{module}.ko")),
        0o644,
        0,
        0,
    );
}

/// Unloads `name` if a scenario step left it loaded (after it was checked).
fn force_unload(name: &str) {
    if util::is_loaded(name) {
        let _ = rmmod(name);
    }
}

fn stapio_pid() -> Option<u32> {
    let mut pid = None;
    util::wait_until(Duration::from_secs(5), || {
        pid = util::pids_named("stapio").first().copied();
        pid.is_some()
    });
    pid
}

/// Sends `sig` to the running stapio; a failed check if there is none.
fn signal_stapio(r: &mut Reporter, check: &str, sig: libc::c_int) -> bool {
    match stapio_pid() {
        Some(pid) => sys::kill(pid, sig).is_ok(),
        None => !r.check(check, false, "no stapio process"),
    }
}

fn log_run(r: &mut Reporter, prompt: &str, out: &Out) {
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
fn check_full_run(r: &mut Reporter, tag: &str, module: &str, out: &Out) -> bool {
    let ok = out.code == Some(0) && out.stdout.contains(HELLO) && out.stdout.contains(END);
    let a = r.check(&format!("{tag}_ok"), ok, out.summary());
    let b = r.check(
        &format!("{tag}_unloaded"),
        !util::is_loaded(module),
        format!("{module} not in /proc/modules"),
    );
    force_unload(module);
    a && b
}

fn record_lines(stdout: &str) -> usize {
    stdout.lines().filter(|l| l.starts_with("cpu=")).count()
}

fn runs_module(r: &mut Reporter, module: &str, prompt: bool) {
    if !product_installed(r) {
        return;
    }
    publish(module);
    let out = staprun(&ALICE, &[module]);
    if prompt {
        log_run(r, &format!("alice$ staprun {module}"), &out);
    }
    check_full_run(r, &format!("alice_{module}"), module, &out);
    let want = 4 * crate::num_cpus();
    r.check_eq(
        &format!("alice_{module}_record_lines"),
        record_lines(&out.stdout),
        want,
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    r.check_eq(
        &format!("alice_{module}_begin_first"),
        lines.first().copied(),
        Some(HELLO),
    );
    r.check_eq(
        &format!("alice_{module}_end_last"),
        lines.last().copied(),
        Some(END),
    );
    r.check(
        &format!("alice_{module}_procfs_gone"),
        !Path::new(&format!("/proc/systemtap/{module}")).exists(),
        "",
    );
}

/// `cargo xtask demo`: alice (stapusr) runs `staprun pmod`; the transcript is the point.
pub fn demo(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    r.log(&format!(
        "alice is uid {} with groups {:?} (stapusr = {STAPUSR})",
        ALICE.uid, ALICE.groups
    ));
    r.log(&format!(
        "{} is mode 0{:o}",
        blessed_dir().join("pmod.ko").display(),
        util::stat(blessed_dir().join("pmod.ko")).map_or(0, |s| s.0)
    ));
    let out = staprun(&ALICE, &["pmod"]);
    log_run(r, "alice$ staprun pmod", &out);
    r.check("demo_exit_0", out.code == Some(0), out.summary());
    r.check("demo_begin_output", out.stdout.contains(HELLO), HELLO);
    r.check(
        "demo_module_unloaded",
        !util::is_loaded("pmod"),
        "pmod not in /proc/modules",
    );
    force_unload("pmod");
}

pub fn alice_runs_pmod(r: &mut Reporter) {
    runs_module(r, "pmod", true);
}

pub fn alice_runs_pmod5(r: &mut Reporter) {
    runs_module(r, "pmod5", true);
}

/// Where the module is put for one row of the permission table.
#[derive(Clone, Copy, Debug)]
enum Placement {
    Blessed,
    Elsewhere,
    SymlinkOut,
    DirWorldWritable,
    DirNotRootOwned,
    Dir775RootStapdevBobModule,
    ModuleWorldWritable,
}

const ELSEWHERE: &str = "/tmp/x/pmod.ko";

fn place(p: Placement) -> Result<&'static str, String> {
    let d = blessed_dir();
    let _ = fs::remove_dir_all(&d);
    prepare_blessed_dir()?;
    let _ = fs::remove_dir_all("/tmp/x");
    let ko = d.join("pmod.ko");
    let e = |e: std::io::Error| e.to_string();
    let mode = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).map_err(e);
    match p {
        Placement::Blessed => {
            install_fixture("pmod", &ko, 0o644, 0, 0).map_err(e)?;
            Ok("pmod")
        }
        Placement::Elsewhere | Placement::SymlinkOut => {
            fs::create_dir_all("/tmp/x").map_err(e)?;
            mode(Path::new("/tmp/x"), 0o755)?;
            install_fixture("pmod", Path::new(ELSEWHERE), 0o644, 0, 0).map_err(e)?;
            if matches!(p, Placement::SymlinkOut) {
                symlink(ELSEWHERE, &ko).map_err(e)?;
                Ok("pmod")
            } else {
                Ok(ELSEWHERE)
            }
        }
        Placement::DirWorldWritable => {
            install_fixture("pmod", &ko, 0o644, 0, 0).map_err(e)?;
            mode(&d, 0o777)?;
            Ok("pmod")
        }
        Placement::DirNotRootOwned => {
            install_fixture("pmod", &ko, 0o644, 0, 0).map_err(e)?;
            chown(&d, Some(BOB.uid), Some(BOB.gid)).map_err(e)?;
            Ok("pmod")
        }
        Placement::Dir775RootStapdevBobModule => {
            chown(&d, Some(0), Some(STAPDEV)).map_err(e)?;
            mode(&d, 0o775)?;
            install_fixture("pmod", &ko, 0o644, BOB.uid, BOB.gid).map_err(e)?;
            Ok("pmod")
        }
        Placement::ModuleWorldWritable => {
            install_fixture("pmod", &ko, 0o666, 0, 0).map_err(e)?;
            Ok("pmod")
        }
    }
}

pub fn permission_table(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    use Placement::*;
    let placements = [
        Blessed,
        Elsewhere,
        SymlinkOut,
        DirWorldWritable,
        DirNotRootOwned,
        Dir775RootStapdevBobModule,
        ModuleWorldWritable,
    ];
    for p in placements {
        let arg = match place(p) {
            Ok(a) => a,
            Err(e) => {
                r.check(&format!("place_{p:?}"), false, e);
                continue;
            }
        };
        for user in [ROOT, BOB, SAM, ALICE, CAROL] {
            let tag = format!("{}_{p:?}", user.name);
            let out = staprun(&user, &[arg]);
            if user.uid == CAROL.uid {
                let denied = out.code.is_none() && out.stderr.contains("Permission denied");
                r.check(&format!("{tag}_cannot_exec"), denied, out.summary());
                r.check(&format!("{tag}_not_loaded"), !util::is_loaded("pmod"), "");
                continue;
            }
            let allowed = user.uid == 0
                || user.uid == BOB.uid
                || matches!(p, Blessed | Dir775RootStapdevBobModule);
            if allowed {
                check_full_run(r, &format!("{tag}_allowed"), "pmod", &out);
            } else {
                let refused = out.code.is_some_and(|c| c != 0) && !out.stdout.contains(HELLO);
                r.check(&format!("{tag}_refused"), refused, out.summary());
                r.check(
                    &format!("{tag}_refused_not_loaded"),
                    !util::is_loaded("pmod"),
                    "",
                );
                force_unload("pmod");
            }
        }
    }
    let _ = fs::remove_dir_all("/tmp/x");
    let _ = place(Blessed);
}

pub fn unload_refusals(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    // A module that is not a SystemTap module, loaded by root.
    let plain = blessed_dir().join("plainmod.ko");
    let _ = install_fixture("plainmod", &plain, 0o644, 0, 0);
    let out = insmod_as(ROOT.creds(), &plain, &[]);
    if r.check("plainmod_loaded", out.code == Some(0), out.summary()) {
        for user in [ROOT, ALICE] {
            let out = staprun(&user, &["-d", "plainmod"]);
            r.check(
                &format!("{}_d_plainmod_refused", user.name),
                out.code.is_some_and(|c| c != 0),
                out.summary(),
            );
            r.check(
                &format!("{}_d_plainmod_still_loaded", user.name),
                util::is_loaded("plainmod"),
                "",
            );
        }
        let out = rmmod("plainmod");
        r.check("plainmod_rmmod", out.code == Some(0), out.summary());
    }

    // Another user's (detached) module.
    publish("pmod");
    let out = staprun(&BOB, &["-L", "pmod", "run_ms=200"]);
    if r.check(
        "bob_L_pmod",
        out.code == Some(0) && util::is_loaded("pmod"),
        out.summary(),
    ) {
        r.check_eq(
            "bob_cmd_owner",
            util::stat("/proc/systemtap/pmod/.cmd").map(|s| s.1),
            Some(BOB.uid),
        );
        for user in [ALICE, SAM] {
            let out = staprun(&user, &["-d", "pmod"]);
            r.check(
                &format!("{}_d_bobs_module_refused", user.name),
                out.code.is_some_and(|c| c != 0),
                out.summary(),
            );
            r.check(
                &format!("{}_d_bobs_module_still_loaded", user.name),
                util::is_loaded("pmod"),
                "",
            );
        }
        let out = staprun(&BOB, &["-d", "pmod"]);
        r.check(
            "bob_d_own_module",
            out.code == Some(0) && !util::is_loaded("pmod"),
            out.summary(),
        );
    }
    force_unload("pmod");

    // An attached module (live stapio).
    let Some(mut bg) = staprun_bg(&ALICE, &["pmod", "run_ms=100"]) else {
        r.check("attached_start", false, "spawn failed");
        return;
    };
    if r.check(
        "attached_running",
        bg.wait_stdout(HELLO, STARTUP),
        bg.stderr(),
    ) {
        for user in [ALICE, ROOT] {
            let out = staprun(&user, &["-d", "pmod"]);
            r.check(
                &format!("{}_d_attached_refused", user.name),
                out.code.is_some_and(|c| c != 0),
                out.summary(),
            );
            r.check(
                &format!("{}_d_attached_still_loaded", user.name),
                util::is_loaded("pmod"),
                "",
            );
        }
    }
    let sent = signal_stapio(r, "attached_stapio_pid", libc::SIGINT);
    let out = bg.wait(if sent { RUN } else { QUICK });
    check_full_run(r, "attached_sigint", "pmod", &out);
}

pub fn detach_attach(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let out = staprun(&ALICE, &["-L", "pmod", "run_ms=100"]);
    let all = format!("{}{}", out.stdout, out.stderr);
    r.check("L_exit0", out.code == Some(0), out.summary());
    r.check("L_reconnect_hint", all.contains("staprun -A pmod"), &all);
    r.check("L_module_stays_loaded", util::is_loaded("pmod"), "");
    r.check(
        "L_no_stapio_left",
        util::pids_named("stapio").is_empty(),
        "",
    );

    let out = staprun(&BOB, &["-A", "pmod"]);
    r.check(
        "bob_A_alices_module_refused",
        out.code.is_some_and(|c| c != 0),
        out.summary(),
    );

    let Some(mut bg) = staprun_bg(&ALICE, &["-A", "pmod"]) else {
        r.check("A_start", false, "spawn failed");
        force_unload("pmod");
        return;
    };
    r.check(
        "A_receives_ticks",
        bg.wait_stdout("pmod: tick", Duration::from_secs(20)),
        bg.stdout(),
    );
    let sent = signal_stapio(r, "A_stapio_pid", libc::SIGINT);
    let out = bg.wait(if sent { RUN } else { QUICK });
    r.check(
        "A_sigint_exit0_end",
        out.code == Some(0) && out.stdout.contains(END),
        out.summary(),
    );
    r.check("A_unloaded", !util::is_loaded("pmod"), "");
    force_unload("pmod");
}

pub fn signals(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    for (name, sig) in [
        ("SIGINT", libc::SIGINT),
        ("SIGTERM", libc::SIGTERM),
        ("SIGQUIT", libc::SIGQUIT),
    ] {
        let Some(mut bg) = staprun_bg(&ALICE, &["pmod", "run_ms=100"]) else {
            r.check(&format!("{name}_start"), false, "spawn failed");
            continue;
        };
        if !r.check(
            &format!("{name}_running"),
            bg.wait_stdout(HELLO, STARTUP),
            bg.stderr(),
        ) {
            let _ = bg.wait(Duration::from_secs(1));
            force_unload("pmod");
            continue;
        }
        let sent = signal_stapio(r, &format!("{name}_stapio_pid"), sig);
        let out = bg.wait(if sent { RUN } else { QUICK });
        if sig == libc::SIGQUIT {
            let all = format!("{}{}", out.stdout, out.stderr);
            r.check("SIGQUIT_detaches_exit0", out.code == Some(0), out.summary());
            r.check(
                "SIGQUIT_reconnect_hint",
                all.contains("staprun -A pmod"),
                &all,
            );
            r.check("SIGQUIT_module_stays_loaded", util::is_loaded("pmod"), "");
            let out = staprun(&ALICE, &["-d", "pmod"]);
            r.check(
                "SIGQUIT_then_d",
                out.code == Some(0) && !util::is_loaded("pmod"),
                out.summary(),
            );
            force_unload("pmod");
        } else {
            check_full_run(r, name, "pmod", &out);
        }
    }
}

pub fn second_load_exists(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let out = staprun(&ALICE, &["-L", "pmod", "run_ms=100"]);
    if r.check(
        "first_L_load",
        out.code == Some(0) && util::is_loaded("pmod"),
        out.summary(),
    ) {
        let out = staprun(&ALICE, &["pmod"]);
        r.check(
            "second_load_fails",
            out.code.is_some_and(|c| c != 0),
            out.summary(),
        );
        r.check(
            "second_load_says_file_exists",
            out.stderr.contains("File exists"),
            &out.stderr,
        );
        r.check(
            "second_load_suggests_R",
            out.stderr.contains("Rerun with staprun option '-R'"),
            &out.stderr,
        );
        r.check("first_still_loaded", util::is_loaded("pmod"), "");
        let out = staprun(&ALICE, &["-d", "pmod"]);
        r.check(
            "cleanup_d",
            out.code == Some(0) && !util::is_loaded("pmod"),
            out.summary(),
        );
    }
    force_unload("pmod");
}

pub fn stapio_sigkill_cleanup(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let Some(mut bg) = staprun_bg(&ALICE, &["pmod", "run_ms=100"]) else {
        r.check("start", false, "spawn failed");
        return;
    };
    r.check("running", bg.wait_stdout(HELLO, STARTUP), bg.stderr());
    let sent = signal_stapio(r, "stapio_pid", libc::SIGKILL);
    let out = bg.wait(if sent { RUN } else { QUICK });
    r.check_eq("killed_by_sigkill", out.signal, Some(libc::SIGKILL));
    r.check("module_left_loaded_after_kill", util::is_loaded("pmod"), "");
    // The kernel closes .cmd when the process dies; -d must now succeed.
    let out = staprun(&ALICE, &["-d", "pmod"]);
    r.check(
        "d_cleans_up",
        out.code == Some(0) && !util::is_loaded("pmod"),
        out.summary(),
    );
    r.check(
        "procfs_gone",
        !Path::new("/proc/systemtap/pmod").exists(),
        "",
    );
    force_unload("pmod");
}

pub fn privilege_drop(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    for user in [ALICE, BOB, SAM] {
        let tag = user.name;
        let Some(mut bg) = staprun_bg(&user, &["pmod", "run_ms=100"]) else {
            r.check(&format!("{tag}_start"), false, "spawn failed");
            continue;
        };
        let mut sent = false;
        if r.check(
            &format!("{tag}_running"),
            bg.wait_stdout(HELLO, STARTUP),
            bg.stderr(),
        ) {
            match stapio_pid() {
                Some(pid) => {
                    let st = util::proc_status(pid);
                    let get = |k: &str| {
                        st.iter()
                            .find(|(key, _)| key == k)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let ids = |v: String| {
                        v.split_whitespace()
                            .map(|s| s.parse::<u32>().unwrap_or(u32::MAX))
                            .collect::<Vec<_>>()
                    };
                    r.check_eq(
                        &format!("{tag}_stapio_uids"),
                        ids(get("Uid")),
                        vec![user.uid; 4],
                    );
                    r.check_eq(
                        &format!("{tag}_stapio_gids"),
                        ids(get("Gid")),
                        vec![user.gid; 4],
                    );
                    r.check_eq(
                        &format!("{tag}_stapio_capeff"),
                        get("CapEff"),
                        "0000000000000000".to_owned(),
                    );
                    r.check_eq(
                        &format!("{tag}_stapio_capprm"),
                        get("CapPrm"),
                        "0000000000000000".to_owned(),
                    );
                    sent = sys::kill(pid, libc::SIGINT).is_ok();
                }
                None => {
                    r.check(&format!("{tag}_stapio_pid"), false, "no stapio process");
                }
            }
        }
        let out = bg.wait(if sent { RUN } else { QUICK });
        check_full_run(r, &format!("{tag}_sigint"), "pmod", &out);
    }
}

const EVIL_LOG: &str = "/tmp/evil.log";

fn write_script(path: &str, body: &str) {
    let _ = fs::write(
        path,
        format!("#!/bin/sh\necho \"$(id -u) $0\" >> {EVIL_LOG}\n{body}\n"),
    );
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
    let _ = chown(path, Some(ALICE.uid), Some(ALICE.gid));
}

pub fn env_attacks(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let _ = fs::write(EVIL_LOG, "");
    let _ = fs::set_permissions(EVIL_LOG, fs::Permissions::from_mode(0o666));
    write_script("/tmp/evil", "exit 0");
    write_script("/tmp/evil-stapio", &format!("exec {STAPIO} \"$@\""));
    write_script("/tmp/evil-staprun", &format!("exec {STAPRUN} \"$@\""));
    let _ = fs::create_dir_all("/tmp/evilbin");
    let _ = chown("/tmp/evilbin", Some(ALICE.uid), Some(ALICE.gid));
    for tool in [
        "sh", "staprun", "stapio", "rmmod", "modprobe", "insmod", "id",
    ] {
        let real = match tool {
            "staprun" => STAPRUN.to_owned(),
            "stapio" => STAPIO.to_owned(),
            _ => format!("/bin/busybox {tool}"),
        };
        let body = if tool == "id" {
            "exec /bin/busybox id \"$@\"".to_owned()
        } else {
            format!("exec {real} \"$@\"")
        };
        // `id` itself is wrapped too, so the log line uses the real one.
        let script =
            format!("#!/bin/busybox sh\necho \"$(/bin/busybox id -u) $0\" >> {EVIL_LOG}\n{body}\n");
        let path = format!("/tmp/evilbin/{tool}");
        let _ = fs::write(&path, script);
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o755));
        let _ = chown(&path, Some(ALICE.uid), Some(ALICE.gid));
    }
    let _ = fs::write("/tmp/evil.so", b"not a library");
    let evil_path = "/tmp/evilbin:/usr/sbin:/usr/bin:/sbin:/bin";
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "SYSTEMTAP_STAPIO",
            &[("SYSTEMTAP_STAPIO", "/tmp/evil-stapio")],
        ),
        (
            "SYSTEMTAP_STAPRUN",
            &[("SYSTEMTAP_STAPRUN", "/tmp/evil-staprun")],
        ),
        (
            "SYSTEMTAP_RUNTIME",
            &[("SYSTEMTAP_RUNTIME", "/tmp/evilbin")],
        ),
        (
            "MODPROBE_OPTIONS",
            &[("MODPROBE_OPTIONS", "-C /tmp/evil.conf")],
        ),
        (
            "LD_PRELOAD",
            &[("LD_PRELOAD", "/tmp/evil.so"), ("LD_LIBRARY_PATH", "/tmp")],
        ),
        ("PATH", &[("PATH", evil_path)]),
        (
            "ENV_BASH_ENV_IFS",
            &[
                ("ENV", "/tmp/evil"),
                ("BASH_ENV", "/tmp/evil"),
                ("IFS", "/ \t\n"),
            ],
        ),
    ];
    for (name, env) in cases {
        let out = staprun_env(&ALICE, &["pmod"], env);
        check_full_run(r, &format!("env_{name}"), "pmod", &out);
        let log = fs::read_to_string(EVIL_LOG).unwrap_or_default();
        let root_lines: Vec<&str> = log.lines().filter(|l| l.starts_with("0 ")).collect();
        r.check(
            &format!("env_{name}_nothing_as_root"),
            root_lines.is_empty(),
            format!("evil.log: {log:?}"),
        );
    }
    let log = fs::read_to_string(EVIL_LOG).unwrap_or_default();
    r.log(&format!("evil.log after all cases:\n{log}"));
}

fn ordering(r: &mut Reporter, module: &str, records: usize) {
    publish(module);
    let recs = format!("records={records}");
    let out = staprun(&ALICE, &[module, &recs, "record_size=100"]);
    check_full_run(r, &format!("{module}_bulk_run"), module, &out);
    let mut seqs = Vec::new();
    let mut per_cpu: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    let mut malformed = 0;
    for l in out.stdout.lines().filter(|l| l.starts_with("cpu=")) {
        let mut cpu = None;
        let mut n = None;
        let mut seq = None;
        for w in l.split_whitespace() {
            if let Some(v) = w.strip_prefix("cpu=") {
                cpu = v.parse::<u32>().ok();
            } else if let Some(v) = w.strip_prefix("n=") {
                n = v.parse::<u32>().ok();
            } else if let Some(v) = w.strip_prefix("seq=") {
                seq = v.parse::<u32>().ok();
            }
        }
        match (cpu, n, seq, l.len()) {
            (Some(c), Some(n), Some(s), 99) => {
                seqs.push(s);
                per_cpu.entry(c).or_default().push(n);
            }
            _ => malformed += 1,
        }
    }
    let ncpu = crate::num_cpus();
    r.check_eq(&format!("{module}_no_malformed_lines"), malformed, 0);
    r.check_eq(
        &format!("{module}_record_count"),
        seqs.len(),
        records * ncpu,
    );
    let in_order = seqs.windows(2).all(|w| w[0] < w[1]);
    let first_bad = seqs.windows(2).position(|w| w[0] >= w[1]);
    r.check(
        &format!("{module}_global_sequence_order"),
        in_order,
        format!("first disorder at index {first_bad:?}"),
    );
    let want: Vec<u32> = (2..2 + u32::try_from(records * ncpu).unwrap_or(0)).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    r.check(
        &format!("{module}_each_record_once"),
        sorted == want,
        format!(
            "{} records, expected seq 2..={}",
            sorted.len(),
            want.len() + 1
        ),
    );
    let want_n: Vec<u32> = (0..u32::try_from(records).unwrap_or(0)).collect();
    let per_cpu_detail: Vec<String> = per_cpu
        .iter()
        .map(|(c, v)| {
            let bad = v.iter().zip(&want_n).position(|(a, b)| a != b);
            format!("cpu{c}: {} lines, first mismatch at {bad:?}", v.len())
        })
        .collect();
    let per_cpu_ok = per_cpu.len() == ncpu && per_cpu.values().all(|v| *v == want_n);
    r.check(
        &format!("{module}_per_cpu_complete_in_order"),
        per_cpu_ok,
        per_cpu_detail.join("; "),
    );
    if let Some(i) = first_bad {
        let lines: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("cpu="))
            .collect();
        let from = i.saturating_sub(3);
        let to = (i + 4).min(lines.len());
        r.log(&format!(
            "{module}: output around the first disorder (record lines {from}..{to}):"
        ));
        for l in &lines[from..to] {
            r.log(&l[..l.len().min(40)]);
        }
    }
    for l in out.stderr.lines().take(10) {
        r.log(&format!("[{module} stderr] {l}"));
    }
}

pub fn relay_ordering(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    ordering(r, "pmod", 3000);
    ordering(r, "pmod5", 1000);
}

/// Kept for scenario tables: every product scenario with its name.
pub const SCENARIOS: &[(&str, crate::scenarios::Scenario)] = &[
    ("demo", demo),
    ("alice_runs_pmod", alice_runs_pmod),
    ("alice_runs_pmod5", alice_runs_pmod5),
    ("permission_table", permission_table),
    ("unload_refusals", unload_refusals),
    ("detach_attach", detach_attach),
    ("signals", signals),
    ("second_load_exists", second_load_exists),
    ("stapio_sigkill_cleanup", stapio_sigkill_cleanup),
    ("privilege_drop", privilege_drop),
    ("env_attacks", env_attacks),
    ("relay_ordering", relay_ordering),
];
