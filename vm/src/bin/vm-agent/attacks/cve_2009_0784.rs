//! CVE-2009-0784: the check/load race on a path the user controls.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use super::common::{
    EVIL, RACE_ATTEMPTS, RACE_MAX, Watch, audit_loads, check_nothing_loaded, hammer, helper_cmd,
    result_num, syslog_lines, syslog_start,
};
use super::helpers::STOP_FILE;
use crate::harness::{
    ALICE, Bg, Reporter, blessed_dir, fixture, mkdir, product_installed, publish, put, sha256,
};

pub(crate) fn cve_2009_0784(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    syslog_start(r);
    let good = publish("pmod");
    let good_sha = sha256(&fixture("pmod"));
    let race = Path::new("/home/alice/race");
    let _ = fs::remove_dir_all(race);
    let evil_dir = race.join("evil");
    let swap_dir = race.join("x");
    let a = (ALICE.uid, ALICE.gid);
    let setup = mkdir(race, 0o755, a.0, a.1)
        .and_then(|()| mkdir(&evil_dir, 0o755, a.0, a.1))
        .and_then(|()| mkdir(&swap_dir, 0o755, a.0, a.1))
        .and_then(|()| put(evil_dir.join("pmod.ko"), &fixture(EVIL), 0o644, &ALICE))
        .and_then(|()| put(swap_dir.join("pmod.ko"), &fixture(EVIL), 0o644, &ALICE))
        .and_then(|()| symlink(blessed_dir(), race.join("d")))
        .and_then(|()| symlink(&good, race.join("pmod.ko")))
        .and_then(|()| std::os::unix::fs::lchown(race.join("d"), Some(a.0), Some(a.1)))
        .and_then(|()| std::os::unix::fs::lchown(race.join("pmod.ko"), Some(a.0), Some(a.1)));
    if !r.check("race_setup", setup.is_ok(), format!("{setup:?}")) {
        return;
    }
    let s = |p: &Path| p.display().to_string();
    let ms = RACE_MAX.as_millis().to_string();
    let variants: [(&str, Vec<String>, String); 3] = [
        // A symlink alice owns, retargeted between the blessed module and hers.
        (
            "file_symlink",
            vec![
                "swap-link".into(),
                s(&race.join("pmod.ko")),
                s(&good),
                s(&evil_dir.join("pmod.ko")),
                ms.clone(),
            ],
            s(&race.join("pmod.ko")),
        ),
        // A directory symlink alice owns, retargeted between the blessed
        // directory and hers.
        (
            "dir_symlink",
            vec![
                "swap-link".into(),
                s(&race.join("d")),
                s(&blessed_dir()),
                s(&evil_dir),
                ms.clone(),
            ],
            s(&race.join("d/pmod.ko")),
        ),
        // The directory itself swapped atomically (RENAME_EXCHANGE) with a
        // symlink to the blessed directory.
        (
            "dir_exchange",
            vec!["exchange".into(), s(&race.join("d")), s(&swap_dir), ms],
            s(&race.join("d/pmod.ko")),
        ),
    ];
    for (tag, hargs, target) in variants {
        let mark = syslog_lines().len();
        let watch = Watch::start(&[EVIL], true);
        let hargs: Vec<&str> = hargs.iter().map(String::as_str).collect();
        let _ = fs::remove_file(STOP_FILE);
        let bg = Bg::start(helper_cmd(&ALICE, &hargs));
        let tally = hammer(&ALICE, &[&target, "records=1"], true);
        let swapper = bg.map(|b| b.wait(Duration::from_secs(10)));
        let rep = watch.finish();
        let loads = audit_loads(mark);
        let swaps = swapper.as_ref().map_or(0, |o| result_num(o, "swaps"));
        r.log(&format!(
            "{tag}: alice$ staprun {target} records=1 while swapping: {} attempts, {} complete runs (blessed bytes), {} refusals, {swaps} swaps, {} watch samples",
            tally.attempts, tally.ran, tally.refused, rep.samples
        ));
        for reason in &tally.reasons {
            r.log(&format!("  refusal: {reason}"));
        }
        r.check(
            &format!("{tag}_swapper_ran"),
            swapper.as_ref().is_ok_and(|o| o.code == Some(0)) && swaps > 0,
            swapper
                .map(|o| o.summary())
                .unwrap_or_else(|e| e.to_string()),
        );
        r.check(
            &format!("{tag}_attempts"),
            tally.attempts >= RACE_ATTEMPTS,
            format!("{} attempts", tally.attempts),
        );
        let evil_loads: Vec<&(String, String)> =
            loads.iter().filter(|(m, _)| m != "pmod").collect();
        r.check(
            &format!("{tag}_evil_never_loaded"),
            rep.modules.is_empty() && evil_loads.is_empty(),
            format!("seen {:?}; audit loads {evil_loads:?}", rep.modules),
        );
        r.check(
            &format!("{tag}_loads_are_the_blessed_bytes"),
            loads.iter().all(|(m, h)| m == "pmod" && *h == good_sha)
                && loads.len() as u64 >= tally.ran,
            format!("{} runs, audit loads {loads:?}", tally.ran),
        );
        r.check(
            &format!("{tag}_every_run_consistent"),
            tally.odd.is_empty(),
            tally.odd.join(" | "),
        );
        r.check(
            &format!("{tag}_nothing_as_root"),
            rep.root.is_empty(),
            rep.root.join(" | "),
        );
        if tag == "file_symlink" {
            // The module's directory is alice's, never the blessed one.
            r.check(
                "file_symlink_always_refused",
                tally.ran == 0 && tally.refused == tally.attempts,
                format!("{tally:?}"),
            );
        }
    }
    let _ = fs::remove_dir_all(race);
    check_nothing_loaded(r, "end", &[]);
}
