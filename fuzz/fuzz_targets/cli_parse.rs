//! The command line: any argv (split on NUL bytes of the input) parses or
//! is refused without panicking, for both programs; an accepted MODULE
//! resolves to a name without '/' and a stapio argv that parses back.
#![no_main]

use std::ffi::OsString;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stap_common::cli::{Program, parse, resolve_module};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let args: Vec<OsString> = text.split('\0').map(OsString::from).collect();
    for prog in [Program::Staprun, Program::Stapio] {
        if let Ok(o) = parse(prog, &args) {
            if o.help || o.version {
                continue;
            }
            if let Ok(m) = resolve_module(&o.module, Path::new("/lib/modules/K/systemtap")) {
                assert!(!m.name.as_str().contains('/'));
                let back: Vec<OsString> = o.to_args(m.name.as_str(), Some(3)).into_iter().map(OsString::from).collect();
                let again = parse(Program::Stapio, &back).expect("stapio argv parses");
                assert_eq!(again.module, m.name.as_str());
            }
        }
    }
});
