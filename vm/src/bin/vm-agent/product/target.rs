//! The target options (`-c`, `-x`).

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::common::{
    RUN, STARTUP, check_no_new_modules, check_run_ended, log_run, module_snapshot, read_text,
    root_script, staprun, staprun_bg, status_field, target_line, ticks,
};
use crate::harness::{
    self, ALICE, END, HELLO, Reporter, STAPUSR, command_as, product_installed, publish,
};

pub fn target_options(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    publish("pmod");

    // -c "sleep 3": the module would run forever; stapio ends when the command does.
    match staprun_bg(&ALICE, &["-c", "sleep 3", "pmod", "run_ms=100"]) {
        None => {
            r.check("c_sleep_start", false, "spawn failed");
        }
        Some(mut bg) => {
            let t0 = std::time::Instant::now();
            let seen = bg.wait_stdout("pmod: target=", STARTUP);
            let target = target_line(&bg.stdout());
            r.check("c_sleep_target_line", seen && target.is_some(), bg.stdout());
            if let Some(pid) = target {
                let st = harness::proc_status(pid);
                r.check(
                    "c_sleep_target_is_alices_sleep",
                    status_field(pid, "Name") == "sleep"
                        && status_field(pid, "Uid") == "1001\t1001\t1001\t1001",
                    format!("{st:?}"),
                );
            }
            let out = bg.wait(RUN);
            let took = t0.elapsed();
            log_run(r, "alice$ staprun -c 'sleep 3' pmod run_ms=100", &out);
            check_run_ended(r, "c_sleep", &out, 0);
            r.check(
                "c_sleep_output",
                out.stdout.starts_with(HELLO)
                    && !ticks(&out.stdout).is_empty()
                    && out.stdout.trim_end().ends_with(END)
                    && !out.stderr.contains("Child process"),
                out.summary(),
            );
            r.check(
                "c_sleep_ends_with_command",
                took >= Duration::from_millis(2500) && took < Duration::from_secs(20),
                format!("{took:?}"),
            );
        }
    }

    // -c SCRIPT: runs as alice, held until the begin probes ran, its pid is the target.
    let report = "/tmp/tgt.out";
    let _ = fs::remove_file(report);
    root_script(
        "/tmp/tgt.sh",
        &format!(
            "echo \"pid=$$ uid=$(id -u) gids=$(id -G) started=$(cat /sys/module/pmod/parameters/started)\" > {report}"
        ),
    );
    let out = staprun(
        &ALICE,
        &["-c", "/tmp/tgt.sh", "pmod", "run_ms=100", "begin_ms=1000"],
    );
    check_run_ended(r, "c_script", &out, 0);
    let got = read_text(report);
    let want = format!(
        "pid={} uid=1001 gids=1001 {STAPUSR} started=1",
        target_line(&out.stdout).unwrap_or(0)
    );
    r.check_eq("c_script_as_alice_after_start", got.trim(), want.as_str());

    // Begin probes that fail: the held command is killed, never run.
    let never = "/tmp/never.out";
    let _ = fs::remove_file(never);
    root_script("/tmp/never.sh", &format!("echo ran > {never}"));
    let out = staprun(&ALICE, &["-c", "/tmp/never.sh", "pmod", "start_res=1"]);
    check_run_ended(r, "c_start_fails", &out, 1);
    std::thread::sleep(Duration::from_millis(300));
    r.check(
        "c_start_fails_command_never_runs",
        !Path::new(never).exists(),
        format!("{never} exists: {}", Path::new(never).exists()),
    );

    // -c false: exit 1 with a warning.
    let out = staprun(&ALICE, &["-c", "false", "pmod", "run_ms=100"]);
    log_run(r, "alice$ staprun -c false pmod run_ms=100", &out);
    check_run_ended(r, "c_false", &out, 1);
    r.check(
        "c_false_warns",
        out.stderr.contains("Child process exited with status 1")
            && out.stdout.contains(HELLO)
            && out.stdout.contains(END),
        out.summary(),
    );

    // -x PID: the pid reaches the module (STP_START), the process is left alone.
    match command_as(&ALICE, &["/bin/sleep", "30"], &[]).spawn() {
        Err(e) => {
            r.check("x_spawn_sleep", false, e.to_string());
        }
        Ok(mut child) => {
            let pid = child.id();
            let out = staprun(&ALICE, &["-x", &pid.to_string(), "pmod"]);
            check_run_ended(r, "x", &out, 0);
            r.check(
                "x_target_reaches_module",
                target_line(&out.stdout) == Some(pid) && out.stdout.contains(END),
                out.summary(),
            );
            r.check(
                "x_target_left_running",
                matches!(child.try_wait(), Ok(None)),
                "",
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    check_no_new_modules(r, "end", &before);
}
