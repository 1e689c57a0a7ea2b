//! CVE-2010-4170: the environment reaching root (modprobe, `SYSTEMTAP_*`).

use std::fs;

use super::common::{
    EVIL, Watch, check_nothing_loaded, full_run, log_out, refused, script, sr_env,
};
use crate::harness::{
    self, ALICE, BOB, Reporter, SAM, STAPIO, STAPRUN, User, fixture, mkdir, product_installed,
    publish, put,
};

pub(crate) fn cve_2010_4170(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    for d in ["/tmp/evil", "/tmp/evilrt"] {
        let _ = fs::remove_dir_all(d);
    }
    let setup = mkdir("/tmp/evil", 0o755, ALICE.uid, ALICE.gid)
        .and_then(|()| mkdir("/tmp/evilrt/uprobes", 0o755, ALICE.uid, ALICE.gid))
        .and_then(|()| {
            let conf = ["uprobes", "pmod", EVIL]
                .iter()
                .map(|m| format!("install {m} /bin/sh -c \"id > /tmp/pwned-modprobe\"\n"))
                .collect::<String>();
            put("/tmp/x.conf", conf.as_bytes(), 0o644, &ALICE)
        })
        .and_then(|()| {
            script(
                "/tmp/evil/stapio",
                &format!("id > /tmp/pwned-stapio\nexec {STAPIO} \"$@\""),
                &ALICE,
            )
        })
        .and_then(|()| {
            script(
                "/tmp/evil/staprun",
                &format!("id > /tmp/pwned-staprun\nexec {STAPRUN} \"$@\""),
                &ALICE,
            )
        })
        .and_then(|()| {
            script(
                "/tmp/evilrt/stapio",
                &format!("id > /tmp/pwned-runtime\nexec {STAPIO} \"$@\""),
                &ALICE,
            )
        })
        .and_then(|()| {
            put(
                "/tmp/evilrt/uprobes/uprobes.ko",
                &fixture(EVIL),
                0o644,
                &ALICE,
            )
        });
    if !r.check("env_setup", setup.is_ok(), format!("{setup:?}")) {
        return;
    }
    let env: &[(&str, &str)] = &[
        ("MODPROBE_OPTIONS", "-C /tmp/x.conf"),
        ("SYSTEMTAP_STAPIO", "/tmp/evil/stapio"),
        ("SYSTEMTAP_STAPRUN", "/tmp/evil/staprun"),
        ("SYSTEMTAP_RUNTIME", "/tmp/evilrt"),
    ];
    let watch = Watch::start(&[EVIL], true);
    // (user, args, must run): the exploit's `staprun -u <random>`, -u with
    // and without a path, and plain runs that must simply work.
    let cases: &[(User, &[&str], bool)] = &[
        (ALICE, &["-u", "x7Kq2"], false),
        (ALICE, &["-u", "pmod"], false),
        (ALICE, &["-ux7Kq2", "pmod"], false),
        (ALICE, &["pmod"], true),
        (SAM, &["-u", "pmod"], false),
        (BOB, &["-u", "pmod"], false),
        (BOB, &["pmod"], true),
    ];
    for (user, args, runs) in cases {
        let tag = format!("{}_{}", user.name, args.join("_").replace(['-', '/'], ""));
        let out = sr_env(user, args, env);
        log_out(
            r,
            &format!("{}$ <evil env> staprun {}", user.name, args.join(" ")),
            &out,
        );
        if *runs {
            r.check(
                &format!("{tag}_runs_normally"),
                full_run(&out),
                out.summary(),
            );
        } else {
            r.check(&format!("{tag}_refused"), refused(&out), out.summary());
        }
        check_nothing_loaded(r, &tag, &[]);
    }
    let rep = watch.finish();
    let mut written = Vec::new();
    let mut by_root = Vec::new();
    if let Ok(rd) = fs::read_dir("/tmp") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pwned-") {
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                if text.contains("uid=0") || harness::stat(e.path()).is_some_and(|s| s.1 == 0) {
                    by_root.push(format!("{name}: {text}"));
                }
                written.push(format!("{name}: {}", text.trim()));
            }
        }
    }
    r.check(
        "nothing_written_by_root",
        by_root.is_empty(),
        by_root.join(" | "),
    );
    r.check(
        "no_override_honoured_at_all",
        written.is_empty(),
        written.join(" | "),
    );
    r.check(
        "no_root_process_but_staprun",
        rep.root.is_empty(),
        rep.root.join(" | "),
    );
    r.check(
        "evil_uprobes_never_loaded",
        rep.modules.is_empty(),
        format!("{:?}", rep.modules),
    );
    check_nothing_loaded(r, "end", &[]);
}
