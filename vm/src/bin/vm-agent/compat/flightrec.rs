//! Group `compat_flightrec`: flightrec1-5 (`stap -F -o FILE` is `staprun -D -o FILE`).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::{self, ROOT, Reporter, sys};

use super::ctx::{Ctx, alive, loaded_like, loaded_text, mpath, sleep_ms};
use super::driver::{CDev, Case, Gen, run_group};

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
    let gone = harness::wait_until(Duration::from_secs(20), || {
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

pub(crate) const C1: &str = "C1: the C 4.8 stapio lets bulk-mode -S files grow past the limit \
                  (1051008 > 1048576 bytes)";
pub(crate) const C2: &str = "C2: the C 5.1 stapio switches files only before writing the next record, \
                  so -S files grow past the limit (1049400, 1050700 > 1048576 bytes)";
pub(crate) const C3: &str = "C3: in non-bulk -S mode each C 4.8 reader thread keeps its own file number \
                  (relay.c reader_thread: local fnum, out_fd[cpu]) for names without a CPU, \
                  so a SIGUSR2 can switch twice (.3 .4 left instead of .2 .3)";
pub(crate) const C4: &str = "C4: the C 5.1 stapio switches bulk files only when data arrives, so a silent \
                  module gets no .1 after SIGUSR2, and no output file is left after SIGTERM";

pub(crate) const FLIGHTREC_CASES: &[Case] = &[
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

pub(crate) fn compat_flightrec(r: &mut Reporter) {
    run_group(r, FLIGHTREC_CASES);
}
