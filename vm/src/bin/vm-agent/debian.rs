//! Scenarios of the Debian guest (`cargo xtask debian-test`, docs/debian.md): a bookworm system
//! booted with systemd as PID 1, where `vmtest.service` runs `vm-agent --debian` from a second
//! (read-only) disk. Each boot installs our .deb from it with apt next to Debian's `systemtap`, then
//! runs one scenario as real users (`runuser -l`), and powers off.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::{self, Out, Reporter};

type Scenario = fn(&mut Reporter);

const SCENARIOS: &[(&str, Scenario)] = &[
    ("debian_install", install),
    ("debian_stap", stap),
    ("debian_stap_options", stap_options),
    ("debian_service", service),
    ("debian_service_enable", service_enable),
    ("debian_service_after_reboot", service_after_reboot),
];

const SHARE: &str = "/mnt/vmtest";
const OURS: &str = "/usr/bin/staprun";
const C_STAPRUN: &str = "/usr/bin/staprun.systemtap";
const HELLO: &str = "probe begin { println(\"hello\") exit() }";
/// A stap run that compiles under TCG takes minutes; one that finds its module in the cache
/// takes seconds.
const STAP_TIMEOUT: Duration = Duration::from_secs(900);

/// `vm-agent --debian`: one scenario, then power off. Never returns.
pub fn main() -> ! {
    let mut r = Reporter::open();
    let name = crate::scenario_name();
    r.line(&format!("BEGIN {name}"));
    r.log(&format!(
        "kernel {} | {}",
        crate::sys::kernel_release(),
        first_line(&root(&["systemctl", "--version"]).stdout)
    ));
    match SCENARIOS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => {
            if install_ours(&mut r) {
                f(&mut r);
            }
            // An enabled unit keeps its module loaded into the shutdown (that is the
            // point of the reboot scenario); everything else must leave nothing.
            if name != "debian_service_enable" {
                let left = stap_modules();
                r.check(
                    "no_module_left_loaded",
                    left.is_empty(),
                    format!("{left:?}"),
                );
            }
        }
        None => {
            r.check(
                "scenario_exists",
                false,
                format!("unknown scenario {name:?}"),
            );
        }
    }
    let pass = r.failures == 0 && r.checks > 0;
    r.line(&format!("END {}", if pass { "PASS" } else { "FAIL" }));
    let _ = Command::new("systemctl")
        .args(["poweroff", "--no-block"])
        .status();
    std::thread::sleep(Duration::from_secs(120));
    let e = crate::sys::power_off();
    eprintln!("vm-agent: power off failed: {e}");
    std::process::exit(1)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

fn root(argv: &[&str]) -> Out {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]).env("DEBIAN_FRONTEND", "noninteractive");
    util::run(c, Duration::from_secs(300))
}

/// `runuser -l USER -c SCRIPT`: a login shell of USER, as a person would get.
fn as_user(user: &str, script: &str, timeout: Duration) -> Out {
    let mut c = Command::new("runuser");
    c.args(["-l", user, "-c", script]);
    util::run(c, timeout)
}

fn log_out(r: &mut Reporter, prompt: &str, out: &Out) {
    r.log(&format!(
        "{prompt} -> exit {:?}{}",
        out.code,
        if out.timed_out { " (timed out)" } else { "" }
    ));
    for l in out.stdout.lines().take(12) {
        r.log(&format!("  | {l}"));
    }
    for l in out.stderr.lines().take(12) {
        r.log(&format!("  ! {l}"));
    }
}

/// Loaded modules that a SystemTap run leaves (stap_* and the fixtures).
fn stap_modules() -> Vec<String> {
    util::loaded_modules()
        .into_iter()
        .filter(|m| m.starts_with("stap_") || m == "pmod")
        .collect()
}

/// Our staprun's journal lines (identifier staprun, written by /usr/bin/staprun).
fn our_journal() -> Vec<String> {
    let out = root(&[
        "journalctl",
        "--no-pager",
        "-o",
        "cat",
        "SYSLOG_IDENTIFIER=staprun",
        "_UID=0",
    ]);
    out.stdout.lines().map(str::to_owned).collect()
}

fn install_ours(r: &mut Reporter) -> bool {
    let deb = format!("{SHARE}/staprun-rs.deb");
    let out = root(&["apt-get", "install", "-y", "-q", &deb]);
    log_out(r, &format!("# apt-get install {deb}"), &out);
    r.check("apt_installs_ours", out.code == Some(0), out.summary())
}

