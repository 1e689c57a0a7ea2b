//! `debian_install`: our package installed next to Debian's systemtap.

use std::path::Path;
use std::time::Duration;

use crate::harness::{self, Reporter, STAPRUN};

use super::{C_STAPRUN, SHARE, as_user, dpkg_status, log_out, our_journal, root};

pub(crate) fn install(r: &mut Reporter) {
    for pkg in ["staprun-rs", "systemtap", "systemtap-runtime"] {
        r.check_eq(
            &format!("{pkg}_installed"),
            dpkg_status(pkg),
            "ii".to_owned(),
        );
    }
    r.check_eq(
        "ours_04110_root_stapusr",
        harness::stat(STAPRUN).map(|(m, u, _)| (m, u)),
        Some((0o4110, 0)),
    );
    let c = harness::stat(C_STAPRUN);
    r.log(&format!("C staprun at {C_STAPRUN}: {c:?}"));
    r.check("c_staprun_kept", c.is_some(), format!("{c:?}"));
    let v = root(&[STAPRUN, "-V"]);
    r.check(
        "usr_bin_staprun_is_ours",
        v.stdout.contains("for SystemTap 4.x and 5.x modules"),
        v.summary(),
    );
    let div = root(&["dpkg-divert", "--list", "/usr/bin/staprun"]);
    r.check(
        "diverted_by_staprun_rs",
        div.stdout.contains("by staprun-rs"),
        div.summary(),
    );
    // An administrator publishes a module; a stapusr member runs it by name.
    let blessed = format!("/lib/modules/{}/systemtap", harness::sys::kernel_release());
    let _ = std::fs::create_dir_all(&blessed);
    let copy = std::fs::copy(format!("{SHARE}/pmod.ko"), format!("{blessed}/pmod.ko"));
    r.check("published_pmod", copy.is_ok(), format!("{copy:?}"));
    let before = our_journal().len();
    let out = as_user("alice", "staprun pmod", Duration::from_secs(120));
    log_out(r, "alice$ staprun pmod", &out);
    r.check(
        "stapusr_runs_published_module",
        out.code == Some(0) && out.stdout.contains("pmod: hello from begin"),
        out.summary(),
    );
    let lines: Vec<String> = our_journal().into_iter().skip(before).collect();
    r.log(&format!("journal: {lines:?}"));
    for tag in ["LOADING", "LOAD", "UNLOAD"] {
        r.check(
            &format!("journal_{}", tag.to_lowercase()),
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{tag} ")) && l.contains("user=\"alice\"")),
            format!("{lines:?}"),
        );
    }
    let _ = std::fs::remove_file(format!("{blessed}/pmod.ko"));
    let _ = Path::new(&blessed);
}
