//! Round 2, item 1: the privileged window.

use super::first_line;
use crate::attacks::common::{
    RUN, check_nothing_loaded, cmd_owner, full_run, helper_run, log_out, result_field, result_num,
    sr,
};
use crate::harness::{
    self, ALICE, BOB, Bg, HELLO, Reporter, STAPRUN, command_as, product_installed, publish,
};

/// Alice freezes her staprun once its module is loaded, unloads that
/// module, lets bob load his module of the same name, then makes her
/// staprun go on (SIGINT + SIGCONT). Her staprun must neither write into
/// bob's control file nor unload bob's module; and between its decision
/// and its privilege drop she must not be able to signal it at all.
pub(crate) fn privileged_window(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let mut eperm = 0u64;
    let mut caught = 0;
    for attempt in 0..6 {
        let alice = Bg::start(command_as(
            &ALICE,
            &[STAPRUN, "pmod", "run_ms=100", "exit_after_ms=1000"],
            &[],
        ));
        let Ok(alice) = alice else {
            r.check("spawn_alice", false, "");
            return;
        };
        let pid = alice.pid().to_string();
        let h = helper_run(&ALICE, &["stop-after-load", &pid, "pmod", "20000"]);
        r.log(&format!("attempt {attempt}: {}", first_line(&h.stdout)));
        eperm += result_num(&h, "eperm");
        if result_field(&h, "stopped").as_deref() != Some("1") {
            let out = alice.wait(RUN);
            log_out(r, &format!("attempt {attempt}: alice$ staprun pmod"), &out);
            r.check(
                &format!("attempt{attempt}_alice_run_unharmed"),
                full_run(&out),
                out.summary(),
            );
            check_nothing_loaded(r, &format!("attempt{attempt}"), &[]);
            continue;
        }
        caught += 1;
        // Her own module, nobody attached: -d removes it.
        let d = sr(&ALICE, &["-d", "pmod"]);
        log_out(
            r,
            "alice$ staprun -d pmod (hers, while her staprun is stopped)",
            &d,
        );
        // Bob starts his module detached (-L): loaded, running, nobody
        // attached, so any root process could open its control file.
        let b = sr(&BOB, &["-L", "pmod", "run_ms=100"]);
        log_out(r, "bob$ staprun -L pmod run_ms=100", &b);
        r.check(
            "bob_module_running",
            b.code == Some(0) && cmd_owner("pmod") == Some(BOB.uid),
            format!("owner {:?}", cmd_owner("pmod")),
        );
        let s = helper_run(&ALICE, &["signal", &pid, "INT", "CONT"]);
        r.log(&format!(
            "alice signals her staprun: {}",
            first_line(&s.stdout)
        ));
        let out = alice.wait(RUN);
        log_out(r, "alice's staprun after SIGINT+SIGCONT", &out);
        r.check(
            "bob_module_still_loaded_and_his",
            harness::is_loaded("pmod") && cmd_owner("pmod") == Some(BOB.uid),
            format!(
                "loaded {} owner {:?}",
                harness::is_loaded("pmod"),
                cmd_owner("pmod")
            ),
        );
        r.check("alice_staprun_failed", out.code != Some(0), out.summary());
        r.check(
            "alice_never_reached_bobs_module",
            !out.stdout.contains(HELLO),
            out.summary(),
        );
        // Bob's module is intact: he ends it.
        let d = sr(&BOB, &["-d", "pmod"]);
        log_out(r, "bob$ staprun -d pmod", &d);
        r.check(
            "bob_module_ends_by_bob",
            !harness::is_loaded("pmod"),
            d.summary(),
        );
        check_nothing_loaded(r, "after_race", &[]);
        break;
    }
    r.log(&format!(
        "stopped after the load in {caught} attempt(s); kill(2) refused {eperm} times"
    ));
    r.check(
        "caller_cannot_signal_staprun_in_window",
        eperm > 0,
        format!("kill(2) by the caller refused {eperm} times"),
    );
    check_nothing_loaded(r, "end", &[]);
}
