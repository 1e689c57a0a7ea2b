//! `deb-test`: the package next to Debian's systemtap-runtime and systemtap, with the real dpkg
//! and apt, in a Debian bookworm chroot (the diversion scheme is in docs/packaging.md).
//!
//! ```text
//! target/deb-chroot/bookworm/       debootstrap --variant=minbase (cached, never changed; built in
//!                                   .bookworm.tmp-PID and renamed into place when complete)
//! target/deb-chroot/run-PID/        this run's copy of it (removed when the run passes)
//! target/deb-chroot/run-PID.log     every command run in the copy, with its output
//! target/deb-chroot/apt-archives/   the copies' /var/cache/apt/archives (downloads are kept)
//! ```
//!
//! Every command in a chroot runs in a mount namespace of its own (unshare), in which /proc and
//! the archive directory are mounted: the mounts end with the command, also when it fails or is
//! killed, so nothing stays mounted on the host (the last check says so).
//!
//! The steps (each prints one line per check and stops at the first mismatch):
//! 1. without systemtap-runtime: install ours, purge it;
//! 2. systemtap-runtime from the archive (its staprun's bytes, mode, owner and statoverride are
//!    recorded), then ours with `apt-get install ./staprun-rs_*.deb`;
//! 3. `apt-get install --reinstall systemtap-runtime`; ours reinstalled; a newer version of ours;
//! 4. remove ours; install and purge; the same with an administrator's override that takes the
//!    setuid bit away from the C staprun; the override a purged systemtap-runtime leaves behind;
//!    systemtap-runtime configured before ours in one dpkg run;
//! 5. `apt-get install systemtap` (the translator) with ours installed;
//! 6. the unit staprun@.service (checked at every install above: the packaged bytes, 0644
//!    root:root; gone at every remove and purge) with systemd installed in the chroot:
//!    `systemd-analyze verify` of an instance configured with the packaged example drop-in, and
//!    `systemctl enable`/`disable` of it (systemd is not running there: nothing is started).

mod base;
mod checks;
mod scenario;
mod snap;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::deb;
use crate::chroot::{Chroot, mounts_under, remove_tree};
use crate::cmd::{self, cmd, is_root};
use crate::error::{Error, Result, bail};
use crate::files;
pub use base::base_chroot;
use checks::Run;

const BIN: &str = "/usr/bin/staprun";
const BIN_C: &str = "/usr/bin/staprun.systemtap";
const MAN: &str = "/usr/share/man/man8/staprun.8.gz";
const MAN_C: &str = "/usr/share/man/man8/staprun.systemtap.8.gz";
const STAPIO: &str = "/usr/libexec/staprun/stapio";
const STATE_DIR: &str = "/var/lib/staprun-rs";
const UNIT: &str = "/lib/systemd/system/staprun@.service";
const EXAMPLE: &str = "/usr/share/doc/staprun-rs/examples/staprun@pmod.service.d/override.conf";
const DIVERSIONS: [&str; 2] = [
    "diversion of /usr/bin/staprun to /usr/bin/staprun.systemtap by staprun-rs",
    "diversion of /usr/share/man/man8/staprun.8.gz to /usr/share/man/man8/staprun.systemtap.8.gz by staprun-rs",
];

/// target/deb-chroot.
pub fn top_dir() -> PathBuf {
    vm::target_dir().join("deb-chroot")
}

/// Removes what runs that are no longer alive left (their copies, logs, partial chroots).
fn clean_stale(top: &Path) -> Result<()> {
    let me = std::process::id();
    for p in files::read_dir(top)? {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(rest) = name
            .strip_prefix("run-")
            .or_else(|| name.strip_prefix(&format!(".{}.tmp-", base::SUITE)))
        else {
            continue;
        };
        let pid: u32 = rest.trim_end_matches(".log").parse().unwrap_or(0);
        if pid == me || (pid != 0 && Path::new(&format!("/proc/{pid}")).exists()) {
            continue;
        }
        remove_tree(&p)?;
    }
    Ok(())
}

