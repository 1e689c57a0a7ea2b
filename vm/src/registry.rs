//! The one list of guest scenarios: every name the guest agent answers to (`vmtest.scenario=`),
//! which test binary boots it, and the boot options it needs beyond [`BootSpec::new`]'s.
//!
//! The test binaries (`vm/tests/{vm,attacks,compat,install,debian}.rs`) make one test per
//! entry of their [`Suite`] from this list, in this order; the agent (`vm/src/bin/vm-agent`)
//! maps every name to its function and does not build if a name here has no function or a
//! function has no name here. Adding a scenario: its function in the agent, its row here.

use std::time::Duration;

use crate::BootSpec;

use Suite::{Attacks, Install, Vm, Xtask};

/// Which test binary boots a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// `vm/tests/vm.rs` (`cargo xtask vm-test`): the initramfs of vm-prepare.
    Vm,
    /// `vm/tests/attacks.rs` (also run by `cargo xtask vm-test`; docs/attacks.md).
    Attacks,
    /// `vm/tests/compat.rs` (`cargo xtask compat-test`): one boot per group of
    /// [`Scenario::cases`], one test per case and side.
    Compat,
    /// `vm/tests/install.rs` (`cargo xtask vm-install-test`): the install image.
    Install,
    /// `vm/tests/debian.rs` (`cargo xtask debian-test`): the Debian guest, systemd as PID 1.
    Debian,
    /// No test: booted by xtask (`boot` the KVM probe, `demo`, `bench`).
    Xtask,
}

/// Boot options of one scenario; `None` keeps [`BootSpec::new`]'s.
#[derive(Clone, Copy, Debug)]
pub struct Boot {
    pub mem_mib: Option<u32>,
    pub smp: Option<u32>,
    /// The hard timeout is at least this (`VMTEST_TIMEOUT_SECS` may make it longer).
    pub min_timeout: Option<Duration>,
    /// How long the guest may take to start its agent.
    pub agent_start_limit: Option<Duration>,
    /// A scenario booted after this one on the same disk (a reboot): part of this test,
    /// not a test of its own.
    pub then: Option<&'static str>,
}

impl Boot {
    pub const DEFAULT: Boot = Boot {
        mem_mib: None,
        smp: None,
        min_timeout: None,
        agent_start_limit: None,
        then: None,
    };

    /// Sets these options on `spec`.
    pub fn apply(&self, spec: &mut BootSpec) {
        if let Some(m) = self.mem_mib {
            spec.mem_mib = m;
        }
        if let Some(n) = self.smp {
            spec.smp = n;
        }
        if let Some(t) = self.min_timeout {
            spec.timeout = spec.timeout.max(t);
        }
        if let Some(t) = self.agent_start_limit {
            spec.agent_start_limit = t;
        }
    }
}

/// One scenario: one guest boot.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub suite: Suite,
    /// A compat group's cases (`vmtest.cases=`), in the order the agent runs them.
    pub cases: &'static [&'static str],
    pub boot: Boot,
}

impl Scenario {
    /// The spec of this scenario's boot: [`BootSpec::new`] with [`Scenario::boot`] applied.
    pub fn spec(&self) -> BootSpec {
        let mut spec = BootSpec::new(self.name);
        self.boot.apply(&mut spec);
        spec
    }
}

const fn plain(name: &'static str, suite: Suite) -> Scenario {
    Scenario {
        name,
        suite,
        cases: &[],
        boot: Boot::DEFAULT,
    }
}

