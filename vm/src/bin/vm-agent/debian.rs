//! Scenarios of the Debian guest (`cargo xtask debian-test`, docs/debian.md): a bookworm system
//! booted with systemd as PID 1, where `vmtest.service` runs `vm-agent --debian` from a second
//! (read-only) disk. Each boot installs our .deb from it with apt next to Debian's `systemtap`, then
//! runs one scenario as real users (`runuser -l`), and powers off.
//!
//! `install.rs`, `stap.rs` and `service.rs` hold the scenarios; this file the entry point and
//! what they share.

mod install;
mod service;
mod stap;

use std::process::Command;
use std::time::Duration;

use crate::harness::{self, Out, Reporter, Scenario};

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("debian_install", install::install),
    ("debian_stap", stap::stap),
    ("debian_stap_options", stap::stap_options),
    ("debian_service", service::service),
    ("debian_service_enable", service::service_enable),
    ("debian_service_after_reboot", service::service_after_reboot),
];

const SHARE: &str = "/mnt/vmtest";
const C_STAPRUN: &str = "/usr/bin/staprun.systemtap";
const HELLO: &str = "probe begin { println(\"hello\") exit() }";
/// A stap run that compiles under TCG takes minutes; one that finds its module in the cache
/// takes seconds.
const STAP_TIMEOUT: Duration = Duration::from_secs(900);

/// `vm-agent --debian`: one scenario, then power off. Never returns.
pub fn main() -> ! {
    let mut r = Reporter::open();
    let name = crate::dispatch::scenario_name();
    r.line(&format!("BEGIN {name}"));
    r.log(&format!(
        "kernel {} | {}",
        harness::sys::kernel_release(),
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
    let e = harness::sys::power_off();
    eprintln!("vm-agent: power off failed: {e}");
    std::process::exit(1)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

fn root(argv: &[&str]) -> Out {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]).env("DEBIAN_FRONTEND", "noninteractive");
    harness::run(c, Duration::from_secs(300))
}

/// `runuser -l USER -c SCRIPT`: a login shell of USER, as a person would get.
fn as_user(user: &str, script: &str, timeout: Duration) -> Out {
    let mut c = Command::new("runuser");
    c.args(["-l", user, "-c", script]);
    harness::run(c, timeout)
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
    harness::loaded_modules()
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
