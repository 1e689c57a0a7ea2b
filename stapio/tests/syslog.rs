//! `stapio -D`: once daemonized, the session's messages go to syslog. main
//! switches its `Diag` to syslog after daemon(), while the session holds a
//! clone of it; here the same switch hands the records to a recorder
//! instead of syslog, and a whole run goes through the simulated kernel.

mod common;

use common::*;
use stap_common::kernel::KernelOps;
use stap_common::kernel::sim::{Script, SimKernel};
use stapio::diag::{Diag, LogRecords, Priority, SharedBuf};
use stapio::signals::Signals;
use stapio::{Config, Outcome, Session, Streams};

fn rec(p: Priority, s: &str) -> (Priority, String) {
    (p, s.to_owned())
}

struct Daemon {
    outcome: Outcome,
    /// The module's print output (a daemon's -o file).
    out: SharedBuf,
    /// stderr before the switch.
    err: SharedBuf,
    log: LogRecords,
}

/// Connect with a Diag on a buffer, switch it to a recorder (as main does
/// after daemon()), then run to the end; `during` runs after the switch.
fn run_as_daemon(k: &SimKernel, cfg: Config, during: impl FnOnce()) -> Daemon {
    let out = SharedBuf::new();
    let err = SharedBuf::new();
    let diag = Diag::new(Box::new(err.clone()), false);
    let streams = Streams {
        stdout: Box::new(out.clone()),
        diag: diag.clone(),
    };
    let dir = k.open_module_dir(&modname()).unwrap();
    let session = Session::connect(cfg, k, dir, streams, Signals::new()).unwrap();
    let log = LogRecords::new();
    diag.use_log(log.sink());
    during();
    let outcome = session.run(&sim_unloader(k)).unwrap();
    Daemon {
        outcome,
        out,
        err,
        log,
    }
}

#[test]
fn after_the_switch_module_errors_and_warnings_are_log_records() {
    let k = loaded(
        1,
        Script {
            oob: vec![
                "WARNING: w1\n".into(),
                "WARNING: w1\n".into(),
                "just text\n".into(),
                "ERROR: division by zero\n".into(),
            ],
            end: vec!["end probe fired".into()],
            ..Script::default()
        },
    );
    let d = run_as_daemon(&k, config(), || {});
    assert_eq!(d.outcome, Outcome::Finished { failed: true });
    assert_eq!(
        d.outcome.exit_code(),
        1,
        "a module ERROR still fails the run"
    );
    assert!(!k.is_loaded(MODULE), "unloaded");
    assert_eq!(d.err.text(), "", "nothing on stderr after the switch");
    assert_eq!(
        d.log.records(),
        vec![
            rec(Priority::Warning, "WARNING: w1"),
            rec(Priority::Info, "just text"),
            rec(Priority::Error, "ERROR: division by zero"),
        ],
        "one record each, warnings still deduplicated"
    );
    // The module's print output is not a message: it stays on stdout.
    assert_eq!(d.out.text(), "hello from begin\nend probe fired\n");
}

#[test]
fn verbose_progress_goes_to_the_log_at_info() {
    let k = loaded(1, Script::default());
    let mut cfg = config();
    cfg.verbose = 2;
    let d = run_as_daemon(&k, cfg, || k.request_exit(MODULE));
    assert_eq!(d.outcome, Outcome::Finished { failed: false });
    let records = d.log.records();
    assert!(
        records.iter().any(|(_, l)| l == "stapio: got STP_EXIT"),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .all(|(p, l)| *p == Priority::Info && l.starts_with("stapio: ")),
        "{records:?}"
    );
    // Before the switch (at connect), the protocol line went to stderr.
    assert!(
        d.err.text().contains("control protocol"),
        "{}",
        d.err.text()
    );
}
