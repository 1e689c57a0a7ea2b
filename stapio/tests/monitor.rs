//! Monitor mode (`-M`) through the simulated kernel: the screen (ratatui's
//! TestBackend) shows the module's status and output, the keys reach the
//! module's `monitor_control`, `q` after the module's end unloads it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{MODULE, config, loaded, sim_unloader};
use stap_common::kernel::KernelOps;
use stap_common::kernel::sim::{Script, SimKernel};
use stap_common::protocol::Request;
use stapio::diag::{Diag, SharedBuf};
use stapio::monitor::{History, Key, Monitor, ScriptedScreen};
use stapio::signals::Signals;
use stapio::{Outcome, Session, Streams};

const STATUS: &str = r#"{
"uptime": "00:00:07",
"uid": "1000",
"memory": "4096 data/8192 text",
"module_name": "pmod",
"globals": {
"ticks":70,
"last":"tick 69"
},
"probe_list": [
{"index": 0, "state": "on", "hits": 1, "min": 900, "avg": 900, "max": 900, "name": "begin"},
{"index": 1, "state": "on", "hits": 70, "min": 310, "avg": 455, "max": 9820, "name": "timer.ms(100)"},
{"index": 2, "state": "on", "hits": 0, "min": 0, "avg": 0, "max": 0, "name": "end"}
],
}
"#;

fn script() -> Script {
    Script {
        begin: vec!["monitor begin".into()],
        end: vec!["end probe fired".into()],
        exit_after_output: false,
        ..Script::default()
    }
}

/// Wait until `f` holds (at most 10 s).
fn until(what: &str, screen: &ScriptedScreen, f: impl Fn(&str) -> bool) {
    let t0 = Instant::now();
    loop {
        let text = screen.rows().join("\n");
        if f(&text) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}; screen:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Run {
    screen: ScriptedScreen,
    history: History,
    err: SharedBuf,
}

/// Run a monitored session on `k` in a thread; `drive` acts on the screen
/// while it runs. Returns the outcome.
fn monitored(k: &SimKernel, keys: Vec<Vec<Key>>, drive: impl FnOnce(&Run, &Signals)) -> Outcome {
    let run = Run {
        screen: ScriptedScreen::new(100, 30, keys).unwrap(),
        history: History::new(),
        err: SharedBuf::new(),
    };
    let signals = Signals::new();
    let dir = k.open_module_dir(&common::modname()).unwrap();
    let streams = Streams {
        stdout: Box::new(run.history.writer()),
        diag: Diag::new(Box::new(run.err.clone()), false),
    };
    let session = Session::connect(config(), k, dir, streams, Arc::clone(&signals)).unwrap();
    let monitor = Monitor::new(1, run.history.clone(), Box::new(run.screen.clone()));
    let session = session.with_monitor(monitor, &run.history);
    let outcome = std::thread::scope(|s| {
        let t = s.spawn(move || session.run(&sim_unloader(k)));
        drive(&run, &signals);
        t.join().unwrap()
    });
    assert!(run.screen.restored(), "the terminal was not given back");
    outcome.unwrap_or_else(|e| panic!("session failed: {e}\nstderr: {}", run.err.text()))
}

#[test]
fn the_screen_shows_the_probes_and_the_keys_reach_the_module() {
    let k = loaded(2, script());
    k.set_monitor_status(MODULE, STATUS);
    let keys = vec![
        vec![],
        vec![Key::Char('s'), Key::Char('s')],
        vec![Key::Char('p')],
        vec![Key::Char('r')],
        vec![Key::Char('c')],
        vec![Key::Char('t'), Key::Char('1'), Key::Enter],
    ];
    let outcome = monitored(&k, keys, |run, _| {
        until("the probe table", &run.screen, |t| {
            t.contains("timer.ms(100)") && t.contains("hits*") && t.contains("monitor begin")
        });
        let rows = run.screen.rows();
        let head = rows.iter().position(|r| r.contains("index")).unwrap();
        // Sorted by hits: the timer first, with its count and times.
        let first = &rows[head + 1];
        assert!(
            first.contains(" 70 ") && first.contains("9820") && first.contains("timer.ms(100)"),
            "{}",
            rows.join("\n")
        );
        assert!(rows[1].contains("uptime: 00:00:07 uid: 1000"));
        assert!(rows[3].contains("globals: ticks: 70 last: tick 69"));
        // q asks the script to exit; the end probes run; the screen says so.
        run.screen.type_keys(vec![Key::Char('q')]);
        until("the end", &run.screen, |t| {
            t.contains("EXITED: press q again to quit") && t.contains("end probe fired")
        });
        assert!(k.is_loaded(MODULE), "unloaded before the second q");
        run.screen.type_keys(vec![Key::Char('q')]);
    });
    assert_eq!(outcome, Outcome::Finished { failed: false });
    assert_eq!(
        k.monitor_commands(MODULE),
        ["pause", "resume", "clear", "1", "quit"]
    );
    assert!(!k.is_loaded(MODULE), "module left loaded");
    assert!(k.requests(MODULE).contains(&Request::Exit));
}

#[test]
fn an_interrupt_ends_monitor_mode_at_once() {
    let k = loaded(1, script());
    k.set_monitor_status(MODULE, STATUS);
    let outcome = monitored(&k, vec![], |run, signals| {
        until("the probe table", &run.screen, |t| {
            t.contains("timer.ms(100)")
        });
        signals.interrupt();
    });
    assert_eq!(outcome, Outcome::Finished { failed: false });
    assert!(!k.is_loaded(MODULE));
    // ^C on the screen is the same.
    let k = loaded(1, script());
    let outcome = monitored(&k, vec![vec![], vec![Key::Interrupt]], |_, _| {});
    assert_eq!(outcome, Outcome::Finished { failed: false });
    assert!(!k.is_loaded(MODULE));
}

#[test]
fn without_monitor_files_the_data_is_not_available_and_messages_go_to_the_screen() {
    let k = loaded(
        1,
        Script {
            oob: vec!["WARNING: careful\n".into()],
            ..script()
        },
    );
    let outcome = monitored(&k, vec![], |run, signals| {
        until("the warning on screen", &run.screen, |t| {
            t.contains("(data not available)") && t.contains("WARNING: careful")
        });
        // The module's messages are not on stderr while the screen is up.
        assert_eq!(run.err.text(), "");
        signals.interrupt();
    });
    assert_eq!(outcome, Outcome::Finished { failed: false });
}
