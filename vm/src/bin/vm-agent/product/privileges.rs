//! Privileges: staprun drops root before stapio, and the environment does not reach root.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, chown};

use super::common::{QUICK, RUN, STARTUP, check_full_run, stapio_pid, staprun_bg, staprun_env};
use crate::harness::{
    self, ALICE, BOB, HELLO, Reporter, SAM, STAPIO, STAPRUN, product_installed, publish, sys,
};

pub fn privilege_drop(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    for user in [ALICE, BOB, SAM] {
        let tag = user.name;
        let Some(mut bg) = staprun_bg(&user, &["pmod", "run_ms=100"]) else {
            r.check(&format!("{tag}_start"), false, "spawn failed");
            continue;
        };
        let mut sent = false;
        if r.check(
            &format!("{tag}_running"),
            bg.wait_stdout(HELLO, STARTUP),
            bg.stderr(),
        ) {
            match stapio_pid() {
                Some(pid) => {
                    let st = harness::proc_status(pid);
                    let get = |k: &str| {
                        st.iter()
                            .find(|(key, _)| key == k)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let ids = |v: String| {
                        v.split_whitespace()
                            .map(|s| s.parse::<u32>().unwrap_or(u32::MAX))
                            .collect::<Vec<_>>()
                    };
                    r.check_eq(
                        &format!("{tag}_stapio_uids"),
                        ids(get("Uid")),
                        vec![user.uid; 4],
                    );
                    r.check_eq(
                        &format!("{tag}_stapio_gids"),
                        ids(get("Gid")),
                        vec![user.gid; 4],
                    );
                    r.check_eq(
                        &format!("{tag}_stapio_capeff"),
                        get("CapEff"),
                        "0000000000000000".to_owned(),
                    );
                    r.check_eq(
                        &format!("{tag}_stapio_capprm"),
                        get("CapPrm"),
                        "0000000000000000".to_owned(),
                    );
                    sent = sys::kill(pid, libc::SIGINT).is_ok();
                }
                None => {
                    r.check(&format!("{tag}_stapio_pid"), false, "no stapio process");
                }
            }
        }
        let out = bg.wait(if sent { RUN } else { QUICK });
        check_full_run(r, &format!("{tag}_sigint"), "pmod", &out);
    }
}

const EVIL_LOG: &str = "/tmp/evil.log";

fn write_script(path: &str, body: &str) {
    let _ = fs::write(
        path,
        format!("#!/bin/sh\necho \"$(id -u) $0\" >> {EVIL_LOG}\n{body}\n"),
    );
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
    let _ = chown(path, Some(ALICE.uid), Some(ALICE.gid));
}

pub fn env_attacks(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let _ = fs::write(EVIL_LOG, "");
    let _ = fs::set_permissions(EVIL_LOG, fs::Permissions::from_mode(0o666));
    write_script("/tmp/evil", "exit 0");
    write_script("/tmp/evil-stapio", &format!("exec {STAPIO} \"$@\""));
    write_script("/tmp/evil-staprun", &format!("exec {STAPRUN} \"$@\""));
    let _ = fs::create_dir_all("/tmp/evilbin");
    let _ = chown("/tmp/evilbin", Some(ALICE.uid), Some(ALICE.gid));
    for tool in [
        "sh", "staprun", "stapio", "rmmod", "modprobe", "insmod", "id",
    ] {
        let real = match tool {
            "staprun" => STAPRUN.to_owned(),
            "stapio" => STAPIO.to_owned(),
            _ => format!("/bin/busybox {tool}"),
        };
        let body = if tool == "id" {
            "exec /bin/busybox id \"$@\"".to_owned()
        } else {
            format!("exec {real} \"$@\"")
        };
        // `id` itself is wrapped too, so the log line uses the real one.
        let script =
            format!("#!/bin/busybox sh\necho \"$(/bin/busybox id -u) $0\" >> {EVIL_LOG}\n{body}\n");
        let path = format!("/tmp/evilbin/{tool}");
        let _ = fs::write(&path, script);
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o755));
        let _ = chown(&path, Some(ALICE.uid), Some(ALICE.gid));
    }
    let _ = fs::write("/tmp/evil.so", b"not a library");
    let evil_path = "/tmp/evilbin:/usr/sbin:/usr/bin:/sbin:/bin";
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "SYSTEMTAP_STAPIO",
            &[("SYSTEMTAP_STAPIO", "/tmp/evil-stapio")],
        ),
        (
            "SYSTEMTAP_STAPRUN",
            &[("SYSTEMTAP_STAPRUN", "/tmp/evil-staprun")],
        ),
        (
            "SYSTEMTAP_RUNTIME",
            &[("SYSTEMTAP_RUNTIME", "/tmp/evilbin")],
        ),
        (
            "MODPROBE_OPTIONS",
            &[("MODPROBE_OPTIONS", "-C /tmp/evil.conf")],
        ),
        (
            "LD_PRELOAD",
            &[("LD_PRELOAD", "/tmp/evil.so"), ("LD_LIBRARY_PATH", "/tmp")],
        ),
        ("PATH", &[("PATH", evil_path)]),
        (
            "ENV_BASH_ENV_IFS",
            &[
                ("ENV", "/tmp/evil"),
                ("BASH_ENV", "/tmp/evil"),
                ("IFS", "/ \t\n"),
            ],
        ),
    ];
    for (name, env) in cases {
        let out = staprun_env(&ALICE, &["pmod"], env);
        check_full_run(r, &format!("env_{name}"), "pmod", &out);
        let log = fs::read_to_string(EVIL_LOG).unwrap_or_default();
        let root_lines: Vec<&str> = log.lines().filter(|l| l.starts_with("0 ")).collect();
        r.check(
            &format!("env_{name}_nothing_as_root"),
            root_lines.is_empty(),
            format!("evil.log: {log:?}"),
        );
    }
    let log = fs::read_to_string(EVIL_LOG).unwrap_or_default();
    r.log(&format!("evil.log after all cases:\n{log}"));
}
