//! `deb`: target/dist/staprun-rs_<version>_<arch>.deb, written by `dpkg-deb --build` from a
//! staged tree (no cargo-deb, no fakeroot: `--root-owner-group` makes every file root:root).
//!
//! Contents: /usr/bin/staprun (0755 in the archive; postinst registers the 04110 root:stapusr
//! statoverride), /usr/libexec/staprun/stapio, man pages, completions, docs, lintian overrides,
//! the systemd unit /lib/systemd/system/staprun@.service (Debian bookworm keeps units in /lib) and
//! its example drop-in under /usr/share/doc/staprun-rs/examples/ (nothing under /etc: the
//! configuration is the administrator's, one drop-in per module, so the package has no conffile).
//! Maintainer scripts and the trigger come from packaging/debian/: preinst diverts
//! systemtap-runtime's /usr/bin/staprun and staprun(8) (docs/packaging.md), so the package
//! coexists with systemtap-runtime and systemtap; `deb-test` checks that with real dpkg and apt.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::dist::{Paths, dist_dir, gzip};
use super::install;
use crate::apt::Apt;
use crate::cmd::{self, cmd, is_root, workspace_root};
use crate::error::{Error, Result, bail};
use crate::files;

pub const PACKAGE: &str = "staprun-rs";
/// Where the package puts `staprun@.service`, relative to the root.
pub const UNIT_DIR: &str = "lib/systemd/system";
/// The example drop-in, relative to /usr/share/doc/staprun-rs.
pub const EXAMPLE_DROP_IN: &str = "examples/staprun@pmod.service.d/override.conf";
const MAINTAINER: &str =
    "staprun-rs maintainers <maintainers@users.noreply.r-seed-0084edc1.example>";

/// Writes `p` (and its parent directories) with `mode`.
fn write_file(p: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(d) = p.parent() {
        files::mkdir(d)?;
    }
    files::write(p, data)?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(|e| Error::io("chmod", p, e))
}

/// Every regular file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for p in files::read_dir(&d)? {
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `Depends:` for the binaries, from dpkg-shlibdeps (dpkg-dev), plus adduser for postinst.
fn depends(bin: &Path, apt: &mut Apt) -> Result<String> {
    if vm::which("dpkg-shlibdeps").is_none() {
        apt.install(&["dpkg-dev".to_owned()], "dpkg-shlibdeps missing")?;
    }
    // dpkg-shlibdeps wants a debian/control naming the package.
    let work = dist_dir().join("deb").join("shlibdeps");
    let _ = fs::remove_dir_all(&work);
    write_file(
        &work.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n").as_bytes(),
        0o644,
    )?;
    let sh = cmd::shell_in(&work)?;
    let staprun = format!("-e{}", bin.join("staprun").display());
    let stapio = format!("-e{}", bin.join("stapio").display());
    let out = cmd::output(cmd!(sh, "dpkg-shlibdeps -O {staprun} {stapio}"))?;
    let libs = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .ok_or_else(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out}"))?;
    Ok(format!("{}, adduser", libs.trim()))
}

fn control(version: &str, arch: &str, depends: &str, installed_kib: u64) -> String {
    format!(
        "Package: {PACKAGE}
Version: {version}
Architecture: {arch}
Maintainer: {MAINTAINER}
Installed-Size: {installed_kib}
Depends: {depends}
Section: devel
Priority: optional
Description: SystemTap module loader (staprun) and runner (stapio), in Rust
 A drop-in replacement for SystemTap's setuid-root staprun and its helper
 stapio, for modules built by SystemTap 4.x and 5.x. staprun decides whether
 the invoking user may load a module (root and stapdev: any module; stapusr
 and stapsys: only modules in /lib/modules/$(uname -r)/systemtap), loads it,
 drops privilege and runs stapio, which prints the module's output. Every
 load, refusal and unload is logged to syslog (authpriv).
 .
 The systemd unit staprun@.service runs an approved module as a service,
 as a configured member of stapusr: systemctl enable --now staprun@NAME.
 .
 It coexists with systemtap-runtime and systemtap (stap): it diverts
 /usr/bin/staprun and staprun(8) of systemtap-runtime, so stap runs this
 staprun, and the C staprun stays available as /usr/bin/staprun.systemtap.
 Removing this package puts the C staprun back as it was (owner, mode and
 statoverride). stapio is /usr/libexec/staprun/stapio and does not clash.
"
    )
}

fn changelog(version: &str) -> Result<Vec<u8>> {
    let date = cmd::workspace_shell()
        .and_then(|sh| cmd::output(cmd!(sh, "git log -1 --format=%aD")))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "Thu, 01 Jan 1970 00:00:00 +0000".to_owned());
    gzip(
        format!(
            "{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Built from the staprun-rs workspace with cargo xtask deb.\n\n -- {MAINTAINER}  {date}\n"
        )
        .as_bytes(),
    )
}

/// The staged tree `deb()` packs (its files are the package's, byte for byte).
pub fn stage_dir(arch: &str) -> PathBuf {
    dist_dir()
        .join("deb")
        .join(format!("{PACKAGE}_{}_{arch}", stap_common::VERSION))
}

/// The path of the package `deb()` writes.
pub fn deb_path() -> Result<PathBuf> {
    Ok(dist_dir().join(format!(
        "{PACKAGE}_{}_{}.deb",
        stap_common::VERSION,
        dpkg_arch()?
    )))
}

