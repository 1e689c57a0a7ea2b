//! Round 2, item 2: the caller's path is resolved with the caller's rights.

use std::fs;
use std::os::unix::fs::chown;

use super::chmod;
use crate::attacks::common::{check_nothing_loaded, full_run, log_out, refused, sr};
use crate::harness::{ALICE, Reporter, product_installed, publish, sys};

pub(crate) fn caller_path(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let rel = sys::kernel_release();
    let _ = chmod("/root", 0o700);
    let _ = chown("/root", Some(0), Some(0));
    let through_secret = format!("/root/secret/../../lib/modules/{rel}/systemtap/pmod.ko");
    let answer = |r: &mut Reporter, exists: bool, args: &[&str]| {
        if exists {
            let _ = fs::create_dir_all("/root/secret");
        } else {
            let _ = fs::remove_dir("/root/secret");
        }
        let out = sr(&ALICE, args);
        log_out(
            r,
            &format!(
                "alice$ staprun {} (/root/secret {})",
                args.join(" "),
                if exists { "exists" } else { "absent" }
            ),
            &out,
        );
        out
    };
    let with = answer(r, true, &["--explain", &through_secret]);
    let without = answer(r, false, &["--explain", &through_secret]);
    r.check(
        "explain_is_no_oracle",
        with.code == without.code && with.stdout == without.stdout,
        format!("with: {} | without: {}", with.summary(), without.summary()),
    );
    r.check(
        "explain_refuses_a_path_the_caller_cannot_resolve",
        with.code == Some(1),
        with.summary(),
    );
    let load = answer(r, true, &[&through_secret]);
    r.check(
        "load_through_unsearchable_dir_refused",
        refused(&load),
        load.summary(),
    );
    check_nothing_loaded(r, "secret", &[]);
    // /proc magic links are followed with the caller's rights only.
    let magic = format!("/proc/1/root/lib/modules/{rel}/systemtap/pmod.ko");
    let out = sr(&ALICE, &["--explain", &magic]);
    log_out(r, &format!("alice$ staprun --explain {magic}"), &out);
    r.check(
        "magic_link_not_followed_for_caller",
        out.code == Some(1),
        out.summary(),
    );
    let out = sr(&ALICE, &[&magic]);
    r.check("magic_link_load_refused", refused(&out), out.summary());
    check_nothing_loaded(r, "magic", &[]);
    // The ordinary ways still work.
    let out = sr(&ALICE, &["--explain", "pmod"]);
    r.check(
        "explain_by_name_allowed",
        out.code == Some(0),
        out.summary(),
    );
    let full = format!("/lib/modules/{rel}/systemtap/pmod.ko");
    let out = sr(&ALICE, &[&full]);
    r.check("load_by_full_path_runs", full_run(&out), out.summary());
    check_nothing_loaded(r, "end", &[]);
}
