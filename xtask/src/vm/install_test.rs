//! `vm-install-test`: the .deb and a `cargo xtask install --prefix /usr/local` tree in a guest
//! (`vm/tests/install.rs`, docs/admin.md): vm-prepare, dist, deb, an install into a destdir,
//! the install initramfs, then `cargo test -p vm --test install`.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::cpio::{self, Entry};
use crate::cmd::{self, cmd, workspace_root};
use crate::error::{Context as _, Error, Result};
use crate::files;
use crate::pkg::dist::{self, Paths, dist_dir};
use crate::pkg::{deb, install};

/// The shared objects `ldd` lists for `bin` (path as the loader looks it up, real file).
fn shared_libs(bins: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let sh = cmd::shell()?;
    let mut libs = Vec::new();
    for b in bins {
        let out = cmd::output(cmd!(sh, "ldd {b}"))?;
        for l in out.lines() {
            let l = l.trim();
            let path = match l.split_once(" => ") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => l.split_whitespace().next().filter(|p| p.starts_with('/')),
            };
            let Some(path) = path.filter(|p| p.starts_with('/')) else {
                continue;
            };
            let real = fs::canonicalize(path).map_err(|e| Error::io("resolve", path, e))?;
            if !libs.iter().any(|(p, _)| p == path) {
                libs.push((path.to_owned(), real));
            }
        }
    }
    Ok(libs)
}

/// Entries for `tree`/`sub` (directories first), with the tree's own modes and owners.
fn tree_entries(tree: &Path, sub: &str, out: &mut Vec<Entry>) -> Result<()> {
    let p = tree.join(sub);
    let m = fs::symlink_metadata(&p).map_err(|e| Error::io("stat", &p, e))?;
    let perm = m.mode() & 0o7777;
    if m.is_dir() {
        out.push(Entry::dir(sub, perm).owner(m.uid(), m.gid()));
        let mut names: Vec<String> = files::read_dir(&p)?
            .into_iter()
            .filter_map(|e| e.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        for n in names {
            tree_entries(tree, &format!("{sub}/{n}"), out)?;
        }
    } else if m.is_file() {
        out.push(Entry::file(sub, perm, files::read(&p)?).owner(m.uid(), m.gid()));
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
    let mut e = vec![Entry::dir("dist", 0o755), Entry::dir("dist/stubs", 0o755)];
    e.push(Entry::file("dist/staprun-rs.deb", 0o644, files::read(deb)?));
    let stubs = workspace_root().join("packaging/test-stubs");
    for s in ["dpkg-statoverride", "addgroup", "getent"] {
        let data = files::read(&stubs.join(s))?;
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
        e.push(Entry::file(path, 0o755, files::read(real)?));
    }
    tree_entries(local_root, "usr/local", &mut e)?;
    let bytes = cpio::append(&art.initrd, &e)?;
    let out = vm::cache_dir().join(format!("initramfs-install-{}.cpio", art.kver));
    files::write(&out, bytes)?;
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
pub fn vm_install_test(opts: &crate::vm::Options, reuse: bool, test_args: &[String]) -> Result<()> {
    let art = if reuse {
        vm::Artifacts::load()?
    } else {
        crate::vm::prepare(opts)?
    };
    dist::dist(&Paths::for_prefix(Path::new("/usr")))?;
    let deb = deb::deb()?;
    let local_root = dist_dir().join("vm-install-root");
    let _ = fs::remove_dir_all(&local_root);
    install::install(&install::Options {
        prefix: PathBuf::from("/usr/local"),
        destdir: Some(local_root.clone()),
        layout: Some(install::Layout::Stapdev),
    })?;
    install_initramfs(&art, &deb, &local_root)?;
    let sh = cmd::workspace_shell()?;
    let cargo = cmd::cargo(&sh)
        .args(["test", "-p", "vm", "--test", "install", "--"])
        .args(test_args);
    eprintln!("xtask: running {cargo}");
    cmd::run(cargo).context("guest install tests failed")
}
