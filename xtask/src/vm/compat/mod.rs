//! `compat-prepare`: real SystemTap modules and the C staprun/stapio, for the
//! side-by-side guest tests (`vm/tests/compat.rs`, guest side
//! `vm/src/bin/vm-agent/compat.rs`, documented in docs/compat.md).
//!
//! ```text
//! target/vm-cache/stap/runtime-VER-KEY/            copy of /usr/share/systemtap/runtime, patched
//!                                                  with compat/runtime-4.8-*.patch when needed
//! target/vm-cache/stap/KVER/NAME-KEY.ko            stap -p4 -r KVER -R RUNTIME -m NAME OPTS compat/X.stp
//! target/vm-cache/stap/home/                       SYSTEMTAP_DIR of those builds (stap's own cache)
//! target/vm-cache/debs/systemtap-runtime_*.deb     apt-get download (the C reference)
//! target/vm-cache/compat/c-VERSION/                dpkg-deb -x of it
//! target/vm-cache/compat/initramfs-compat-KVER.cpio  vm-prepare's initramfs + a second cpio archive
//! target/vm-cache/compat.env                       initrd=, modules=, stap=, c_version=
//! ```
//!
//! KEY hashes everything a module depends on (script text, stap options, translator version, runtime
//! patch, kernel release and the headers' Module.symvers), so a rerun rebuilds nothing.
//!
//! The second archive adds (the kernel unpacks concatenated newc archives in order):
//!
//! ```text
//! /opt/c/usr/bin/staprun      04110 root:stapusr   the C staprun (bind-mounted over /usr/bin/staprun
//!                                                  by the guest for C runs, see docs/compat.md)
//! /usr/lib/systemtap/stapio   0755                 the C stapio, at its build-time PKGLIBDIR path
//! /lib/x86_64-linux-gnu/...   0755                 their shared libraries, as `ldd` names them
//! /lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
//! /compat/mods/NAME.ko        0644                 the modules (the guest copies them where needed)
//! ```

mod ctools;
mod stap;
mod stap5;

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::cpio::{self, Entry};
use crate::apt::Apt;
use crate::cmd::{step, workspace_root};
use crate::error::{Result, bail};
use crate::files;
use ctools::{c_reference, c_tools_entries, c5_entries};
pub use stap::apply_task_work_patch;
use stap::{Translator, host_stap, modules, runtime};
use stap5::stap5;

/// The file `compat-prepare` writes last (in the vm cache directory).
pub const ENV_FILE: &str = "compat.env";
/// Where the C staprun lives in the guest image.
pub const C_STAPRUN: &str = "opt/c/usr/bin/staprun";
/// The C stapio's build-time path (`PKGLIBDIR "/stapio"`, Debian's pkglibexecdir).
pub const C_STAPIO: &str = "usr/lib/systemtap/stapio";

#[derive(clap::Args, Clone, Debug)]
#[group(id = "compat_options")]
pub struct Options {
    #[command(flatten)]
    pub vm: crate::vm::Options,
    /// Leave out the SystemTap 5.x generation (trixie chroot, /c5 in the guest).
    #[arg(long)]
    pub no_stap5: bool,
}

/// compat/ in the workspace: the scripts and the runtime patch.
fn compat_dir() -> PathBuf {
    workspace_root().join("compat")
}

/// `base` with `extras` appended, written to `out` (through `out.cpio.tmp`).
fn image(base: &Path, extras: &[Entry], out: &Path) -> Result<()> {
    let bytes = cpio::append(base, extras)?;
    let tmp = out.with_extension("cpio.tmp");
    files::write(&tmp, &bytes)?;
    files::rename(&tmp, out)
}

/// vm-prepare, then the modules, the C reference and the compat initramfs.
/// Returns the artifacts with that initramfs in place of vm-prepare's.
pub fn prepare(opts: &Options) -> Result<vm::Artifacts> {
    let art = crate::vm::prepare(&opts.vm)?;
    if !art.product {
        bail!("compat-prepare needs our staprun/stapio: drop --infra-only");
    }
    let t0 = Instant::now();
    let cache = vm::cache_dir();
    let mut apt = Apt { updated: false };
    let (version, line) = step("host SystemTap", || host_stap(&mut apt))?;
    eprintln!("xtask: {line}");
    let (rt, rt_key) = step("SystemTap runtime", || runtime(&cache, &art.kver, &version))?;
    let mods = step("SystemTap modules", || {
        modules(
            &cache,
            &art.kver,
            &line,
            Translator::Host {
                runtime: rt.clone(),
            },
            &rt_key,
        )
    })?;
    let c = step("C staprun/stapio", || c_reference(&mut apt, &cache))?;
    let five = if opts.no_stap5 {
        None
    } else {
        Some(stap5(&mut apt, &cache, &art.kver)?)
    };
    let dir = cache.join("compat");
    files::mkdir(&dir)?;
    let initrd = dir.join(format!("initramfs-compat-{}.cpio", art.kver));
    step("compat initramfs", || {
        let mut extras = Vec::new();
        c_tools_entries("", &c, &mods, &mut extras)?;
        if let Some(f) = &five {
            c5_entries(&f.c, &f.mods, &mut extras)?;
        }
        image(&art.initrd, &extras, &initrd)
    })?;
    let names: Vec<&str> = mods.keys().map(String::as_str).collect();
    let mut env = format!(
        "kver={}\ninitrd={}\nmodules={}\nstap={version}\nc_version={}\n",
        art.kver,
        initrd.display(),
        names.join(","),
        c.version
    );
    match &five {
        Some(f) => env.push_str(&format!(
            "stap5={}\nc5_version={}\n",
            f.version, f.c.version
        )),
        None => env.push_str("stap5=no\n"),
    }
    let env_path = cache.join(ENV_FILE);
    files::write(&env_path, env)?;
    eprintln!(
        "xtask: compat-prepare done in {:.1}s (after vm-prepare) -> {}",
        t0.elapsed().as_secs_f64(),
        env_path.display()
    );
    Ok(vm::Artifacts { initrd, ..art })
}