/// `dpkg --print-architecture`.
pub fn dpkg_arch() -> Result<String> {
    let sh = cmd::shell()?;
    Ok(cmd::output(cmd!(sh, "dpkg --print-architecture"))?
        .trim()
        .to_owned())
}

/// `cargo xtask deb`: builds, stages and writes the package; prints its info and contents.
pub fn deb() -> Result<PathBuf> {
    for cmd in ["dpkg-deb", "dpkg"] {
        if vm::which(cmd).is_none() {
            bail!("{cmd} not found: building the .deb needs a Debian host");
        }
    }
    let mut apt = Apt { updated: false };
    let version = stap_common::VERSION;
    let arch = dpkg_arch()?;
    let paths = Paths::for_prefix(Path::new("/usr"));
    let bin = install::build(&paths)?;
    let stage = stage_dir(&arch);
    let _ = fs::remove_dir_all(&stage);
    files::mkdir(&stage)?;
    // 0755 in the archive; the statoverride in postinst makes it 04110 root:stapusr.
    install::stage(&stage, &paths, &bin, 0o755, None)?;
    let sh = cmd::shell()?;
    // As dh_strip does: Debian ships stripped binaries.
    if vm::which("strip").is_some() {
        for b in ["usr/bin/staprun", "usr/libexec/staprun/stapio"] {
            let b = stage.join(b);
            cmd::output(cmd!(
                sh,
                "strip --strip-unneeded --remove-section=.comment --remove-section=.note {b}"
            ))?;
        }
    } else {
        eprintln!("xtask: strip (binutils) not found: the binaries are packaged unstripped");
    }
    let doc = stage.join("usr/share/doc").join(PACKAGE);
    let root = workspace_root();
    let read = files::read;
    write_file(
        &doc.join("copyright"),
        &read(&root.join("packaging/debian/copyright"))?,
        0o644,
    )?;
    write_file(&doc.join("changelog.gz"), &changelog(version)?, 0o644)?;
    for (src, dst) in [
        ("docs/admin.md", "admin.md"),
        ("docs/packaging.md", "packaging.md"),
        ("README.md", "README.md"),
    ] {
        let p = root.join(src);
        if p.is_file() {
            write_file(&doc.join(dst), &read(&p)?, 0o644)?;
        }
    }
    // The unit, as for `cargo xtask install --prefix /usr` but in /lib/systemd/system, where
    // bookworm's packages keep theirs; and the example drop-in.
    write_file(
        &stage.join(UNIT_DIR).join(install::UNIT_NAME),
        &install::unit_text(&paths)?,
        0o644,
    )?;
    write_file(
        &doc.join(EXAMPLE_DROP_IN),
        &read(&root.join("packaging/systemd/example-override.conf"))?,
        0o644,
    )?;
    write_file(
        &stage.join("usr/share/lintian/overrides").join(PACKAGE),
        &read(&root.join("packaging/debian/lintian-overrides"))?,
        0o644,
    )?;
    let files = files_under(&stage)?;
    let installed_kib: u64 = files
        .iter()
        .map(|f| fs::metadata(stage.join(f)).map_or(0, |m| m.len().div_ceil(1024)))
        .sum();
    let debian = stage.join("DEBIAN");
    write_file(
        &debian.join("control"),
        control(version, &arch, &depends(&bin, &mut apt)?, installed_kib).as_bytes(),
        0o644,
    )?;
    for (name, mode) in [
        ("preinst", 0o755),
        ("postinst", 0o755),
        ("postrm", 0o755),
        ("triggers", 0o644),
    ] {
        let src = root.join("packaging/debian").join(name);
        write_file(&debian.join(name), &read(&src)?, mode)?;
    }
    let in_stage = cmd::shell_in(&stage)?;
    let mut md5 = cmd::output(cmd!(in_stage, "md5sum {files...}"))?;
    if !md5.ends_with('\n') {
        md5.push('\n');
    }
    write_file(&debian.join("md5sums"), md5.as_bytes(), 0o644)?;
    let deb = deb_path()?;
    cmd::output(cmd!(
        sh,
        "dpkg-deb --root-owner-group -Zxz --build {stage} {deb}"
    ))?;
    println!("{}", cmd::output(cmd!(sh, "dpkg-deb -I {deb}"))?);
    let listing = cmd::output(cmd!(sh, "dpkg-deb -c {deb}"))?;
    println!("{listing}");
    for want in [
        "./usr/bin/staprun",
        "./usr/libexec/staprun/stapio",
        "./usr/share/man/man8/staprun.8.gz",
        "./usr/share/man/man8/stapio.8.gz",
        "./usr/share/bash-completion/completions/staprun",
        "./usr/share/zsh/vendor-completions/_staprun",
        "./usr/share/fish/vendor_completions.d/staprun.fish",
        "./usr/share/lintian/overrides/staprun-rs",
        "./lib/systemd/system/staprun@.service",
        "./usr/share/doc/staprun-rs/examples/staprun@pmod.service.d/override.conf",
    ] {
        if !listing.lines().any(|l| l.ends_with(want)) {
            bail!("{} has no {want}", deb.display());
        }
    }
    if vm::which("lintian").is_some() {
        // Advisory only: printed, never fatal.
        let out = cmd::capture(cmd!(sh, "lintian {deb}"))?;
        eprintln!("xtask: lintian:\n{}{}", out.stdout, out.stderr);
    }
    if !is_root() {
        eprintln!(
            "xtask: note: built without root; file ownership in the archive is root:root (--root-owner-group)"
        );
    }
    eprintln!("xtask: wrote {}", deb.display());
    Ok(deb)
}
