//! stapio's lifecycle, end to end through the simulated kernel.

mod common;

use std::time::Duration;

use common::*;
use stap_common::cli::Rotation;
use stap_common::kernel::KernelOps;
use stap_common::kernel::sim::{Event, Faults, Script};
use stap_common::protocol::{Generation, Notice, Request};
use stapio::Config;
use stapio::framing::Parser;
use stapio::signals::Signals;
use stapio::{Error, Outcome};

fn script(g: Generation) -> Script {
    Script {
        generation: g,
        begin: vec!["hello from begin".into(), "second begin line".into()],
        records_per_cpu: 50,
        record_size: 64,
        end: vec!["end probe fired".into()],
        ..Script::default()
    }
}

fn expected(ncpus: usize) -> String {
    format!(
        "hello from begin\nsecond begin line\n{}end probe fired\n",
        record_lines(ncpus, 50, 64)
    )
}

fn full_run(g: Generation, ncpus: usize) {
    let k = loaded(ncpus, script(g));
    let ran = run(&k, config());
    assert_eq!(ran.outcome(), Outcome::Finished { failed: false });
    assert_eq!(ran.generation, Some(g));
    assert_eq!(ran.out.text(), expected(ncpus), "{g} on {ncpus} CPUs");
    assert_eq!(ran.err.text(), "");
    assert!(!k.is_loaded(MODULE), "module must be unloaded");
    // The module asked to exit after its output: READY, BULK, START, EXIT.
    assert_eq!(
        k.requests(MODULE),
        vec![
            Request::Ready,
            Request::Bulk,
            Request::Start { target: 0 },
            Request::Exit
        ]
    );
}

#[test]
fn serial_every_record_once_in_order_both_generations_one_and_two_cpus() {
    for g in [Generation::V4, Generation::V5] {
        for ncpus in [1, 2] {
            full_run(g, ncpus);
        }
    }
}

#[test]
fn generation_is_learnt_from_the_module() {
    for g in [Generation::V4, Generation::V5] {
        let k = loaded(1, script(g));
        let dir = k.open_module_dir(&modname()).unwrap();
        let (s, _, _) = connect(&k, dir, config(), Signals::new());
        assert_eq!(s.unwrap().generation(), g);
        // V5 is tried first: a 4.x module rejected it with EINVAL.
        let rejected = k
            .events()
            .iter()
            .filter(|e| matches!(e, Event::RequestRejected { .. }))
            .count();
        assert_eq!(rejected, usize::from(g == Generation::V4), "{g}");
    }
}

#[test]
fn request_exit_is_answered_with_exit_then_the_module_exit_ends_the_run() {
    let k = loaded(1, script(Generation::V5));
    let ran = run(&k, config());
    ran.outcome();
    let reqs = k.requests(MODULE);
    assert_eq!(reqs.iter().filter(|r| **r == Request::Exit).count(), 1);
    assert_eq!(reqs.last(), Some(&Request::Exit));
    let events = k.events();
    let exit_at = events
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::Request {
                    req: Request::Exit,
                    ..
                }
            )
        })
        .unwrap();
    let closed_at = events
        .iter()
        .position(|e| matches!(e, Event::ControlClosed { .. }))
        .unwrap();
    let deleted_at = events
        .iter()
        .position(|e| matches!(e, Event::Deleted { .. }))
        .unwrap();
    assert!(exit_at < closed_at && closed_at < deleted_at, "{events:?}");
}

#[test]
fn load_only_detaches_after_start_and_leaves_the_module_loaded() {
    let k = loaded(2, script(Generation::V4));
    let mut cfg = config();
    cfg.load_only = true;
    let ran = run(&k, cfg);
    assert_eq!(ran.outcome(), Outcome::Detached);
    assert_eq!(ran.outcome().exit_code(), 0);
    assert!(k.is_loaded(MODULE));
    assert_eq!(
        ran.err.text(),
        "\nDisconnecting from systemtap module.\nTo reconnect, type \"staprun -A pmod\"\n"
    );
    assert_eq!(ran.out.text(), "", "no begin output with -L");
    assert!(k.requests(MODULE).contains(&Request::Start { target: 0 }));
}

