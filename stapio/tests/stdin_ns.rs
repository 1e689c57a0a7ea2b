//! `-i` (standard input to the module's `__stdin`) and `-N` with 5.1+
//! modules (`STP_MNT_NS_FDS`), end to end through the simulated kernel.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use common::*;
use stap_common::kernel::KernelOps;
use stap_common::kernel::sim::{Event, InputProbe, Script, SimKernel};
use stap_common::protocol::{Generation, MsgKind, Request};
use stap_common::sys;
use stapio::diag::SharedBuf;
use stapio::signals::Signals;
use stapio::{Config, Error, Outcome};

fn input_script(g: Generation, probe: InputProbe) -> Script {
    Script {
        generation: g,
        begin: vec!["begin".into()],
        end: vec!["end".into()],
        input: Some(probe),
        exit_after_output: false,
        ..Script::default()
    }
}

fn with_stdin() -> Config {
    let mut c = config();
    c.read_stdin = true;
    c
}

/// A pipe standing for stdin: (read end for stapio, write end for the test).
fn stdin_pipe() -> (OwnedFd, OwnedFd) {
    sys::pipe_nonblocking().unwrap()
}

fn type_in(w: &OwnedFd, text: &[u8]) {
    assert_eq!(sys::write(w.as_fd(), text).unwrap(), text.len());
}

/// Run a session on another thread with `source` as its stdin; `during`
/// drives it (it must end the run); returns the result, stdout, stderr.
fn drive(
    k: &SimKernel,
    cfg: Config,
    source: OwnedFd,
    during: impl FnOnce(&Signals, &SharedBuf),
) -> (Result<Outcome, Error>, SharedBuf, SharedBuf) {
    let signals = Signals::new();
    let dir = k.open_module_dir(&modname()).unwrap();
    let (session, out, err) = connect(k, dir, cfg, signals.clone());
    let mut session = session.unwrap();
    session.set_input(source);
    let unloader = sim_unloader(k);
    let result = std::thread::scope(|sc| {
        let h = sc.spawn(|| session.run(&unloader));
        let _guard = EndOnPanic(&signals);
        during(&signals, &out);
        h.join().unwrap()
    });
    (result, out, err)
}

const WAIT: Duration = Duration::from_secs(10);

fn one_byte_each(k: &SimKernel, text: &[u8]) {
    let writes = k.stdin_writes(MODULE);
    let want: Vec<Vec<u8>> = text.iter().map(|b| vec![*b]).collect();
    assert_eq!(writes, want, "one write() per byte, in order");
}

#[test]
fn line_mode_lines_are_assembled_from_one_byte_writes_both_generations() {
    for g in [Generation::V4, Generation::V5] {
        let k = loaded(1, input_script(g, InputProbe::Line));
        let (r, w) = stdin_pipe();
        let (result, out, err) = drive(&k, with_stdin(), r, |_, out| {
            wait_until("begin", WAIT, || out.text() == "begin\n");
            type_in(&w, b"alpha\nbe");
            wait_until("alpha", WAIT, || out.text() == "begin\nline:alpha\n");
            type_in(&w, b"ta\n");
            wait_until("beta", WAIT, || out.text().ends_with("line:beta\n"));
            // The script exits while stdin is still open: stapio must end.
            k.request_exit(MODULE);
        });
        assert_eq!(result.unwrap(), Outcome::Finished { failed: false }, "{g}");
        assert_eq!(out.text(), "begin\nline:alpha\nline:beta\nend\n", "{g}");
        assert_eq!(err.text(), "", "{g}");
        one_byte_each(&k, b"alpha\nbeta\n");
        assert!(!k.is_loaded(MODULE));
        drop(w);
    }
}

