//! CVE-2011-2502: `-u` loads any module as "uprobes".

use std::fs;

use super::common::{EVIL, Watch, check_nothing_loaded, full_run, log_out, refused, sr};
use crate::harness::{
    self, ALICE, BOB, Reporter, SAM, User, fixture, product_installed, publish, put, rmmod,
};

pub(crate) fn cve_2011_2502(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let blessed_evil = publish(EVIL);
    let setup = put("/tmp/evil.ko", &fixture(EVIL), 0o644, &ALICE);
    if !r.check("uprobes_setup", setup.is_ok(), format!("{setup:?}")) {
        return;
    }
    let in_blessed = format!("-u{}", blessed_evil.display());
    let watch = Watch::start(&[EVIL], true);
    let cases: &[(User, &[&str])] = &[
        (ALICE, &["-u/tmp/evil.ko", "pmod"]),
        (SAM, &["-u/tmp/evil.ko", "pmod"]),
        (ALICE, &[&in_blessed, "pmod"]),
        (ALICE, &["-u", "/tmp/evil.ko"]),
    ];
    for (user, args) in cases {
        let tag = format!(
            "{}_{}",
            user.name,
            args.join("_").replace(['-', '/', '.'], "")
        );
        let out = sr(user, args);
        log_out(
            r,
            &format!("{}$ staprun {}", user.name, args.join(" ")),
            &out,
        );
        r.check(&format!("{tag}_refused"), refused(&out), out.summary());
        check_nothing_loaded(r, &tag, &[]);
    }
    let rep = watch.finish();
    r.check(
        "evil_never_loaded",
        rep.modules.is_empty(),
        format!("{:?}", rep.modules),
    );
    r.check("nothing_as_root", rep.root.is_empty(), rep.root.join(" | "));
    // stapdev may: the module runs, and the "uprobes" module stays loaded.
    let out = sr(&BOB, &["-u/tmp/evil.ko", "pmod"]);
    log_out(r, "bob$ staprun -u/tmp/evil.ko pmod", &out);
    r.check("bob_u_allowed_runs", full_run(&out), out.summary());
    r.check("bob_u_loaded_uprobes", harness::is_loaded(EVIL), "");
    let out = rmmod(EVIL);
    r.check("root_rmmod_uprobes", out.code == Some(0), out.summary());
    let _ = fs::remove_file("/tmp/evil.ko");
    check_nothing_loaded(r, "end", &[]);
}
