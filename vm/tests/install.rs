//! The package and the install in a guest: one test per scenario of `vm::registry` with
//! suite `Install` (guest side: vm/src/bin/vm-agent/install.rs), each booting the install
//! image (`target/vm-cache/initramfs-install-<kver>.cpio`).
//!
//! `cargo xtask vm-install-test` builds the .deb, the /usr/local install and that image, then
//! runs this. A missing image is a failure, never a skip.

use std::time::Instant;

use libtest_mimic::{Arguments, Failed, Trial};
use vm::registry::{self, Scenario, Suite};

fn run(scenario: &'static Scenario) -> Result<(), Failed> {
    let t0 = Instant::now();
    let name = scenario.name;
    let mut art = vm::Artifacts::load()?;
    let image = vm::cache_dir().join(format!("initramfs-install-{}.cpio", art.kver));
    if !image.is_file() {
        return Err(format!(
            "{} is missing: run `cargo xtask vm-install-test`",
            image.display()
        )
        .into());
    }
    art.initrd = image;
    let run = vm::boot(&art, &scenario.spec())?;
    // The transcript is the point of these tests (shown with --nocapture).
    println!("--- {name}: guest transcript ---");
    for e in run.events() {
        println!("{}", e.strip_prefix("LOG ").unwrap_or(e));
    }
    let result = run.assert_passed();
    eprintln!(
        "[vm] {name}: {} checks passed, guest {:.2}s, wall {:.2}s",
        run.verdict().passed,
        run.elapsed.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    result.map_err(Failed::from)
}

fn main() {
    let mut args = Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let trials = registry::tests(Suite::Install)
        .map(|s| Trial::test(s.name, move || run(s)))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
