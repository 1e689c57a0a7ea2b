//! The stapio binary: help, version, usage errors, -F, and a whole run
//! against a fake module directory (a FIFO as `.cmd`, which echoes what
//! stapio writes, and a plain file as `trace0`), driven by real signals.
//! The FIFO accepts STP_BULK, so these runs are in bulk mode.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use stap_common::protocol::Generation;
use stap_common::record::encode_record;

const STAPIO: &str = env!("CARGO_BIN_EXE_stapio");

fn stapio(args: &[&str]) -> Output {
    Command::new(STAPIO).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_and_version_exit_0_with_empty_stderr() {
    for flag in ["-h", "-V"] {
        let o = stapio(&[flag]);
        assert_eq!(o.status.code(), Some(0), "{flag}");
        assert_eq!(text(&o.stderr), "", "{flag}");
        assert!(!o.stdout.is_empty(), "{flag}");
    }
    assert!(text(&stapio(&["-h"]).stdout).contains("-F"));
}

#[test]
fn usage_errors_exit_1() {
    let o = stapio(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).starts_with("stapio: "),
        "{}",
        text(&o.stderr)
    );
    let o = stapio(&["-c", "ls", "-x", "1", "m"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn monitor_mode_without_a_terminal_is_refused_clearly() {
    // stdout is a pipe here.
    let o = stapio(&["-M", "1", "stapio_test_nomod"]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("monitor mode needs a terminal"), "{e}");
}

#[test]
fn a_module_that_is_not_loaded_is_one_clear_error() {
    let o = stapio(&["stapio_test_nomod"]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("ERROR: Cannot attach to module stapio_test_nomod control channel"),
        "{e}"
    );
}

#[test]
fn bad_relay_fds_are_refused() {
    for fd in ["0", "2", "97"] {
        let o = stapio(&["-F", fd, "m"]);
        assert_eq!(o.status.code(), Some(1), "-F {fd}");
        assert!(
            text(&o.stderr).contains(&format!("Invalid relay directory descriptor -F {fd}")),
            "{}",
            text(&o.stderr)
        );
    }
    // An open descriptor that is not a directory.
    let o = Command::new("sh")
        .args(["-c", "exec 7</dev/null; exec \"$0\" -F 7 m", STAPIO])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("Not a directory"),
        "{}",
        text(&o.stderr)
    );
}

fn fake_module_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("stapio-cli-{}-{}", std::process::id(), rand_tag()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let st = Command::new("mkfifo").arg(d.join(".cmd")).status().unwrap();
    assert!(st.success());
    std::fs::write(d.join("trace0"), relay_bytes()).unwrap();
    d
}

fn rand_tag() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Attach (-A) through `-F` to the fake directory, wait, send `sig`;
/// exit code, stdout, stderr and the bulk file `out_0`.
fn attach_and_signal(sig: i32) -> (Option<i32>, String, String, Vec<u8>) {
    let d = fake_module_dir();
    let mut child = Command::new("sh")
        .args([
            "-c",
            "exec 7<\"$1\"; exec \"$0\" -A -T 20 -F 7 -o \"$1/out\" fakemod",
            STAPIO,
        ])
        .arg(&d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stap_common::sys::kill(stap_common::ids::Pid::from_raw(child.id() as i32), sig).unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("stapio did not end after signal {sig}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let bulk = std::fs::read(d.join("out_0")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&d);
    (status.code(), out, err, bulk)
}

fn relay_bytes() -> Vec<u8> {
    let mut relay = Vec::new();
    encode_record(Generation::V5, 7, b"hello\n", &mut relay);
    encode_record(Generation::V5, 8, b"world\n", &mut relay);
    relay
}

#[test]
fn sigquit_detaches_with_the_reconnect_message() {
    let (code, out, err, bulk) = attach_and_signal(libc::SIGQUIT);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "");
    assert_eq!(
        bulk,
        relay_bytes(),
        "bulk file: headers and payloads as read"
    );
    assert!(
        err.ends_with(
            "\nDisconnecting from systemtap module.\nTo reconnect, type \"staprun -A fakemod\"\n"
        ),
        "{err}"
    );
}

#[test]
fn sigterm_sends_exit_and_then_unloads_through_staprun() {
    // The FIFO hands STP_EXIT straight back, as the module would answer;
    // the unload then runs `staprun -d`, which cannot succeed for this
    // fake module (or is not installed): exit status 1, one clear error.
    let (code, out, err, bulk) = attach_and_signal(libc::SIGTERM);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(out, "");
    assert_eq!(bulk, relay_bytes());
    assert!(
        err.contains("ERROR: Unable to unload module fakemod"),
        "{err}"
    );
    assert!(!err.contains("Disconnecting"), "{err}");
}
