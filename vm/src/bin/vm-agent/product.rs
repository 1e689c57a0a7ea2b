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

// ---------------------------------------------------------------------
// Output, target, rename, bulk, overrun, system/OOB and init failure.
// ---------------------------------------------------------------------

/// The loaded modules now, to compare with at the end of a scenario.
fn module_snapshot() -> Vec<String> {
    let mut v = util::loaded_modules();
    v.sort();
    v
}

/// Checks that no module beyond `before` is loaded (then unloads any).
fn check_no_new_modules(r: &mut Reporter, tag: &str, before: &[String]) -> bool {
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
fn no_script_output(stdout: &str) -> bool {
    !stdout.contains("pmod:") && record_lines(stdout) == 0
}

/// A fresh directory owned by `user`, mode 0755.
fn user_dir(path: &str, user: &User) -> String {
    let _ = fs::remove_dir_all(path);
    let _ = fs::create_dir_all(path);
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
    let _ = chown(path, Some(user.uid), Some(user.gid));
    path.to_owned()
}

/// File names in `dir`, sorted.
fn dir_names(dir: &str) -> Vec<String> {
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

fn read_text(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn wait_file_contains(path: &str, needle: &str, timeout: Duration) -> bool {
    util::wait_until(timeout, || read_text(path).contains(needle))
}

/// A root-owned 0755 shell script.
fn root_script(path: &str, body: &str) {
    let _ = fs::write(path, format!("#!/bin/sh\n{body}\n"));
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
    let _ = chown(path, Some(0), Some(0));
}

/// The `seq=` values of the record lines, in output order.
fn record_seqs(text: &str) -> Vec<u32> {
    text.lines()
        .filter(|l| l.starts_with("cpu="))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("seq="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

/// The numbers of the `pmod: tick N` lines, in output order.
fn ticks(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("pmod: tick ")?.trim().parse().ok())
        .collect()
}

fn consecutive(v: &[u32]) -> bool {
    v.windows(2).all(|w| w[1] == w[0] + 1)
}

/// The pid of the `pmod: target=PID` line.
fn target_line(stdout: &str) -> Option<u32> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("pmod: target=")?.trim().parse().ok())
}

/// A process has ended (gone, or a zombie nobody reaps: PID 1 adopts daemons).
fn process_ended(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn status_field(pid: u32, key: &str) -> String {
    util::proc_status(pid)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

pub fn output_options(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    publish("pmod");
    let ncpu = crate::num_cpus();

    // -o FILE: the output is in the file, owned by the user; stdout has none of it.
    let f = "/tmp/o1.out";
    let _ = fs::remove_file(f);
    let out = staprun(&ALICE, &["-o", f, "pmod"]);
    log_run(r, &format!("alice$ staprun -o {f} pmod"), &out);
    check_run_ended(r, "o", &out, 0);
    let text = read_text(f);
    r.check(
        "o_file_has_output",
        text.starts_with(HELLO)
            && text.trim_end().ends_with(END)
            && record_lines(&text) == 4 * ncpu,
        util::clip(&text),
    );
    r.check(
        "o_stdout_has_no_output",
        no_script_output(&out.stdout),
        out.summary(),
    );
    r.check_eq(
        "o_file_owner_alice",
        util::stat(f).map(|s| (s.1, s.2)),
        Some((ALICE.uid, ALICE.gid)),
    );

    // -o where the user may not write: an error, and the module is unloaded.
    let out = staprun(&ALICE, &["-o", "/root/forbidden.out", "pmod"]);
    check_run_ended(r, "o_forbidden", &out, 1);
    r.check(
        "o_forbidden_says_why",
        out.stderr.contains("/root/forbidden.out") && out.stderr.contains("Permission denied"),
        out.summary(),
    );

    // -o with a strftime(3) name, relative to the working directory (/tmp).
    let year = util::run_as(&ROOT, &["/bin/date", "+%Y"], &[])
        .stdout
        .trim()
        .to_owned();
    let dir = user_dir("/tmp/strf", &ALICE);
    let mut cmd = command_as(&ALICE, &[STAPRUN, "-o", "out-%Y.log", "pmod"], &[]);
    cmd.current_dir(&dir);
    let out = run(cmd, RUN);
    check_run_ended(r, "strftime", &out, 0);
    r.check_eq(
        "strftime_name_expanded",
        dir_names(&dir),
        vec![format!("out-{year}.log")],
    );
    r.check(
        "strftime_file_has_output",
        read_text(&format!("{dir}/out-{year}.log")).contains(END),
        "",
    );

    // -S 1,2: 1 MiB files F.0, F.1, ...; only the newest 2 kept.
    let dir = user_dir("/tmp/rot", &ALICE);
    let f = format!("{dir}/F");
    let (records, size) = (1600usize, 1024usize);
    let recs = format!("records={records}");
    let rsize = format!("record_size={size}");
    let out = staprun(&ALICE, &["-S", "1,2", "-o", &f, "pmod", &recs, &rsize]);
    check_run_ended(r, "S", &out, 0);
    r.check(
        "S_stdout_has_no_output",
        no_script_output(&out.stdout),
        out.summary(),
    );
    let names = dir_names(&dir);
    let nums: Vec<u32> = names
        .iter()
        .filter_map(|n| n.strip_prefix("F.")?.parse().ok())
        .collect();
    let total = (ncpu * records * size) as u64;
    let want_files = total.div_ceil(1 << 20) as u32;
    r.check(
        "S_keeps_newest_2",
        nums.len() == 2 && names.len() == 2 && nums[1] == nums[0] + 1 && nums[1] + 1 >= want_files,
        format!("files {names:?}, about {want_files} written"),
    );
    let mut kept = String::new();
    for (i, n) in nums.iter().enumerate() {
        let p = format!("{f}.{n}");
        let len = fs::metadata(&p).map_or(0, |m| m.len());
        let full = i + 1 < nums.len();
        let ok = len <= (1 << 20) + size as u64 && (!full || len > (1 << 20) - size as u64);
        r.check(
            &format!("S_file_{i}_size"),
            ok,
            format!("{p}: {len} bytes (limit 1 MiB, record {size})"),
        );
        r.check_eq(
            &format!("S_file_{i}_owner"),
            util::stat(&p).map(|s| s.1),
            Some(ALICE.uid),
        );
        kept.push_str(&read_text(&p));
    }
    let seqs = record_seqs(&kept);
    let last = u32::try_from(1 + ncpu * records).unwrap_or(0);
    r.check(
        "S_kept_files_are_the_tail",
        consecutive(&seqs) && seqs.last() == Some(&last) && kept.trim_end().ends_with(END),
        format!(
            "{} records, seq {:?}..{:?}, want ..{last} then the end line",
            seqs.len(),
            seqs.first(),
            seqs.last()
        ),
    );

    // SIGUSR2 without -S: F, then F.1.
    let dir = user_dir("/tmp/usr2", &ALICE);
    let f = format!("{dir}/F");
    match staprun_bg(&ALICE, &["-o", &f, "pmod", "run_ms=100"]) {
        None => {
            r.check("usr2_start", false, "spawn failed");
        }
        Some(bg) => {
            let running = wait_file_contains(&f, "pmod: tick 2\n", STARTUP);
            r.check("usr2_running", running, bg.stderr());
            let mut sent = false;
            if running && signal_stapio(r, "usr2_stapio_pid", libc::SIGUSR2) {
                let f1 = format!("{f}.1");
                r.check(
                    "usr2_switches_to_F1",
                    wait_file_contains(&f1, "pmod: tick", Duration::from_secs(20)),
                    format!("{:?}", dir_names(&dir)),
                );
                sent = signal_stapio(r, "usr2_stapio_pid_int", libc::SIGINT);
            }
            let out = bg.wait(if sent { RUN } else { QUICK });
            check_run_ended(r, "usr2", &out, 0);
            let (a, b) = (read_text(&f), read_text(&format!("{f}.1")));
            let (ta, tb) = (ticks(&a), ticks(&b));
            let mut all = ta.clone();
            all.extend(&tb);
            r.check_eq(
                "usr2_files",
                dir_names(&dir),
                vec!["F".into(), "F.1".into()],
            );
            r.check(
                "usr2_split_without_loss",
                a.starts_with(HELLO)
                    && !a.contains(END)
                    && b.trim_end().ends_with(END)
                    && !ta.is_empty()
                    && !tb.is_empty()
                    && all.first() == Some(&1)
                    && consecutive(&all),
                format!("F ticks {ta:?}, F.1 ticks {tb:?}"),
            );
        }
    }

    // -D -o F: prints the daemon's pid and returns; the run goes on and ends.
    // F is relative: it names a file in the caller's directory, not in the
    // daemon's (/).
    let dir = user_dir("/tmp/daemon", &ALICE);
    let f = format!("{dir}/F");
    let t0 = std::time::Instant::now();
    let mut cmd = command_as(
        &ALICE,
        &[
            STAPRUN,
            "-D",
            "-o",
            "F",
            "pmod",
            "run_ms=100",
            "exit_after_ms=2000",
        ],
        &[],
    );
    cmd.current_dir(&dir);
    let out = run(cmd, RUN);
    let returned = t0.elapsed();
    let still_loaded = util::is_loaded("pmod");
    log_run(
        r,
        &format!("alice:{dir}$ staprun -D -o F pmod run_ms=100 exit_after_ms=2000"),
        &out,
    );
    let pid = out.stdout.trim().parse::<u32>().ok();
    r.check(
        "D_prints_pid_exit0",
        out.code == Some(0) && pid.is_some() && out.stdout.lines().count() == 1,
        out.summary(),
    );
    r.check(
        "D_returns_while_running",
        still_loaded,
        format!("returned after {returned:?}"),
    );
    if let Some(pid) = pid {
        r.check(
            "D_daemon_is_alices_stapio",
            status_field(pid, "Name") == "stapio"
                && status_field(pid, "Uid").split_whitespace().next() == Some("1001"),
            format!("{:?}", util::proc_status(pid)),
        );
        r.check(
            "D_daemon_ends",
            util::wait_until(Duration::from_secs(40), || process_ended(pid)),
            format!("pid {pid}"),
        );
    }
    let text = read_text(&f);
    r.check(
        "D_output_in_file",
        text.starts_with(HELLO) && !ticks(&text).is_empty() && text.trim_end().ends_with(END),
        util::clip(&text),
    );
    r.check(
        "D_unloaded",
        util::wait_until(Duration::from_secs(10), || !util::is_loaded("pmod")),
        "",
    );
    check_no_new_modules(r, "end", &before);
}

/// Exit status as wanted and the module unloaded.
fn check_run_ended(r: &mut Reporter, tag: &str, out: &Out, code: i32) -> bool {
    let a = r.check(
        &format!("{tag}_exit{code}"),
        out.code == Some(code),
        out.summary(),
    );
    let b = r.check(
        &format!("{tag}_unloaded"),
        !util::is_loaded("pmod"),
        "pmod not in /proc/modules",
    );
    force_unload("pmod");
    a && b
}

pub fn target_options(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    publish("pmod");

    // -c "sleep 3": the module would run forever; stapio ends when the command does.
    match staprun_bg(&ALICE, &["-c", "sleep 3", "pmod", "run_ms=100"]) {
        None => {
            r.check("c_sleep_start", false, "spawn failed");
        }
        Some(mut bg) => {
            let t0 = std::time::Instant::now();
            let seen = bg.wait_stdout("pmod: target=", STARTUP);
            let target = target_line(&bg.stdout());
            r.check("c_sleep_target_line", seen && target.is_some(), bg.stdout());
            if let Some(pid) = target {
                let st = util::proc_status(pid);
                r.check(
                    "c_sleep_target_is_alices_sleep",
                    status_field(pid, "Name") == "sleep"
                        && status_field(pid, "Uid") == "1001\t1001\t1001\t1001",
                    format!("{st:?}"),
                );
            }
            let out = bg.wait(RUN);
            let took = t0.elapsed();
            log_run(r, "alice$ staprun -c 'sleep 3' pmod run_ms=100", &out);
            check_run_ended(r, "c_sleep", &out, 0);
            r.check(
                "c_sleep_output",
                out.stdout.starts_with(HELLO)
                    && !ticks(&out.stdout).is_empty()
                    && out.stdout.trim_end().ends_with(END)
                    && !out.stderr.contains("Child process"),
                out.summary(),
            );
            r.check(
                "c_sleep_ends_with_command",
                took >= Duration::from_millis(2500) && took < Duration::from_secs(20),
                format!("{took:?}"),
            );
        }
    }

    // -c SCRIPT: runs as alice, held until the begin probes ran, its pid is the target.
    let report = "/tmp/tgt.out";
    let _ = fs::remove_file(report);
    root_script(
        "/tmp/tgt.sh",
        &format!(
            "echo \"pid=$$ uid=$(id -u) gids=$(id -G) started=$(cat /sys/module/pmod/parameters/started)\" > {report}"
        ),
    );
    let out = staprun(
        &ALICE,
        &["-c", "/tmp/tgt.sh", "pmod", "run_ms=100", "begin_ms=1000"],
    );
    check_run_ended(r, "c_script", &out, 0);
    let got = read_text(report);
    let want = format!(
        "pid={} uid=1001 gids=1001 {STAPUSR} started=1",
        target_line(&out.stdout).unwrap_or(0)
    );
    r.check_eq("c_script_as_alice_after_start", got.trim(), want.as_str());

    // Begin probes that fail: the held command is killed, never run.
    let never = "/tmp/never.out";
    let _ = fs::remove_file(never);
    root_script("/tmp/never.sh", &format!("echo ran > {never}"));
    let out = staprun(&ALICE, &["-c", "/tmp/never.sh", "pmod", "start_res=1"]);
    check_run_ended(r, "c_start_fails", &out, 1);
    std::thread::sleep(Duration::from_millis(300));
    r.check(
        "c_start_fails_command_never_runs",
        !Path::new(never).exists(),
        format!("{never} exists: {}", Path::new(never).exists()),
    );

    // -c false: exit 1 with a warning.
    let out = staprun(&ALICE, &["-c", "false", "pmod", "run_ms=100"]);
    log_run(r, "alice$ staprun -c false pmod run_ms=100", &out);
    check_run_ended(r, "c_false", &out, 1);
    r.check(
        "c_false_warns",
        out.stderr.contains("Child process exited with status 1")
            && out.stdout.contains(HELLO)
            && out.stdout.contains(END),
        out.summary(),
    );

    // -x PID: the pid reaches the module (STP_START), the process is left alone.
    match command_as(&ALICE, &["/bin/sleep", "30"], &[]).spawn() {
        Err(e) => {
            r.check("x_spawn_sleep", false, e.to_string());
        }
        Ok(mut child) => {
            let pid = child.id();
            let out = staprun(&ALICE, &["-x", &pid.to_string(), "pmod"]);
            check_run_ended(r, "x", &out, 0);
            r.check(
                "x_target_reaches_module",
                target_line(&out.stdout) == Some(pid) && out.stdout.contains(END),
                out.summary(),
            );
            r.check(
                "x_target_left_running",
                matches!(child.try_wait(), Ok(None)),
                "",
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    check_no_new_modules(r, "end", &before);
}

/// A copy of a module image whose name (in `.gnu.linkonce.this_module`)
/// is `new` instead of `old`; `new` may not be longer.
fn renamed_image(image: &[u8], old: &str, new: &str) -> Result<Vec<u8>, String> {
    let num = |o: usize, n: usize| -> Result<u64, String> {
        let b = image.get(o..o + n).ok_or("truncated ELF")?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    };
    let idx = |v: u64| usize::try_from(v).map_err(|e| e.to_string());
    if image.get(0..5) != Some(b"\x7fELF\x02") || image.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    let shoff = idx(num(0x28, 8)?)?;
    let shentsize = idx(num(0x3a, 2)?)?;
    let shnum = idx(num(0x3c, 2)?)?;
    let shstrndx = idx(num(0x3e, 2)?)?;
    let section = |i: usize| -> Result<(usize, usize, usize), String> {
        let h = shoff + i * shentsize;
        Ok((
            idx(num(h, 4)?)?,
            idx(num(h + 0x18, 8)?)?,
            idx(num(h + 0x20, 8)?)?,
        ))
    };
    let (_, stroff, _) = section(shstrndx)?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let name_at = stroff + name;
        let name_end = image[name_at..]
            .iter()
            .position(|b| *b == 0)
            .ok_or("unterminated section name")?;
        if &image[name_at..name_at + name_end] != b".gnu.linkonce.this_module" {
            continue;
        }
        let sec = image.get(off..off + size).ok_or("section out of file")?;
        let mut pat = old.as_bytes().to_vec();
        pat.push(0);
        let at = sec
            .windows(pat.len())
            .position(|w| w == pat.as_slice())
            .ok_or_else(|| format!("no name {old:?} in .gnu.linkonce.this_module"))?;
        if new.len() > old.len() {
            return Err("new name longer than the old one".into());
        }
        let mut v = image.to_vec();
        let dst = &mut v[off + at..off + at + old.len()];
        dst.fill(0);
        dst[..new.len()].copy_from_slice(new.as_bytes());
        return Ok(v);
    }
    Err("no .gnu.linkonce.this_module section".into())
}

pub fn rename_concurrent(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();

    // A name too short to rename: warning, loaded and run under its own name.
    let ab = blessed_dir().join("ab.ko");
    let made = fs::read(Path::new(crate::scenarios::FIXTURES).join("pmod.ko"))
        .map_err(|e| e.to_string())
        .and_then(|img| renamed_image(&img, "pmod", "ab"))
        .and_then(|img| fs::write(&ab, img).map_err(|e| e.to_string()));
    if r.check("R_short_module_built", made.is_ok(), format!("{made:?}")) {
        let out = staprun(&ALICE, &["-R", "ab"]);
        log_run(r, "alice$ staprun -R ab", &out);
        r.check(
            "R_short_warns_and_runs",
            out.code == Some(0)
                && out
                    .stderr
                    .contains("Old module name 'ab' is too short for renaming, ignoring -R.")
                && out.stdout.starts_with(HELLO)
                && out.stdout.trim_end().ends_with(END),
            out.summary(),
        );
        r.check("R_short_unloaded", !util::is_loaded("ab"), "");
    }
    let _ = fs::remove_file(&ab);

    // Two at once. The short-name run above left /proc/systemtap behind:
    // every fixture creates it when missing without a lock (as the real
    // runtime does), so two first loads racing would both create it and
    // the kernel warns "proc_dir_entry '/proc/systemtap' already registered".
    r.check(
        "R_proc_systemtap_exists",
        Path::new("/proc/systemtap").is_dir(),
        "",
    );
    publish("fixture_a");
    let args = ["-R", "fixture_a", "run_ms=100"];
    let (Some(mut a), Some(mut b)) = (staprun_bg(&ALICE, &args), staprun_bg(&ALICE, &args)) else {
        r.check("R_start", false, "spawn failed");
        return;
    };
    let up = a.wait_stdout(HELLO, STARTUP) & b.wait_stdout(HELLO, STARTUP);
    r.check(
        "R_both_running",
        up,
        format!("{} | {}", a.stderr(), b.stderr()),
    );
    let renamed: Vec<String> = module_snapshot()
        .into_iter()
        .filter(|m| !before.contains(m))
        .collect();
    r.check(
        "R_two_distinct_renamed_modules",
        renamed.len() == 2 && !renamed.iter().any(|m| m == "fixture_a"),
        format!("new in /proc/modules: {renamed:?}"),
    );
    for m in &renamed {
        r.check(
            &format!("R_{m}_has_its_procfs_dir"),
            Path::new(&format!("/proc/systemtap/{m}/.cmd")).exists(),
            "",
        );
    }
    let mut pids = Vec::new();
    util::wait_until(Duration::from_secs(5), || {
        pids = util::pids_named("stapio");
        pids.len() >= 2
    });
    r.check_eq("R_two_stapio", pids.len(), 2);
    let sent = pids.iter().all(|p| sys::kill(*p, libc::SIGINT).is_ok());
    let wait = if sent && up { RUN } else { QUICK };
    for (tag, out) in [("R_first", a.wait(wait)), ("R_second", b.wait(wait))] {
        log_run(
            r,
            "alice$ staprun -R fixture_a run_ms=100 (two at once)",
            &out,
        );
        r.check(
            &format!("{tag}_exit0_output"),
            out.code == Some(0)
                && out.stdout.starts_with(HELLO)
                && out.stdout.trim_end().ends_with(END)
                && !out.stderr.contains("too short"),
            out.summary(),
        );
    }
    let left: Vec<&String> = renamed.iter().filter(|m| util::is_loaded(m)).collect();
    r.check("R_both_unloaded", left.is_empty(), format!("{left:?}"));

    check_no_new_modules(r, "end", &before);
}

/// Bulk files of one run: every record exactly once across them, each
/// file in sequence order, each CPU's record lines in its own file.
fn check_bulk_files(
    r: &mut Reporter,
    tag: &str,
    files: &[String],
    generation: crate::proto::Gen,
    records: usize,
) {
    let mut all = Vec::new();
    for (cpu, p) in files.iter().enumerate() {
        let bytes = fs::read(p).unwrap_or_default();
        match crate::proto::parse_records(cpu, &bytes, generation) {
            Ok(recs) => {
                let seqs: Vec<u32> = recs.iter().map(|x| x.seq).collect();
                r.check(
                    &format!("{tag}_{cpu}_in_order"),
                    seqs.windows(2).all(|w| w[0] < w[1]),
                    format!("{p}: {} records", recs.len()),
                );
                let own = format!("cpu={cpu} ");
                let foreign = recs
                    .iter()
                    .filter(|x| x.data.starts_with(b"cpu=") && !x.data.starts_with(own.as_bytes()))
                    .count();
                r.check_eq(&format!("{tag}_{cpu}_only_its_cpu"), foreign, 0);
                r.check_eq(
                    &format!("{tag}_{cpu}_owner"),
                    util::stat(p).map(|s| s.1),
                    Some(ALICE.uid),
                );
                all.extend(recs);
            }
            Err(e) => {
                r.check(&format!("{tag}_{cpu}_framing"), false, format!("{p}: {e}"));
            }
        }
    }
    all.sort_by_key(|x| x.seq);
    let seqs: Vec<u32> = all.iter().map(|x| x.seq).collect();
    let n = u32::try_from(2 + records * files.len()).unwrap_or(0);
    r.check(
        &format!("{tag}_merge_every_record_once"),
        seqs == (1..=n).collect::<Vec<u32>>(),
        format!("{} records, want seq 1..={n}", seqs.len()),
    );
    let text = |i: usize| {
        all.get(i)
            .map(|x| String::from_utf8_lossy(&x.data).into_owned())
    };
    r.check(
        &format!("{tag}_begin_and_end"),
        text(0).as_deref() == Some("pmod: hello from begin\n")
            && all.last().map(|x| x.data.as_slice()) == Some(&b"pmod: end\n"[..]),
        format!(
            "{:?} .. {:?}",
            text(0),
            all.last()
                .map(|x| String::from_utf8_lossy(&x.data).into_owned())
        ),
    );
}

pub fn bulk_mode(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    let ncpu = crate::num_cpus();
    let records = 500;
    let recs = format!("records={records}");

    // 4.x module, -o F: F_0, F_1, ...
    publish("pmod");
    let dir = user_dir("/tmp/bulk", &ALICE);
    let f = format!("{dir}/F");
    let out = staprun(
        &ALICE,
        &["-o", &f, "pmod", "bulk=1", &recs, "record_size=100"],
    );
    log_run(
        r,
        &format!("alice$ staprun -o {f} pmod bulk=1 {recs} record_size=100"),
        &out,
    );
    check_run_ended(r, "bulk_o", &out, 0);
    r.check(
        "bulk_o_stdout_has_no_output",
        no_script_output(&out.stdout),
        out.summary(),
    );
    let want: Vec<String> = (0..ncpu).map(|c| format!("F_{c}")).collect();
    r.check_eq("bulk_o_files", dir_names(&dir), want.clone());
    let files: Vec<String> = want.iter().map(|n| format!("{dir}/{n}")).collect();
    check_bulk_files(r, "bulk_o", &files, crate::proto::Gen::V4, records);

    // Bulk with -S 1,2: F_cpu<N>.0, .1, ... per CPU, the newest 2 kept.
    let dir = user_dir("/tmp/bulkS", &ALICE);
    let f = format!("{dir}/F");
    let out = staprun(
        &ALICE,
        &[
            "-S",
            "1,2",
            "-o",
            &f,
            "pmod",
            "bulk=1",
            "records=2600",
            "record_size=1024",
        ],
    );
    check_run_ended(r, "bulk_S", &out, 0);
    let names = dir_names(&dir);
    for cpu in 0..ncpu {
        let prefix = format!("F_cpu{cpu}.");
        let nums: Vec<u32> = names
            .iter()
            .filter_map(|n| n.strip_prefix(&prefix)?.parse().ok())
            .collect();
        let sizes: Vec<u64> = nums
            .iter()
            .map(|n| fs::metadata(format!("{f}_cpu{cpu}.{n}")).map_or(0, |m| m.len()))
            .collect();
        r.check(
            &format!("bulk_S_cpu{cpu}_rotated_keeps_2"),
            nums.len() == 2
                && nums[1] == nums[0] + 1
                && nums[1] >= 2
                && sizes.iter().all(|s| *s <= (1 << 20) + 1024 + 8),
            format!("files {names:?}, sizes {sizes:?}"),
        );
    }
    r.check_eq(
        "bulk_S_only_numbered_files",
        names.iter().filter(|n| !n.starts_with("F_cpu")).count(),
        0,
    );

    // 5.x module, no -o: stpd_cpu<N> in the working directory.
    publish("pmod5");
    let dir = user_dir("/tmp/bulk5", &ALICE);
    let mut cmd = command_as(
        &ALICE,
        &[STAPRUN, "pmod5", "bulk=1", &recs, "record_size=100"],
        &[],
    );
    cmd.current_dir(&dir);
    let out = run(cmd, RUN);
    r.check("bulk5_exit0", out.code == Some(0), out.summary());
    r.check("bulk5_unloaded", !util::is_loaded("pmod5"), "");
    force_unload("pmod5");
    r.check(
        "bulk5_stdout_has_no_output",
        no_script_output(&out.stdout),
        out.summary(),
    );
    let want: Vec<String> = (0..ncpu).map(|c| format!("stpd_cpu{c}")).collect();
    r.check_eq("bulk5_files", dir_names(&dir), want.clone());
    let files: Vec<String> = want.iter().map(|n| format!("{dir}/{n}")).collect();
    check_bulk_files(r, "bulk5", &files, crate::proto::Gen::V5, records);
    check_no_new_modules(r, "end", &before);
}

pub fn overrun(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    publish("pmod");
    let ncpu = crate::num_cpus();
    let records = 10_000usize;
    let recs = format!("records={records}");
    // A 1 MiB relay buffer per CPU, 20 MiB per CPU written at full speed,
    // and a reader whose output (a pipe nobody reads for a while) blocks.
    let mut cmd = command_as(
        &ALICE,
        &[STAPRUN, "-b", "1", "pmod", &recs, "record_size=2048"],
        &[],
    );
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            r.check("overrun_spawn", false, e.to_string());
            return;
        }
    };
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
            s
        })
    });
    std::thread::sleep(Duration::from_secs(5));
    let stdout = child.stdout.take().map(|mut o| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut o, &mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    });
    let ended = util::wait_until(Duration::from_secs(120), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
    }
    let status = child.wait().ok();
    let out = Out {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
        timed_out: !ended,
        stdout: stdout.and_then(|h| h.join().ok()).unwrap_or_default(),
        stderr: stderr.and_then(|h| h.join().ok()).unwrap_or_default(),
    };
    for l in out.stderr.lines() {
        r.log(&format!("[overrun stderr] {l}"));
    }
    r.log(&format!(
        "[overrun exit code {:?} signal {:?}]",
        out.code, out.signal
    ));
    // The product ends a lossy run normally: exit 0, with the warning.
    check_run_ended(r, "overrun", &out, 0);
    let warning = out
        .stderr
        .lines()
        .find(|l| l.starts_with("WARNING:") && l.contains("lost messages"))
        .map(str::to_owned);
    r.check("overrun_loss_warning", warning.is_some(), out.summary());
    let seqs = record_seqs(&out.stdout);
    let with_end = out.stdout.trim_end().ends_with(END);
    let delivered = seqs.len() as u64 + 1 + u64::from(with_end);
    let total = (2 + records * ncpu) as u64;
    let max_seq = if with_end {
        total
    } else {
        u64::from(seqs.iter().copied().max().unwrap_or(1))
    };
    r.check(
        "overrun_output_in_order_and_lossy",
        out.stdout.starts_with(HELLO) && seqs.windows(2).all(|w| w[0] < w[1]) && delivered < total,
        format!("{delivered} of {total} records delivered, end line {with_end}"),
    );
    // "There were N lost messages, ...": N counts the gaps in what was delivered.
    let lost = warning.as_deref().and_then(|w| {
        w.split_whitespace()
            .skip_while(|x| *x != "were")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
    });
    r.check(
        "overrun_lost_count_matches_gaps",
        lost == Some(max_seq - delivered),
        format!(
            "warning {warning:?}; delivered {delivered}, highest seq {max_seq}, gaps {}",
            max_seq - delivered
        ),
    );
    check_no_new_modules(r, "end", &before);
}