/// A compat group: a boot runs its cases under both implementations.
const fn compat(name: &'static str, cases: &'static [&'static str]) -> Scenario {
    Scenario {
        name,
        suite: Suite::Compat,
        cases,
        boot: Boot {
            min_timeout: Some(Duration::from_secs(900)),
            ..Boot::DEFAULT
        },
    }
}

/// A Debian guest scenario: the guest installs packages and compiles with stap.
const fn debian(name: &'static str, then: Option<&'static str>) -> Scenario {
    Scenario {
        name,
        suite: Suite::Debian,
        cases: &[],
        boot: Boot {
            mem_mib: Some(1536),
            smp: None,
            min_timeout: Some(Duration::from_secs(1200)),
            agent_start_limit: Some(Duration::from_secs(300)),
            then,
        },
    }
}

/// Every scenario. The order is the order of the tests.
pub const SCENARIOS: &[Scenario] = &[
    // vm/tests/vm.rs
    plain("infra_boot", Vm),
    plain("alice_runs_pmod", Vm),
    plain("alice_runs_pmod5", Vm),
    plain("permission_table", Vm),
    plain("unload_refusals", Vm),
    plain("detach_attach", Vm),
    plain("signals", Vm),
    plain("second_load_exists", Vm),
    plain("stapio_sigkill_cleanup", Vm),
    plain("privilege_drop", Vm),
    plain("env_attacks", Vm),
    plain("relay_ordering", Vm),
    plain("output_options", Vm),
    plain("target_options", Vm),
    plain("rename_concurrent", Vm),
    plain("bulk_mode", Vm),
    plain("overrun", Vm),
    plain("system_and_oob", Vm),
    plain("init_failure", Vm),
    plain("product_vermagic_mismatch", Vm),
    // vm/tests/attacks.rs
    plain("attack_cve_2009_0784", Attacks),
    plain("attack_cve_2010_4170", Attacks),
    plain("attack_cve_2010_4171", Attacks),
    plain("attack_cve_2011_2502", Attacks),
    plain("attack_cve_2011_2503", Attacks),
    plain("attack_obs_weaknesses", Attacks),
    plain("attack_module_paths", Attacks),
    plain("attack_process_state", Attacks),
    plain("attack_faults", Attacks),
    // Security round 2 (issue 12), one per item.
    plain("attack_r2_1_privileged_window", Attacks),
    plain("attack_r2_2_caller_path", Attacks),
    plain("attack_r2_3_audit_before_load", Attacks),
    plain("attack_r2_4_param_split", Attacks),
    plain("attack_r2_5_acl", Attacks),
    plain("attack_r2_6_large_groups", Attacks),
    plain("attack_r2_7_failed_start", Attacks),
    plain("attack_r2_8_small_items", Attacks),
    // vm/tests/compat.rs: SystemTap 4.8 modules against Debian's C tools, then the same
    // cases on SystemTap 5.1 modules against trixie's C tools (in a chroot of the guest, /c5).
    compat("compat_run", COMPAT_RUN),
    compat("compat_options", COMPAT_OPTIONS),
    compat("compat_lifecycle", COMPAT_LIFECYCLE),
    compat("compat_flightrec", COMPAT_FLIGHTREC),
    compat("compat5_run", COMPAT_RUN),
    compat("compat5_options", COMPAT_OPTIONS),
    compat("compat5_lifecycle", COMPAT_LIFECYCLE),
    compat("compat5_flightrec", COMPAT_FLIGHTREC),
    compat("compat_io", COMPAT_IO),
    compat("compat5_io", COMPAT_IO),
    // Colours, the children's environment, -T's default (vm-agent compat/env.rs).
    compat("compat_env", COMPAT_ENV),
    compat("compat5_env", COMPAT_ENV),
    // staprun -M on a pseudo-terminal (vm-agent compat/monitor.rs).
    compat("compat_monitor", COMPAT_MONITOR),
    compat("compat5_monitor", COMPAT_MONITOR),
    // vm/tests/install.rs
    plain("install_deb", Install),
    plain("install_prefix", Install),
    // vm/tests/debian.rs
    debian("debian_install", None),
    debian("debian_stap", None),
    debian("debian_stap_options", None),
    debian("debian_service", None),
    debian("debian_service_enable", Some("debian_service_after_reboot")),
    debian("debian_service_after_reboot", None),
    // Booted by xtask, no test: the KVM probe of vm-prepare, `cargo xtask demo`,
    // `cargo xtask bench` (its boot options are xtask's).
    plain("boot", Xtask),
    plain("demo", Xtask),
    plain("bench", Xtask),
];

const COMPAT_RUN: &[&str] = &[
    "hello_root",
    "hello_alice",
    "sigint_root",
    "sigint_alice",
    "sigterm_alice",
    "sighup_alice",
    "system_root",
    "system_alice",
    "target_c",
    "target_c_fails",
    "target_x",
    "modargs",
    "modopt_alice",
    "global_opt_invalid",
    "stream",
    "warn_error",
];
const COMPAT_OPTIONS: &[&str] = &[
    "cmdline09",
    "cmdline10",
    "cmdline11",
    "cmdline12",
    "cmdline13",
    "cmdline14",
    "cmdline16",
    "cmdline17",
    "cmdline18",
    "cmdline19",
    "cmdline20",
    "cmdline21",
    "helpout",
];
const COMPAT_LIFECYCLE: &[&str] = &[
    "attach_detach",
    "attach_detach_alice",
    "pr13158",
    "rename_module",
    "pr10854",
    "sigusr2",
    "sigusr2_bulk",
    "staprunwait",
];
const COMPAT_MONITOR: &[&str] = &["monitor_keys"];
const COMPAT_IO: &[&str] = &[
    "stdin_line",
    "stdin_char",
    "stdin_eof",
    "stdin_not_forwarded",
    "stdin_no_input_probe",
    "ns_target_root",
    "ns_none_root",
    "ns_alice_denied",
    "ns_alice_own",
];
const COMPAT_ENV: &[&str] = &[
    "colors_always",
    "colors_custom",
    "colors_malformed",
    "colors_empty",
    "colors_never_tty",
    "colors_auto_tty",
    "colors_auto_tty_dumb",
    "colors_auto_pipe",
    "colors_always_dumb",
    "colors_staprun_own",
    "env_children_alice",
    "env_children_root",
    "reader_wakeups",
];
const COMPAT_FLIGHTREC: &[&str] = &[
    "flightrec1",
    "flightrec2",
    "flightrec3",
    "flightrec4",
    "flightrec5",
];

/// The scenario named `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// The scenarios that are tests of `suite`, in order: those of the suite that are not
/// booted as another one's [`Boot::then`].
pub fn tests(suite: Suite) -> impl Iterator<Item = &'static Scenario> {
    SCENARIOS
        .iter()
        .filter(move |s| s.suite == suite && !is_second_boot(s.name))
}

