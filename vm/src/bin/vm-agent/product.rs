//! Scenarios that run our staprun/stapio as the test users, one file per concern;
//! `common.rs` is what they share.

mod basic;
mod common;
mod lifecycle;
mod output;
mod permissions;
mod privileges;
mod relay;
mod rename;
mod target;

use crate::harness::Scenario;

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("demo", basic::demo),
    ("alice_runs_pmod", basic::alice_runs_pmod),
    ("alice_runs_pmod5", basic::alice_runs_pmod5),
    ("permission_table", permissions::permission_table),
    ("unload_refusals", permissions::unload_refusals),
    ("detach_attach", lifecycle::detach_attach),
    ("signals", lifecycle::signals),
    ("second_load_exists", lifecycle::second_load_exists),
    ("stapio_sigkill_cleanup", lifecycle::stapio_sigkill_cleanup),
    ("privilege_drop", privileges::privilege_drop),
    ("env_attacks", privileges::env_attacks),
    ("relay_ordering", relay::relay_ordering),
    ("output_options", output::output_options),
    ("target_options", target::target_options),
    ("rename_concurrent", rename::rename_concurrent),
    ("bulk_mode", relay::bulk_mode),
    ("overrun", relay::overrun),
    ("system_and_oob", relay::system_and_oob),
    ("init_failure", basic::init_failure),
];