#[test]
fn attach_reads_the_buffered_output_sends_no_start_and_exits_on_signal() {
    let mut s = script(Generation::V5);
    s.exit_after_output = false;
    let k = loaded(2, s);
    let mut cfg = config();
    cfg.load_only = true;
    assert_eq!(run(&k, cfg).outcome(), Outcome::Detached);
    let starts_before = k
        .requests(MODULE)
        .iter()
        .filter(|r| matches!(r, Request::Start { .. }))
        .count();
    assert_eq!(starts_before, 1);

    let mut cfg = config();
    cfg.attach = true;
    let signals = Signals::new();
    let dir = k.open_module_dir(&modname()).unwrap();
    let (session, out, err) = connect(&k, dir, cfg, signals.clone());
    let session = session.unwrap();
    let unloader = sim_unloader(&k);
    let result = std::thread::scope(|sc| {
        let h = sc.spawn(|| session.run(&unloader));
        let _guard = EndOnPanic(&signals);
        let want = format!(
            "hello from begin\nsecond begin line\n{}",
            record_lines(2, 50, 64)
        );
        wait_until("buffered output", Duration::from_secs(10), || {
            out.text() == want
        });
        signals.interrupt(); // SIGTERM
        h.join().unwrap()
    });
    finished_cleanly(result, &err);
    assert_eq!(out.text(), expected(2));
    let reqs = k.requests(MODULE);
    assert_eq!(
        reqs.iter()
            .filter(|r| matches!(r, Request::Start { .. }))
            .count(),
        1,
        "attach must not send START: {reqs:?}"
    );
    assert_eq!(reqs.last(), Some(&Request::Exit));
    assert!(!k.is_loaded(MODULE));
    assert!(!err.text().contains("Disconnecting"));
}

#[test]
fn sigquit_detaches_without_exit() {
    let mut s = script(Generation::V4);
    s.exit_after_output = false;
    let k = loaded(1, s);
    let signals = Signals::new();
    let dir = k.open_module_dir(&modname()).unwrap();
    let (session, out, err) = connect(&k, dir, config(), signals.clone());
    let session = session.unwrap();
    let unloader = sim_unloader(&k);
    let result = std::thread::scope(|sc| {
        let h = sc.spawn(|| session.run(&unloader));
        let _guard = EndOnPanic(&signals);
        wait_until("begin output", Duration::from_secs(10), || {
            out.text().starts_with("hello from begin\n")
        });
        signals.detach();
        h.join().unwrap()
    });
    assert_eq!(result.unwrap(), Outcome::Detached);
    assert!(k.is_loaded(MODULE));
    assert!(!k.requests(MODULE).contains(&Request::Exit));
    assert!(
        err.text()
            .contains("To reconnect, type \"staprun -A pmod\"")
    );
}

fn oob_script() -> Script {
    Script {
        oob: vec![
            "WARNING: w1\n".into(),
            "WARNING: w1\n".into(),
            "WARNING: w2\n".into(),
            "just text\n".into(),
        ],
        ..Script::default()
    }
}

#[test]
fn warnings_are_deduplicated() {
    let k = loaded(1, oob_script());
    let ran = run(&k, config());
    assert_eq!(ran.outcome(), Outcome::Finished { failed: false });
    assert_eq!(ran.err.text(), "WARNING: w1\nWARNING: w2\njust text\n");
}

#[test]
fn warnings_repeat_with_verbose() {
    let k = loaded(1, oob_script());
    let mut cfg = config();
    cfg.verbose = 1;
    let ran = run(&k, cfg);
    ran.outcome();
    assert_eq!(ran.err.text().matches("WARNING: w1\n").count(), 2);
}

#[test]
fn warnings_are_suppressed_with_w() {
    let mut s = oob_script();
    s.oob.push("ERROR: e1\n".into());
    let k = loaded(1, s);
    let mut cfg = config();
    cfg.suppress_warnings = true;
    let ran = run(&k, cfg);
    assert_eq!(ran.err.text(), "just text\nERROR: e1\n");
}

#[test]
fn a_module_error_makes_the_exit_status_1() {
    let k = loaded(
        1,
        Script {
            oob: vec!["ERROR: division by zero\n".into()],
            ..Script::default()
        },
    );
    let ran = run(&k, config());
    assert_eq!(ran.outcome(), Outcome::Finished { failed: true });
    assert_eq!(ran.outcome().exit_code(), 1);
    assert!(ran.err.text().contains("ERROR: division by zero\n"));
    assert!(!k.is_loaded(MODULE), "still unloaded");
}

