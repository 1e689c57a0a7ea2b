//! `cargo xtask`: prepare and run the QEMU guest tests of staprun/stapio.
//!
//! - `vm-prepare [--kernel VERSION]`: host tools, guest kernel + headers, fixture
//!   modules, static staprun/stapio/vm-agent, initramfs (all under target/vm-cache).
//! - `vm-test [--kernel VERSION] [-- <libtest args>]`: vm-prepare, then
//!   `cargo test -p vm --test vm --test attacks` on that kernel (VERSION: an ABI, or 6.1, 6.12
//!   or 7 for the newest of bookworm, bookworm-backports, trixie-backports; `VMTEST_KERNEL`
//!   tells the test binaries which prepared kernel to boot).
//! - `matrix [--kernels 6.1,6.12,7] [--attacks]`: the guest suite on every kernel, as a table
//!   (docs/matrix.md).
//! - `demo`: vm-prepare, then one guest where alice runs `staprun pmod`.
//! - `test`: rustfmt check, clippy, host tests, VM suites, the Debian guest (what `.ci/run` calls).
//! - `debian-test [-- <libtest args>]`: the Debian bookworm guest stage (docs/debian.md).
//! - `deb-test`: the package next to Debian's systemtap-runtime in a bookworm chroot.
//! - `install [--prefix P] [--destdir D] [--layout 755|775]`: staprun 04110 root:stapusr, stapio
//!   0755 (built with the prefix's paths), groups, blessed directory, man pages, completions;
//!   `uninstall` removes them (see docs/admin.md).
//! - `dist`: man pages (checked with groff) and completions into target/dist/.
//! - `deb`: target/dist/staprun-rs_<version>_<arch>.deb (dpkg-deb from a staged tree).
//! - `vm-install-test [-- <libtest args>]`: vm-prepare, deb, a --destdir install, then
//!   `cargo test -p vm --test install` (the package and the install in a guest).
//! - `compat-prepare`: vm-prepare, real SystemTap modules, the C staprun/stapio, compat initramfs.
//! - `bench [--cpus 2,4] ...`: compat-prepare, then throughput and start-up of our stapio
//!   against the C one in guests (docs/bench.md).
//! - `compat-test [-- <libtest args>]`: compat-prepare, then `cargo test -p vm --test compat`
//!   (`STAPRUN_UNDER_TEST=ours|theirs|both` selects the implementations).
#![forbid(unsafe_code)]

mod aptstate;
mod bench;
mod compat;
mod cpio;
mod deb;
mod debian;
mod debtest;
mod dist;
mod fuzz;
mod install;
mod matrix;
mod prepare;

