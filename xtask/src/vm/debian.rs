//! `debian-test`: the product on a real Debian bookworm system in a QEMU guest: systemd as
//! PID 1 with journald, dpkg and apt, Debian's SystemTap 4.8 (`stap`) next to our package, and
//! real users logging in with `runuser -l`. Guest side: `vm/src/bin/vm-agent/debian.rs`; test
//! binary: `vm/tests/debian.rs`; documented in docs/debian.md.
//!
//! ```text
//! target/debian-guest/root/            the guest's root file system (cached; built in
//!                                      .root.tmp-PID from deb-test's debootstrap base and renamed
//!                                      into place when complete; STAMP names the recipe)
//! target/debian-guest/base-KVER.img    ext4 image of root/ (mkfs.ext4 -d), the disks' backing file
//! target/debian-guest/vmlinuz, initrd  the guest kernel and the initramfs Debian built for it
//! target/debian-guest/share/           this run's files: staprun-rs.deb, vm-agent, pmod.ko
//! target/debian-guest/share.img        them as an ext4 image, the guest's read-only /dev/vdb
//! target/debian-guest/debian.env       what the test binary boots
//! ```
//!
//! The image holds systemd, `systemtap` (the translator and Debian's C staprun/stapio), the
//! guest kernel's image and headers, users alice (stapusr), bob (stapusr, stapdev) and carol,
//! and `vmtest.service`, which mounts the second disk and runs `vm-agent --debian` (the scenario is
//! on the kernel command line). Our package is installed by each guest from the share with
//! apt, so the image does not change with our code. bob's stap cache is filled at image build
//! (`stap -r KVER -p4` of the scripts the tests run, in the chroot), so the guest's `stap`
//! finds its modules there instead of compiling under TCG (the tests say which it did).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::apt::{self, Apt};
use crate::chroot::{Chroot, remove_tree};
use crate::cmd::{self, cmd};
use crate::error::{Context as _, Error, Result, bail};
use crate::files;
use crate::pkg::debtest::{base_chroot, top_dir};
use crate::pkg::{deb, dist};
use crate::vm::{compat, release_bin};

/// Written into the root when it is complete; a new recipe needs a new text.
pub(crate) const STAMP: &str = ".staprun-rs-debian-guest";

/// The stap command lines whose modules are compiled into bob's stap cache at image build:
/// the guest's tests run the same lines, so stap finds the same cache entries.
fn cached_commands() -> Vec<String> {
    let mut v: Vec<String> = vm::DEBIAN_STAP_RUNS.iter().map(vm::stap_command).collect();
    v.push("stap -v -e 'probe begin { println(\"hello\") exit() }'".to_owned());
    v.dedup();
    v
}

fn dir() -> PathBuf {
    vm::target_dir().join("debian-guest")
}

fn stamp_text(kver: &str) -> String {
    format!("recipe 3; kernel {kver}\n")
}

const VMTEST_UNIT: &str = "[Unit]
Description=staprun-rs guest test agent
After=multi-user.target systemd-journald.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vmtest-run
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

const VMTEST_RUN: &str = "#!/bin/sh
# Mounts this run's files (the second disk, read-only) and runs the test agent from them.
mkdir -p /mnt/vmtest
mount -o ro /dev/vdb /mnt/vmtest
exec /mnt/vmtest/vm-agent --debian
";

/// Removes what interrupted runs left: temporary roots, images and mount points of
/// processes that are gone.
fn clean_stale(d: &Path) -> Result<()> {
    let Ok(rd) = fs::read_dir(d) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let pid = [".root.tmp-", ".base.tmp-", ".mnt-"]
            .iter()
            .find_map(|p| n.strip_prefix(p))
            .map(|rest| rest.trim_end_matches(".img").to_owned());
        if let Some(pid) = pid
            && pid.parse::<u32>().is_ok()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            remove_tree(&e.path())?;
        }
    }
    Ok(())
}

/// The root file system (for `fleet-test`, which builds its guests' root from a copy).
pub(crate) fn guest_root(kver: &str) -> Result<PathBuf> {
    root(kver)
}

