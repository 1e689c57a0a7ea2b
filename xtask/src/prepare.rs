//! `vm-prepare`: everything a guest test needs, cached under target/vm-cache.
//!
//! ```text
//! target/vm-cache/debs/linux-image-KV_*.deb          apt-get download
//! target/vm-cache/kernel/KV/boot/vmlinuz-KV          dpkg-deb -x (no /boot changes)
//! target/vm-cache/kmod/KV/{pmod,pmod5,fixture_a,fixture_b,plainmod}.ko
//! target/vm-cache/initramfs-KV.cpio                  newc, written here
//! target/vm-cache/vm-test.env                        kver=, kernel=, initrd=, accel=
//! ```
//! Headers: the matching `linux-headers-KV` package is installed with apt-get
//! (its Makefiles name absolute /usr/src paths, so it is not relocated).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;
use crate::cpio::{self, Entry};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
pub const STAPUSR: u32 = 156;
pub const STAPSYS: u32 = 157;
pub const STAPDEV: u32 = 158;

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Guest kernel ABI, e.g. 6.1.0-57-cloud-amd64 (default: newest linux-image-cloud-amd64 known to apt).
    #[arg(long, value_name = "VERSION")]
    pub kernel: Option<String>,
    /// Build the initramfs without staprun/stapio (only scenario infra_boot can then pass).
    #[arg(long)]
    pub infra_only: bool,
}

pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = manifest
        .canonicalize()
        .unwrap_or_else(|_| manifest.to_path_buf());
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

pub fn is_root() -> bool {
    // /proc/self/status "Uid:" real effective saved fs
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command, returning stdout; on failure the error names the command and shows stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            tail.join("\n")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({st})"))
    }
}

pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t0 = Instant::now();
    let r = f();
    eprintln!(
        "xtask: {name}: {} ({:.1}s)",
        if r.is_ok() { "ok" } else { "FAILED" },
        t0.elapsed().as_secs_f64()
    );
    r
}

pub struct Apt {
    pub updated: bool,
}

impl Apt {
    pub fn update(&mut self) -> Result<()> {
        if !self.updated {
            eprintln!("xtask: apt-get update");
            status(Command::new("apt-get").args(["update", "-qq"]))?;
            self.updated = true;
        }
        Ok(())
    }

    /// Installs packages as root, or fails with the one command to run.
    pub fn install(&mut self, pkgs: &[String], why: &str) -> Result<()> {
        let line = format!(
            "apt-get install -y --no-install-recommends {}",
            pkgs.join(" ")
        );
        if !is_root() {
            return Err(format!("{why}: run as root: {line}"));
        }
        eprintln!("xtask: {why}: {line}");
        let try_install = || {
            status(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(pkgs)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        };
        if try_install().is_ok() {
            return Ok(());
        }
        self.update()?;
        try_install().map_err(|e| format!("{why}: {e}"))
    }
}

/// True when an ELF file has no program interpreter (i.e. is statically linked).
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let b = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return Err(format!("{} is not a 64-bit ELF file", path.display()));
    }
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let phoff = usize::try_from(u64at(0x20)).map_err(|_| "bad ELF".to_owned())?;
    let (phentsize, phnum) = (u16at(0x36), u16at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > b.len() {
            return Err(format!("{}: truncated program headers", path.display()));
        }
        if u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

fn host_tools(apt: &mut Apt) -> Result<()> {
    let mut missing = Vec::new();
    for (cmd, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("make", "make"),
        ("gcc-12", "gcc-12"),
    ] {
        if vm::which(cmd).is_none() {
            missing.push(pkg.to_owned());
        }
    }
    if !matches!(is_static_elf(Path::new("/bin/busybox")), Ok(true)) {
        missing.push("busybox-static".to_owned());
    }
    for cmd in ["apt-get", "apt-cache", "dpkg-deb"] {
        if vm::which(cmd).is_none() {
            return Err(format!(
                "{cmd} not found: vm-prepare needs a Debian (bookworm) host"
            ));
        }
    }
    if !missing.is_empty() {
        apt.install(&missing, "host tools missing")?;
    }
    if !matches!(is_static_elf(Path::new("/bin/busybox")), Ok(true)) {
        return Err("/bin/busybox is not a static binary: install busybox-static".into());
    }
    Ok(())
}

fn resolve_kver(apt: &mut Apt, wanted: Option<&str>) -> Result<String> {
    if let Some(k) = wanted {
        return Ok(k.trim_start_matches("linux-image-").to_owned());
    }
    let query = || {
        output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.trim()
                        .strip_prefix("Depends: linux-image-")
                        .map(|k| k.trim().to_owned())
                })
            })
    };
    if let Some(k) = query() {
        return Ok(k);
    }
    if is_root() {
        apt.update()?;
        if let Some(k) = query() {
            return Ok(k);
        }
    }
    Err("cannot resolve the newest linux-image-cloud-amd64 with `apt-cache depends` (run `apt-get update` as root, or pass --kernel VERSION)".into())
}

