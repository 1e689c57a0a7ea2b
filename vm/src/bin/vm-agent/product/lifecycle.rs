//! A session's life: detach and attach, signals, a second load of a loaded name, stapio
//! killed.

use std::path::Path;
use std::time::Duration;

use super::common::{
    QUICK, RUN, STARTUP, check_full_run, force_unload, signal_stapio, staprun, staprun_bg,
};
use crate::harness::{self, ALICE, BOB, END, HELLO, Reporter, product_installed, publish};

pub fn detach_attach(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let out = staprun(&ALICE, &["-L", "pmod", "run_ms=100"]);
    let all = format!("{}{}", out.stdout, out.stderr);
    r.check("L_exit0", out.code == Some(0), out.summary());
    r.check("L_reconnect_hint", all.contains("staprun -A pmod"), &all);
    r.check("L_module_stays_loaded", harness::is_loaded("pmod"), "");
    r.check(
        "L_no_stapio_left",
        harness::pids_named("stapio").is_empty(),
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
    r.check("A_unloaded", !harness::is_loaded("pmod"), "");
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
            r.check(
                "SIGQUIT_module_stays_loaded",
                harness::is_loaded("pmod"),
                "",
            );
            let out = staprun(&ALICE, &["-d", "pmod"]);
            r.check(
                "SIGQUIT_then_d",
                out.code == Some(0) && !harness::is_loaded("pmod"),
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
        out.code == Some(0) && harness::is_loaded("pmod"),
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
        r.check("first_still_loaded", harness::is_loaded("pmod"), "");
        let out = staprun(&ALICE, &["-d", "pmod"]);
        r.check(
            "cleanup_d",
            out.code == Some(0) && !harness::is_loaded("pmod"),
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
    r.check(
        "module_left_loaded_after_kill",
        harness::is_loaded("pmod"),
        "",
    );
    // The kernel closes .cmd when the process dies; -d must now succeed.
    let out = staprun(&ALICE, &["-d", "pmod"]);
    r.check(
        "d_cleans_up",
        out.code == Some(0) && !harness::is_loaded("pmod"),
        out.summary(),
    );
    r.check(
        "procfs_gone",
        !Path::new("/proc/systemtap/pmod").exists(),
        "",
    );
    force_unload("pmod");
}
