//! The Debian guest stage: one test per scenario of `vm::registry` with suite `Debian` (guest
//! side: vm/src/bin/vm-agent/debian.rs), each booting the Debian bookworm image (`cargo xtask
//! debian-test` builds it, see xtask/src/debian.rs) from a fresh copy-on-write disk, with
//! systemd as PID 1. A scenario with a `then` boots twice on the same disk (a reboot), the
//! second time as that scenario. A missing image is a failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use libtest_mimic::{Arguments, Failed, Trial};
use vm::registry::{self, Scenario, Suite};

struct Env {
    art: vm::Artifacts,
    image: PathBuf,
    share: PathBuf,
}

fn env() -> Result<Env, String> {
    let p = std::env::var_os("VMTEST_DEBIAN_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| vm::target_dir().join("debian-guest/debian.env"));
    let text = std::fs::read_to_string(&p).map_err(|e| {
        format!(
            "the Debian guest is not prepared ({}: {e}): run `cargo xtask debian-test`",
            p.display()
        )
    })?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
            .ok_or_else(|| format!("{}: no {k}=", p.display()))
    };
    let env = Env {
        art: vm::Artifacts {
            kver: get("kver")?,
            kernel: get("kernel")?.into(),
            initrd: get("initrd")?.into(),
            accel: get("accel")?,
            cpu: get("cpu")?,
            product: true,
        },
        image: get("image")?.into(),
        share: get("share")?.into(),
    };
    for f in [&env.art.kernel, &env.art.initrd, &env.image] {
        if !f.is_file() {
            return Err(format!(
                "{} is missing: run `cargo xtask debian-test`",
                f.display()
            ));
        }
    }
    Ok(env)
}

fn overlay(image: &Path, name: &str) -> Result<PathBuf, String> {
    let disk = vm::target_dir()
        .join("debian-guest")
        .join(format!("disk-{name}-{}.qcow2", std::process::id()));
    let _ = std::fs::remove_file(&disk);
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(image)
        .arg(&disk)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(disk)
}

fn boot(env: &Env, scenario: &Scenario, disk: &Path) -> Result<vm::GuestRun, String> {
    let name = scenario.name;
    let mut spec = scenario.spec();
    spec.disk = Some(disk.to_path_buf());
    spec.share = Some(env.share.clone());
    let run = vm::boot(&env.art, &spec)?;
    println!("--- {name}: guest transcript ---");
    for e in run.events() {
        println!("{}", e.strip_prefix("LOG ").unwrap_or(e));
    }
    eprintln!(
        "[debian] {name}: {} checks passed, guest {:.2}s",
        run.verdict().passed,
        run.elapsed.as_secs_f64()
    );
    Ok(run)
}

fn run(first: &'static Scenario) -> Result<(), Failed> {
    let t0 = Instant::now();
    let env = env()?;
    let disk = overlay(&env.image, first.name)?;
    let result = (|| {
        boot(&env, first, &disk)?.assert_passed()?;
        if let Some(then) = first.boot.then {
            let second =
                registry::find(then).ok_or_else(|| format!("{then}: not in vm::registry"))?;
            boot(&env, second, &disk)?.assert_passed()?;
        }
        Ok::<(), String>(())
    })();
    let _ = std::fs::remove_file(&disk);
    eprintln!(
        "[debian] {}: wall {:.1}s",
        first.name,
        t0.elapsed().as_secs_f64()
    );
    result.map_err(Failed::from)
}

fn main() {
    let mut args = Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let trials = registry::tests(Suite::Debian)
        .map(|s| Trial::test(s.name, move || run(s)))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
