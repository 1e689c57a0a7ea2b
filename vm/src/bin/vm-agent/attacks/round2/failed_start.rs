//! Round 2, item 7: a failed start unloads.

use super::first_line;
use crate::attacks::common::{
    check_nothing_loaded, full_run, helper_run, log_out, refused, result_field, sr, syslog_lines,
    syslog_start,
};
use crate::harness::{ALICE, ROOT, Reporter, STAPRUN, product_installed, publish};

pub(crate) fn failed_start(r: &mut Reporter) {
    if !product_installed(r) || !syslog_start(r) {
        return;
    }
    publish("pmod");
    // An option stapio refuses is refused before anything is loaded: monitor
    // mode with stdout not a terminal (a pipe here).
    let from = syslog_lines().len();
    let out = sr(&ALICE, &["-M", "1", "pmod"]);
    log_out(r, "alice$ staprun -M 1 pmod | ...", &out);
    r.check(
        "monitor_refused",
        refused(&out)
            && out.code == Some(1)
            && out.stderr.contains("monitor mode needs a terminal"),
        out.summary(),
    );
    let lines: Vec<String> = syslog_lines().into_iter().skip(from).collect();
    r.check(
        "monitor_refused_before_load",
        !lines.iter().any(|l| l.contains("LOAD")),
        format!("{lines:?}"),
    );
    check_nothing_loaded(r, "monitor", &[]);
    // No processes: stapio cannot create its threads.
    let out = helper_run(&ALICE, &["rlimit", "nproc", "0", STAPRUN, "pmod"]);
    log_out(r, "alice$ ulimit -u 0; staprun pmod", &out);
    r.check(
        "nproc0_fails_cleanly",
        out.code.is_some_and(|c| c != 0) && !out.timed_out,
        out.summary(),
    );
    check_nothing_loaded(r, "nproc0", &[]);
    // stapio cannot be executed.
    let out = helper_run(
        &ROOT,
        &["trace", "fail-exec", "-", "alice", STAPRUN, "pmod"],
    );
    log_out(
        r,
        "alice$ staprun pmod (traced; the exec of stapio fails)",
        &out,
    );
    r.check(
        "exec_failure_fails_cleanly",
        result_field(&out, "done").as_deref() == Some("1") && out.code.is_some_and(|c| c != 0),
        out.summary(),
    );
    check_nothing_loaded(r, "exec_failure", &[]);
    // Few file descriptors, little memory: every limit either runs the
    // script or fails, and never leaves the module loaded.
    let limits: &[(&str, &[u64])] = &[
        ("nofile", &[4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 20]),
        (
            "as",
            &[
                4 << 20,
                8 << 20,
                12 << 20,
                16 << 20,
                24 << 20,
                32 << 20,
                48 << 20,
                64 << 20,
                96 << 20,
            ],
        ),
    ];
    for (res, values) in limits {
        let mut after_load = 0;
        let mut ran = 0;
        for v in *values {
            let from = syslog_lines().len();
            let out = helper_run(&ALICE, &["rlimit", res, &v.to_string(), STAPRUN, "pmod"]);
            let lines: Vec<String> = syslog_lines().into_iter().skip(from).collect();
            let loaded = lines.iter().any(|l| l.contains("LOAD"));
            r.log(&format!(
                "{res}={v}: exit {:?} signal {:?} loaded {loaded} | {}",
                out.code,
                out.signal,
                first_line(&out.stderr)
            ));
            let tag = format!("{res}_{v}");
            r.check(
                &format!("{tag}_ran_or_failed"),
                !out.timed_out && (full_run(&out) || out.code.is_some_and(|c| c != 0)),
                out.summary(),
            );
            if full_run(&out) {
                ran += 1;
            } else if loaded {
                after_load += 1;
            }
            check_nothing_loaded(r, &tag, &[]);
        }
        r.log(&format!(
            "{res}: {ran} full runs, {after_load} failures after the load"
        ));
        r.check(
            &format!("{res}_some_limit_fails_after_the_load"),
            after_load > 0,
            format!("{after_load}"),
        );
    }
    check_nothing_loaded(r, "end", &[]);
}
