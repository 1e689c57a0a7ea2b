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
use std::process::Command;

use crate::Result;
use crate::dist::{Paths, dist_dir, gzip};
use crate::install;
use crate::prepare::{Apt, is_root, output, workspace_root};

pub const PACKAGE: &str = "staprun-rs";
/// Where the package puts `staprun@.service`, relative to the root.
pub const UNIT_DIR: &str = "lib/systemd/system";
/// The example drop-in, relative to /usr/share/doc/staprun-rs.
pub const EXAMPLE_DROP_IN: &str = "examples/staprun@pmod.service.d/override.conf";
const MAINTAINER: &str =
    "staprun-rs maintainers <maintainers@users.noreply.r-seed-0084edc1.example>";

fn write_file(p: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    fs::write(p, data).map_err(|e| format!("write {}: {e}", p.display()))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

/// Every regular file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).map_err(|e| format!("read {}: {e}", d.display()))? {
            let p = e.map_err(|e| e.to_string())?.path();
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
    let out = output(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(format!("-e{}", bin.join("staprun").display()))
            .arg(format!("-e{}", bin.join("stapio").display()))
            .current_dir(&work),
    )?;
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
    let date = output(
        Command::new("git")
            .args(["log", "-1", "--format=%aD"])
            .current_dir(workspace_root()),
    )
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
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    Ok(dist_dir().join(format!(
        "{PACKAGE}_{}_{}.deb",
        stap_common::VERSION,
        arch.trim()
    )))
}

/// `cargo xtask deb`: builds, stages and writes the package; prints its info and contents.
pub fn deb() -> Result<PathBuf> {
    for cmd in ["dpkg-deb", "dpkg"] {
        if vm::which(cmd).is_none() {
            return Err(format!(
                "{cmd} not found: building the .deb needs a Debian host"
            ));
        }
    }
    let mut apt = Apt { updated: false };
    let version = stap_common::VERSION;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let paths = Paths::for_prefix(Path::new("/usr"));
    let bin = install::build(&paths)?;
    let stage = stage_dir(&arch);
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).map_err(|e| format!("mkdir {}: {e}", stage.display()))?;
    // 0755 in the archive; the statoverride in postinst makes it 04110 root:stapusr.
    install::stage(&stage, &paths, &bin, 0o755, None)?;
    // As dh_strip does: Debian ships stripped binaries.
    if vm::which("strip").is_some() {
        for b in ["usr/bin/staprun", "usr/libexec/staprun/stapio"] {
            output(
                Command::new("strip")
                    .args([
                        "--strip-unneeded",
                        "--remove-section=.comment",
                        "--remove-section=.note",
                    ])
                    .arg(stage.join(b)),
            )?;
        }
    } else {
        eprintln!("xtask: strip (binutils) not found: the binaries are packaged unstripped");
    }
    let doc = stage.join("usr/share/doc").join(PACKAGE);
    let root = workspace_root();
    let read = |p: &Path| fs::read(p).map_err(|e| format!("read {}: {e}", p.display()));
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
    let mut md5 = output(Command::new("md5sum").args(&files).current_dir(&stage))?;
    if !md5.ends_with('\n') {
        md5.push('\n');
    }
    write_file(&debian.join("md5sums"), md5.as_bytes(), 0o644)?;
    let deb = deb_path()?;
    output(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    println!("{}", output(Command::new("dpkg-deb").arg("-I").arg(&deb))?);
    let listing = output(Command::new("dpkg-deb").arg("-c").arg(&deb))?;
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
            return Err(format!("{} has no {want}", deb.display()));
        }
    }
    if vm::which("lintian").is_some() {
        // Advisory only: printed, never fatal.
        let out = Command::new("lintian")
            .arg(&deb)
            .output()
            .map_err(|e| format!("cannot run lintian: {e}"))?;
        eprintln!(
            "xtask: lintian:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !is_root() {
        eprintln!(
            "xtask: note: built without root; file ownership in the archive is root:root (--root-owner-group)"
        );
    }
    eprintln!("xtask: wrote {}", deb.display());
    Ok(deb)
}

/// The shared objects `ldd` lists for `bin` (path as the loader looks it up, real file).
fn shared_libs(bins: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let mut libs = Vec::new();
    for b in bins {
        let out = output(Command::new("ldd").arg(b))?;
        for l in out.lines() {
            let l = l.trim();
            let path = match l.split_once(" => ") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => l.split_whitespace().next().filter(|p| p.starts_with('/')),
            };
            let Some(path) = path.filter(|p| p.starts_with('/')) else {
                continue;
            };
            let real = fs::canonicalize(path).map_err(|e| format!("{path}: {e}"))?;
            if !libs.iter().any(|(p, _)| p == path) {
                libs.push((path.to_owned(), real));
            }
        }
    }
    Ok(libs)
}