#[test]
fn malformed_messages_are_reported_once_and_ignored() {
    let g = Generation::V5;
    let mut big = Notice::OobData("x".repeat(600)).encode(g);
    big.truncate(4 + 500);
    let malformed = vec![
        vec![1, 2],
        7777u32.to_ne_bytes().to_vec(),
        big,
        Request::Ready.encode(g).unwrap(),
    ];
    let mut s = script(g);
    s.malformed = malformed;
    let k = loaded(1, s.clone());
    let ran = run(&k, config());
    assert_eq!(ran.outcome(), Outcome::Finished { failed: false });
    assert_eq!(ran.out.text(), expected(1));
    let err = ran.err.text();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("WARNING: Ignored"), "{err}");

    let k = loaded(1, s);
    let mut cfg = config();
    cfg.verbose = 1;
    let ran = run(&k, cfg);
    ran.outcome();
    let err = ran.err.text();
    assert_eq!(err.matches("WARNING: Ignored").count(), 4, "{err}");
    assert!(err.contains("Ignored message of type 7777"), "{err}");
    assert!(err.contains("exceeds"), "{err}");
}

#[test]
fn a_busy_control_channel_is_a_clear_error_and_nothing_is_unloaded() {
    let k = loaded(1, Script::default());
    k.set_faults(Faults {
        control_busy: true,
        ..Faults::default()
    });
    let ran = run(&k, config());
    let e = ran.result.unwrap_err();
    assert!(matches!(e, Error::ControlOpen { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("pmod") && msg.contains("busy"), "{msg}");
    assert!(k.is_loaded(MODULE));
}

#[test]
fn relay_overrun_loss_is_reported() {
    let mut s = script(Generation::V4);
    s.records_per_cpu = 200;
    s.relay_capacity = 4000;
    let k = loaded(1, s);
    let lost_in_kernel = std::cell::Cell::new(0);
    let unloader = |m: &stap_common::modname::ModName| {
        lost_in_kernel.set(k.relay_lost(m.as_str()));
        k.delete_module(m.as_str()).map_err(|e| Error::Unload {
            module: m.clone(),
            detail: e.to_string(),
        })
    };
    let dir = k.open_module_dir(&modname()).unwrap();
    let (session, out, err) = connect(&k, dir, config(), Signals::new());
    let outcome = session.unwrap().run(&unloader).unwrap();
    assert_eq!(outcome, Outcome::Finished { failed: false });
    let lost = lost_in_kernel.get();
    assert!(lost > 100, "the test must overrun the buffer ({lost})");
    assert!(
        err.text().contains(&format!(
            "WARNING: There were {lost} lost messages, 0 lost bytes, and 0 unexpected sequences."
        )),
        "{}",
        err.text()
    );
    // What arrived is in order and ends with the end probe's line.
    assert!(out.text().ends_with("end probe fired\n"));
    assert!(out.text().starts_with("hello from begin\n"));
}

#[test]
fn system_messages_run_a_command_as_the_user() {
    let d = tempdir("system");
    let marker = d.join("ran");
    let k = loaded(
        1,
        Script {
            system: vec![format!("echo ok > {}", marker.display())],
            ..Script::default()
        },
    );
    let ran = run(&k, config());
    ran.outcome();
    wait_until("system() command", Duration::from_secs(10), || {
        read(&marker) == "ok\n"
    });
}

#[test]
fn target_pid_is_sent_in_start() {
    let k = loaded(1, Script::default());
    let mut cfg = config();
    cfg.target_pid = 4242;
    run(&k, cfg).outcome();
    assert!(
        k.requests(MODULE)
            .contains(&Request::Start { target: 4242 })
    );
}

#[test]
fn output_file_and_dev_null() {
    let d = tempdir("outfile");
    let f = d.join("out");
    let k = loaded(2, script(Generation::V5));
    let mut cfg = config();
    cfg.naming.pattern = Some(f.display().to_string());
    let ran = run(&k, cfg);
    ran.outcome();
    assert_eq!(read(&f), expected(2));
    assert_eq!(ran.out.text(), "");

    let k = loaded(2, script(Generation::V5));
    let cfg = to_files("/dev/null", 1000, 2);
    let ran = run(&k, cfg);
    assert_eq!(ran.outcome(), Outcome::Finished { failed: false });
    assert_eq!(ran.out.text(), "");
}

#[test]
fn an_output_write_error_ends_the_run_unloads_and_fails() {
    let k = loaded(1, script(Generation::V4));
    let mut cfg = config();
    cfg.naming.pattern = Some("/dev/full".into());
    let ran = run(&k, cfg);
    let e = ran.result.unwrap_err();
    assert!(matches!(e, Error::OutputWrite { .. }), "{e:?}");
    assert!(e.to_string().contains("/dev/full"), "{e}");
    assert!(!k.is_loaded(MODULE), "the unload path still runs");
}

#[test]
fn probes_failing_to_start_end_the_run_with_an_error() {
    let k = loaded(
        1,
        Script {
            start_res: -22,
            exit_after_output: false,
            ..Script::default()
        },
    );
    let ran = run(&k, config());
    assert!(matches!(ran.result, Err(Error::StartFailed { res: -22 })));
    assert!(!k.is_loaded(MODULE));
}

#[test]
fn serial_size_rotation_numbers_files_and_keeps_n() {
    let d = tempdir("serial-rot");
    let f = d.join("out");
    let k = loaded(2, script(Generation::V4));
    let cfg = to_files(f.display().to_string(), 1024, 0);
    run(&k, cfg).outcome();
    let mut all = String::new();
    let mut n = 0;
    while let Ok(b) = std::fs::read(format!("{}.{n}", f.display())) {
        assert!(b.len() <= 1024, "file {n} has {} bytes", b.len());
        all.push_str(&String::from_utf8_lossy(&b));
        n += 1;
    }
    assert!(n > 5, "{n} files");
    assert!(!f.exists(), "no unnumbered file with -S");
    assert_eq!(all, expected(2));

    // Keep only 3.
    let d = tempdir("serial-keep");
    let f = d.join("out");
    let k = loaded(2, script(Generation::V4));
    let cfg = to_files(f.display().to_string(), 1024, 3);
    run(&k, cfg).outcome();
    let mut names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort_by_key(|s| s.rsplit('.').next().unwrap().parse::<u32>().unwrap());
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(read(&d.join(names.last().unwrap())).ends_with("end probe fired\n"));
}

fn bulk_records(bytes: &[u8], g: Generation) -> Vec<(u32, Vec<u8>)> {
    let mut p = Parser::new(g);
    p.feed(bytes);
    let mut v = Vec::new();
    while let Some(r) = p.next_record() {
        v.push((r.sequence, r.payload));
    }
    assert_eq!(p.finish(), 0, "trailing bytes in a bulk file");
    v
}

#[test]
fn bulk_mode_writes_per_cpu_files_with_headers() {
    for g in [Generation::V4, Generation::V5] {
        let d = tempdir("bulk");
        let f = d.join("trace");
        let k = loaded(2, script(g));
        let mut cfg = config();
        cfg.naming.pattern = Some(f.display().to_string());
        let dir = Box::new(BulkDir(k.open_module_dir(&modname()).unwrap()));
        let ran = run_with(&k, dir, cfg, Signals::new());
        assert_eq!(ran.outcome(), Outcome::Finished { failed: false });
        let mut all = Vec::new();
        for cpu in 0..2 {
            let recs = bulk_records(&std::fs::read(format!("{}_{cpu}", f.display())).unwrap(), g);
            assert!(recs.windows(2).all(|w| w[0].0 < w[1].0), "per-CPU order");
            all.extend(recs);
        }
        all.sort_by_key(|r| r.0);
        let text: String = all
            .iter()
            .map(|r| String::from_utf8_lossy(&r.1).into_owned())
            .collect();
        assert_eq!(text, expected(2), "{g}");
        let seqs: Vec<u32> = all.iter().map(|r| r.0).collect();
        assert_eq!(seqs, (1..=seqs.len() as u32).collect::<Vec<_>>());
    }
}

#[test]
fn bulk_mode_rotation_names_and_keeps() {
    let d = tempdir("bulk-rot");
    let f = d.join("trace");
    let k = loaded(2, script(Generation::V5));
    let cfg = to_files(f.display().to_string(), 1024, 2);
    let dir = Box::new(BulkDir(k.open_module_dir(&modname()).unwrap()));
    run_with(&k, dir, cfg, Signals::new()).outcome();
    for cpu in 0..2 {
        let mut nums: Vec<u32> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().into_string().unwrap();
                n.strip_prefix(&format!("trace_cpu{cpu}."))?.parse().ok()
            })
            .collect();
        nums.sort();
        assert_eq!(nums.len(), 2, "cpu {cpu}: {nums:?}");
        assert_eq!(nums[1], nums[0] + 1);
        assert!(nums[0] > 0, "older files were deleted");
        for n in nums {
            let len = std::fs::metadata(d.join(format!("trace_cpu{cpu}.{n}")))
                .unwrap()
                .len();
            assert!(len <= 1024);
        }
    }
}

