//! Security round 2 (issue 12): one scenario per item of the audit, each
//! named after its item (`attack_r2_<n>_<what>`). Every scenario tries the
//! attack as an unprivileged user on a real kernel and checks that it
//! fails and that no module is left loaded. `docs/attacks.md` has a row
//! for each.
//!
//! Helpers run as `/init --attack NAME ...` (see [`helper`]):
//! `stop-after-load` (a stapusr member trying to freeze staprun once its
//! module is in), `signal` (kill(2) as the caller), `trace` (as root: run
//! staprun as a user under ptrace, log its system calls and act at one of
//! them), `rlimit` and `personality` (set one, then exec).
//!
//! One file per item; `helpers.rs` has the tools.

mod acl;
mod audit_before_load;
mod caller_path;
mod failed_start;
mod helpers;
mod large_groups;
mod param_split;
mod privileged_window;
mod small_items;

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::harness::Scenario;

pub use helpers::helper;

pub const SCENARIOS: &[(&str, Scenario)] = &[
    (
        "attack_r2_1_privileged_window",
        privileged_window::privileged_window,
    ),
    ("attack_r2_2_caller_path", caller_path::caller_path),
    (
        "attack_r2_3_audit_before_load",
        audit_before_load::audit_before_load,
    ),
    ("attack_r2_4_param_split", param_split::param_split),
    ("attack_r2_5_acl", acl::acl),
    ("attack_r2_6_large_groups", large_groups::large_groups),
    ("attack_r2_7_failed_start", failed_start::failed_start),
    ("attack_r2_8_small_items", small_items::small_items),
];

// ---- shared bits ---------------------------------------------------------

fn cstr(p: impl AsRef<Path>) -> CString {
    CString::new(p.as_ref().as_os_str().as_bytes()).unwrap_or_default()
}

fn chmod(p: impl AsRef<Path>, mode: u32) -> io::Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}