#[test]
fn char_mode_every_key_fires_the_probe_once() {
    let k = loaded(2, input_script(Generation::V5, InputProbe::Char));
    let (r, w) = stdin_pipe();
    let (result, out, _err) = drive(&k, with_stdin(), r, |_, out| {
        wait_until("begin", WAIT, || out.text() == "begin\n");
        type_in(&w, b"ab\n");
        wait_until("3 chars", WAIT, || k.stdin_writes(MODULE).len() == 3);
        wait_until("output", WAIT, || out.text().lines().count() == 4);
        k.request_exit(MODULE);
    });
    assert_eq!(result.unwrap(), Outcome::Finished { failed: false });
    assert_eq!(
        out.text(),
        "begin\nchar:\"a\"\nchar:\"b\"\nchar:\"\\n\"\nend\n"
    );
    one_byte_each(&k, b"ab\n");
}

#[test]
fn end_of_file_stops_forwarding_and_the_script_runs_on() {
    let k = loaded(1, input_script(Generation::V4, InputProbe::Line));
    let (r, w) = stdin_pipe();
    let (result, out, _err) = drive(&k, with_stdin(), r, |signals, out| {
        wait_until("begin", WAIT, || out.text() == "begin\n");
        type_in(&w, b"one\ntwo");
        drop(w); // end of file, "two" without its newline
        wait_until("all bytes", WAIT, || k.stdin_writes(MODULE).len() == 7);
        std::thread::sleep(Duration::from_millis(300));
        // Still running: end of input is not the end of the script.
        assert!(k.is_loaded(MODULE));
        assert!(!k.requests(MODULE).contains(&Request::Exit));
        assert_eq!(out.text(), "begin\nline:one\n");
        signals.interrupt();
    });
    assert_eq!(result.unwrap(), Outcome::Finished { failed: false });
    // The partial last line is never delivered.
    assert_eq!(out.text(), "begin\nline:one\nend\n");
    one_byte_each(&k, b"one\ntwo");
}

#[test]
fn an_open_stdin_does_not_hold_up_the_end() {
    let k = loaded(1, input_script(Generation::V5, InputProbe::Line));
    let (r, w) = stdin_pipe();
    let t0 = Instant::now();
    let (result, _out, _err) = drive(&k, with_stdin(), r, |_, out| {
        wait_until("begin", WAIT, || out.text() == "begin\n");
        k.request_exit(MODULE);
    });
    assert_eq!(result.unwrap(), Outcome::Finished { failed: false });
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(k.stdin_writes(MODULE).is_empty());
    drop(w);
}

#[test]
fn without_i_stdin_is_not_read() {
    let k = loaded(1, input_script(Generation::V4, InputProbe::Line));
    let (r, w) = stdin_pipe();
    type_in(&w, b"ignored\n");
    let (result, out, _err) = drive(&k, config(), r, |_, out| {
        wait_until("begin", WAIT, || out.text() == "begin\n");
        std::thread::sleep(Duration::from_millis(200));
        k.request_exit(MODULE);
    });
    assert_eq!(result.unwrap(), Outcome::Finished { failed: false });
    assert_eq!(out.text(), "begin\nend\n");
    assert!(k.stdin_writes(MODULE).is_empty());
}

#[test]
fn a_module_without_input_probes_gets_nothing_and_runs_normally() {
    let mut s = input_script(Generation::V5, InputProbe::Line);
    s.input = None;
    s.exit_after_output = true;
    let k = loaded(1, s);
    let (r, w) = stdin_pipe();
    type_in(&w, b"x\n");
    let (result, out, err) = drive(&k, with_stdin(), r, |_, _| {});
    assert_eq!(result.unwrap(), Outcome::Finished { failed: false });
    assert_eq!(out.text(), "begin\nend\n");
    assert_eq!(err.text(), "");
    assert!(k.stdin_writes(MODULE).is_empty());
}

#[test]
fn attach_forwards_to_the_running_module() {
    let k = loaded(1, input_script(Generation::V5, InputProbe::Line));
    let mut cfg = config();
    cfg.load_only = true;
    assert_eq!(run(&k, cfg).outcome(), Outcome::Detached);
    let mut cfg = with_stdin();
    cfg.attach = true;
    let (r, w) = stdin_pipe();
    let (result, out, _err) = drive(&k, cfg, r, |signals, out| {
        type_in(&w, b"hi\n");
        wait_until("the line", WAIT, || out.text().ends_with("line:hi\n"));
        signals.interrupt();
    });
    assert_eq!(result.unwrap(), Outcome::Finished { failed: false });
    assert_eq!(out.text(), "begin\nline:hi\nend\n");
}