fn dpkg_status(pkg: &str) -> String {
    root(&["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", pkg])
        .stdout
        .trim()
        .to_owned()
}

fn install(r: &mut Reporter) {
    for pkg in ["staprun-rs", "systemtap", "systemtap-runtime"] {
        r.check_eq(
            &format!("{pkg}_installed"),
            dpkg_status(pkg),
            "ii".to_owned(),
        );
    }
    r.check_eq(
        "ours_04110_root_stapusr",
        util::stat(OURS).map(|(m, u, _)| (m, u)),
        Some((0o4110, 0)),
    );
    let c = util::stat(C_STAPRUN);
    r.log(&format!("C staprun at {C_STAPRUN}: {c:?}"));
    r.check("c_staprun_kept", c.is_some(), format!("{c:?}"));
    let v = root(&[OURS, "-V"]);
    r.check(
        "usr_bin_staprun_is_ours",
        v.stdout.contains("for SystemTap 4.x and 5.x modules"),
        v.summary(),
    );
    let div = root(&["dpkg-divert", "--list", "/usr/bin/staprun"]);
    r.check(
        "diverted_by_staprun_rs",
        div.stdout.contains("by staprun-rs"),
        div.summary(),
    );
    // An administrator publishes a module; a stapusr member runs it by name.
    let blessed = format!("/lib/modules/{}/systemtap", crate::sys::kernel_release());
    let _ = std::fs::create_dir_all(&blessed);
    let copy = std::fs::copy(format!("{SHARE}/pmod.ko"), format!("{blessed}/pmod.ko"));
    r.check("published_pmod", copy.is_ok(), format!("{copy:?}"));
    let before = our_journal().len();
    let out = as_user("alice", "staprun pmod", Duration::from_secs(120));
    log_out(r, "alice$ staprun pmod", &out);
    r.check(
        "stapusr_runs_published_module",
        out.code == Some(0) && out.stdout.contains("pmod: hello from begin"),
        out.summary(),
    );
    let lines: Vec<String> = our_journal().into_iter().skip(before).collect();
    r.log(&format!("journal: {lines:?}"));
    for tag in ["LOADING", "LOAD", "UNLOAD"] {
        r.check(
            &format!("journal_{}", tag.to_lowercase()),
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{tag} ")) && l.contains("user=\"alice\"")),
            format!("{lines:?}"),
        );
    }
    let _ = std::fs::remove_file(format!("{blessed}/pmod.ko"));
    let _ = Path::new(&blessed);
}

fn stap(r: &mut Reporter) {
    let before = our_journal().len();
    let script = format!("stap -v -e '{HELLO}'");
    let out = as_user("bob", &script, STAP_TIMEOUT);
    log_out(r, &format!("bob$ {script}"), &out);
    let cached = out.stderr.contains("Pass 4: using cached");
    r.log(&format!(
        "stap {} its module",
        if cached {
            "found in its cache"
        } else {
            "compiled"
        }
    ));
    r.check(
        "stapdev_stap_hello_runs",
        out.code == Some(0) && out.stdout.lines().any(|l| l == "hello"),
        out.summary(),
    );
    let lines: Vec<String> = our_journal().into_iter().skip(before).collect();
    r.log(&format!("journal: {lines:?}"));
    for tag in ["LOADING", "LOAD", "UNLOAD"] {
        r.check(
            &format!("through_our_staprun_{}", tag.to_lowercase()),
            lines.iter().any(|l| {
                l.starts_with(&format!("{tag} "))
                    && l.contains("user=\"bob\"")
                    && l.contains("module=stap_")
            }),
            format!("{lines:?}"),
        );
    }
    // The same through the C staprun, for comparison.
    let before = our_journal().len();
    let c = format!("SYSTEMTAP_STAPRUN={C_STAPRUN} stap -v -e '{HELLO}'");
    let out = as_user("bob", &c, STAP_TIMEOUT);
    log_out(r, &format!("bob$ {c}"), &out);
    r.check(
        "c_staprun_hello_runs",
        out.code == Some(0) && out.stdout.lines().any(|l| l == "hello"),
        out.summary(),
    );
    // The C stapio unloads with /usr/bin/staprun -d, which is ours now (the diversion):
    // only an UNLOAD line of ours, no load.
    let lines: Vec<String> = our_journal().into_iter().skip(before).collect();
    r.check(
        "c_run_loaded_by_c_staprun",
        !lines.iter().any(|l| l.starts_with("LOAD")),
        format!("{lines:?}"),
    );
    // A stapusr-only member running stap: the same refusal with either staprun.
    let ours = as_user("alice", &format!("stap -e '{HELLO}'"), STAP_TIMEOUT);
    log_out(r, "alice$ stap -e ...", &ours);
    let theirs = as_user(
        "alice",
        &format!("SYSTEMTAP_STAPRUN={C_STAPRUN} stap -e '{HELLO}'"),
        STAP_TIMEOUT,
    );
    log_out(r, "alice$ SYSTEMTAP_STAPRUN=C stap -e ...", &theirs);
    r.check(
        "stapusr_stap_refused_alike",
        ours.code.is_some_and(|c| c != 0)
            && ours.code == theirs.code
            && first_line(&ours.stderr) == first_line(&theirs.stderr),
        format!("ours: {} | C: {}", ours.summary(), theirs.summary()),
    );
}

