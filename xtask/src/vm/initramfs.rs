//! The guest's initramfs (target/vm-cache/initramfs-KV.cpio, newc): busybox, the static
//! vm-agent as /init, the static staprun (04110 root:stapusr) and stapio, the fixture modules
//! and the test users alice (stapusr), bob (stapdev), sam (stapsys) and carol (none).

use std::fs;
use std::path::{Path, PathBuf};

use super::cpio::{self, Entry};
use super::fixture::FIXTURE_MODULES;
use xshell::{Cmd, Shell};

use crate::cmd::{self, cmd};
use crate::error::{Error, Result, bail};
use crate::files;

/// The target of the static guest binaries.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
pub const STAPUSR: u32 = 156;
pub const STAPSYS: u32 = 157;
pub const STAPDEV: u32 = 158;

/// True when an ELF file has no program interpreter (i.e. is statically linked).
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let b = files::read(path)?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let phoff = usize::try_from(u64at(0x20)).map_err(|_| Error::from("bad ELF"))?;
    let (phentsize, phnum) = (u16at(0x36), u16at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > b.len() {
            bail!("{}: truncated program headers", path.display());
        }
        if u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

/// `cargo build --release --target TARGET -p PACKAGE... EXTRA...`, statically linked, in the
/// shell's directory.
pub fn cargo_static<'a>(sh: &'a Shell, packages: &[&str], extra: &[&str]) -> Cmd<'a> {
    let packages = packages.iter().flat_map(|p| ["-p", p]);
    cmd::cargo(sh)
        .args(["build", "--release", "--target", TARGET])
        .args(packages)
        .args(extra)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
}

/// Builds `packages` (static, release) in the workspace.
pub fn build_static(packages: &[&str], extra: &[&str]) -> Result<()> {
    let sh = cmd::workspace_shell()?;
    cmd::run(cargo_static(&sh, packages, extra))
}

pub fn release_bin(name: &str) -> PathBuf {
    vm::target_dir().join(TARGET).join("release").join(name)
}

pub fn static_binary(name: &str) -> Result<Vec<u8>> {
    let p = release_bin(name);
    if !is_static_elf(&p)? {
        bail!(
            "{} is dynamically linked; it must be built with -C target-feature=+crt-static",
            p.display()
        );
    }
    files::read(&p)
}

fn passwd() -> String {
    let mut s = String::from("root:x:0:0:root:/root:/bin/sh\n");
    for (name, uid) in [
        ("alice", 1001),
        ("bob", 1002),
        ("sam", 1003),
        ("carol", 1004),
    ] {
        s.push_str(&format!(
            "{name}:x:{uid}:{uid}:{name}:/home/{name}:/bin/sh\n"
        ));
    }
    s.push_str("nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n");
    s
}

fn group() -> String {
    format!(
        "root:x:0:\nstapusr:x:{STAPUSR}:alice,bob,sam\nstapsys:x:{STAPSYS}:sam\nstapdev:x:{STAPDEV}:bob\n\
         alice:x:1001:\nbob:x:1002:\nsam:x:1003:\ncarol:x:1004:\nnogroup:x:65534:\n"
    )
}

/// What goes into the initramfs besides busybox and the users.
pub struct Image {
    /// The static vm-agent, /init.
    pub agent: Vec<u8>,
    /// The static staprun and stapio (None: `--infra-only`).
    pub product: Option<(Vec<u8>, Vec<u8>)>,
    /// The fixture modules built for the kernel.
    pub kmod_dir: PathBuf,
}

pub fn initramfs(img: &Image, out: &Path) -> Result<()> {
    let mut e = vec![Entry::dir(".", 0o755)];
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "usr/libexec",
        "usr/libexec/staprun",
        "usr/lib",
        "etc",
        "dev",
        "proc",
        "sys",
        "run",
        "lib",
        "lib/modules",
        "var",
        "fixtures",
        "home",
    ] {
        e.push(Entry::dir(d, 0o755));
    }
    e.push(Entry::dir("tmp", 0o1777));
    e.push(Entry::dir("root", 0o700));
    for (name, uid) in [
        ("alice", 1001),
        ("bob", 1002),
        ("sam", 1003),
        ("carol", 1004),
    ] {
        e.push(Entry::dir(&format!("home/{name}"), 0o700).owner(uid, uid));
    }
    e.push(Entry::chardev("dev/console", 0o600, 5, 1));
    e.push(Entry::chardev("dev/null", 0o666, 1, 3));
    e.push(Entry::file("etc/passwd", 0o644, passwd().into_bytes()));
    e.push(Entry::file("etc/group", 0o644, group().into_bytes()));
    e.push(Entry::file("etc/hostname", 0o644, b"vmtest\n".to_vec()));

    let busybox = files::read(Path::new("/bin/busybox"))?;
    e.push(Entry::file("bin/busybox", 0o755, busybox));
    let sh = cmd::shell()?;
    let list = cmd::output(cmd!(sh, "/bin/busybox --list-full"))?;
    let mut seen = std::collections::BTreeSet::new();
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let applet = applet.trim_start_matches('/');
        if applet == "bin/busybox"
            || applet == "init"
            || applet == "linuxrc"
            || !seen.insert(applet.to_owned())
        {
            continue;
        }
        let parent = Path::new(applet)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or("");
        if !["bin", "sbin", "usr/bin", "usr/sbin"].contains(&parent) {
            continue;
        }
        e.push(Entry::symlink(applet, "/bin/busybox"));
    }
    e.push(Entry::file("init", 0o755, img.agent.clone()));
    if let Some((staprun, stapio)) = &img.product {
        e.push(Entry::file("usr/bin/staprun", 0o4110, staprun.clone()).owner(0, STAPUSR));
        e.push(Entry::file(
            "usr/libexec/staprun/stapio",
            0o755,
            stapio.clone(),
        ));
    }
    for m in FIXTURE_MODULES {
        let p = img.kmod_dir.join(format!("{m}.ko"));
        let data = files::read(&p)?;
        e.push(Entry::file(&format!("fixtures/{m}.ko"), 0o644, data));
    }
    let tmp = files::tmp_beside(out);
    let mut f = std::io::BufWriter::new(files::create(&tmp)?);
    // A write error (or one only seen at the flush) never renames a cut-off archive into place.
    let written = cpio::write(&mut f, &e)
        .and_then(|()| std::io::Write::flush(&mut f))
        .map_err(|e| Error::io("write", &tmp, e));
    drop(f);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    files::rename(&tmp, out)
}
