//! Scenario name -> function. Every module of scenarios has a `SCENARIOS` table of
//! `(name, function)`; the names, the test binary of each and its boot options are in
//! `vm::registry` (vm/src/registry.rs). The agent does not build unless the two agree:
//! every registry name has exactly one function in these tables and every function a
//! registry name (the build error names the scenario). The unit tests check the rest:
//! which tables PID 1 and the Debian guest look in, and the compat groups' cases.

use crate::harness::Scenario;
use crate::{attacks, bench, compat, debian, infra, install, product, vermagic};

/// Every scenario function, by module; the Debian guest's (run by `vm-agent --debian`) last.
const ALL: &[&[(&str, Scenario)]] = &[
    infra::SCENARIOS,
    product::SCENARIOS,
    vermagic::SCENARIOS,
    attacks::SCENARIOS,
    attacks::round2::SCENARIOS,
    compat::SCENARIOS,
    bench::SCENARIOS,
    install::SCENARIOS,
    debian::SCENARIOS,
];

/// The scenarios the initramfs agent runs as PID 1: all but the Debian guest's (the install
/// ones only in the image of `cargo xtask vm-install-test`).
const PID1: &[&[(&str, Scenario)]] = ALL.split_at(ALL.len() - 1).0;

/// The scenario of this boot: `vmtest.scenario=NAME` on the kernel command line.
pub fn scenario_name() -> String {
    std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("vmtest.scenario=").map(str::to_owned))
        .unwrap_or_default()
}

/// The function of PID 1's scenario `name`.
pub fn find(name: &str) -> Option<Scenario> {
    lookup(PID1, name)
}

/// The names PID 1 knows.
pub fn names() -> Vec<&'static str> {
    PID1.iter()
        .flat_map(|t| t.iter().map(|(n, _)| *n))
        .collect()
}

fn lookup(tables: &[&[(&'static str, Scenario)]], name: &str) -> Option<Scenario> {
    tables
        .iter()
        .flat_map(|t| t.iter())
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
}

// ---- the agent's functions and the registry agree (at compile time) ---------

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// How many functions in `ALL` are named `name`.
const fn functions_named(name: &str) -> usize {
    let mut n = 0;
    let mut t = 0;
    while t < ALL.len() {
        let mut i = 0;
        while i < ALL[t].len() {
            if same(ALL[t][i].0, name) {
                n += 1;
            }
            i += 1;
        }
        t += 1;
    }
    n
}

const fn in_registry(name: &str) -> bool {
    let reg = vm::registry::SCENARIOS;
    let mut i = 0;
    while i < reg.len() {
        if same(reg[i].name, name) {
            return true;
        }
        i += 1;
    }
    false
}

/// Every registry name has one function, and every function a registry name; the build
/// fails naming the first scenario for which this is not so.
const fn check() {
    let reg = vm::registry::SCENARIOS;
    let mut i = 0;
    while i < reg.len() {
        if functions_named(reg[i].name) != 1 {
            panic!("{}", reg[i].name); // not exactly one function in the agent's tables
        }
        i += 1;
    }
    let mut t = 0;
    while t < ALL.len() {
        let mut i = 0;
        while i < ALL[t].len() {
            if !in_registry(ALL[t][i].0) {
                panic!("{}", ALL[t][i].0); // not in vm::registry::SCENARIOS
            }
            i += 1;
        }
        t += 1;
    }
}

const _: () = check();

#[cfg(test)]
mod tests {
    use super::*;
    use vm::registry::{SCENARIOS, Suite};

    #[test]
    fn pid1_runs_all_but_the_debian_guest() {
        for s in SCENARIOS {
            let debian = s.suite == Suite::Debian;
            assert_eq!(find(s.name).is_some(), !debian, "{}", s.name);
            assert_eq!(
                lookup(&[debian::SCENARIOS], s.name).is_some(),
                debian,
                "{}",
                s.name
            );
        }
    }

    #[test]
    fn compat_cases_are_the_registry_cases() {
        for s in SCENARIOS.iter().filter(|s| s.suite == Suite::Compat) {
            assert_eq!(compat::case_names(s.name), s.cases, "{}", s.name);
        }
    }
}
