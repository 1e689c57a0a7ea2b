//! The caller's process state.

use std::fs;
use std::time::Duration;

use super::common::{
    RUN, check_nothing_loaded, full_run, helper_run, log_out, read_sysctl, refused, result_field,
    result_num, sh, stapio_pids,
};
use crate::harness::{
    self, ALICE, END, HELLO, Out, Reporter, Rng, STAPRUN, comm, command_as, product_installed,
    publish, sys,
};

/// The run either completed (exit 0, whole output) or failed cleanly; in
/// both cases nothing is left loaded and no stapio is left running.
fn check_consistent(r: &mut Reporter, tag: &str, out: &Out, complete: bool) {
    let ok =
        !out.timed_out && out.signal.is_none() && (complete || out.code.is_some_and(|c| c != 0));
    r.check(
        &format!("{tag}_complete_or_clean_error"),
        ok,
        format!("complete={complete} {}", out.summary()),
    );
    r.check(
        &format!("{tag}_no_stapio_left"),
        stapio_pids().is_empty(),
        format!("{:?}", stapio_pids()),
    );
    check_nothing_loaded(r, tag, &[]);
}

pub(crate) fn process_state(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");

    // 1. stdin, stdout and stderr closed by the caller.
    let out = sh(
        &ALICE,
        &format!("{STAPRUN} pmod records=1 <&- >&- 2>&-; echo rc=$?"),
    );
    r.check(
        "closed_std_fds_run",
        out.stdout.trim() == "rc=0",
        out.summary(),
    );
    check_nothing_loaded(r, "closed_std_fds", &[]);
    let _ = fs::remove_file("/tmp/closed.out");
    let out = sh(
        &ALICE,
        &format!("{STAPRUN} -o /tmp/closed.out pmod records=1 <&- >&- 2>&-; echo rc=$?"),
    );
    let text = fs::read_to_string("/tmp/closed.out").unwrap_or_default();
    r.check(
        "closed_std_fds_o_file_complete",
        out.stdout.trim() == "rc=0" && text.starts_with(HELLO) && text.trim_end().ends_with(END),
        format!("{} file {:?}", out.summary(), harness::clip(&text)),
    );
    check_nothing_loaded(r, "closed_std_fds_o", &[]);

    // 2. Resource limits set by the caller.
    for n in [4, 5, 6, 8, 10, 16] {
        let tag = format!("nofile_{n}");
        let out = sh(
            &ALICE,
            &format!("ulimit -n {n} && exec {STAPRUN} pmod records=1"),
        );
        log_out(r, &format!("alice$ ulimit -n {n}; staprun pmod"), &out);
        check_consistent(r, &tag, &out, full_run(&out));
    }
    let out = sh(
        &ALICE,
        &format!("ulimit -f 0 && exec {STAPRUN} pmod records=1"),
    );
    log_out(r, "alice$ ulimit -f 0; staprun pmod", &out);
    check_consistent(r, "fsize_0_stdout", &out, full_run(&out));
    let _ = fs::remove_file("/tmp/fsize.out");
    let out = sh(
        &ALICE,
        &format!("ulimit -f 0 && exec {STAPRUN} -o /tmp/fsize.out pmod records=1"),
    );
    log_out(
        r,
        "alice$ ulimit -f 0; staprun -o /tmp/fsize.out pmod",
        &out,
    );
    let text = fs::read_to_string("/tmp/fsize.out").unwrap_or_default();
    let complete = out.code == Some(0) && text.contains(HELLO) && text.contains(END);
    check_consistent(r, "fsize_0_o_file", &out, complete);

    // 3. ptrace: alice attaches (and SIGSTOPs, then attaches) to the
    //    setuid staprun at several points of its run.
    r.log(&format!(
        "yama ptrace_scope {}",
        read_sysctl("/proc/sys/kernel/yama/ptrace_scope")
    ));
    let (mut eperm, mut attempts) = (0, 0);
    for delay in ["0", "10", "40", "loaded"] {
        let out = helper_run(
            &ALICE,
            &["ptrace-race", delay, STAPRUN, "pmod", "records=1"],
        );
        let tag = format!("ptrace_stop_{delay}");
        r.log(&format!(
            "{tag}: {}",
            out.stdout
                .lines()
                .rev()
                .find(|l| l.starts_with("RESULT"))
                .unwrap_or("no RESULT")
        ));
        r.check(
            &format!("{tag}_never_attached_privileged"),
            result_field(&out, "attempts").is_some() && result_num(&out, "attached_root") == 0,
            out.summary(),
        );
        r.check(
            &format!("{tag}_run_complete"),
            out.code == Some(0) && out.stdout.contains(HELLO) && out.stdout.contains(END),
            out.summary(),
        );
        if delay == "loaded" {
            // It was caught between init_module and the privilege drop.
            r.check(
                "ptrace_stopped_while_privileged_with_module_loaded",
                result_field(&out, "stopped_in").is_some_and(|s| {
                    s.contains("uids=1001,0,0,0") && s.contains("pmod_loaded=true")
                }),
                out.summary(),
            );
        }
        check_nothing_loaded(r, &tag, &[]);
        eperm += result_num(&out, "eperm");
        attempts += result_num(&out, "attempts");
    }
    r.check(
        "ptrace_attempts_on_privileged_staprun_got_eperm",
        eperm > 0,
        format!("{eperm} EPERM of {attempts} attempts"),
    );
    // A traced exec does not get the setuid bit at all.
    let out = helper_run(&ALICE, &["traceme", STAPRUN, "pmod"]);
    log_out(r, "alice$ (PTRACE_TRACEME) exec staprun pmod", &out);
    r.check_eq(
        "traceme_exec_runs_unprivileged",
        result_field(&out, "uids_at_exec"),
        Some("1001,1001,1001,1001".to_owned()),
    );
    r.check(
        "traceme_staprun_refuses",
        out.code.is_some_and(|c| c != 0)
            && out.stderr.contains("setuid")
            && !out.stdout.contains(HELLO),
        out.summary(),
    );
    check_nothing_loaded(r, "traceme", &[]);

    // 4. no_new_privs: the setuid bit is ignored, and staprun says why.
    let out = helper_run(&ALICE, &["nnp", STAPRUN, "pmod"]);
    log_out(r, "alice$ (no_new_privs) staprun pmod", &out);
    r.check(
        "nnp_refused_with_reason",
        refused(&out) && out.stderr.contains("no_new_privs"),
        out.summary(),
    );
    check_nothing_loaded(r, "nnp", &[]);

    // 5. SIGSTOP / SIGCONT at random points of the run.
    let mut rng = Rng::new(r);
    for i in 0..6 {
        let delay = Duration::from_millis(rng.below(1500));
        let running = match harness::spawn(command_as(&ALICE, &[STAPRUN, "pmod", "records=1"], &[]))
        {
            Ok(rn) => rn,
            Err(e) => {
                r.check(&format!("stopcont_{i}_spawn"), false, e.to_string());
                continue;
            }
        };
        std::thread::sleep(delay);
        let pid = running.child.id();
        let what = comm(pid);
        let _ = sys::kill(pid, libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(300));
        let _ = sys::kill(pid, libc::SIGCONT);
        let out = running.wait(RUN);
        r.log(&format!(
            "SIGSTOP after {delay:?} (in {what:?}), SIGCONT 300 ms later: code {:?}",
            out.code
        ));
        check_consistent(r, &format!("stopcont_{i}"), &out, full_run(&out));
    }
    check_nothing_loaded(r, "end", &[]);
}