fn headers(apt: &mut Apt, kver: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/usr/src/linux-headers-{kver}"));
    if !dir.join("Makefile").is_file() {
        apt.install(
            &[format!("linux-headers-{kver}")],
            &format!("kernel headers for {kver} missing"),
        )?;
    }
    if !dir.join("Makefile").is_file() {
        return Err(format!(
            "{} still missing after installing linux-headers-{kver}",
            dir.display()
        ));
    }
    Ok(dir)
}

fn kernel_image(apt: &mut Apt, cache: &Path, kver: &str) -> Result<PathBuf> {
    let root = cache.join("kernel").join(kver);
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{kver}"));
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).map_err(|e| format!("mkdir {}: {e}", debs.display()))?;
    let pkg = format!("linux-image-{kver}");
    let download = || {
        output(
            Command::new("apt-get")
                .args(["download", "-q", &pkg])
                .current_dir(&debs),
        )
    };
    if let Err(e) = download() {
        if !is_root() {
            return Err(format!(
                "apt-get download {pkg} failed (try `apt-get update` as root): {e}"
            ));
        }
        apt.update()?;
        download()?;
    }
    let deb = fs::read_dir(&debs)
        .map_err(|e| format!("read {}: {e}", debs.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
        .max()
        .ok_or_else(|| format!("apt-get download {pkg} left no .deb in {}", debs.display()))?;
    let tmp = cache.join("kernel").join(format!(".{kver}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {}: {e}", tmp.display()))?;
    output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root).map_err(|e| format!("rename to {}: {e}", root.display()))?;
    if !vmlinuz.is_file() {
        return Err(format!("{} has no boot/vmlinuz-{kver}", deb.display()));
    }
    Ok(vmlinuz)
}

pub const FIXTURE_MODULES: &[&str] = &["pmod", "pmod5", "fixture_a", "fixture_b", "plainmod"];

fn build_fixture(cache: &Path, kver: &str, headers: &Path) -> Result<PathBuf> {
    let src = workspace_root().join("kmod-fixture");
    let dir = cache.join("kmod").join(kver);
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    for e in fs::read_dir(&src).map_err(|e| format!("read {}: {e}", src.display()))? {
        let p = e.map_err(|e| e.to_string())?.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".c") || name.ends_with(".h") || name == "Kbuild" || name == "Makefile" {
            let dst = dir.join(&name);
            // Copy only on change so make's timestamps stay meaningful.
            if fs::read(&p).ok() != fs::read(&dst).ok() {
                fs::copy(&p, &dst).map_err(|e| format!("copy {}: {e}", p.display()))?;
            }
        }
    }
    let out = Command::new("make")
        .arg("-C")
        .arg(headers)
        .arg(format!("M={}", dir.display()))
        .arg("modules")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run make: {e}"))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "building kmod-fixture against {} failed:\n{log}",
            headers.display()
        ));
    }
    if log.contains("warning:") {
        eprintln!("{log}");
    }
    for m in FIXTURE_MODULES {
        if !dir.join(format!("{m}.ko")).is_file() {
            return Err(format!(
                "kmod-fixture build produced no {m}.ko in {}",
                dir.display()
            ));
        }
    }
    Ok(dir)
}

fn cargo_static(packages: &[&str], extra: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", TARGET]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.args(extra)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(workspace_root());
    status(&mut cmd)
}

fn release_bin(name: &str) -> PathBuf {
    vm::target_dir().join(TARGET).join("release").join(name)
}

fn static_binary(name: &str) -> Result<Vec<u8>> {
    let p = release_bin(name);
    if !is_static_elf(&p)? {
        return Err(format!(
            "{} is dynamically linked; it must be built with -C target-feature=+crt-static",
            p.display()
        ));
    }
    fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))
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