#[test]
fn sigusr2_switches_to_the_next_file() {
    let d = tempdir("usr2");
    let f = d.join("out");
    let mut s = script(Generation::V4);
    s.exit_after_output = false;
    s.records_per_cpu = 0;
    let k = loaded(1, s);
    let mut cfg = config();
    cfg.naming.pattern = Some(f.display().to_string());
    let signals = Signals::new();
    let dir = k.open_module_dir(&modname()).unwrap();
    let (session, _out, err) = connect(&k, dir, cfg, signals.clone());
    let session = session.unwrap();
    let unloader = sim_unloader(&k);
    let f1 = d.join("out.1");
    let f2 = d.join("out.2");
    let result = std::thread::scope(|sc| {
        let h = sc.spawn(|| session.run(&unloader));
        let _guard = EndOnPanic(&signals);
        wait_until("begin in out", Duration::from_secs(10), || {
            read(&f) == "hello from begin\nsecond begin line\n"
        });
        signals.rotate();
        wait_until("out.1", Duration::from_secs(10), || f1.exists());
        k.print(MODULE, "after first rotation\n");
        wait_until("line in out.1", Duration::from_secs(10), || {
            read(&f1) == "after first rotation\n"
        });
        signals.rotate();
        wait_until("out.2", Duration::from_secs(10), || f2.exists());
        k.request_exit(MODULE);
        h.join().unwrap()
    });
    finished_cleanly(result, &err);
    assert_eq!(read(&f), "hello from begin\nsecond begin line\n");
    assert_eq!(read(&f1), "after first rotation\n");
    assert_eq!(read(&f2), "end probe fired\n");
}

