//! CVE-2010-4171: unloading modules that are not yours.

use std::fs;
use std::path::Path;

use super::common::{EVIL, check_nothing_loaded, cmd_owner, log_out, refused, sr};
use crate::harness::{
    self, ALICE, BOB, FIXTURES, ROOT, Reporter, SAM, User, blessed_dir, fixture, insmod_as,
    product_installed, publish, put, renamed, rmmod,
};

pub(crate) fn cve_2010_4171(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let out = insmod_as(ROOT.creds(), &Path::new(FIXTURES).join("plainmod.ko"), &[]);
    if !r.check(
        "root_loads_plainmod",
        out.code == Some(0) && harness::is_loaded("plainmod"),
        out.summary(),
    ) {
        return;
    }
    for user in [ALICE, BOB, SAM, ROOT] {
        let out = sr(&user, &["-d", "plainmod"]);
        r.check(
            &format!("{}_d_plainmod_refused", user.name),
            refused(&out),
            out.summary(),
        );
        r.check(
            &format!("{}_d_plainmod_still_loaded", user.name),
            harness::is_loaded("plainmod"),
            "",
        );
    }
    for user in [ALICE, BOB] {
        let out = sr(&user, &["-d", "*"]);
        log_out(r, &format!("{}$ staprun -d '*'", user.name), &out);
        r.check(
            &format!("{}_d_star_leaves_plainmod", user.name),
            harness::is_loaded("plainmod") && out.signal.is_none() && !out.timed_out,
            out.summary(),
        );
    }

    // bob's detached module: alice may neither unload nor attach to it.
    let out = sr(&BOB, &["-L", "pmod", "run_ms=200"]);
    let bobs = r.check(
        "bob_L_pmod",
        out.code == Some(0) && harness::is_loaded("pmod"),
        out.summary(),
    );
    if bobs {
        let cases: &[(User, &[&str], bool)] = &[
            (ALICE, &["-d", "pmod"], true),
            (SAM, &["-d", "pmod"], true),
            (ALICE, &["-A", "pmod"], true),
            (ALICE, &["-d", "*"], false),
        ];
        for (user, args, must_fail) in cases {
            let tag = format!(
                "{}_{}_bobs",
                user.name,
                args.join("").replace(['-', '*'], "")
            );
            let out = sr(user, args);
            if *must_fail {
                r.check(&format!("{tag}_refused"), refused(&out), out.summary());
            }
            r.check(
                &format!("{tag}_still_loaded_and_bobs"),
                harness::is_loaded("pmod") && cmd_owner("pmod") == Some(BOB.uid),
                format!("owner {:?}; {}", cmd_owner("pmod"), out.summary()),
            );
        }
    }

    // The EEXIST path: loading a module whose name is taken must never
    // unload the module that has the name.
    let plain_named = renamed(&fixture(EVIL), "plainmod").unwrap_or_default();
    let p = blessed_dir().join("plainmod.ko");
    let put_ok = !plain_named.is_empty() && put(&p, &plain_named, 0o644, &ROOT).is_ok();
    if r.check("eexist_module_made", put_ok, p.display().to_string()) {
        let out = sr(&ALICE, &["plainmod"]);
        log_out(
            r,
            "alice$ staprun plainmod   (name taken by root's plainmod)",
            &out,
        );
        r.check(
            "eexist_plainmod_refused",
            refused(&out) && out.stderr.contains("exists"),
            out.summary(),
        );
        r.check(
            "eexist_plainmod_still_loaded",
            harness::is_loaded("plainmod"),
            "",
        );
    }
    if bobs {
        let out = sr(&ALICE, &["pmod"]);
        r.check(
            "eexist_bobs_pmod_refused",
            refused(&out) && out.stderr.contains("exists"),
            out.summary(),
        );
        r.check(
            "eexist_bobs_pmod_untouched",
            harness::is_loaded("pmod") && cmd_owner("pmod") == Some(BOB.uid),
            format!("owner {:?}", cmd_owner("pmod")),
        );
        let out = sr(&BOB, &["-d", "pmod"]);
        r.check(
            "bob_d_own_module",
            out.code == Some(0) && !harness::is_loaded("pmod"),
            out.summary(),
        );
    }
    let out = rmmod("plainmod");
    r.check("root_rmmod_plainmod", out.code == Some(0), out.summary());
    let _ = fs::remove_file(&p);
    check_nothing_loaded(r, "end", &[]);
}