pub fn system_and_oob(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    publish("pmod");

    // system(): runs as the user, with the user's groups and no capabilities.
    let report = "/tmp/sys.out";
    let _ = fs::remove_file(report);
    root_script(
        "/tmp/sys.sh",
        &format!(
            "{{ id -u; id -G; grep -E '^Cap(Eff|Prm):' /proc/self/status; }} > {report}.tmp && mv {report}.tmp {report}"
        ),
    );
    let out = staprun(&ALICE, &["pmod", "system_cmd=/tmp/sys.sh"]);
    log_run(r, "alice$ staprun pmod system_cmd=/tmp/sys.sh", &out);
    check_run_ended(r, "system", &out, 0);
    r.check(
        "system_output",
        out.stdout.starts_with(HELLO) && out.stdout.trim_end().ends_with(END),
        out.summary(),
    );
    let done = util::wait_until(Duration::from_secs(10), || Path::new(report).exists());
    let text = read_text(report);
    r.check("system_ran", done, &text);
    let lines: Vec<&str> = text.lines().collect();
    r.check_eq("system_uid", lines.first().copied(), Some("1001"));
    let mut groups: Vec<u32> = lines
        .get(1)
        .map(|l| {
            l.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    groups.sort_unstable();
    let mut want = vec![ALICE.gid];
    want.extend(ALICE.groups);
    want.sort_unstable();
    r.check_eq("system_groups_exactly_alices", groups, want);
    let mut caps: Vec<&str> = lines.iter().skip(2).copied().collect();
    caps.sort_unstable();
    r.check_eq(
        "system_no_capabilities",
        caps,
        vec!["CapEff:\t0000000000000000", "CapPrm:\t0000000000000000"],
    );

    // WARNING: shown once (de-duplicated), all with -v, none with -w.
    let count = |s: &str| s.matches("WARNING: pmod warning").count();
    for (tag, extra, want) in [
        ("warn", None, 1),
        ("warn_v", Some("-v"), 3),
        ("warn_w", Some("-w"), 0),
    ] {
        let mut args: Vec<&str> = extra.into_iter().collect();
        args.extend(["pmod", "oob_warn=3"]);
        let out = staprun(&ALICE, &args);
        check_run_ended(r, tag, &out, 0);
        r.check(
            &format!("{tag}_printed_{want}"),
            count(&out.stderr) == want && out.stdout.contains(END),
            out.summary(),
        );
    }

    // ERROR: printed, exit 1.
    let out = staprun(&ALICE, &["pmod", "oob_error=1"]);
    log_run(r, "alice$ staprun pmod oob_error=1", &out);
    check_run_ended(r, "error", &out, 1);
    r.check(
        "error_printed",
        out.stderr.contains("ERROR: pmod error") && out.stdout.contains(END),
        out.summary(),
    );
    check_no_new_modules(r, "end", &before);
}

pub fn init_failure(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    publish("pmod");
    let out = staprun(&ALICE, &["pmod", "init_errno=12"]);
    log_run(r, "alice$ staprun pmod init_errno=12", &out);
    r.check(
        "init_enomem_fails",
        out.code.is_some_and(|c| c != 0)
            && out.stderr.contains("Couldn't insert module")
            && out.stderr.contains("Cannot allocate memory")
            && !out.stdout.contains(HELLO),
        out.summary(),
    );
    r.check("init_enomem_not_loaded", !util::is_loaded("pmod"), "");
    r.check(
        "init_enomem_no_procfs",
        !Path::new("/proc/systemtap/pmod").exists(),
        "",
    );
    r.check(
        "init_enomem_no_stapio",
        util::pids_named("stapio").is_empty(),
        "",
    );
    check_no_new_modules(r, "end", &before);
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
    ("output_options", output_options),
    ("target_options", target_options),
    ("rename_concurrent", rename_concurrent),
    ("bulk_mode", bulk_mode),
    ("overrun", overrun),
    ("system_and_oob", system_and_oob),
    ("init_failure", init_failure),
];
