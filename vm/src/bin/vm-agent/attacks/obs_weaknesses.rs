//! The reference's [obs] weaknesses.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::common::{
    ELSEWHERE, RUN, check_nothing_loaded, debugfs_mounted, full_run, log_out, place_elsewhere,
    read_sysctl, refused, script, sr, sr_env,
};
use crate::harness::{
    self, ALICE, CAROL, HELLO, ROOT, Reporter, SAM, User, blessed_dir, command_as, fixture, mkdir,
    product_installed, publish, put, run, sys,
};

const KPROBES_OPT: &str = "/proc/sys/debug/kprobes-optimization";
const KPTR: &str = "/proc/sys/kernel/kptr_restrict";

pub(crate) fn obs_weaknesses(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let _ = place_elsewhere();

    // 1. Nothing privileged happens before the decision: no debugfs mount,
    //    no kprobes-optimization or kptr_restrict write for a refused load.
    let um = run(
        command_as(&ROOT, &["/bin/umount", "/sys/kernel/debug"], &[]),
        RUN,
    );
    let _ = fs::write(KPROBES_OPT, "1");
    let _ = fs::write(KPTR, "0");
    let state = || {
        (
            debugfs_mounted(),
            read_sysctl(KPROBES_OPT),
            read_sysctl(KPTR),
        )
    };
    let before = state();
    r.check(
        "precondition_debugfs_unmounted_kptr0",
        !before.0 && before.2 == "0",
        format!("umount: {}; state {before:?}", um.summary()),
    );
    let cases: &[(User, &[&str])] = &[
        (ALICE, &[ELSEWHERE]),
        (SAM, &[ELSEWHERE]),
        (ALICE, &["-u", "pmod"]),
        (ALICE, &["nosuchmodule"]),
        (ALICE, &["-d", "nosuchmodule"]),
        (ALICE, &["-A", "nosuchmodule"]),
        (CAROL, &["pmod"]),
    ];
    for (user, args) in cases {
        let tag = format!(
            "{}_{}",
            user.name,
            args.join("_").replace(['-', '/', '.'], "")
        );
        let out = sr(user, args);
        let denied = if user.uid == CAROL.uid {
            out.code.is_none() && out.stderr.contains("Permission denied")
        } else {
            refused(&out)
        };
        r.check(&format!("{tag}_refused"), denied, out.summary());
        r.check_eq(&format!("{tag}_no_side_effect"), state(), before.clone());
        check_nothing_loaded(r, &tag, &[]);
    }
    // A permitted load: still no debugfs mount and no kprobes change;
    // kptr_restrict 0 is raised to 1 after the load (documented).
    let out = sr(&ALICE, &["pmod"]);
    r.check("permitted_run", full_run(&out), out.summary());
    let after = state();
    r.check(
        "permitted_run_no_debugfs_no_kprobes_change",
        !after.0 && after.1 == before.1,
        format!("{after:?}"),
    );
    r.log(&format!("after a permitted run: kptr_restrict {}", after.2));

    // 2. Override variables have no effect.
    let _ = fs::write(KPTR, "0");
    let out = sr_env(&ALICE, &["pmod"], &[("STAP_BZ1552745_OVERRIDE", "1")]);
    r.check("bz1552745_override_run", full_run(&out), out.summary());
    r.check_eq(
        "bz1552745_override_ignored_kptr_raised",
        read_sysctl(KPTR),
        "1".to_owned(),
    );
    let _ = fs::write(KPTR, "0");
    let _ = fs::write(KPROBES_OPT, "1");
    let out = sr_env(&ALICE, &["pmod"], &[("STAP_PR13193_OVERRIDE", "1")]);
    r.check("pr13193_override_run", full_run(&out), out.summary());
    r.check_eq(
        "pr13193_override_no_effect",
        read_sysctl(KPROBES_OPT),
        "1".to_owned(),
    );
    let overrides: &[(&str, &str)] = &[
        ("STAP_FIPS_OVERRIDE", "1"),
        ("SYSTEMTAP_SYNC", "1"),
        ("STAP_PR13193_OVERRIDE", "1"),
        ("STAP_BZ1552745_OVERRIDE", "1"),
        ("SYSTEMTAP_REAL_UID", "0"),
        ("SYSTEMTAP_REAL_GID", "0"),
    ];
    for (user, arg) in [(ALICE, ELSEWHERE), (SAM, ELSEWHERE), (ALICE, "-u")] {
        let args: Vec<&str> = if arg == "-u" {
            vec!["-u", "pmod"]
        } else {
            vec![arg]
        };
        let plain = sr(&user, &args);
        let with = sr_env(&user, &args, overrides);
        let tag = format!("{}_{}", user.name, arg.replace(['-', '/', '.'], ""));
        r.check(
            &format!("overrides_{tag}_same_refusal"),
            refused(&with) && with.code == plain.code && with.stderr == plain.stderr,
            format!(
                "plain: {} | with overrides: {}",
                plain.summary(),
                with.summary()
            ),
        );
    }
    // Nor do they reach stapio or the script's system() commands.
    let _ = fs::remove_file("/tmp/envdump.out");
    let _ = script("/tmp/envdump.sh", "env > /tmp/envdump.out", &ROOT);
    let out = sr_env(&ALICE, &["pmod", "system_cmd=/tmp/envdump.sh"], overrides);
    r.check("overrides_run", full_run(&out), out.summary());
    harness::wait_until(Duration::from_secs(10), || {
        Path::new("/tmp/envdump.out").exists()
    });
    let dump = fs::read_to_string("/tmp/envdump.out").unwrap_or_default();
    let leaked: Vec<&str> = dump
        .lines()
        .filter(|l| {
            overrides
                .iter()
                .any(|(k, _)| l.starts_with(&format!("{k}=")))
        })
        .collect();
    r.check(
        "overrides_not_passed_on",
        !dump.is_empty() && leaked.is_empty(),
        format!("leaked {leaked:?}; env {dump:?}"),
    );
    let _ = sys::mount("debugfs", "/sys/kernel/debug", "debugfs", 0, "");

    // 3. A directory under the blessed one is not the blessed directory:
    //    alice's own subdirectory (which she could fill), and root's.
    let d = blessed_dir();
    let sub = d.join("sub");
    let rsub = d.join("rsub");
    let setup = mkdir(&sub, 0o755, ALICE.uid, ALICE.gid)
        .and_then(|()| put(sub.join("pmod.ko"), &fixture("pmod"), 0o644, &ROOT))
        .and_then(|()| mkdir(&rsub, 0o755, 0, 0))
        .and_then(|()| put(rsub.join("pmod.ko"), &fixture("pmod"), 0o644, &ROOT));
    if r.check("subdirs_setup", setup.is_ok(), format!("{setup:?}")) {
        for (tag, p) in [("alice_subdir", &sub), ("root_subdir", &rsub)] {
            let path = p.join("pmod.ko").display().to_string();
            let out = sr(&ALICE, &[&path]);
            log_out(r, &format!("alice$ staprun {path}"), &out);
            r.check(&format!("{tag}_refused"), refused(&out), out.summary());
            check_nothing_loaded(r, tag, &[]);
        }
        // Through alice's directory and back up: the blessed file itself.
        let path = format!("{}/../pmod.ko", sub.display());
        let out = sr(&ALICE, &[&path]);
        log_out(r, &format!("alice$ staprun {path}"), &out);
        r.check(
            "dotdot_through_subdir_is_blessed_file",
            full_run(&out) || refused(&out),
            out.summary(),
        );
        check_nothing_loaded(r, "dotdot", &[]);
    }
    let _ = fs::remove_dir_all(&sub);
    let _ = fs::remove_dir_all(&rsub);

    // 4. -F (a descriptor injected into the setuid program) is a usage error.
    let cases: &[(User, &[&str])] = &[
        (ALICE, &["-F3", "pmod"]),
        (ALICE, &["-F", "3", "pmod"]),
        (ALICE, &["-vF3", "pmod"]),
        (ALICE, &["-F3", "-d", "pmod"]),
        (ALICE, &["-F3", "-A", "pmod"]),
        (ROOT, &["-F3", "pmod"]),
    ];
    for (user, args) in cases {
        let tag = format!("{}_{}", user.name, args.join("_").replace('-', ""));
        let out = sr(user, args);
        r.check(
            &format!("F_{tag}_usage_error"),
            out.code == Some(1) && out.stderr.contains("-F") && !out.stdout.contains(HELLO),
            out.summary(),
        );
        check_nothing_loaded(r, &format!("F_{tag}"), &[]);
    }
    let _ = fs::remove_dir_all("/tmp/x");
    check_nothing_loaded(r, "end", &[]);
}
