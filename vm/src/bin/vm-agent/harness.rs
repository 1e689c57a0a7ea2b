//! What every scenario uses, re-exported here so that a scenario file needs one `use`:
//!
//! - [`reporter`]: the result channel ([`Reporter`]: `check`, `check_eq`, `log`);
//! - [`users`]: the test users (`ROOT`, `ALICE` stapusr, `BOB` stapdev, `SAM` stapsys,
//!   `CAROL` none) and commands as them (`command_as`, `run_as`);
//! - [`processes`]: spawning and waiting with a timeout (`run`, `spawn`, `Bg`), /proc;
//! - [`fixtures`]: the fixture modules, the blessed directory, module images (rename,
//!   SHA-256), loading and unloading them by hand;
//! - [`paths`]: where the product is installed (`STAPRUN`, `STAPIO`);
//! - [`rng`]: a small seeded generator;
//! - [`sys`]: the raw system calls, the only `unsafe` of the agent.

pub mod fixtures;
pub mod paths;
pub mod processes;
pub mod reporter;
pub mod rng;
#[allow(unsafe_code)]
pub mod sys;
pub mod users;

pub use fixtures::{
    END, FIXTURES, HELLO, blessed_dir, fixture, fixtures_loaded, insmod_as, install_fixture,
    is_loaded, loaded_modules, mkdir, prepare_blessed_dir, publish, put, record_seqs, renamed,
    rmmod, sha256, sha256_file, stat,
};
pub use paths::{STAPIO, STAPRUN, product_installed};
pub use processes::{
    Bg, Out, Running, clip, comm, exit_code, num_cpus, pids_named, proc_state, proc_status,
    proc_uids, run, spawn, wait_until,
};
pub use reporter::Reporter;
pub use rng::Rng;
pub use users::{
    ALICE, BOB, CAROL, ROOT, SAM, STAPDEV, STAPUSR, User, command_as, run_as, user_env,
};

/// A scenario: one guest boot's worth of checks.
pub type Scenario = fn(&mut Reporter);
