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
//! - `dist`: man pages (checked with groff), completions and the fleet collection tarball
//!   (`ansible-galaxy collection build`) into target/dist/.
//! - `fleet-test`: the staprun.fleet Ansible collection against three Debian guests (docs/fleet.md).
//! - `deb`: target/dist/staprun-rs_<version>_<arch>.deb (dpkg-deb from a staged tree).
//! - `vm-install-test [-- <libtest args>]`: vm-prepare, deb, a --destdir install, then
//!   `cargo test -p vm --test install` (the package and the install in a guest).
//! - `compat-prepare`: vm-prepare, real SystemTap modules, the C staprun/stapio, compat initramfs.
//! - `bench [--cpus 2,4] ...`: compat-prepare, then throughput and start-up of our stapio
//!   against the C one in guests (docs/bench.md).
//! - `compat-test [-- <libtest args>]`: compat-prepare, then `cargo test -p vm --test compat`
//!   (`STAPRUN_UNDER_TEST=ours|theirs|both` selects the implementations).
//!
//! Layout: [`vm`] (guests: prepare, run, the suites built on them), [`pkg`] (dist, deb, install,
//! deb-test), [`dev`] (fuzz, `test`); shared: [`cmd`] (running programs, with xshell),
//! [`chroot`] (the one way commands run in a chroot), [`apt`] (the host's apt), [`files`] and
//! [`error`] (one error type, printed once here). Inside xtask `vm` is the module; the `vm`
//! crate (the guest runner) is `::vm` here and `vm::` in the modules below.
#![forbid(unsafe_code)]

mod apt;
mod chroot;
mod cmd;
mod dev;
mod error;
mod files;
mod pkg;
mod vm;

use std::process::ExitCode;

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
    VmPrepare(vm::Options),
    /// vm-prepare, then run the guest test suite (`cargo test -p vm --test vm`).
    VmTest {
        #[command(flatten)]
        opts: vm::Options,
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
        opts: vm::Options,
    },
    /// Every test: rustfmt check, clippy -D warnings, host tests, then the VM suite.
    Test {
        #[command(flatten)]
        opts: vm::Options,
    },
    /// vm-prepare, then real SystemTap modules (stap -p4), the C staprun/stapio and the compat initramfs.
    CompatPrepare(vm::compat::Options),
    /// compat-prepare, then the side-by-side suite (`cargo test -p vm --test compat`).
    CompatTest {
        #[command(flatten)]
        opts: vm::compat::Options,
        /// Arguments passed to the test binary (libtest syntax: filters, --list, --test-threads N ...).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Install staprun (04110 root:stapusr), stapio (0755), groups, blessed directory, man pages, completions.
    Install(pkg::install::Options),
    /// Remove what install put in place (groups and blessed directories are kept).
    Uninstall(pkg::install::UninstallOptions),
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
        opts: vm::Options,
        /// Arguments passed to the test binary (libtest syntax).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// deb, then install, upgrade, remove and purge it next to Debian's systemtap-runtime and systemtap in a bookworm chroot.
    DebTest,
    /// vm-prepare, deb, a --destdir install, then the guest install tests (`cargo test -p vm --test install`).
    VmInstallTest {
        #[command(flatten)]
        opts: vm::Options,
        /// Arguments passed to the test binary (libtest syntax).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// The guest suite on every kernel of the matrix (6.1, 6.12, 7.x): a kernel x scenario table.
    Matrix(vm::matrix::Options),
    /// The staprun.fleet Ansible collection run with ansible-core against three Debian guests (docs/fleet.md).
    FleetTest {
        #[command(flatten)]
        opts: vm::Options,
        /// Only the collection's host-side checks (its unit tests and local smoke test), no guests.
        #[arg(long)]
        host_checks: bool,
    },
    /// compat-prepare, then relay throughput and start-up, ours vs the C stapio, in 2- and 4-vCPU guests.
    Bench(vm::bench::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::VmPrepare(opts) => vm::prepare(opts).map(|_| ()),
        Cmd::VmTest {
            opts,
            nextest,
            test_args,
        } => vm::run::vm_test(opts, *nextest, test_args),
        Cmd::Demo { opts } => vm::run::demo(opts),
        Cmd::CompatPrepare(opts) => vm::compat::prepare(opts).map(|_| ()),
        Cmd::CompatTest { opts, test_args } => vm::run::compat_test(opts, test_args),
        Cmd::Test { opts } => dev::test_all::test_all(opts),
        Cmd::Install(opts) => pkg::install::install(opts),
        Cmd::Uninstall(opts) => pkg::install::uninstall(opts),
        Cmd::Dist { prefix } => pkg::dist::dist(&pkg::dist::Paths::for_prefix(prefix)),
        Cmd::Deb => pkg::deb::deb().map(|_| ()),
        Cmd::DebianTest { opts, test_args } => vm::debian::debian_test(opts, test_args),
        Cmd::DebTest => pkg::debtest::deb_test(),
        Cmd::VmInstallTest { opts, test_args } => {
            vm::install_test::vm_install_test(opts, false, test_args)
        }
        Cmd::Matrix(opts) => vm::matrix::matrix(opts),
        Cmd::Fuzz { seconds } => dev::fuzz::run(*seconds),
        Cmd::Bench(opts) => vm::bench::bench(opts),
        Cmd::FleetTest { opts, host_checks } => {
            if *host_checks {
                vm::fleet::host_checks()
            } else {
                vm::fleet::fleet_test(opts)
            }
        }
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
