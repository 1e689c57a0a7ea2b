//! Who may load what from where (the permission table), and who may unload.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, chown, symlink};
use std::path::Path;

use super::common::{
    QUICK, RUN, STARTUP, check_full_run, force_unload, signal_stapio, staprun, staprun_bg,
};
use crate::harness::{
    self, ALICE, BOB, CAROL, HELLO, ROOT, Reporter, SAM, STAPDEV, blessed_dir, insmod_as,
    install_fixture, prepare_blessed_dir, product_installed, publish, rmmod,
};

/// Where the module is put for one row of the permission table.
#[derive(Clone, Copy, Debug)]
enum Placement {
    Blessed,
    Elsewhere,
    SymlinkOut,
    DirWorldWritable,
    DirNotRootOwned,
    Dir775RootStapdevBobModule,
    ModuleWorldWritable,
}

const ELSEWHERE: &str = "/tmp/x/pmod.ko";

fn place(p: Placement) -> Result<&'static str, String> {
    let d = blessed_dir();
    let _ = fs::remove_dir_all(&d);
    prepare_blessed_dir()?;
    let _ = fs::remove_dir_all("/tmp/x");
    let ko = d.join("pmod.ko");
    let e = |e: std::io::Error| e.to_string();
    let mode = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).map_err(e);
    match p {
        Placement::Blessed => {
            install_fixture("pmod", &ko, 0o644, 0, 0).map_err(e)?;
            Ok("pmod")
        }
        Placement::Elsewhere | Placement::SymlinkOut => {
            fs::create_dir_all("/tmp/x").map_err(e)?;
            mode(Path::new("/tmp/x"), 0o755)?;
            install_fixture("pmod", Path::new(ELSEWHERE), 0o644, 0, 0).map_err(e)?;
            if matches!(p, Placement::SymlinkOut) {
                symlink(ELSEWHERE, &ko).map_err(e)?;
                Ok("pmod")
            } else {
                Ok(ELSEWHERE)
            }
        }
        Placement::DirWorldWritable => {
            install_fixture("pmod", &ko, 0o644, 0, 0).map_err(e)?;
            mode(&d, 0o777)?;
            Ok("pmod")
        }
        Placement::DirNotRootOwned => {
            install_fixture("pmod", &ko, 0o644, 0, 0).map_err(e)?;
            chown(&d, Some(BOB.uid), Some(BOB.gid)).map_err(e)?;
            Ok("pmod")
        }
        Placement::Dir775RootStapdevBobModule => {
            chown(&d, Some(0), Some(STAPDEV)).map_err(e)?;
            mode(&d, 0o775)?;
            install_fixture("pmod", &ko, 0o644, BOB.uid, BOB.gid).map_err(e)?;
            Ok("pmod")
        }
        Placement::ModuleWorldWritable => {
            install_fixture("pmod", &ko, 0o666, 0, 0).map_err(e)?;
            Ok("pmod")
        }
    }
}

pub fn permission_table(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    use Placement::*;
    let placements = [
        Blessed,
        Elsewhere,
        SymlinkOut,
        DirWorldWritable,
        DirNotRootOwned,
        Dir775RootStapdevBobModule,
        ModuleWorldWritable,
    ];
    for p in placements {
        let arg = match place(p) {
            Ok(a) => a,
            Err(e) => {
                r.check(&format!("place_{p:?}"), false, e);
                continue;
            }
        };
        for user in [ROOT, BOB, SAM, ALICE, CAROL] {
            let tag = format!("{}_{p:?}", user.name);
            let out = staprun(&user, &[arg]);
            if user.uid == CAROL.uid {
                let denied = out.code.is_none() && out.stderr.contains("Permission denied");
                r.check(&format!("{tag}_cannot_exec"), denied, out.summary());
                r.check(
                    &format!("{tag}_not_loaded"),
                    !harness::is_loaded("pmod"),
                    "",
                );
                continue;
            }
            let allowed = user.uid == 0
                || user.uid == BOB.uid
                || matches!(p, Blessed | Dir775RootStapdevBobModule);
            if allowed {
                check_full_run(r, &format!("{tag}_allowed"), "pmod", &out);
            } else {
                let refused = out.code.is_some_and(|c| c != 0) && !out.stdout.contains(HELLO);
                r.check(&format!("{tag}_refused"), refused, out.summary());
                r.check(
                    &format!("{tag}_refused_not_loaded"),
                    !harness::is_loaded("pmod"),
                    "",
                );
                force_unload("pmod");
            }
        }
    }
    let _ = fs::remove_dir_all("/tmp/x");
    let _ = place(Blessed);
}

pub fn unload_refusals(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    // A module that is not a SystemTap module, loaded by root.
    let plain = blessed_dir().join("plainmod.ko");
    let _ = install_fixture("plainmod", &plain, 0o644, 0, 0);
    let out = insmod_as(ROOT.creds(), &plain, &[]);
    if r.check("plainmod_loaded", out.code == Some(0), out.summary()) {
        for user in [ROOT, ALICE] {
            let out = staprun(&user, &["-d", "plainmod"]);
            r.check(
                &format!("{}_d_plainmod_refused", user.name),
                out.code.is_some_and(|c| c != 0),
                out.summary(),
            );
            r.check(
                &format!("{}_d_plainmod_still_loaded", user.name),
                harness::is_loaded("plainmod"),
                "",
            );
        }
        let out = rmmod("plainmod");
        r.check("plainmod_rmmod", out.code == Some(0), out.summary());
    }

    // Another user's (detached) module.
    publish("pmod");
    let out = staprun(&BOB, &["-L", "pmod", "run_ms=200"]);
    if r.check(
        "bob_L_pmod",
        out.code == Some(0) && harness::is_loaded("pmod"),
        out.summary(),
    ) {
        r.check_eq(
            "bob_cmd_owner",
            harness::stat("/proc/systemtap/pmod/.cmd").map(|s| s.1),
            Some(BOB.uid),
        );
        for user in [ALICE, SAM] {
            let out = staprun(&user, &["-d", "pmod"]);
            r.check(
                &format!("{}_d_bobs_module_refused", user.name),
                out.code.is_some_and(|c| c != 0),
                out.summary(),
            );
            r.check(
                &format!("{}_d_bobs_module_still_loaded", user.name),
                harness::is_loaded("pmod"),
                "",
            );
        }
        let out = staprun(&BOB, &["-d", "pmod"]);
        r.check(
            "bob_d_own_module",
            out.code == Some(0) && !harness::is_loaded("pmod"),
            out.summary(),
        );
    }
    force_unload("pmod");

    // An attached module (live stapio).
    let Some(mut bg) = staprun_bg(&ALICE, &["pmod", "run_ms=100"]) else {
        r.check("attached_start", false, "spawn failed");
        return;
    };
    if r.check(
        "attached_running",
        bg.wait_stdout(HELLO, STARTUP),
        bg.stderr(),
    ) {
        for user in [ALICE, ROOT] {
            let out = staprun(&user, &["-d", "pmod"]);
            r.check(
                &format!("{}_d_attached_refused", user.name),
                out.code.is_some_and(|c| c != 0),
                out.summary(),
            );
            r.check(
                &format!("{}_d_attached_still_loaded", user.name),
                harness::is_loaded("pmod"),
                "",
            );
        }
    }
    let sent = signal_stapio(r, "attached_stapio_pid", libc::SIGINT);
    let out = bg.wait(if sent { RUN } else { QUICK });
    check_full_run(r, "attached_sigint", "pmod", &out);
}
