//! The cached bookworm base chroot (target/deb-chroot/bookworm): deb-test copies it for each
//! run, and the Debian guest's root starts from it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::apt::{self, Apt};
use crate::chroot::{Chroot, remove_tree};
use crate::cmd::{self, cmd};
use crate::error::{Result, bail};
use crate::files;

pub(super) const SUITE: &str = "bookworm";
/// Written into a base chroot when it is complete; a new recipe needs a new text.
const STAMP: &str = ".staprun-rs-deb-test";
const STAMP_TEXT: &str = "debootstrap --variant=minbase bookworm; 90staprun-rs-deb-test v1\n";
const APT_CONF: &str = "etc/apt/apt.conf.d/90staprun-rs-deb-test";
/// Root runs apt's downloads (the archive directory is the host's), no recommends, no pty.
const APT_CONF_TEXT: &str = "APT::Sandbox::User \"root\";\nAPT::Install-Recommends \"false\";\n\
                             Dpkg::Use-Pty \"false\";\nAcquire::Retries \"3\";\n";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Why `root` is not a usable base chroot, if it is not.
fn base_broken(root: &Path) -> Option<String> {
    if fs::read_to_string(root.join(STAMP)).ok().as_deref() != Some(STAMP_TEXT) {
        return Some(format!("no {STAMP} of this recipe"));
    }
    for f in [
        "usr/bin/dpkg",
        "usr/bin/apt-get",
        "usr/bin/dpkg-divert",
        "usr/bin/dpkg-statoverride",
        "usr/bin/stat",
        APT_CONF,
    ] {
        if !root.join(f).is_file() {
            return Some(format!("{f} missing"));
        }
    }
    if !fs::read_to_string(root.join("etc/os-release"))
        .is_ok_and(|s| s.lines().any(|l| l.trim() == "VERSION_CODENAME=bookworm"))
    {
        return Some("not bookworm".into());
    }
    match Chroot::new(root).sh("dpkg --audit; dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' | grep -E '^.i.* (staprun-rs|systemtap.*)$' || true") {
        Ok(s) if s.trim().is_empty() => None,
        Ok(s) => Some(format!("dpkg state: {}", s.trim())),
        Err(e) => Some(e.to_string()),
    }
}

fn apt_lists_present() -> bool {
    fs::read_dir("/var/lib/apt/lists").is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
    })
}

/// The cached base chroot, (re)built with debootstrap when missing or broken.
pub fn base_chroot(top: &Path) -> Result<PathBuf> {
    let base = top.join(SUITE);
    let why = if base.exists() {
        match base_broken(&base) {
            None => {
                eprintln!("xtask: reusing the chroot {}", base.display());
                return Ok(base);
            }
            Some(why) => why,
        }
    } else {
        "missing".to_owned()
    };
    eprintln!("xtask: building the chroot {} ({why})", base.display());
    let mut apt = Apt { updated: false };
    if vm::which("debootstrap").is_none() || !Path::new(KEYRING).is_file() {
        if !apt_lists_present() {
            apt.update()?;
        }
        apt.install(
            &[
                "debootstrap".to_owned(),
                "debian-archive-keyring".to_owned(),
            ],
            "debootstrap missing",
        )?;
    }
    let mirror = apt::bookworm_mirror()?;
    let sh = cmd::shell()?;
    let keyring_arg = Path::new(KEYRING)
        .is_file()
        .then(|| format!("--keyring={KEYRING}"));
    let keyring = &keyring_arg;
    let tmp = top.join(format!(".{SUITE}.tmp-{}", std::process::id()));
    let mut attempt = 1;
    loop {
        remove_tree(&tmp)?;
        eprintln!(
            "xtask: debootstrap --variant=minbase {SUITE} {} {mirror}",
            tmp.display()
        );
        // In a mount namespace too: the /proc and /sys debootstrap mounts end with it.
        match cmd::output(cmd!(
            sh,
            "unshare --mount --propagation private -- debootstrap --variant=minbase {keyring...} {SUITE} {tmp} {mirror}"
        )) {
            Ok(_) => break,
            Err(e) if attempt < 2 => {
                eprintln!("xtask: debootstrap failed, once more: {e}");
                attempt += 1;
            }
            Err(e) => {
                remove_tree(&tmp)?;
                bail!("debootstrap: {e}");
            }
        }
    }
    files::write(&tmp.join(APT_CONF), APT_CONF_TEXT)?;
    // The packages debootstrap leaves in the archive directory: every copy would carry them.
    let archives = tmp.join("var/cache/apt/archives");
    cmd::output(cmd!(sh, "find {archives} -maxdepth 1 -name *.deb -delete"))?;
    files::write(&tmp.join(STAMP), STAMP_TEXT)?;
    if let Some(why) = base_broken(&tmp) {
        bail!("the new chroot {} is not usable: {why}", tmp.display());
    }
    remove_tree(&base)?;
    if let Err(e) = files::rename(&tmp, &base) {
        // Another run may have put its own in place meanwhile.
        remove_tree(&tmp)?;
        if base_broken(&base).is_some() {
            return Err(e);
        }
    }
    Ok(base)
}
