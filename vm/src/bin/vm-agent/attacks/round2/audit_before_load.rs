//! Round 2, item 3: audit before acting.

use crate::attacks::common::{
    check_nothing_loaded, full_run, helper_run, log_out, result_field, sr, syslog_lines,
    syslog_start,
};
use crate::harness::{ALICE, ROOT, Reporter, STAPRUN, product_installed, publish};

pub(crate) fn audit_before_load(r: &mut Reporter) {
    if !product_installed(r) || !syslog_start(r) {
        return;
    }
    let module = publish("pmod");
    let ko = module.display().to_string();
    // The module disappears from the blessed directory between the
    // decision and the load (root removes it while staprun logs).
    let from = syslog_lines().len();
    let out = helper_run(
        &ROOT,
        &["trace", "rm-at-sendto", &ko, "alice", STAPRUN, "pmod"],
    );
    log_out(
        r,
        "alice$ staprun pmod (traced; pmod.ko removed at the first syslog line)",
        &out,
    );
    let order = result_field(&out, "order").unwrap_or_default();
    let pos = |n: &str| order.split(',').position(|x| x == n);
    r.check(
        "audit_line_sent_before_init_module",
        matches!((pos("sendto"), pos("init_module")), (Some(s), Some(i)) if s < i)
            || (pos("sendto").is_some() && pos("init_module").is_none()),
        &order,
    );
    r.check(
        "removed_module_not_loaded",
        pos("REMOVED").is_some()
            && pos("init_module").is_none_or(|i| i < pos("REMOVED").unwrap_or(0)),
        &order,
    );
    r.check(
        "refused_with_reason",
        out.code.is_some_and(|c| c != 0) && out.stderr.contains("removed"),
        out.summary(),
    );
    check_nothing_loaded(r, "removed", &[]);
    let lines: Vec<String> = syslog_lines().into_iter().skip(from).collect();
    r.log(&format!("syslog: {lines:?}"));
    r.check(
        "attempt_logged_with_path_and_hash",
        lines
            .iter()
            .any(|l| l.contains("LOADING") && l.contains(&ko) && l.contains("sha256=")),
        format!("{lines:?}"),
    );
    // A SIGKILL right after init_module: the module stays loaded, and the
    // audit trail says who loaded what.
    let module = publish("pmod");
    let from = syslog_lines().len();
    let out = helper_run(
        &ROOT,
        &["trace", "kill-after-init", "-", "alice", STAPRUN, "pmod"],
    );
    log_out(
        r,
        "alice$ staprun pmod (traced; SIGKILL when init_module returns)",
        &out,
    );
    let lines: Vec<String> = syslog_lines().into_iter().skip(from).collect();
    r.log(&format!("syslog: {lines:?}"));
    r.check(
        "killed_after_init_leaves_a_trace",
        lines.iter().any(|l| {
            l.contains("LOADING")
                && l.contains("user=\"alice\"")
                && l.contains(&module.display().to_string())
        }),
        format!("{lines:?}"),
    );
    // Alice cleans up her own module.
    let d = sr(&ALICE, &["-d", "pmod"]);
    log_out(r, "alice$ staprun -d pmod", &d);
    // A normal run logs the attempt, then the outcome, with one hash.
    let from = syslog_lines().len();
    let out = sr(&ALICE, &["pmod"]);
    r.check("normal_run", full_run(&out), out.summary());
    let lines: Vec<String> = syslog_lines().into_iter().skip(from).collect();
    let hash = |tag: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!(": {tag} ")))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("sha256="))
                    .map(str::to_owned)
            })
    };
    r.check(
        "attempt_then_outcome_same_hash",
        hash("LOADING").is_some() && hash("LOADING") == hash("LOAD"),
        format!("{lines:?}"),
    );
    check_nothing_loaded(r, "end", &[]);
}