/// Entries for `tree`/`sub` (directories first), with the tree's own modes and owners.
fn tree_entries(tree: &Path, sub: &str, out: &mut Vec<crate::cpio::Entry>) -> Result<()> {
    use crate::cpio::Entry;
    use std::os::unix::fs::MetadataExt as _;
    let p = tree.join(sub);
    let m = fs::symlink_metadata(&p).map_err(|e| format!("stat {}: {e}", p.display()))?;
    let perm = m.mode() & 0o7777;
    if m.is_dir() {
        out.push(Entry::dir(sub, perm).owner(m.uid(), m.gid()));
        let mut names: Vec<String> = fs::read_dir(&p)
            .map_err(|e| format!("read {}: {e}", p.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for n in names {
            tree_entries(tree, &format!("{sub}/{n}"), out)?;
        }
    } else if m.is_file() {
        let data = fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
        out.push(Entry::file(sub, perm, data).owner(m.uid(), m.gid()));
    }
    Ok(())
}

/// The guest image of the install tests: the vm-prepare initramfs with a second cpio archive
/// appended (the kernel unpacks both) holding
/// * /dist/staprun-rs.deb, the package as built (dynamically linked binaries),
/// * /dist/stubs/: the test stand-ins of packaging/test-stubs (dpkg-statoverride, addgroup, getent),
/// * the host's shared libraries those binaries need (ld.so, libc, libgcc_s),
/// * /usr/local: `cargo xtask install --prefix /usr/local --layout 775 --destdir` output.
fn install_initramfs(art: &vm::Artifacts, deb: &Path, local_root: &Path) -> Result<PathBuf> {
    use crate::cpio::Entry;
    let mut e = vec![Entry::dir("dist", 0o755), Entry::dir("dist/stubs", 0o755)];
    e.push(Entry::file(
        "dist/staprun-rs.deb",
        0o644,
        fs::read(deb).map_err(|e| format!("read {}: {e}", deb.display()))?,
    ));
    let stubs = workspace_root().join("packaging/test-stubs");
    for s in ["dpkg-statoverride", "addgroup", "getent"] {
        let p = stubs.join(s);
        let data = fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
        e.push(Entry::file(&format!("dist/stubs/{s}"), 0o755, data));
    }
    let bins: Vec<PathBuf> = ["staprun", "stapio"]
        .iter()
        .map(|b| vm::target_dir().join("release").join(b))
        .collect();
    let mut dirs = std::collections::BTreeSet::new();
    let libs = shared_libs(&bins)?;
    for (path, _) in &libs {
        let mut d = Path::new(path).parent();
        while let Some(p) = d.filter(|p| *p != Path::new("/")) {
            dirs.insert(p.to_path_buf());
            d = p.parent();
        }
    }
    // Parents before children; existing ones (lib, usr, ...) are merged by the kernel.
    for d in &dirs {
        e.push(Entry::dir(&d.display().to_string(), 0o755));
    }
    for (path, real) in &libs {
        let data = fs::read(real).map_err(|e| format!("read {}: {e}", real.display()))?;
        e.push(Entry::file(path, 0o755, data));
    }
    tree_entries(local_root, "usr/local", &mut e)?;
    let mut bytes =
        fs::read(&art.initrd).map_err(|e| format!("read {}: {e}", art.initrd.display()))?;
    crate::cpio::write(&mut bytes, &e).map_err(|e| format!("cpio: {e}"))?;
    let out = vm::cache_dir().join(format!("initramfs-install-{}.cpio", art.kver));
    fs::write(&out, bytes).map_err(|e| format!("write {}: {e}", out.display()))?;
    eprintln!(
        "xtask: {} (+ {} members: the .deb, 3 stubs, {} shared libraries, /usr/local)",
        out.display(),
        e.len(),
        libs.len()
    );
    Ok(out)
}

/// `cargo xtask vm-install-test`: vm-prepare (or, with `reuse`, what it last prepared), dist,
/// deb, an install into a destdir, the install initramfs, then `cargo test -p vm --test install`.
pub fn vm_install_test(
    opts: &crate::prepare::Options,
    reuse: bool,
    test_args: &[String],
) -> Result<()> {
    let art = if reuse {
        vm::Artifacts::load()?
    } else {
        crate::prepare::prepare(opts)?
    };
    crate::dist::dist(&Paths::for_prefix(Path::new("/usr")))?;
    let deb = deb()?;
    let local_root = dist_dir().join("vm-install-root");
    let _ = fs::remove_dir_all(&local_root);
    install::install(&install::Options {
        prefix: PathBuf::from("/usr/local"),
        destdir: Some(local_root.clone()),
        layout: Some(install::Layout::Stapdev),
    })?;
    install_initramfs(&art, &deb, &local_root)?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["test", "-p", "vm", "--test", "install", "--"])
        .args(test_args)
        .current_dir(workspace_root());
    eprintln!("xtask: running {cmd:?}");
    crate::prepare::status(&mut cmd).map_err(|e| format!("guest install tests failed: {e}"))
}
