//! Group `compat_lifecycle`: attach_detach, pr13158, rename_module, pr10854, sigusr2,
//! staprunwait.

use std::fs;

use crate::harness::{self, ALICE, ROOT, Reporter, STAPRUN, command_as};

use super::ctx::{
    BEGIN, Ctx, END, HELLO, TIMER, exit_text, is_renamed, loaded_like, loaded_text, mpath,
    normalize, sleep_ms,
};
use super::driver::{Case, contains_line, expect_clean_exit, run_group};
use super::{RUN, STARTUP};

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
        harness::is_loaded("ticker"),
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
        harness::is_loaded("ticker"),
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
        !harness::is_loaded("ticker"),
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
        harness::is_loaded("ticker"),
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
        !harness::is_loaded("ticker"),
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
    c.check(
        "removed",
        !harness::is_loaded("ticker"),
        loaded_text("ticker"),
    );
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
    c.check("short_unloaded", !harness::is_loaded("x"), loaded_text("x"));
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
    let left = harness::is_loaded("ticker");
    c.log(&format!("after the loop: {}", loaded_text("ticker")));
    let out = c.staprun(&ROOT, &["-d", "ticker"]);
    if left {
        c.check("d_exit_0", out.code == Some(0), out.summary());
    }
    c.observe("final", loaded_text("ticker"));
    c.check(
        "unloaded",
        !harness::is_loaded("ticker"),
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
    let out = harness::run(cmd, RUN);
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

pub(crate) const LIFECYCLE_CASES: &[Case] = &[
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

pub(crate) fn compat_lifecycle(r: &mut Reporter) {
    run_group(r, LIFECYCLE_CASES);
}
