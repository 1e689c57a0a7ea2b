//! `staprun@.service`: `debian_service`, and `debian_service_enable` with its reboot
//! (`debian_service_after_reboot`).

use std::time::Duration;

use crate::harness::{self, Out, Reporter};

use super::{SHARE, as_user, log_out, root};

// ---- staprun@.service ------------------------------------------------------

const UNIT: &str = "staprun@pmod";
const DROPIN_DIR: &str = "/etc/systemd/system/staprun@pmod.service.d";

fn sh(script: &str) -> Out {
    root(&["sh", "-c", script])
}

fn now() -> String {
    sh("date +%s.%N").stdout.trim().to_owned()
}

/// The unit's journal lines since `t0` (`date +%s.%N`).
fn unit_journal(t0: &str) -> String {
    sh(&format!(
        "journalctl --no-pager --since @{t0} -u {UNIT} -o cat"
    ))
    .stdout
}

fn prop(name: &str) -> String {
    sh(&format!("systemctl show -p {name} --value {UNIT}"))
        .stdout
        .trim()
        .to_owned()
}

fn configure(r: &mut Reporter, body: Option<&str>) {
    let _ = std::fs::remove_dir_all(DROPIN_DIR);
    if let Some(b) = body {
        let _ = std::fs::create_dir_all(DROPIN_DIR);
        let _ = std::fs::write(format!("{DROPIN_DIR}/override.conf"), b);
    }
    let out = sh(&format!(
        "systemctl daemon-reload && systemctl reset-failed {UNIT} 2>/dev/null; true"
    ));
    if out.code != Some(0) {
        r.log(&format!("daemon-reload: {}", out.summary()));
    }
}

fn publish_pmod(r: &mut Reporter) -> bool {
    let blessed = format!("/lib/modules/{}/systemtap", harness::sys::kernel_release());
    let out = sh(&format!(
        "mkdir -p {blessed} && install -o root -g root -m 0644 {SHARE}/pmod.ko {blessed}/pmod.ko"
    ));
    r.check("published_pmod", out.code == Some(0), out.summary())
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    harness::wait_until(timeout, &mut f)
}

fn pmod_loaded() -> bool {
    harness::loaded_modules().iter().any(|m| m == "pmod")
}

