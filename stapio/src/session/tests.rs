use std::ffi::OsString;

use stap_common::cli::{self, Program};

use super::*;

/// staprun hands its own options to stapio with `Options::to_args`
/// plus `-F fd`; stapio must read back the same settings.
#[test]
fn the_argv_staprun_builds_configures_stapio() {
    let given: Vec<OsString> = [
        "-vv",
        "-w",
        "-c",
        "ls -l",
        "-o",
        "out%Y",
        "-S",
        "2,3",
        "-T",
        "50",
        "-C",
        "never",
        "./pmod.ko",
        "x=1",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let sr = cli::parse(Program::Staprun, &given).unwrap();
    let handed: Vec<OsString> = sr
        .to_args("pmod", Some(7))
        .into_iter()
        .map(OsString::from)
        .collect();
    let io = cli::parse(Program::Stapio, &handed).unwrap();
    assert_eq!(io.relay_fd, Some(7));
    let name = cli::resolve_module(&io.module, Path::new("/"))
        .unwrap()
        .name;
    let c = Config::from_options(&io, name, Path::new("/home/u"));
    assert_eq!(c.module.as_str(), "pmod");
    assert_eq!(c.verbose, 2);
    assert!(c.suppress_warnings);
    assert_eq!(c.target_cmd.as_deref(), Some("ls -l"));
    assert_eq!(c.naming.pattern.as_deref(), Some("/home/u/out%Y"));
    assert_eq!(
        c.naming.rotation,
        Some(stap_common::cli::Rotation {
            bytes: 2 << 20,
            keep: 3
        })
    );
    assert_eq!(c.reader_timeout, Some(Duration::from_millis(50)));
    assert!(!c.attach && !c.load_only);
}

#[test]
fn exit_codes() {
    assert_eq!(Outcome::Finished { failed: false }.exit_code(), 0);
    assert_eq!(Outcome::Finished { failed: true }.exit_code(), 1);
    assert_eq!(Outcome::Detached.exit_code(), 0);
}
