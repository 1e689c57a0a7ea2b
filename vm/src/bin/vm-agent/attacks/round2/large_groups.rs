//! Round 2, item 6: large groups.

use std::fs;
use std::os::unix::fs::chown;

use super::chmod;
use crate::attacks::common::{check_nothing_loaded, full_run, log_out, sr};
use crate::harness::{
    ALICE, BOB, Reporter, STAPDEV, blessed_dir, fixture, product_installed, publish, put,
};

pub(crate) fn large_groups(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let saved = fs::read_to_string("/etc/group").unwrap_or_default();
    let many: Vec<String> = (0..5000).map(|i| format!("member_{i:05}")).collect();
    let many = many.join(",");
    let grown: String = saved
        .lines()
        .map(|l| {
            if l.starts_with("stapusr:") || l.starts_with("stapdev:") || l.starts_with("stapsys:") {
                format!("{l},{many}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    if !r.check(
        "group_file_grown",
        fs::write("/etc/group", &grown).is_ok() && grown.len() > 2 * 65536,
        format!("{} bytes", grown.len()),
    ) {
        return;
    }
    let out = sr(&ALICE, &["pmod"]);
    log_out(r, "alice$ staprun pmod (5000 members in stapusr)", &out);
    r.check("stapusr_member_runs", full_run(&out), out.summary());
    let ex = sr(&ALICE, &["--explain", "pmod"]);
    r.check(
        "explain_names_stapusr",
        ex.code == Some(0) && ex.stdout.contains("stapusr"),
        ex.summary(),
    );
    // stapdev: any path.
    let _ = put("/tmp/elsewhere.ko", &fixture("pmod"), 0o644, &BOB);
    let out = sr(&BOB, &["/tmp/elsewhere.ko"]);
    log_out(
        r,
        "bob$ staprun /tmp/elsewhere.ko (5000 members in stapdev)",
        &out,
    );
    r.check(
        "stapdev_member_runs_any_path",
        full_run(&out),
        out.summary(),
    );
    // The 775 root:stapdev layout: a module owned by a stapdev member.
    let blessed = blessed_dir();
    let _ = chmod(&blessed, 0o775);
    let _ = chown(&blessed, Some(0), Some(STAPDEV));
    let _ = put(blessed.join("pmod.ko"), &fixture("pmod"), 0o644, &BOB);
    let out = sr(&ALICE, &["pmod"]);
    log_out(
        r,
        "alice$ staprun pmod (775 root:stapdev, owned by bob)",
        &out,
    );
    r.check("stapdev_owned_module_runs", full_run(&out), out.summary());
    let _ = chmod(&blessed, 0o755);
    let _ = chown(&blessed, Some(0), Some(0));
    publish("pmod");
    let _ = fs::write("/etc/group", saved);
    let _ = fs::remove_file("/tmp/elsewhere.ko");
    check_nothing_loaded(r, "end", &[]);
}