struct Image {
    agent: Vec<u8>,
    product: Option<(Vec<u8>, Vec<u8>)>,
    kmod_dir: PathBuf,
}

fn initramfs(img: &Image, out: &Path) -> Result<()> {
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

    let busybox = fs::read("/bin/busybox").map_err(|e| format!("read /bin/busybox: {e}"))?;
    e.push(Entry::file("bin/busybox", 0o755, busybox));
    let list = output(Command::new("/bin/busybox").arg("--list-full"))?;
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
        let data = fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
        e.push(Entry::file(&format!("fixtures/{m}.ko"), 0o644, data));
    }
    let tmp = out.with_extension("cpio.tmp");
    let mut f = std::io::BufWriter::new(
        fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?,
    );
    cpio::write(&mut f, &e).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, out).map_err(|e| format!("rename {}: {e}", out.display()))
}

fn probe_accel(art: &vm::Artifacts) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_virt = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    if !has_virt || !Path::new("/dev/kvm").exists() {
        return "tcg".into();
    }
    let mut kvm = art.clone();
    kvm.accel = "kvm".into();
    let mut spec = vm::BootSpec::new("boot");
    spec.timeout = Duration::from_secs(30);
    match vm::boot(&kvm, &spec) {
        Ok(run) if run.assert_passed().is_ok() => "kvm".into(),
        _ => {
            eprintln!("xtask: KVM probe boot failed; using TCG");
            "tcg".into()
        }
    }
}

/// Runs every preparation step. Returns the artifacts the tests will use.
pub fn prepare(opts: &Options) -> Result<vm::Artifacts> {
    let t0 = Instant::now();
    let cache = vm::cache_dir();
    fs::create_dir_all(&cache).map_err(|e| format!("mkdir {}: {e}", cache.display()))?;
    let mut apt = Apt { updated: false };
    step("host tools", || host_tools(&mut apt))?;
    let kver = step("resolve kernel", || {
        resolve_kver(&mut apt, opts.kernel.as_deref())
    })?;
    eprintln!("xtask: guest kernel {kver}");
    let hdrs = step("kernel headers", || headers(&mut apt, &kver))?;
    let vmlinuz = step("kernel image", || kernel_image(&mut apt, &cache, &kver))?;
    let kmod_dir = step("kmod-fixture", || build_fixture(&cache, &kver, &hdrs))?;
    step("vm-agent (static)", || {
        cargo_static(&["vm"], &["--bin", "vm-agent"])
    })?;
    let agent = static_binary("vm-agent")?;
    let product = if opts.infra_only {
        eprintln!("xtask: --infra-only: staprun/stapio left out of the initramfs");
        None
    } else {
        step("staprun + stapio (static)", || {
            cargo_static(&["staprun", "stapio"], &[]).map_err(|e| {
                format!("the product binaries staprun/stapio do not build (yet?): {e}; the guest tests need them (use --infra-only to test only the harness)")
            })
        })?;
        let missing: Vec<String> = ["staprun", "stapio"]
            .iter()
            .map(|n| release_bin(n))
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "product binaries missing after the build: {}: packages staprun/stapio must produce binaries `staprun` and `stapio`",
                missing.join(", ")
            ));
        }
        Some((static_binary("staprun")?, static_binary("stapio")?))
    };
    let initrd = cache.join(format!("initramfs-{kver}.cpio"));
    step("initramfs", || {
        initramfs(
            &Image {
                agent,
                product,
                kmod_dir,
            },
            &initrd,
        )
    })?;
    let mut art = vm::Artifacts {
        kver: kver.clone(),
        kernel: vmlinuz,
        initrd,
        accel: "tcg".into(),
        product: !opts.infra_only,
    };
    art.accel = probe_accel(&art);
    let env = format!(
        "kver={}\nkernel={}\ninitrd={}\naccel={}\nproduct={}\n",
        art.kver,
        art.kernel.display(),
        art.initrd.display(),
        art.accel,
        if opts.infra_only { "no" } else { "yes" }
    );
    let env_path = cache.join(vm::ENV_FILE);
    fs::write(&env_path, env).map_err(|e| format!("write {}: {e}", env_path.display()))?;
    eprintln!(
        "xtask: vm-prepare done in {:.1}s -> {}",
        t0.elapsed().as_secs_f64(),
        env_path.display()
    );
    Ok(art)
}
