//! CVE-2011-2503: the module file changes while it is loaded.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, chown};
use std::time::Duration;

use super::common::{
    EVIL, RACE_ATTEMPTS, RACE_MAX, Watch, audit_loads, check_nothing_loaded, hammer, helper_cmd,
    kernel_trouble, result_num, syslog_lines, syslog_start,
};
use super::helpers::STOP_FILE;
use crate::harness::{
    ALICE, BOB, Bg, ROOT, Reporter, STAPDEV, blessed_dir, fixture, prepare_blessed_dir,
    product_installed, put, sha256,
};

pub(crate) fn cve_2011_2503(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    syslog_start(r);
    // Two images of one length, so an in-place rewrite never changes the size.
    let (mut a, mut b) = (fixture("pmod"), fixture(EVIL));
    let len = a.len().max(b.len());
    a.resize(len, 0);
    b.resize(len, 0);
    let (sha_a, sha_b) = (sha256(&a), sha256(&b));
    let d = blessed_dir();
    let ko = d.join("pmod.ko");
    let setup = put("/tmp/A.ko", &a, 0o644, &ROOT)
        .and_then(|()| put("/tmp/B.ko", &b, 0o644, &ROOT))
        .and_then(|()| chown(&d, Some(0), Some(STAPDEV)))
        .and_then(|()| fs::set_permissions(&d, fs::Permissions::from_mode(0o775)));
    if !r.check(
        "layout_775_root_stapdev",
        setup.is_ok(),
        format!("{setup:?}"),
    ) {
        return;
    }
    let ms = RACE_MAX.as_millis().to_string();
    let kos = ko.display().to_string();
    for mode in ["rename", "inplace"] {
        let _ = fs::remove_file(&ko);
        if let Err(e) = put(&ko, &a, 0o644, &BOB) {
            r.check(&format!("{mode}_setup"), false, e.to_string());
            continue;
        }
        let mark = syslog_lines().len();
        let watch = Watch::start(&[], true);
        let _ = fs::remove_file(STOP_FILE);
        let bg = Bg::start(helper_cmd(
            &BOB,
            &["rewrite", &kos, "/tmp/A.ko", "/tmp/B.ko", &ms, mode],
        ));
        let tally = hammer(&ALICE, &["pmod", "records=1"], false);
        let writer = bg.map(|b| b.wait(Duration::from_secs(10)));
        let rep = watch.finish();
        let loads = audit_loads(mark);
        let (mut na, mut nb) = (0, 0);
        let mut mixed = Vec::new();
        for (m, h) in &loads {
            if m == "pmod" && *h == sha_a {
                na += 1;
            } else if m == EVIL && *h == sha_b {
                nb += 1;
            } else {
                mixed.push(format!("{m} {h}"));
            }
        }
        let writes = writer.as_ref().map_or(0, |o| result_num(o, "writes"));
        r.log(&format!(
            "{mode}: bob rewrote pmod.ko {writes} times; alice ran staprun pmod {} times: {} complete runs, {} refusals; loaded {na} x pmod bytes, {nb} x fixture_b bytes, {} other",
            tally.attempts,
            tally.ran,
            tally.refused,
            mixed.len()
        ));
        for reason in &tally.reasons {
            r.log(&format!("  refusal: {reason}"));
        }
        r.check(
            &format!("{mode}_writer_ran"),
            writer.as_ref().is_ok_and(|o| o.code == Some(0)) && writes > 0,
            writer
                .map(|o| o.summary())
                .unwrap_or_else(|e| e.to_string()),
        );
        r.check(
            &format!("{mode}_attempts"),
            tally.attempts >= RACE_ATTEMPTS,
            format!("{tally:?}"),
        );
        r.check(
            &format!("{mode}_every_load_is_one_whole_file"),
            mixed.is_empty(),
            format!("loads not matching pmod.ko or fixture_b.ko: {mixed:?}"),
        );
        r.check(
            &format!("{mode}_every_run_accounted"),
            loads.len() as u64 >= tally.ran,
            format!("{} complete runs, {} audited loads", tally.ran, loads.len()),
        );
        r.check(
            &format!("{mode}_every_run_consistent"),
            tally.odd.is_empty(),
            tally.odd.join(" | "),
        );
        r.check(
            &format!("{mode}_nothing_as_root"),
            rep.root.is_empty(),
            rep.root.join(" | "),
        );
    }
    let trouble = kernel_trouble();
    r.check("kernel_log_clean", trouble.is_empty(), trouble.join(" | "));
    let _ = fs::remove_dir_all(&d);
    let _ = prepare_blessed_dir();
    check_nothing_loaded(r, "end", &[]);
}
