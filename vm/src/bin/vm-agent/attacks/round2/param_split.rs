//! Round 2, item 4: one argument, one kernel parameter.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;

use crate::attacks::common::{RUN, check_nothing_loaded, full_run, log_out, refused, staprun_os};
use crate::harness::{ALICE, Reporter, product_installed, publish};

pub(crate) fn param_split(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    // U+00E0 is C3 A0 in UTF-8; the kernel's isspace() takes A0 as a space.
    let cases: &[(&str, &[u8])] = &[
        ("value", b"system_cmd=\xc3\xa0init_errno=5"),
        ("name", b"x\xc3\xa0init_errno=5"),
        ("nbsp_value", b"system_cmd=true\xc2\xa0init_errno=5"),
    ];
    for (tag, arg) in cases {
        let out = staprun_os(
            &ALICE,
            &[OsStr::new("pmod"), OsStr::from_bytes(arg)],
            &[],
            RUN,
        );
        log_out(
            r,
            &format!("alice$ staprun pmod {:?}", String::from_utf8_lossy(arg)),
            &out,
        );
        // init_errno=5 would make the module's init fail with EIO.
        r.check(
            &format!("{tag}_stays_one_parameter"),
            !out.stderr.contains("Input/output error") && (full_run(&out) || refused(&out)),
            out.summary(),
        );
        check_nothing_loaded(r, tag, &[]);
    }
}