pub(crate) fn service(r: &mut Reporter) {
    if !publish_pmod(r) {
        return;
    }
    // Packaged, valid, enabled by nobody.
    let out = sh("dpkg -S /lib/systemd/system/staprun@.service");
    r.check(
        "unit_packaged",
        out.stdout
            .starts_with("staprun-rs: /lib/systemd/system/staprun@.service"),
        out.summary(),
    );
    let out = sh(&format!("systemd-analyze verify --man=no {UNIT}.service"));
    r.check("unit_verifies", out.code == Some(0), out.summary());
    let out = sh(&format!("systemctl is-enabled {UNIT}"));
    r.check_eq(
        "not_enabled_by_the_package",
        out.stdout.trim().to_owned(),
        "disabled".to_owned(),
    );

    // No user, root, a user outside stapusr: refused before anything is loaded.
    for (tag, body, want) in [
        ("no_user", None, "refusing to run as root"),
        (
            "user_root",
            Some("[Service]\nUser=root\n"),
            "refusing to run as root",
        ),
        (
            "user_carol",
            Some("[Service]\nUser=carol\n"),
            "user carol is not a member of stapusr",
        ),
    ] {
        configure(r, body);
        let t0 = now();
        let out = sh(&format!("systemctl start {UNIT}"));
        let j = unit_journal(&t0);
        r.log(&format!(
            "{tag}: start -> {:?}; journal: {}",
            out.code,
            j.lines().take(4).collect::<Vec<_>>().join(" | ")
        ));
        r.check(
            &format!("{tag}_refused"),
            out.code != Some(0) && j.contains(want) && !pmod_loaded(),
            format!("{} | {j}", out.summary()),
        );
    }

    // Runs as alice, output in the journal; stop unloads.
    configure(
        r,
        Some("[Service]\nUser=alice\nEnvironment=\"MODULE_PARAMS=records=0 run_ms=500\"\n"),
    );
    let t0 = now();
    let out = sh(&format!("systemctl start {UNIT}"));
    r.check("start_ok", out.code == Some(0), out.summary());
    let ticked = wait_for(Duration::from_secs(90), || {
        unit_journal(&t0).contains("pmod: tick 2")
    });
    r.check("output_in_journal", ticked, unit_journal(&t0));
    let pid = prop("MainPID");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let uid = sh("id -u alice").stdout.trim().to_owned();
    r.check(
        "main_process_is_stapio_as_alice",
        exe.to_string_lossy() == "/usr/libexec/staprun/stapio"
            && status.lines().any(|l| {
                l.split_whitespace().collect::<Vec<_>>() == ["Uid:", &uid, &uid, &uid, &uid]
            })
            && status
                .lines()
                .any(|l| l.starts_with("CapEff:") && l.ends_with("0000000000000000")),
        format!(
            "exe {exe:?}; {}",
            status
                .lines()
                .filter(|l| l.starts_with("Uid") || l.starts_with("CapEff"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    r.check("module_loaded_while_active", pmod_loaded(), "");
    let audit = sh(&format!(
        "journalctl --no-pager --since @{t0} SYSLOG_IDENTIFIER=staprun _UID=0 -o cat"
    ))
    .stdout;
    r.check(
        "audit_lines_for_alice",
        audit.contains("LOADING user=\"alice\"") && audit.contains("LOAD user=\"alice\""),
        &audit,
    );
    let out = sh(&format!("systemctl stop {UNIT}"));
    r.check("stop_ok", out.code == Some(0), out.summary());
    let j = unit_journal(&t0);
    r.log(&format!(
        "journal: {}",
        j.lines().rev().take(6).collect::<Vec<_>>().join(" | ")
    ));
    r.check(
        "stop_ends_and_unloads",
        !pmod_loaded() && prop("Result") == "success" && j.contains("pmod: end"),
        format!("result {} | {j}", prop("Result")),
    );
    let audit = sh(&format!(
        "journalctl --no-pager --since @{t0} SYSLOG_IDENTIFIER=staprun _UID=0 -o cat"
    ))
    .stdout;
    r.check(
        "unload_logged",
        audit.contains("UNLOAD user=\"alice\""),
        &audit,
    );

    // A module ERROR makes the unit fail, with the text in the journal.
    configure(
        r,
        Some(
            "[Service]\nUser=alice\nEnvironment=\"MODULE_PARAMS=records=0 oob_warn=1 oob_error=1\"\n",
        ),
    );
    let t0 = now();
    let _ = sh(&format!("systemctl start {UNIT}"));
    let failed = wait_for(Duration::from_secs(90), || {
        sh(&format!("systemctl is-failed {UNIT}")).stdout.trim() == "failed"
    });
    let j = unit_journal(&t0);
    r.check(
        "module_error_fails_the_unit",
        failed
            && prop("Result") == "exit-code"
            && j.contains("ERROR: pmod error")
            && !pmod_loaded(),
        format!("result {} | {j}", prop("Result")),
    );

    // stapio killed: the module is unloaded all the same (ExecStopPost).
    configure(
        r,
        Some("[Service]\nUser=alice\nEnvironment=\"MODULE_PARAMS=records=0 run_ms=500\"\n"),
    );
    let t0 = now();
    let _ = sh(&format!("systemctl start {UNIT}"));
    wait_for(Duration::from_secs(90), || {
        unit_journal(&t0).contains("pmod: tick 1")
    });
    let _ = sh(&format!("systemctl kill -s KILL --kill-whom=main {UNIT}"));
    let gone = wait_for(Duration::from_secs(60), || !pmod_loaded());
    r.check(
        "killed_stapio_module_unloaded",
        gone && prop("Result") == "signal",
        format!("result {} | {}", prop("Result"), unit_journal(&t0)),
    );
    configure(r, None);

    // stapio -D: the module's WARNING and ERROR go to syslog.
    let t0 = now();
    let out = as_user(
        "alice",
        "staprun -D -o /tmp/d.out pmod records=0 oob_warn=1 oob_error=1",
        Duration::from_secs(120),
    );
    log_out(
        r,
        "alice$ staprun -D -o /tmp/d.out pmod oob_warn=1 oob_error=1",
        &out,
    );
    let pid = out.stdout.trim().to_owned();
    let gone = wait_for(Duration::from_secs(60), || !pmod_loaded());
    let j = sh(&format!(
        "journalctl --no-pager --since @{t0} -t stapio -o cat"
    ))
    .stdout;
    let prio = sh(&format!(
        "journalctl --no-pager --since @{t0} -t stapio -p err -o cat"
    ))
    .stdout;
    r.check(
        "daemon_errors_to_syslog",
        out.code == Some(0)
            && pid.parse::<u32>().is_ok()
            && gone
            && j.contains("WARNING: pmod warning")
            && prio.trim() == "ERROR: pmod error",
        format!("journal: {j} | err: {prio}"),
    );
}

pub(crate) fn service_enable(r: &mut Reporter) {
    if !publish_pmod(r) {
        return;
    }
    let _ = sh(
        "mkdir -p /var/log/journal && systemd-tmpfiles --create --prefix /var/log/journal && journalctl --flush",
    );
    configure(
        r,
        Some("[Service]\nUser=alice\nEnvironment=\"MODULE_PARAMS=records=0 run_ms=1000\"\n"),
    );
    let t0 = now();
    let out = sh(&format!("systemctl enable --now {UNIT}"));
    r.check("enable_now", out.code == Some(0), out.summary());
    r.check_eq(
        "enabled",
        sh(&format!("systemctl is-enabled {UNIT}"))
            .stdout
            .trim()
            .to_owned(),
        "enabled".to_owned(),
    );
    let ticked = wait_for(Duration::from_secs(90), || {
        unit_journal(&t0).contains("pmod: tick 1")
    });
    r.check(
        "running_before_reboot",
        ticked && pmod_loaded(),
        unit_journal(&t0),
    );
    // The agent powers off: systemd stops the unit on the way (stapio ends and unloads).
}

pub(crate) fn service_after_reboot(r: &mut Reporter) {
    let active = wait_for(Duration::from_secs(180), || {
        sh(&format!("systemctl is-active {UNIT}")).stdout.trim() == "active"
    });
    let j = sh(&format!("journalctl --no-pager -b 0 -u {UNIT} -o cat")).stdout;
    r.check(
        "enabled_unit_started_at_boot",
        active && j.contains("pmod: hello from begin"),
        &j,
    );
    let audit = sh("journalctl --no-pager -b 0 SYSLOG_IDENTIFIER=staprun _UID=0 -o cat").stdout;
    r.check(
        "loaded_by_alice_at_boot",
        audit.contains("LOADING user=\"alice\""),
        &audit,
    );
    let prev = sh(&format!("journalctl --no-pager -b -1 -u {UNIT} -o cat")).stdout;
    r.log(&format!(
        "previous boot: {}",
        prev.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    ));
    r.check(
        "stopped_cleanly_at_shutdown",
        prev.contains("pmod: end"),
        &prev,
    );
    let out = sh(&format!("systemctl disable --now {UNIT}"));
    let gone = wait_for(Duration::from_secs(60), || !pmod_loaded());
    r.check(
        "disable_now_unloads",
        out.code == Some(0) && gone,
        out.summary(),
    );
}