/// The root file system, built when missing or of another recipe.
fn root(kver: &str) -> Result<PathBuf> {
    let d = dir();
    files::mkdir(&d)?;
    let root = d.join("root");
    let want = stamp_text(kver);
    if fs::read_to_string(root.join(STAMP)).ok().as_deref() == Some(want.as_str()) {
        eprintln!("xtask: reusing the Debian guest root {}", root.display());
        return Ok(root);
    }
    clean_stale(&d)?;
    let top = top_dir();
    files::mkdir(&top)?;
    let base = base_chroot(&top)?;
    let tmp = d.join(format!(".root.tmp-{}", std::process::id()));
    remove_tree(&tmp)?;
    let t0 = Instant::now();
    let sh = cmd::shell()?;
    cmd::output(cmd!(sh, "cp -a {base} {tmp}"))?;
    let kdeb = files::read_dir(&vm::cache_dir().join("debs"))?
        .into_iter()
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(&format!("linux-image-{kver}_"))
            })
        })
        .ok_or_else(|| format!("no linux-image-{kver} package in the vm cache"))?;
    files::copy(&kdeb, &tmp.join("tmp/kernel.deb"))?;
    files::write(
        &tmp.join("etc/apt/sources.list.d/updates.sources"),
        apt::bookworm_update_sources()?,
    )?;
    let archives = top.join("apt-archives");
    files::mkdir(&archives)?;
    let log = fs::File::create(d.join("build.log")).ok();
    let mut ch = Chroot {
        root: tmp.clone(),
        archives: Some(archives),
        log,
    };
    eprintln!(
        "xtask: Debian guest: installing systemd, systemtap and the kernel in {}",
        tmp.display()
    );
    ch.sh(&format!(
        "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
apt-get update -q
apt-get install -y -q systemd-sysv udev kmod procps util-linux initramfs-tools \
  systemtap linux-headers-{kver} /tmp/kernel.deb
rm -f /tmp/kernel.deb"
    ))?;
    patch_runtime(&tmp)?;
    ch.sh(
        "getent group stapusr >/dev/null && getent group stapdev >/dev/null
useradd -m -s /bin/bash -G stapusr alice
useradd -m -s /bin/bash -G stapusr,stapdev bob
useradd -m -s /bin/bash carol
echo vmtest > /etc/hostname
printf '/dev/vda / ext4 defaults 0 1\\n' > /etc/fstab
passwd -d root >/dev/null
mkdir -p /usr/local/sbin /etc/systemd/system/multi-user.target.wants
systemctl mask serial-getty@ttyS1.service >/dev/null 2>&1 || true",
    )?;
    files::write(&tmp.join("etc/systemd/system/vmtest.service"), VMTEST_UNIT)?;
    let wants = tmp.join("etc/systemd/system/multi-user.target.wants/vmtest.service");
    std::os::unix::fs::symlink("/etc/systemd/system/vmtest.service", &wants)
        .map_err(|e| Error::io("symlink", &wants, e))
        .context("enable vmtest.service")?;
    let run = tmp.join("usr/local/sbin/vmtest-run");
    files::write(&run, VMTEST_RUN)?;
    cmd::output(cmd!(sh, "chmod 755 {run}"))?;
    ch.sh("rm -f /usr/sbin/policy-rc.d; apt-get clean")?;
    let required = [
        format!("boot/vmlinuz-{kver}"),
        format!("boot/initrd.img-{kver}"),
        "usr/bin/stap".to_owned(),
        "usr/bin/staprun".to_owned(),
        "lib/systemd/systemd".to_owned(),
    ];
    finish_root(
        &tmp,
        &root,
        STAMP,
        &want,
        &required,
        "Debian guest root",
        t0,
    )?;
    Ok(root)
}