/// `name` is booted as the second boot of another scenario.
pub fn is_second_boot(name: &str) -> bool {
    SCENARIOS.iter().any(|s| s.boot.then == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, s) in SCENARIOS.iter().enumerate() {
            assert!(
                SCENARIOS[..i].iter().all(|t| t.name != s.name),
                "{} twice",
                s.name
            );
            assert!(
                !s.name.is_empty() && !s.name.contains([' ', ',', '=']),
                "{:?}",
                s.name
            );
        }
    }

    #[test]
    fn second_boots_are_scenarios_of_the_same_suite() {
        for s in SCENARIOS {
            if let Some(then) = s.boot.then {
                let t = find(then).unwrap_or_else(|| panic!("{}: then {then} is unknown", s.name));
                assert_eq!(t.suite, s.suite, "{} then {then}", s.name);
                assert!(t.boot.then.is_none(), "{then}: a third boot");
            }
        }
    }

    #[test]
    fn cases_belong_to_compat_groups_only() {
        for s in SCENARIOS {
            assert_eq!(s.suite == Suite::Compat, !s.cases.is_empty(), "{}", s.name);
            for (i, c) in s.cases.iter().enumerate() {
                assert!(!s.cases[..i].contains(c), "{}: case {c} twice", s.name);
                assert!(!c.contains([',', ':', '/', ' ']), "{}: case {c:?}", s.name);
            }
        }
    }

    #[test]
    fn every_suite_has_tests() {
        for suite in [
            Suite::Vm,
            Suite::Attacks,
            Suite::Compat,
            Suite::Install,
            Suite::Debian,
        ] {
            assert!(tests(suite).next().is_some(), "{suite:?}");
        }
        assert_eq!(
            tests(Suite::Debian).map(|s| s.name).last(),
            Some("debian_service_enable")
        );
    }

    #[test]
    fn boot_options_apply() {
        let s = find("debian_service").unwrap().spec();
        assert_eq!(s.mem_mib, 1536);
        assert!(s.timeout >= Duration::from_secs(1200));
        assert_eq!(s.agent_start_limit, Duration::from_secs(300));
        let s = find("compat5_run").unwrap().spec();
        assert!(s.timeout >= Duration::from_secs(900));
        let d = BootSpec::new("x");
        let s = find("alice_runs_pmod").unwrap().spec();
        assert_eq!((s.smp, s.mem_mib, s.timeout), (d.smp, d.mem_mib, d.timeout));
    }
}
