//! `vm-prepare`: everything a guest test needs, cached under target/vm-cache.
//!
//! ```text
//! target/vm-cache/debs/linux-image-KV_*.deb          apt-get download
//! target/vm-cache/kernel/KV/boot/vmlinuz-KV          dpkg-deb -x (no /boot changes)
//! target/vm-cache/kmod/KV/{pmod,pmod5,fixture_a,fixture_b,plainmod}.ko
//! target/vm-cache/initramfs-KV.cpio                  newc, written here
//! target/vm-cache/vm-test.env                        kver=, kernel=, initrd=, accel=
//! ```
//! Which kernel, and its headers: [`super::kernel`]. Every file and directory of the cache is
//! written under a temporary name (`.NAME.tmp-PID`) and renamed into place when complete, so an
//! interrupted run leaves nothing that a later one takes as done; the next run removes such
//! leftovers.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::fixture::build_fixture;
use super::initramfs::{Image, build_static, initramfs, is_static_elf, release_bin, static_binary};
use super::kernel::aptstate::{self, has_prefix};
use super::kernel::{Suite, guest_kernel, vmlinuz_in};
use crate::apt::Apt;
use crate::cmd::step;
use crate::error::{Context as _, Result, bail};
use crate::files;

#[derive(clap::Args, Clone, Debug)]
#[group(id = "vm_options")]
pub struct Options {
    /// Guest kernel: an ABI (6.1.0-57-cloud-amd64, 6.12.95+deb12-cloud-amd64, 7.3.4+deb13-cloud-amd64)
    /// or an alias for the newest of a suite: 6.1 (bookworm), 6.12 (bookworm-backports), 7
    /// (trixie-backports). Default: $VMTEST_KERNEL, else the newest bookworm cloud kernel.
    #[arg(long, value_name = "VERSION")]
    pub kernel: Option<String>,
    /// Build the initramfs without staprun/stapio (only scenario infra_boot can then pass).
    #[arg(long)]
    pub infra_only: bool,
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
            bail!("{cmd} not found: vm-prepare needs a Debian (bookworm) host");
        }
    }
    if !missing.is_empty() {
        apt.install(&missing, "host tools missing")?;
    }
    if !matches!(is_static_elf(Path::new("/bin/busybox")), Ok(true)) {
        bail!("/bin/busybox is not a static binary: install busybox-static");
    }
    Ok(())
}

/// Removes what interrupted runs left in the cache: temporary files and directories
/// ([`aptstate::tmp_name`]) whose process is gone, and the `.KV.tmp` directories of
/// earlier versions of this code. Only in directories that hold unpacked packages, built
/// modules and downloads (never a chroot, which may hold mounts).
fn sweep_interrupted(cache: &Path) {
    let mut dirs = vec![
        cache.join("debs"),
        cache.join("kernel"),
        cache.join("headers"),
    ];
    dirs.extend(
        fs::read_dir(cache.join("kmod"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    let gone = |name: &str| {
        aptstate::tmp_owner(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for d in &dirs {
        let legacy = d.ends_with("kernel") || d.ends_with("headers");
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if gone(&name) || (legacy && name.starts_with('.') && name.ends_with(".tmp")) {
                let p = e.path();
                eprintln!(
                    "xtask: removing {} (left by an interrupted run)",
                    p.display()
                );
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
        }
    }
    // Files only at the top (initramfs and env files written through temporary names, and
    // the `initramfs-KV.cpio.tmp` of earlier versions).
    for e in fs::read_dir(cache).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if (gone(&name) || name.ends_with(".cpio.tmp")) && e.file_type().is_ok_and(|t| t.is_file())
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// `kvm` when the CPU has VMX or SVM, /dev/kvm exists and one guest boots with it (30 s at
/// most); else `tcg`, at once when KVM cannot be there.
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
    // One boot: a probe that fails is not retried.
    match vm::boot_once(&kvm, &spec) {
        Ok(run) if run.assert_passed().is_ok() => "kvm".into(),
        _ => {
            eprintln!("xtask: KVM probe boot failed; using TCG");
            "tcg".into()
        }
    }
}

/// The QEMU CPU model for a kernel under TCG. 6.12 gets `max,cx16=off`: with CMPXCHG16B,
/// QEMU 7.2's TCG (bookworm's) corrupts EFLAGS in 6.12's SLUB fast path (a per-CPU
/// `cmpxchg16b %gs:`), and most boots die early in a double fault or an exc_debug WARN
/// (6 of 8 boots with `max`, 0 of 10 with `max,cx16=off`; 6.1 and 7.x boot fine with `max`).
fn tcg_cpu(kver: &str) -> &'static str {
    if has_prefix(kver, "6.12") {
        "max,cx16=off"
    } else {
        "max"
    }
}

/// Runs every preparation step. Returns the artifacts the tests will use.
pub fn prepare(opts: &Options) -> Result<vm::Artifacts> {
    let t0 = Instant::now();
    let cache = vm::cache_dir();
    files::mkdir(&cache)?;
    sweep_interrupted(&cache);
    let mut apt = Apt { updated: false };
    step("host tools", || host_tools(&mut apt))?;
    let wanted = opts
        .kernel
        .clone()
        .or_else(|| std::env::var(vm::KERNEL_VAR).ok());
    let (kver, suite, builder) = step("guest kernel (image and headers)", || {
        guest_kernel(&mut apt, &cache, wanted.as_deref())
    })?;
    eprintln!("xtask: guest kernel {kver} ({})", suite.name());
    let vmlinuz = vmlinuz_in(&cache.join("kernel").join(&kver), &kver).ok_or_else(|| {
        format!(
            "internal: no kernel image under {}",
            cache.join("kernel").join(&kver).display()
        )
    })?;
    let kmod_dir = step("kmod-fixture", || build_fixture(&cache, &kver, &builder))?;
    step("vm-agent (static)", || {
        build_static(&["vm"], &["--bin", "vm-agent"])
    })?;
    let agent = static_binary("vm-agent")?;
    let product = if opts.infra_only {
        eprintln!("xtask: --infra-only: staprun/stapio left out of the initramfs");
        None
    } else {
        step("staprun + stapio (static)", || {
            build_static(&["staprun", "stapio"], &[]).context(
                "the product binaries staprun/stapio do not build (yet?), and the guest tests need them (use --infra-only to test only the harness)",
            )
        })?;
        let missing: Vec<String> = ["staprun", "stapio"]
            .iter()
            .map(|n| release_bin(n))
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "product binaries missing after the build: {}: packages staprun/stapio must produce binaries `staprun` and `stapio`",
                missing.join(", ")
            );
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
        cpu: tcg_cpu(&kver).into(),
        product: !opts.infra_only,
    };
    art.accel = probe_accel(&art);
    let env = format!(
        "kver={}\nkernel={}\ninitrd={}\naccel={}\ncpu={}\nproduct={}\n",
        art.kver,
        art.kernel.display(),
        art.initrd.display(),
        art.accel,
        art.cpu,
        if opts.infra_only { "no" } else { "yes" }
    );
    // Every kernel gets its own env file (VMTEST_KERNEL selects it); vm-test.env, which the
    // tests read by default, only ever names the default suite's kernel.
    let env_path = cache.join(vm::kernel_env_name(&kver));
    files::write_atomic(&env_path, &env)?;
    if suite == Suite::Bookworm {
        files::write_atomic(&cache.join(vm::ENV_FILE), &env)?;
    }
    eprintln!(
        "xtask: vm-prepare done in {:.1}s -> {}",
        t0.elapsed().as_secs_f64(),
        env_path.display()
    );
    Ok(art)
}