/// A copy of `deb` with the version `VERSION+debtest1`, written to `dir`.
fn newer_deb(deb: &Path, dir: &Path) -> Result<(String, String)> {
    let x = dir.join("repack");
    remove_tree(&x)?;
    let sh = cmd::shell()?;
    cmd::output(cmd!(sh, "dpkg-deb -R {deb} {x}"))?;
    let control = x.join("DEBIAN/control");
    let text = files::read_to_string(&control)?;
    let old = format!("Version: {}\n", stap_common::VERSION);
    let version = format!("{}+debtest1", stap_common::VERSION);
    if !text.contains(&old) {
        bail!("{} has no {old:?}", control.display());
    }
    files::write(
        &control,
        text.replace(&old, &format!("Version: {version}\n")),
    )?;
    let name = deb
        .file_name()
        .map(|n| n.to_string_lossy().replace(stap_common::VERSION, &version))
        .unwrap_or_default();
    let to = dir.join(&name);
    cmd::output(cmd!(
        sh,
        "dpkg-deb --root-owner-group -Zxz --build {x} {to}"
    ))?;
    remove_tree(&x)?;
    Ok((name, version))
}

/// `cargo xtask deb-test`.
pub fn deb_test() -> Result<()> {
    let t0 = Instant::now();
    if !is_root() {
        bail!("deb-test needs root (debootstrap, chroot, dpkg in the chroot)");
    }
    let deb = deb::deb()?;
    let t_deb = t0.elapsed();
    let stage = deb::stage_dir(&deb::dpkg_arch()?);
    let top = top_dir();
    files::mkdir(&top)?;
    let top = fs::canonicalize(&top).map_err(|e| Error::io("resolve", &top, e))?;
    clean_stale(&top)?;
    let base = base_chroot(&top)?;
    let pid = std::process::id();
    let work = top.join(format!("run-{pid}"));
    let sh = cmd::shell()?;
    cmd::output(cmd!(sh, "cp -a --reflink=auto {base} {work}"))?;
    let t_chroot = t0.elapsed();
    let archives = top.join("apt-archives");
    files::mkdir(&archives.join("partial"))?;
    let deb_name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    files::copy(&deb, &work.join("tmp").join(&deb_name))?;
    let (newer, newer_version) = newer_deb(&deb, &work.join("tmp"))?;
    let log_path = top.join(format!("run-{pid}.log"));
    let log = files::create(&log_path)?;
    let mut run = Run {
        ch: Chroot {
            root: work.clone(),
            archives: Some(archives),
            log: Some(log),
        },
        bin: files::read(&stage.join("usr/bin/staprun"))?,
        stapio: files::read(&stage.join("usr/libexec/staprun/stapio"))?,
        man: files::read(&stage.join("usr/share/man/man8/staprun.8.gz"))?,
        unit: files::read(&stage.join(deb::UNIT_DIR).join(super::install::UNIT_NAME))?,
        deb: deb_name,
        newer,
        newer_version,
        checks: 0,
    };
    let result = run.scenario().and_then(|()| {
        let left = mounts_under(&top);
        run.check(
            "no mount left under target/deb-chroot",
            left.is_empty(),
            &format!("{left:?}"),
        )
    });
    eprintln!(
        "xtask: deb-test wall time {:.1}s (deb {:.1}s, chroot {:.1}s, checks {:.1}s)",
        t0.elapsed().as_secs_f64(),
        t_deb.as_secs_f64(),
        (t_chroot - t_deb).as_secs_f64(),
        (t0.elapsed() - t_chroot).as_secs_f64()
    );
    match result {
        Ok(()) => {
            println!(
                "deb-test: all {} checks passed (commands and output: {})",
                run.checks,
                log_path.display()
            );
            remove_tree(&work)
        }
        Err(e) => bail!(
            "{e}\n(the chroot is left in {}, every command and its output in {})",
            work.display(),
            log_path.display()
        ),
    }
}