/// A guest root built in `tmp` takes the place of `root`: every `required`
/// path must be in it (else an error naming `what` and the path), then its
/// `stamp` file gets `want` and it is renamed over the old root.
pub(crate) fn finish_root(
    tmp: &Path,
    root: &Path,
    stamp: &str,
    want: &str,
    required: &[String],
    what: &str,
    t0: Instant,
) -> Result<()> {
    for f in required {
        if !tmp.join(f).exists() {
            bail!("the {what} has no /{f}");
        }
    }
    files::write(&tmp.join(stamp), want)?;
    remove_tree(root)?;
    files::rename(tmp, root)?;
    eprintln!("xtask: {what} built in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// bob's stap cache, filled in the image itself: the modules of [`cached_commands`],
/// compiled with `stap -r KVER -p4` in a chroot of the loop-mounted image (in a mount
/// namespace of its own, so the mount ends with the command). stap's cache key includes the
/// sizes and times of the runtime and kernel build directories, so the modules must be built
/// on the very file system the guest boots: a copy made from another one (where dpkg's
/// renames left directories larger) gets other keys, and the guest would compile under TCG.
fn fill_cache(img: &Path, kver: &str) -> Result<()> {
    let stamp = img.with_extension("cache");
    let want = cached_commands().join("\n");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    let _ = fs::remove_file(&stamp);
    let t0 = Instant::now();
    eprintln!("xtask: Debian guest: filling bob's stap cache in the image (stap -r {kver} -p4)");
    let mut script = String::from("set +e\n");
    for cmd in cached_commands() {
        let rest = cmd.strip_prefix("stap ").unwrap_or(&cmd);
        script.push_str(&format!(
            "echo \"== {}\"\n(cd /home/bob && runuser -u bob -- env HOME=/home/bob PATH=/usr/bin:/bin stap -r {kver} -p4 {rest} >/dev/null) || echo \"not cached (stap refused it)\"\n",
            cmd.replace('"', "'")
        ));
    }
    let mnt = dir().join(format!(".mnt-{}", std::process::id()));
    files::mkdir(&mnt)?;
    // Not the chroot runner: the root is a loop-mounted image, mounted in the namespace too.
    let enter = r#"mount -o loop "$1" "$2"
mount -t proc proc "$2/proc"
chroot "$2" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 sh -c "$3""#;
    let sh = cmd::shell()?;
    let out = cmd::output(cmd!(
        sh,
        "unshare --mount --propagation private -- sh -ec {enter} sh {img} {mnt} {script}"
    ));
    let _ = fs::remove_dir(&mnt);
    let text = out?;
    let _ = fs::write(dir().join("cache.log"), &text);
    for l in text.lines().filter(|l| l.starts_with("not cached")) {
        eprintln!("xtask: Debian guest: {l}");
    }
    files::write(&stamp, want)?;
    eprintln!(
        "xtask: Debian guest: stap cache filled in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Debian's SystemTap 4.8 runtime does not build against bookworm's current kernels, whose
/// headers renamed `task_work_cancel()` to `task_work_cancel_func()` (a stable backport): every
/// `stap` run fails at pass 4 there. The image applies the compat suite's patch
/// (compat/runtime-4.8-task_work_cancel_func.patch) to the installed runtime, as an
/// administrator of such a system would have to; without the rename it is left alone.
fn patch_runtime(root: &Path) -> Result<()> {
    let runtime = root.join("usr/share/systemtap/runtime");
    let renamed = files::read_dir(&root.join("usr/src"))?
        .into_iter()
        .map(|p| p.join("include/linux/task_work.h"))
        .filter_map(|h| fs::read_to_string(h).ok())
        .any(|t| t.contains("task_work_cancel_func("));
    let used =
        files::read_to_string(&runtime.join("stp_task_work.c"))?.contains("task_work_cancel_func");
    if !renamed || used {
        return Ok(());
    }
    compat::apply_task_work_patch(&runtime)?;
    eprintln!(
        "xtask: Debian guest: the SystemTap 4.8 runtime is patched for task_work_cancel_func"
    );
    Ok(())
}

/// The ext4 image of `root` (rebuilt when the root is newer), the kernel and the initrd.
fn image(root: &Path, kver: &str) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let d = dir();
    let img = d.join(format!("base-{kver}.img"));
    let stamp = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = match (stamp(&img), stamp(&root.join(STAMP))) {
        (Some(i), Some(r)) => i > r,
        _ => false,
    };
    if !fresh {
        let tmp = d.join(format!(".base.tmp-{}.img", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let t0 = Instant::now();
        let sh = cmd::shell()?;
        cmd::output(cmd!(sh, "mkfs.ext4 -q -F -L vmroot -d {root} {tmp} 6G"))?;
        let _ = fs::remove_file(img.with_extension("cache"));
        files::rename(&tmp, &img)?;
        eprintln!(
            "xtask: Debian guest image built in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
    }
    let kernel = d.join("vmlinuz");
    let initrd = d.join("initrd");
    for (from, to) in [
        (root.join(format!("boot/vmlinuz-{kver}")), &kernel),
        (root.join(format!("boot/initrd.img-{kver}")), &initrd),
    ] {
        files::copy(&from, to)?;
    }
    Ok((img, kernel, initrd))
}

/// Everything the Debian guest tests need; writes `debian.env`.
pub fn prepare(opts: &crate::vm::Options) -> Result<PathBuf> {
    let art = crate::vm::prepare(opts)?;
    // Host tools of this stage: copy-on-write disks, the ext4 image, the runtime patch.
    let mut apt = Apt { updated: false };
    for (tool, pkg) in [
        ("qemu-img", "qemu-utils"),
        ("mkfs.ext4", "e2fsprogs"),
        ("patch", "patch"),
    ] {
        if vm::which(tool).is_none() {
            apt.install(&[pkg.to_owned()], &format!("{tool} missing"))?;
        }
    }
    dist::dist(&dist::Paths::for_prefix(Path::new("/usr")))?;
    let deb = deb::deb()?;
    let root = root(&art.kver)?;
    let (img, kernel, initrd) = image(&root, &art.kver)?;
    fill_cache(&img, &art.kver)?;
    let share = dir().join("share");
    let _ = fs::remove_dir_all(&share);
    files::mkdir(&share)?;
    let copy = |from: &Path, name: &str| files::copy(from, &share.join(name));
    copy(&deb, "staprun-rs.deb")?;
    copy(&release_bin("vm-agent"), "vm-agent")?;
    copy(
        &vm::cache_dir().join("kmod").join(&art.kver).join("pmod.ko"),
        "pmod.ko",
    )?;
    // The cloud kernel has no 9p: the files travel on a second, read-only disk.
    let share_img = dir().join("share.img");
    let _ = fs::remove_file(&share_img);
    let sh = cmd::shell()?;
    cmd::output(cmd!(
        sh,
        "mkfs.ext4 -q -F -L vmtest -d {share} {share_img} 64M"
    ))?;
    let env = dir().join("debian.env");
    files::write(
        &env,
        format!(
            "kver={}\nkernel={}\ninitrd={}\nimage={}\nshare={}\naccel={}\ncpu={}\n",
            art.kver,
            kernel.display(),
            initrd.display(),
            img.display(),
            share_img.display(),
            art.accel,
            art.cpu
        ),
    )?;
    Ok(env)
}

/// Only the root file system and its image, for the kernel vm-prepare last prepared.
pub fn image_only() -> Result<()> {
    let art = vm::Artifacts::load()?;
    let root = root(&art.kver)?;
    let (img, _, _) = image(&root, &art.kver)?;
    fill_cache(&img, &art.kver)
}

/// `debian-test`: prepare, then `cargo test -p vm --test debian`.
pub fn debian_test(opts: &crate::vm::Options, test_args: &[String]) -> Result<()> {
    if std::env::var_os("DEBIAN_IMAGE_ONLY").is_some() {
        return image_only();
    }
    let t0 = Instant::now();
    let env = prepare(opts)?;
    let prep = t0.elapsed();
    let sh = cmd::workspace_shell()?;
    let cargo = cmd::cargo(&sh)
        .args(["test", "-p", "vm", "--test", "debian", "--"])
        .args(test_args)
        .env("VMTEST_DEBIAN_ENV", &env);
    eprintln!("xtask: running {cargo}");
    let r = cmd::run(cargo);
    eprintln!(
        "xtask: debian-test wall time {:.1}s (prepare {:.1}s, tests {:.1}s)",
        t0.elapsed().as_secs_f64(),
        prep.as_secs_f64(),
        (t0.elapsed() - prep).as_secs_f64()
    );
    r.context("Debian guest tests failed")
}
