//! Attack scenarios (issue 5): each one tries, as an unprivileged user,
//! to make the setuid staprun (or stapio) do what it must not, and checks
//! that the attempt fails, that nothing ran as root that should not, and
//! that no module was loaded or left loaded.
//!
//! One file per CVE or concern (`round2/` has the second audit's items); `common.rs` is
//! what they share. Tools the attacks need inside the guest are subcommands of the agent
//! binary itself (`/init --attack NAME ...`, see [`helper`] in `helpers.rs`), run with the
//! attacker's credentials.
//!
//! `docs/attacks.md` lists every attack with its observed result.

mod common;
mod cve_2009_0784;
mod cve_2010_4170;
mod cve_2010_4171;
mod cve_2011_2502;
mod cve_2011_2503;
mod faults;
mod helpers;
mod module_paths;
mod obs_weaknesses;
mod process_state;
pub mod round2;

use crate::harness::Scenario;

pub(crate) use common::{check_nothing_loaded, full_run, log_out, refused, sr};
pub use helpers::helper;

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("attack_cve_2009_0784", cve_2009_0784::cve_2009_0784),
    ("attack_cve_2010_4170", cve_2010_4170::cve_2010_4170),
    ("attack_cve_2010_4171", cve_2010_4171::cve_2010_4171),
    ("attack_cve_2011_2502", cve_2011_2502::cve_2011_2502),
    ("attack_cve_2011_2503", cve_2011_2503::cve_2011_2503),
    ("attack_obs_weaknesses", obs_weaknesses::obs_weaknesses),
    ("attack_module_paths", module_paths::module_paths),
    ("attack_process_state", process_state::process_state),
    ("attack_faults", faults::faults),
];
