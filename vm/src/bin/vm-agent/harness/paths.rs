//! Where the product is installed in the guest images (the package's paths), and the check
//! that it is installed as the package does it.

use super::fixtures::stat;
use super::reporter::Reporter;
use super::users::STAPUSR;

pub const STAPRUN: &str = "/usr/bin/staprun";
pub const STAPIO: &str = "/usr/libexec/staprun/stapio";

/// The product is installed as the package does it; false (and a failed check) if not.
pub fn product_installed(r: &mut Reporter) -> bool {
    let a = r.check_eq(
        "staprun_installed_04110_root_stapusr",
        stat(STAPRUN),
        Some((0o4110, 0, STAPUSR)),
    );
    let b = r.check_eq("stapio_installed_0755", stat(STAPIO), Some((0o755, 0, 0)));
    a && b
}