/// What one stap run did, in the terms compared between the two stapruns.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    exit: Option<i32>,
    /// stdout lines, without the ones that differ by nature (pids, module names).
    stdout: Vec<String>,
    /// The output files' contents (-o, -S), sorted by name.
    files: Vec<String>,
    /// stderr's ERROR/WARNING lines, with module names removed.
    tagged: Vec<String>,
    /// A module was still loaded when stap returned (-F).
    left_loaded: bool,
}

const SHIM_LOG: &str = "/tmp/staprun-argv.log";

fn shim(path: &str, target: &str) -> std::io::Result<()> {
    std::fs::write(
        path,
        format!("#!/bin/sh\necho \"$*\" >> {SHIM_LOG}\nexec {target} \"$@\"\n"),
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

fn output_files() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir("/tmp")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("stap-"))
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn clear_outputs() {
    for (name, _) in output_files() {
        let _ = std::fs::remove_file(format!("/tmp/{name}"));
    }
    let _ = std::fs::remove_file(SHIM_LOG);
}

/// Ends what a run left: a daemon (-F -o prints its pid) is sent SIGTERM, a detached module
/// (-F) is unloaded with `staprun -d` as bob; both wait until nothing is loaded.
fn clean_up(r: &mut Reporter, stdout: &str) {
    if let Some(pid) = stdout.lines().find_map(|l| l.trim().parse::<u32>().ok()) {
        let out = as_user("bob", &format!("kill -TERM {pid}"), Duration::from_secs(10));
        r.log(&format!("  kill -TERM {pid} -> {:?}", out.code));
    }
    util::wait_until(Duration::from_secs(20), || stap_modules().is_empty());
    for m in stap_modules() {
        let out = as_user("bob", &format!("staprun -d {m}"), Duration::from_secs(30));
        r.log(&format!("  bob$ staprun -d {m} -> {:?}", out.code));
    }
}

fn run_once(r: &mut Reporter, run: &vm::StapRun, shim_path: &str) -> (Outcome, String, bool) {
    clear_outputs();
    let cmd = format!("SYSTEMTAP_STAPRUN={shim_path} {}", vm::stap_command(run));
    let out = as_user("bob", &format!("cd /tmp && {cmd}"), STAP_TIMEOUT);
    log_out(r, &format!("bob$ {cmd}"), &out);
    // The daemon writes its file while it runs: let it tick, then end it.
    if run.args.contains("-F") {
        std::thread::sleep(Duration::from_secs(2));
    }
    let left_loaded = !stap_modules().is_empty();
    let argv = std::fs::read_to_string(SHIM_LOG).unwrap_or_default();
    clean_up(r, &out.stdout);
    let files = output_files()
        .into_iter()
        .map(|(n, c)| {
            let ticks = c.lines().filter(|l| *l == "tick").count();
            if ticks > 0 {
                format!("{n}: ticks")
            } else {
                format!("{n}: {}", c.trim_end())
            }
        })
        .collect();
    let cached = !out.stderr.contains("Pass 4: compil") || out.stderr.contains("using cached");
    let mod_name = |l: &str| {
        l.split_whitespace()
            .map(|w| if w.contains("stap_") { "MODULE" } else { w })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let outcome = Outcome {
        exit: out.code,
        stdout: out
            .stdout
            .lines()
            .filter(|l| l.trim().parse::<u32>().is_err())
            .map(mod_name)
            .collect(),
        files,
        tagged: out
            .stderr
            .lines()
            .filter(|l| l.contains("ERROR:") || l.contains("WARNING:"))
            .map(mod_name)
            .collect(),
        left_loaded,
    };
    (outcome, argv.trim().to_owned(), cached)
}

fn stap_options(r: &mut Reporter) {
    let ours = "/usr/local/bin/staprun-ours";
    let theirs = "/usr/local/bin/staprun-c";
    let ok = shim(ours, OURS).and_then(|()| shim(theirs, C_STAPRUN));
    if !r.check("shims", ok.is_ok(), format!("{ok:?}")) {
        return;
    }
    r.log("TABLE | stap option | staprun argv (ours) | C result | our result | same |");
    for run in vm::DEBIAN_STAP_RUNS {
        let (o, argv, cached_o) = run_once(r, run, ours);
        let (c, argv_c, _) = run_once(r, run, theirs);
        let brief = |x: &Outcome| {
            format!(
                "exit {}; {}{}{}",
                x.exit.map_or("-".to_owned(), |c| c.to_string()),
                x.stdout.join(" / "),
                if x.files.is_empty() {
                    String::new()
                } else {
                    format!("; files {}", x.files.join(", "))
                },
                if x.left_loaded {
                    "; left loaded (detached)"
                } else {
                    ""
                }
            )
        };
        let args = argv
            .split_whitespace()
            .map(|w| {
                if w.contains("stap_") || w.ends_with(".ko") {
                    "MOD"
                } else {
                    w
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        r.log(&format!(
            "TABLE | `{}` | `{}` | {} | {} | {} |",
            run.option,
            if args.is_empty() {
                "(not run)".to_owned()
            } else {
                args
            },
            brief(&c),
            brief(&o),
            if o == c { "yes" } else { "NO" }
        ));
        r.log(&format!(
            "  (module {}; C argv: {argv_c})",
            if cached_o {
                "from the cache"
            } else {
                "compiled in the guest"
            }
        ));
        r.check(
            &format!(
                "same_result_{}",
                run.option.replace([' ', '-', '=', ',', '(', ')'], "_")
            ),
            o == c,
            format!("ours {o:?} | C {c:?}"),
        );
    }
}

// ---- staprun@.service ------------------------------------------------------

const UNIT: &str = "staprun@pmod";
const DROPIN_DIR: &str = "/etc/systemd/system/staprun@pmod.service.d";

fn sh(script: &str) -> Out {
    root(&["sh", "-c", script])
}

fn now() -> String {
    sh("date +%s.%N").stdout.trim().to_owned()
}

/// The unit's journal lines since `t0` (`date +%s.%N`).
fn unit_journal(t0: &str) -> String {
    sh(&format!(
        "journalctl --no-pager --since @{t0} -u {UNIT} -o cat"
    ))
    .stdout
}

fn prop(name: &str) -> String {
    sh(&format!("systemctl show -p {name} --value {UNIT}"))
        .stdout
        .trim()
        .to_owned()
}

fn configure(r: &mut Reporter, body: Option<&str>) {
    let _ = std::fs::remove_dir_all(DROPIN_DIR);
    if let Some(b) = body {
        let _ = std::fs::create_dir_all(DROPIN_DIR);
        let _ = std::fs::write(format!("{DROPIN_DIR}/override.conf"), b);
    }
    let out = sh(&format!(
        "systemctl daemon-reload && systemctl reset-failed {UNIT} 2>/dev/null; true"
    ));
    if out.code != Some(0) {
        r.log(&format!("daemon-reload: {}", out.summary()));
    }
}

fn publish_pmod(r: &mut Reporter) -> bool {
    let blessed = format!("/lib/modules/{}/systemtap", crate::sys::kernel_release());
    let out = sh(&format!(
        "mkdir -p {blessed} && install -o root -g root -m 0644 {SHARE}/pmod.ko {blessed}/pmod.ko"
    ));
    r.check("published_pmod", out.code == Some(0), out.summary())
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    util::wait_until(timeout, &mut f)
}

fn pmod_loaded() -> bool {
    util::loaded_modules().iter().any(|m| m == "pmod")
}

fn service(r: &mut Reporter) {
    if !publish_pmod(r) {
        return;
    }
    // Packaged, valid, enabled by nobody.
    let out = sh("dpkg -S /lib/systemd/system/staprun@.service");
    r.check(
        "unit_packaged",
        out.stdout
            .starts_with("staprun-rs: /lib/systemd/system/staprun@.service"),
        out.summary(),
    );
    let out = sh(&format!("systemd-analyze verify --man=no {UNIT}.service"));
    r.check("unit_verifies", out.code == Some(0), out.summary());
    let out = sh(&format!("systemctl is-enabled {UNIT}"));
    r.check_eq(
        "not_enabled_by_the_package",
        out.stdout.trim().to_owned(),
        "disabled".to_owned(),
    );

    // No user, root, a user outside stapusr: refused before anything is loaded.
    for (tag, body, want) in [
        ("no_user", None, "refusing to run as root"),
        (
            "user_root",
            Some("[Service]\nUser=root\n"),
            "refusing to run as root",
        ),
        (
            "user_carol",
            Some("[Service]\nUser=carol\n"),
            "user carol is not a member of stapusr",
        ),
    ] {
        configure(r, body);
        let t0 = now();
        let out = sh(&format!("systemctl start {UNIT}"));
        let j = unit_journal(&t0);
        r.log(&format!(
            "{tag}: start -> {:?}; journal: {}",
            out.code,
            j.lines().take(4).collect::<Vec<_>>().join(" | ")
        ));
        r.check(
            &format!("{tag}_refused"),
            out.code != Some(0) && j.contains(want) && !pmod_loaded(),
            format!("{} | {j}", out.summary()),
        );
    }

    // Runs as alice, output in the journal; stop unloads.
    configure(
        r,
        Some("[Service]\nUser=alice\nEnvironment=\"MODULE_PARAMS=records=0 run_ms=500\"\n"),
    );
    let t0 = now();
    let out = sh(&format!("systemctl start {UNIT}"));
    r.check("start_ok", out.code == Some(0), out.summary());
    let ticked = wait_for(Duration::from_secs(90), || {
        unit_journal(&t0).contains("pmod: tick 2")
    });
    r.check("output_in_journal", ticked, unit_journal(&t0));
    let pid = prop("MainPID");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let uid = sh("id -u alice").stdout.trim().to_owned();
    r.check(
        "main_process_is_stapio_as_alice",
        exe.to_string_lossy() == "/usr/libexec/staprun/stapio"
            && status.lines().any(|l| {
                l.split_whitespace().collect::<Vec<_>>() == ["Uid:", &uid, &uid, &uid, &uid]
            })
            && status
                .lines()
                .any(|l| l.starts_with("CapEff:") && l.ends_with("0000000000000000")),
        format!(
            "exe {exe:?}; {}",
            status
                .lines()
                .filter(|l| l.starts_with("Uid") || l.starts_with("CapEff"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    r.check("module_loaded_while_active", pmod_loaded(), "");
    let audit = sh(&format!(
        "journalctl --no-pager --since @{t0} SYSLOG_IDENTIFIER=staprun _UID=0 -o cat"
    ))
    .stdout;
    r.check(
        "audit_lines_for_alice",
        audit.contains("LOADING user=\"alice\"") && audit.contains("LOAD user=\"alice\""),
        &audit,
    );
    let out = sh(&format!("systemctl stop {UNIT}"));
    r.check("stop_ok", out.code == Some(0), out.summary());
    let j = unit_journal(&t0);
    r.log(&format!(
        "journal: {}",
        j.lines().rev().take(6).collect::<Vec<_>>().join(" | ")
    ));
    r.check(
        "stop_ends_and_unloads",
        !pmod_loaded() && prop("Result") == "success" && j.contains("pmod: end"),
        format!("result {} | {j}", prop("Result")),
    );
    let audit = sh(&format!(
        "journalctl --no-pager --since @{t0} SYSLOG_IDENTIFIER=staprun _UID=0 -o cat"
    ))
    .stdout;
    r.check(
        "unload_logged",
        audit.contains("UNLOAD user=\"alice\""),
        &audit,
    );

    // A module ERROR makes the unit fail, with the text in the journal.
    configure(
        r,
        Some(
            "[Service]\nUser=alice\nEnvironment=\"MODULE_PARAMS=records=0 oob_warn=1 oob_error=1\"\n",
        ),
    );
    let t0 = now();
    let _ = sh(&format!("systemctl start {UNIT}"));
    let failed = wait_for(Duration::from_secs(90), || {
        sh(&format!("systemctl is-failed {UNIT}")).stdout.trim() == "failed"
    });
    let j = unit_journal(&t0);
    r.check(
        "module_error_fails_the_unit",
        failed
            && prop("Result") == "exit-code"
            && j.contains("ERROR: pmod error")
            && !pmod_loaded(),
        format!("result {} | {j}", prop("Result")),
    );

    // stapio killed: the module is unloaded all the same (ExecStopPost).
    configure(
        r,
        Some("[Service]\nUser=alice\nEnvironment=\"MODULE_PARAMS=records=0 run_ms=500\"\n"),
    );
    let t0 = now();
    let _ = sh(&format!("systemctl start {UNIT}"));
    wait_for(Duration::from_secs(90), || {
        unit_journal(&t0).contains("pmod: tick 1")
    });
    let _ = sh(&format!("systemctl kill -s KILL --kill-whom=main {UNIT}"));
    let gone = wait_for(Duration::from_secs(60), || !pmod_loaded());
    r.check(
        "killed_stapio_module_unloaded",
        gone && prop("Result") == "signal",
        format!("result {} | {}", prop("Result"), unit_journal(&t0)),
    );
    configure(r, None);

    // stapio -D: the module's WARNING and ERROR go to syslog.
    let t0 = now();
    let out = as_user(
        "alice",
        "staprun -D -o /tmp/d.out pmod records=0 oob_warn=1 oob_error=1",
        Duration::from_secs(120),
    );
    log_out(
        r,
        "alice$ staprun -D -o /tmp/d.out pmod oob_warn=1 oob_error=1",
        &out,
    );
    let pid = out.stdout.trim().to_owned();
    let gone = wait_for(Duration::from_secs(60), || !pmod_loaded());
    let j = sh(&format!(
        "journalctl --no-pager --since @{t0} -t stapio -o cat"
    ))
    .stdout;
    let prio = sh(&format!(
        "journalctl --no-pager --since @{t0} -t stapio -p err -o cat"
    ))
    .stdout;
    r.check(
        "daemon_errors_to_syslog",
        out.code == Some(0)
            && pid.parse::<u32>().is_ok()
            && gone
            && j.contains("WARNING: pmod warning")
            && prio.trim() == "ERROR: pmod error",
        format!("journal: {j} | err: {prio}"),
    );
}

fn service_enable(r: &mut Reporter) {
    if !publish_pmod(r) {
        return;
    }
    let _ = sh(
        "mkdir -p /var/log/journal && systemd-tmpfiles --create --prefix /var/log/journal && journalctl --flush",
    );
    configure(
        r,
        Some("[Service]\nUser=alice\nEnvironment=\"MODULE_PARAMS=records=0 run_ms=1000\"\n"),
    );
    let t0 = now();
    let out = sh(&format!("systemctl enable --now {UNIT}"));
    r.check("enable_now", out.code == Some(0), out.summary());
    r.check_eq(
        "enabled",
        sh(&format!("systemctl is-enabled {UNIT}"))
            .stdout
            .trim()
            .to_owned(),
        "enabled".to_owned(),
    );
    let ticked = wait_for(Duration::from_secs(90), || {
        unit_journal(&t0).contains("pmod: tick 1")
    });
    r.check(
        "running_before_reboot",
        ticked && pmod_loaded(),
        unit_journal(&t0),
    );
    // The agent powers off: systemd stops the unit on the way (stapio ends and unloads).
}

fn service_after_reboot(r: &mut Reporter) {
    let active = wait_for(Duration::from_secs(180), || {
        sh(&format!("systemctl is-active {UNIT}")).stdout.trim() == "active"
    });
    let j = sh(&format!("journalctl --no-pager -b 0 -u {UNIT} -o cat")).stdout;
    r.check(
        "enabled_unit_started_at_boot",
        active && j.contains("pmod: hello from begin"),
        &j,
    );
    let audit = sh("journalctl --no-pager -b 0 SYSLOG_IDENTIFIER=staprun _UID=0 -o cat").stdout;
    r.check(
        "loaded_by_alice_at_boot",
        audit.contains("LOADING user=\"alice\""),
        &audit,
    );
    let prev = sh(&format!("journalctl --no-pager -b -1 -u {UNIT} -o cat")).stdout;
    r.log(&format!(
        "previous boot: {}",
        prev.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    ));
    r.check(
        "stopped_cleanly_at_shutdown",
        prev.contains("pmod: end"),
        &prev,
    );
    let out = sh(&format!("systemctl disable --now {UNIT}"));
    let gone = wait_for(Duration::from_secs(60), || !pmod_loaded());
    r.check(
        "disable_now_unloads",
        out.code == Some(0) && gone,
        out.summary(),
    );
}