#[test]
fn target_command_is_held_until_the_probes_start() {
    let d = tempdir("target");
    let marker = d.join("ran");
    let mut s = script(Generation::V4);
    s.exit_after_output = false;
    let k = loaded(1, s);
    let mut cfg = config();
    cfg.target_cmd = Some(format!("touch {}", marker.display()));
    let dir = k.open_module_dir(&modname()).unwrap();
    let (session, out, err) = connect(&k, dir, cfg, Signals::new());
    let session = session.unwrap();
    let pid = session.target_pid();
    assert!(pid > 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !marker.exists(),
        "the command ran before the probes started"
    );
    assert!(
        !k.requests(MODULE)
            .iter()
            .any(|r| matches!(r, Request::Start { .. }))
    );
    // The run ends when the command exits (no exit request from the module).
    let outcome = session.run(&sim_unloader(&k)).unwrap();
    assert_eq!(
        outcome,
        Outcome::Finished { failed: false },
        "{}",
        err.text()
    );
    assert!(marker.exists());
    assert!(k.requests(MODULE).contains(&Request::Start { target: pid }));
    assert_eq!(k.requests(MODULE).last(), Some(&Request::Exit));
    assert_eq!(out.text(), expected(1));
    assert!(!k.is_loaded(MODULE));
}

#[test]
fn a_failing_target_command_makes_the_exit_status_1() {
    let k = loaded(
        1,
        Script {
            exit_after_output: false,
            ..Script::default()
        },
    );
    let mut cfg = config();
    cfg.target_cmd = Some("exit 3".into());
    let ran = run(&k, cfg);
    assert_eq!(ran.outcome(), Outcome::Finished { failed: true });
    assert!(
        ran.err
            .text()
            .contains("WARNING: Child process exited with status 3"),
        "{}",
        ran.err.text()
    );
}

#[test]
fn a_target_command_is_killed_when_the_probes_fail_to_start() {
    let d = tempdir("target-fail");
    let marker = d.join("ran");
    let k = loaded(
        1,
        Script {
            start_res: -1,
            exit_after_output: false,
            ..Script::default()
        },
    );
    let mut cfg = config();
    cfg.target_cmd = Some(format!("touch {}", marker.display()));
    let ran = run(&k, cfg);
    assert!(matches!(ran.result, Err(Error::StartFailed { .. })));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!marker.exists());
    assert!(!k.is_loaded(MODULE));
}

/// The config for output to `pattern` (`-o`), rotated at `bytes` keeping
/// `keep` files (`-S`).
fn to_files(pattern: impl Into<String>, bytes: u64, keep: u32) -> Config {
    let mut cfg = config();
    cfg.naming.pattern = Some(pattern.into());
    cfg.naming.rotation = Some(Rotation { bytes, keep });
    cfg
}

/// The session ended normally; if not, what it printed says why.
fn finished_cleanly(result: Result<Outcome, Error>, err: &stapio::diag::SharedBuf) {
    assert_eq!(
        result.unwrap(),
        Outcome::Finished { failed: false },
        "{}",
        err.text()
    );
}
