//! `debian_stap` and `debian_stap_options`: stap runs its modules through our staprun, the
//! same as through Debian's C one.

use std::time::Duration;

use crate::harness::{self, Reporter, STAPRUN};

use super::{
    C_STAPRUN, HELLO, STAP_TIMEOUT, as_user, first_line, log_out, our_journal, stap_modules,
};

pub(crate) fn stap(r: &mut Reporter) {
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
    harness::wait_until(Duration::from_secs(20), || stap_modules().is_empty());
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

pub(crate) fn stap_options(r: &mut Reporter) {
    let ours = "/usr/local/bin/staprun-ours";
    let theirs = "/usr/local/bin/staprun-c";
    let ok = shim(ours, STAPRUN).and_then(|()| shim(theirs, C_STAPRUN));
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
