//! `vm-agent`: PID 1 of the test initramfs.
//!
//! Mounts the pseudo file systems, runs the scenario named by
//! `vmtest.scenario=NAME` on the kernel command line, reports on /dev/ttyS1
//! (see the `vm` crate docs for the line format), checks that no fixture
//! module is left loaded, and powers off.
//!
//! Layout: [`harness`] (what every scenario uses; `harness::sys` holds the only `unsafe`),
//! [`dispatch`] (scenario name -> function, checked against `vm::registry`), and one
//! module per group of scenarios.
#![deny(unsafe_code)]

mod attacks;
mod bench;
mod compat;
mod debian;
mod dispatch;
mod harness;
mod infra;
mod install;
mod product;
mod vermagic;

use std::time::Instant;

use harness::{Reporter, sys};

fn setup() -> Vec<String> {
    let mut problems = Vec::new();
    let mounts: &[(&str, &str, &str, &str)] = &[
        ("proc", "/proc", "proc", ""),
        ("sysfs", "/sys", "sysfs", ""),
        ("devtmpfs", "/dev", "devtmpfs", "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", "mode=1777"),
        ("tmpfs", "/run", "tmpfs", "mode=0755"),
        ("debugfs", "/sys/kernel/debug", "debugfs", ""),
    ];
    for (src, dst, fs, data) in mounts {
        let _ = std::fs::create_dir_all(dst);
        if let Err(e) = sys::mount(src, dst, fs, 0, data) {
            problems.push(format!("mount {dst}: {e}"));
        }
    }
    problems
}

fn main() {
    // `/init --insmod PATH [PARAM...]`: load a module with the caller's
    // credentials (busybox insmod drops privileges when ruid != euid).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--insmod") && args.len() >= 3 {
        match sys::finit_module(&args[2], &args[3..].join(" ")) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("insmod {}: {e}", args[2]);
                std::process::exit(e.raw_os_error().unwrap_or(1));
            }
        }
    }
    if args.get(1).map(String::as_str) == Some("--debian") {
        debian::main();
    }
    if args.get(1).map(String::as_str) == Some("--attack") {
        std::process::exit(attacks::helper(&args[2..]));
    }
    let t0 = Instant::now();
    let problems = setup();
    let mut r = Reporter::open();
    let name = dispatch::scenario_name();
    r.line(&format!("BEGIN {name}"));
    for p in &problems {
        r.check("setup", false, p);
    }
    r.log(&format!(
        "kernel {} cpus {}",
        sys::kernel_release(),
        harness::num_cpus()
    ));
    match dispatch::find(&name) {
        Some(f) => {
            if let Err(e) = harness::prepare_blessed_dir() {
                r.check("setup_blessed_dir", false, e);
            }
            f(&mut r);
            // Nothing may be left behind, whatever the scenario did.
            let left = harness::fixtures_loaded();
            r.check(
                "no_module_left_loaded",
                left.is_empty(),
                format!("loaded fixture modules: {left:?}"),
            );
        }
        None => {
            r.check(
                "scenario_exists",
                false,
                format!("unknown scenario {name:?}; known: {:?}", dispatch::names()),
            );
        }
    }
    r.log(&format!("agent time {:.2}s", t0.elapsed().as_secs_f64()));
    let pass = r.failures == 0 && r.checks > 0;
    r.line(&format!("END {}", if pass { "PASS" } else { "FAIL" }));
    let e = sys::power_off();
    eprintln!("vm-agent: power off failed: {e}");
}