// ---------------------------------------------------------------------------
// -N

fn ns_config(pid: i32) -> Config {
    let mut c = config();
    c.namespaces_pid = Some(pid);
    c
}

fn own_mount_ns() -> String {
    std::fs::read_link("/proc/thread-self/ns/mnt")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn five_one_gets_the_mount_namespace_fds_after_the_namespaces_pid() {
    let k = loaded(1, script_of(Generation::V5));
    let me = std::process::id() as i32;
    let ran = run(&k, ns_config(me));
    assert_eq!(ran.outcome(), Outcome::Finished { failed: false });
    let reqs = k.requests(MODULE);
    let kinds: Vec<MsgKind> = reqs.iter().map(Request::kind).collect();
    assert_eq!(
        kinds,
        [
            MsgKind::Ready,
            MsgKind::Bulk,
            MsgKind::NamespacesPid,
            MsgKind::MntNsFds,
            MsgKind::Start,
            MsgKind::Exit
        ]
    );
    assert_eq!(reqs[2], Request::NamespacesPid { target: me });
    let Request::MntNsFds { target_fd, orig_fd } = reqs[3] else {
        unreachable!()
    };
    assert!(target_fd > 2 && orig_fd > 2 && target_fd != orig_fd);
    // When the probes started, both numbers were open in this process and
    // were this process's mount namespace (the target is this process).
    let (t, o) = k.mnt_ns_at_start(MODULE).unwrap();
    assert_eq!(
        (t.as_str(), o.as_str()),
        (own_mount_ns().as_str(), own_mount_ns().as_str())
    );
}

#[test]
fn four_x_gets_the_namespaces_pid_only() {
    let k = loaded(1, script_of(Generation::V4));
    let me = std::process::id() as i32;
    let ran = run(&k, ns_config(me));
    assert_eq!(ran.outcome(), Outcome::Finished { failed: false });
    let reqs = k.requests(MODULE);
    assert!(reqs.contains(&Request::NamespacesPid { target: me }));
    assert!(!reqs.iter().any(|r| r.kind() == MsgKind::MntNsFds));
    assert_eq!(k.mnt_ns_at_start(MODULE), None);
    // Nothing else was even tried: the one message the 4.x module refused
    // is the 5.x-numbered READY that taught the generation.
    let rejected: Vec<Option<MsgKind>> = k
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::RequestRejected { kind, .. } => Some(kind),
            _ => None,
        })
        .collect();
    assert_eq!(rejected, [None]);
}

#[test]
fn an_unopenable_namespace_ends_the_run_before_start_and_unloads() {
    let k = loaded(1, script_of(Generation::V5));
    let ran = run(&k, ns_config(i32::MAX));
    let e = ran.result.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "Failed to open file '/proc/{}/ns/mnt': No such file or directory",
            i32::MAX
        )
    );
    let reqs = k.requests(MODULE);
    assert!(reqs.contains(&Request::NamespacesPid { target: i32::MAX }));
    assert!(
        !reqs
            .iter()
            .any(|r| matches!(r, Request::Start { .. } | Request::MntNsFds { .. }))
    );
    assert!(
        !k.is_loaded(MODULE),
        "unloaded, as C's cleanup_and_exit(0, 1)"
    );
}

#[test]
fn a_five_zero_module_refusing_the_message_still_runs() {
    let mut s = script_of(Generation::V5);
    s.no_mnt_ns_fds = true;
    let k = loaded(1, s);
    let ran = run(&k, ns_config(std::process::id() as i32));
    assert_eq!(ran.outcome(), Outcome::Finished { failed: false });
    assert!(k.requests(MODULE).contains(&Request::Start { target: 0 }));
    assert_eq!(k.mnt_ns_at_start(MODULE), None);
    assert_eq!(ran.err.text(), "");
}

fn script_of(g: Generation) -> Script {
    Script {
        generation: g,
        ..Script::default()
    }
}
