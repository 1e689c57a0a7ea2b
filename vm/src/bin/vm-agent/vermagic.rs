//! Issue 13, item 4: a module built for another kernel release is refused
//! by staprun up front, with both releases named, for every caller (it is
//! a fact about the module, not a permission rule), and `--explain` says
//! so. The module here is the fixture `pmod` with the release in its
//! `vermagic=` rewritten to another one of the same length: with
//! modversions the kernel itself compares only the rest of vermagic (and
//! the symbol CRCs), so without staprun's check this copy would load.

use std::fs;
use std::path::Path;

use crate::attacks::{check_nothing_loaded, full_run, log_out, refused, sr};
use crate::harness::{
    ALICE, BOB, Out, ROOT, Reporter, Scenario, User, blessed_dir, fixture, product_installed,
    publish, put, sys,
};

pub const SCENARIOS: &[(&str, Scenario)] = &[("product_vermagic_mismatch", vermagic_mismatch)];

/// Another release of the same length: the last digit before the first
/// letter goes up by one (`6.1.0-57-cloud-amd64` -> `6.1.0-58-cloud-amd64`).
fn other_release(release: &str) -> Option<String> {
    let head = release
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(release.len());
    let at = release[..head].rfind(|c: char| c.is_ascii_digit())?;
    let d = release.as_bytes()[at] - b'0';
    let mut out = release.to_owned();
    out.replace_range(at..=at, &((d + 1) % 10).to_string());
    Some(out)
}

/// `image` with the release of its `vermagic=RELEASE ` rewritten to `to`
/// (same length, so nothing else in the image moves).
fn with_release(image: &[u8], from: &str, to: &str) -> Option<Vec<u8>> {
    let needle = format!("vermagic={from} ");
    if from.len() != to.len() {
        return None;
    }
    let at = image
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?;
    let mut out = image.to_vec();
    let start = at + "vermagic=".len();
    out[start..start + to.len()].copy_from_slice(to.as_bytes());
    Some(out)
}

/// One line of stderr names both releases, and it is the only line.
fn one_line_naming(out: &Out, a: &str, b: &str) -> bool {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines.len() == 1 && lines[0].contains(a) && lines[0].contains(b)
}

fn refused_for(r: &mut Reporter, tag: &str, user: &User, args: &[&str], rel: &str, other: &str) {
    let out = sr(user, args);
    log_out(
        r,
        &format!("{}$ staprun {}", user.name, args.join(" ")),
        &out,
    );
    r.check(
        &format!("{tag}_refused"),
        refused(&out) && one_line_naming(&out, rel, other),
        out.summary(),
    );
    check_nothing_loaded(r, tag, &[]);
    let mut explain = vec!["--explain"];
    explain.extend_from_slice(args);
    let out = sr(user, &explain);
    log_out(
        r,
        &format!("{}$ staprun {}", user.name, explain.join(" ")),
        &out,
    );
    r.check(
        &format!("{tag}_explain_says_it"),
        out.code == Some(1) && out.stdout.contains(rel) && out.stdout.contains(other),
        out.summary(),
    );
    check_nothing_loaded(r, &format!("{tag}_explain"), &[]);
}

fn vermagic_mismatch(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let rel = sys::kernel_release();
    let Some(other) = other_release(&rel) else {
        r.check("other_release", false, &rel);
        return;
    };
    r.log(&format!("running {rel}; the module will say {other}"));
    let Some(foreign) = with_release(&fixture("pmod"), &rel, &other) else {
        r.check(
            "fixture_names_the_running_release",
            false,
            format!("no `vermagic={rel} ` in /fixtures/pmod.ko"),
        );
        return;
    };
    let ko = blessed_dir().join("pmod.ko");
    if !r.check(
        "foreign_module_published",
        put(&ko, &foreign, 0o644, &ROOT).is_ok(),
        ko.display().to_string(),
    ) {
        return;
    }
    refused_for(r, "alice", &ALICE, &["pmod"], &rel, &other);
    refused_for(r, "bob", &BOB, &["pmod"], &rel, &other);
    // stapdev may load from anywhere: the refusal is no permission rule.
    let own = Path::new("/tmp/bob-pmod");
    let _ = fs::create_dir_all(own);
    let _ = std::os::unix::fs::chown(own, Some(BOB.uid), Some(BOB.gid));
    let bobs = own.join("pmod.ko");
    if r.check(
        "bob_copy_written",
        put(&bobs, &foreign, 0o644, &BOB).is_ok(),
        bobs.display().to_string(),
    ) {
        let p = bobs.display().to_string();
        refused_for(r, "bob_own_path", &BOB, &[&p], &rel, &other);
    }
    refused_for(r, "root", &ROOT, &["pmod"], &rel, &other);
    // The module built for this kernel still runs.
    publish("pmod");
    let out = sr(&ALICE, &["pmod"]);
    log_out(r, "alice$ staprun pmod (unmodified)", &out);
    r.check("unmodified_module_runs", full_run(&out), out.summary());
    check_nothing_loaded(r, "end", &[]);
}