use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Developer tasks for the staprun/stapio workspace"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every cargo-fuzz target in fuzz/ for SECONDS on its corpus (cargo-fuzz is installed if missing).
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Install host tools, fetch the guest kernel, build fixture modules, binaries and the initramfs.
    VmPrepare(prepare::Options),
    /// vm-prepare, then run the guest test suite (`cargo test -p vm --test vm`).
    VmTest {
        #[command(flatten)]
        opts: prepare::Options,
        /// Use `cargo nextest run` instead of `cargo test`.
        #[arg(long)]
        nextest: bool,
        /// Arguments passed to the test binary (libtest syntax: filters, --list, --test-threads N ...).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// vm-prepare, then boot one guest in which alice (stapusr) runs `staprun pmod`.
    Demo {
        #[command(flatten)]
        opts: prepare::Options,
    },
    /// Every test: rustfmt check, clippy -D warnings, host tests, then the VM suite.
    Test {
        #[command(flatten)]
        opts: prepare::Options,
    },
    /// vm-prepare, then real SystemTap modules (stap -p4), the C staprun/stapio and the compat initramfs.
    CompatPrepare(compat::Options),
    /// compat-prepare, then the side-by-side suite (`cargo test -p vm --test compat`).
    CompatTest {
        #[command(flatten)]
        opts: compat::Options,
        /// Arguments passed to the test binary (libtest syntax: filters, --list, --test-threads N ...).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Install staprun (04110 root:stapusr), stapio (0755), groups, blessed directory, man pages, completions.
    Install(install::Options),
    /// Remove what install put in place (groups and blessed directories are kept).
    Uninstall(install::UninstallOptions),
    /// Generate staprun(8), stapio(8) and bash/zsh/fish completions into target/dist/.
    Dist {
        /// Prefix whose build-time paths the man pages name.
        #[arg(long, value_name = "DIR", default_value = "/usr")]
        prefix: std::path::PathBuf,
    },
    /// Build target/dist/staprun-rs_<version>_<arch>.deb.
    Deb,
    /// A Debian bookworm guest (systemd, journald, Debian's stap) with our .deb: `stap` drives our staprun.
    DebianTest {
        #[command(flatten)]
        opts: prepare::Options,
        /// Arguments passed to the test binary (libtest syntax).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// deb, then install, upgrade, remove and purge it next to Debian's systemtap-runtime and systemtap in a bookworm chroot.
    DebTest,
    /// vm-prepare, deb, a --destdir install, then the guest install tests (`cargo test -p vm --test install`).
    VmInstallTest {
        #[command(flatten)]
        opts: prepare::Options,
        /// Arguments passed to the test binary (libtest syntax).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// The guest suite on every kernel of the matrix (6.1, 6.12, 7.x): a kernel x scenario table.
    Matrix(matrix::Options),
    /// compat-prepare, then relay throughput and start-up, ours vs the C stapio, in 2- and 4-vCPU guests.
    Bench(bench::Options),
}

type Result<T> = std::result::Result<T, String>;

/// The guest test binaries of `vm-test`: the scenarios and the attack suite.
const VM_TESTS: [&str; 4] = ["--test", "vm", "--test", "attacks"];

fn vm_test(opts: &prepare::Options, nextest: bool, test_args: &[String]) -> Result<()> {
    let t0 = Instant::now();
    let art = prepare::prepare(opts)?;
    let prep = t0.elapsed();
    let mut cmd = cargo();
    cmd.env(vm::KERNEL_VAR, &art.kver);
    if nextest {
        cmd.args(["nextest", "run", "-p", "vm"]).args(VM_TESTS);
        if !test_args.is_empty() {
            cmd.arg("--").args(test_args);
        }
    } else {
        cmd.args(["test", "-p", "vm"])
            .args(VM_TESTS)
            .arg("--")
            .args(test_args);
    }
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    eprintln!(
        "xtask: vm-test wall time {:.1}s (prepare {:.1}s, tests {:.1}s)",
        t0.elapsed().as_secs_f64(),
        prep.as_secs_f64(),
        (t0.elapsed() - prep).as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("guest tests failed ({status})"))
    }
}

fn compat_test(opts: &compat::Options, test_args: &[String]) -> Result<()> {
    let t0 = Instant::now();
    compat::prepare(opts)?;
    let prep = t0.elapsed();
    let mut cmd = cargo();
    cmd.args(["test", "-p", "vm", "--test", "compat", "--"])
        .args(test_args);
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    eprintln!(
        "xtask: compat-test wall time {:.1}s (prepare {:.1}s, tests {:.1}s)",
        t0.elapsed().as_secs_f64(),
        prep.as_secs_f64(),
        (t0.elapsed() - prep).as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("compat tests failed ({status})"))
    }
}

fn demo(opts: &prepare::Options) -> Result<()> {
    let art = prepare::prepare(opts)?;
    let spec = vm::BootSpec::new("demo");
    eprintln!(
        "xtask: booting guest {} ({}) for scenario demo",
        art.kver, art.accel
    );
    let run = vm::boot(&art, &spec)?;
    eprintln!("xtask: console log: {}", run.console_log.display());
    println!(
        "--- guest transcript ({:.2}s) ---",
        run.elapsed.as_secs_f64()
    );
    for e in run.events() {
        println!("{}", e.strip_prefix("LOG ").unwrap_or(e));
    }
    run.assert_passed()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(prepare::workspace_root());
    c
}

/// Runs every stage (so one report shows everything), failing if any failed.
fn test_all(opts: &prepare::Options) -> Result<()> {
    let t0 = Instant::now();
    let mut failed = Vec::new();
    let mut stage = |name: &str, f: &mut dyn FnMut() -> Result<()>| {
        let t = Instant::now();
        eprintln!("xtask: === {name} ===");
        let r = f();
        eprintln!(
            "xtask: === {name}: {} ({:.1}s) ===",
            if r.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if let Err(e) = r {
            eprintln!("xtask: {name}: {e}");
            failed.push(name.to_owned());
        }
    };
    let run = |cmd: &mut Command| -> Result<()> {
        let st = cmd
            .status()
            .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?} failed ({st})"))
        }
    };
    stage("rustfmt", &mut || {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
    });
    stage("clippy", &mut || {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    stage("host tests", &mut || {
        run(cargo().args(["test", "--workspace", "--exclude", "vm"]))
    });
    stage("benchmark (figures only)", &mut || {
        run(cargo().args(["bench", "-p", "stapio", "--bench", "pipeline"]))
    });
    stage("fuzz smoke", &mut || fuzz::run(20));
    stage("dist + deb + install (host)", &mut || {
        dist::dist(&dist::Paths::for_prefix(std::path::Path::new("/usr")))?;
        deb::deb()?;
        install::check_destdir_install()
    });
    stage("deb coexistence (chroot)", &mut debtest::deb_test);
    stage("vm suite", &mut || vm_test(opts, false, &[]));
    stage("vm install", &mut || deb::vm_install_test(opts, true, &[]));
    stage("compat (real SystemTap modules, ours vs C)", &mut || {
        let copts = compat::Options {
            vm: opts.clone(),
            no_stap5: false,
        };
        compat_test(&copts, &[])
    });
    stage(
        "debian guest (systemd, stap, staprun@.service)",
        &mut || debian::debian_test(opts, &[]),
    );
    eprintln!("xtask: test wall time {:.1}s", t0.elapsed().as_secs_f64());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed stages: {}", failed.join(", ")))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::VmPrepare(opts) => prepare::prepare(opts).map(|_| ()),
        Cmd::VmTest {
            opts,
            nextest,
            test_args,
        } => vm_test(opts, *nextest, test_args),
        Cmd::Demo { opts } => demo(opts),
        Cmd::CompatPrepare(opts) => compat::prepare(opts).map(|_| ()),
        Cmd::CompatTest { opts, test_args } => compat_test(opts, test_args),
        Cmd::Test { opts } => test_all(opts),
        Cmd::Install(opts) => install::install(opts),
        Cmd::Uninstall(opts) => install::uninstall(opts),
        Cmd::Dist { prefix } => dist::dist(&dist::Paths::for_prefix(prefix)),
        Cmd::Deb => deb::deb().map(|_| ()),
        Cmd::DebianTest { opts, test_args } => debian::debian_test(opts, test_args),
        Cmd::DebTest => debtest::deb_test(),
        Cmd::VmInstallTest { opts, test_args } => deb::vm_install_test(opts, false, test_args),
        Cmd::Matrix(opts) => matrix::matrix(opts),
        Cmd::Fuzz { seconds } => fuzz::run(*seconds),
        Cmd::Bench(opts) => bench::bench(opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// clap's own consistency checks (unique argument and group names...),
    /// which release builds skip.
    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
