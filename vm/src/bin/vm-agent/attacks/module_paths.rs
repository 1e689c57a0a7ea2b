//! Odd module paths and names.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::{OpenOptionsExt as _, chown, symlink};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::common::{
    ELSEWHERE, EVIL, RUN, check_nothing_loaded, full_run, log_out, place_elsewhere, refused, sh,
    sr, staprun_os,
};
use crate::harness::{
    ALICE, BOB, Out, ROOT, Reporter, STAPRUN, User, blessed_dir, command_as, fixture, mkdir,
    product_installed, publish, put, run,
};

/// Tries, while `during` runs, to open `fifo` for writing without
/// blocking: that succeeds only while someone has it open for reading.
fn fifo_reader_seen<T>(fifo: &str, during: impl FnOnce() -> T) -> (T, bool) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let path = fifo.to_owned();
    let probe = std::thread::spawn(move || {
        let mut seen = false;
        while !flag.load(Ordering::Relaxed) {
            if fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .is_ok()
            {
                seen = true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    });
    let t = during();
    stop.store(true, Ordering::Relaxed);
    let seen = probe.join().unwrap_or(true);
    (t, seen)
}

/// Refused within `limit`, not by a signal, nothing loaded.
fn check_quick_refusal(r: &mut Reporter, tag: &str, out: &Out, took: Duration, limit: Duration) {
    r.check(
        &format!("{tag}_refused"),
        refused(out),
        format!("{} in {took:?}", out.summary()),
    );
    r.check(
        &format!("{tag}_quick"),
        took < limit,
        format!("{took:?} (limit {limit:?})"),
    );
    check_nothing_loaded(r, tag, &[]);
}

fn timed(f: impl FnOnce() -> Out) -> (Out, Duration) {
    let t0 = Instant::now();
    let out = f();
    (out, t0.elapsed())
}

pub(crate) fn module_paths(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let good = publish("pmod");
    let _ = place_elsewhere();
    let quick = Duration::from_secs(5);
    let d = blessed_dir();

    // 1. Descriptor paths: alice opens a module and names it by its fd.
    let cases = [
        (
            "proc_self_fd_elsewhere",
            ELSEWHERE.to_owned(),
            "/proc/self/fd/3",
        ),
        ("dev_fd_elsewhere", ELSEWHERE.to_owned(), "/dev/fd/3"),
        (
            "proc_self_fd_blessed_file",
            good.display().to_string(),
            "/proc/self/fd/3",
        ),
        (
            "proc_self_fd_alices_dir",
            "/home/alice/p".to_owned(),
            "/proc/self/fd/3/pmod.ko",
        ),
    ];
    // devtmpfs has no /dev/fd; make the usual link.
    if !Path::new("/dev/fd").exists() {
        let _ = symlink("/proc/self/fd", "/dev/fd");
    }
    let p = Path::new("/home/alice/p");
    let _ = fs::remove_dir_all(p);
    let setup = mkdir(p, 0o755, ALICE.uid, ALICE.gid)
        .and_then(|()| put(p.join("pmod.ko"), &fixture(EVIL), 0o644, &ALICE));
    r.check("alice_dir_setup", setup.is_ok(), format!("{setup:?}"));
    for (tag, open, arg) in cases {
        let (out, took) = timed(|| sh(&ALICE, &format!("exec 3<{open}; exec {STAPRUN} {arg}")));
        log_out(r, &format!("alice$ exec 3<{open}; staprun {arg}"), &out);
        check_quick_refusal(r, tag, &out, took, quick);
    }
    // The blessed directory by descriptor is still the blessed directory.
    let out = sh(
        &ALICE,
        &format!(
            "exec 3<{}; exec {STAPRUN} /proc/self/fd/3/pmod.ko",
            d.display()
        ),
    );
    log_out(
        r,
        "alice$ exec 3<BLESSED; staprun /proc/self/fd/3/pmod.ko",
        &out,
    );
    r.check(
        "proc_self_fd_blessed_dir_consistent",
        full_run(&out) || refused(&out),
        out.summary(),
    );
    check_nothing_loaded(r, "proc_self_fd_blessed_dir", &[]);

    // 2. A hard link in alice's directory to the blessed module.
    let hl = p.join("linked.ko");
    let linked = fs::hard_link(&good, &hl);
    if r.check("hardlink_made", linked.is_ok(), format!("{linked:?}")) {
        let path = hl.display().to_string();
        let (out, took) = timed(|| sr(&ALICE, &[&path]));
        check_quick_refusal(r, "hardlink_in_alices_dir", &out, took, quick);
        let _ = fs::remove_file(&hl);
    }

    // 3. FIFOs and devices: refused at once, never opened for reading.
    let _ = mkdir("/tmp/p", 0o755, ALICE.uid, ALICE.gid);
    let fifos = [
        "/tmp/p/fifo.ko".to_owned(),
        d.join("fifo.ko").display().to_string(),
    ];
    for f in &fifos {
        let _ = fs::remove_file(f);
        let made = run(command_as(&ROOT, &["/bin/busybox", "mkfifo", f], &[]), RUN);
        if f.starts_with("/tmp") {
            let _ = chown(f, Some(ALICE.uid), Some(ALICE.gid));
        }
        r.check(&format!("mkfifo_{f}"), made.code == Some(0), made.summary());
    }
    // The probe itself sees a reader (a control run).
    let (_, seen) = fifo_reader_seen(&fifos[0], || {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifos[0]);
        std::thread::sleep(Duration::from_millis(100));
        drop(f);
    });
    r.check("fifo_probe_sees_a_reader", seen, "control run");
    let cases: Vec<(&str, User, String)> = vec![
        ("alice_fifo_elsewhere", ALICE, fifos[0].clone()),
        ("bob_fifo_elsewhere", BOB, fifos[0].clone()),
        ("alice_fifo_blessed", ALICE, "fifo".to_owned()),
        ("bob_fifo_blessed", BOB, fifos[1].clone()),
    ];
    for (tag, user, arg) in cases {
        let fifo = if arg == "fifo" || arg == fifos[1] {
            &fifos[1]
        } else {
            &fifos[0]
        };
        let ((out, took), opened) = fifo_reader_seen(fifo, || timed(|| sr(&user, &[&arg])));
        check_quick_refusal(r, tag, &out, took, quick);
        r.check(&format!("{tag}_never_opened"), !opened, "");
    }
    let watchdog = Path::new("/dev/watchdog").exists();
    r.log(&format!("/dev/watchdog present: {watchdog}"));
    let mut devices = vec!["/dev/zero", "/dev/null"];
    if watchdog {
        devices.push("/dev/watchdog");
    }
    for dev in devices {
        for user in [ALICE, BOB] {
            let tag = format!("{}_{}", user.name, dev.replace('/', "_"));
            let (out, took) = timed(|| sr(&user, &[dev]));
            check_quick_refusal(r, &tag, &out, took, quick);
        }
    }
    for f in &fifos {
        let _ = fs::remove_file(f);
    }

    // 4. Huge sparse files in the blessed directory (made by root).
    for (tag, size) in [("sparse_1t", 1u64 << 40), ("sparse_257m", 257 << 20)] {
        let path = d.join(format!("{tag}.ko"));
        let made = fs::File::create(&path).and_then(|f| f.set_len(size));
        if !r.check(&format!("{tag}_made"), made.is_ok(), format!("{made:?}")) {
            continue;
        }
        for user in [ALICE, BOB] {
            let arg = if user.uid == ALICE.uid {
                tag.to_owned()
            } else {
                path.display().to_string()
            };
            let (out, took) = timed(|| sr(&user, &[&arg]));
            log_out(r, &format!("{}$ staprun {arg}", user.name), &out);
            check_quick_refusal(r, &format!("{}_{tag}", user.name), &out, took, quick);
        }
        let _ = fs::remove_file(&path);
    }

    // 5. Odd names: path tricks, control characters, non-UTF-8 bytes.
    let long = "a".repeat(200);
    let names: Vec<(&str, Vec<OsString>)> = vec![
        ("dotdot_pmod", vec!["../pmod".into()]),
        ("dotdot", vec!["..".into()]),
        ("dot", vec![".".into()]),
        ("slash", vec!["/".into()]),
        ("trailing_slash", vec!["pmod/".into()]),
        ("newline", vec!["pm\nod".into()]),
        ("non_utf8", vec![OsString::from_vec(b"pm\xffod".to_vec())]),
        ("empty", vec!["".into()]),
        ("long", vec![long.clone().into()]),
        ("d_slash", vec!["-d".into(), "a/b".into()]),
        ("d_dotdot", vec!["-d".into(), "..".into()]),
        (
            "d_escape_procfs",
            vec!["-d".into(), "../../proc/systemtap/pmod".into()],
        ),
        ("d_newline", vec!["-d".into(), "pm\nod".into()]),
        (
            "d_non_utf8",
            vec!["-d".into(), OsString::from_vec(b"\xff".to_vec())],
        ),
        ("A_dotdot", vec!["-A".into(), "../pmod".into()]),
        ("R_dotdot", vec!["-R".into(), "../pmod".into()]),
    ];
    for (tag, args) in &names {
        let a: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let (out, took) = timed(|| staprun_os(&ALICE, &a, &[], RUN));
        log_out(r, &format!("alice$ staprun {args:?}"), &out);
        check_quick_refusal(r, &format!("name_{tag}"), &out, took, quick);
    }

    // 6. Module options: thousands, the maximum, and one huge value.
    let many: Vec<String> = (0..5000).map(|i| format!("opt{i}=1")).collect();
    let mut args: Vec<&str> = vec!["pmod"];
    args.extend(many.iter().map(String::as_str));
    let (out, took) = timed(|| sr(&ALICE, &args));
    log_out(r, "alice$ staprun pmod opt0=1 ... opt4999=1", &out);
    check_quick_refusal(r, "options_5000", &out, took, quick);
    let mut args: Vec<&str> = vec!["pmod", "records=1"];
    args.extend(many.iter().take(63).map(String::as_str));
    let out = sr(&ALICE, &args);
    r.check("options_64_run", full_run(&out), out.summary());
    check_nothing_loaded(r, "options_64", &[]);
    let big = format!("opt={}", "x".repeat(100_000));
    let out = sr(&ALICE, &["pmod", "records=1", &big]);
    log_out(r, "alice$ staprun pmod records=1 opt=<100000 bytes>", &out);
    r.check(
        "option_100k_consistent",
        (full_run(&out) || refused(&out)) && !out.timed_out,
        out.summary(),
    );
    check_nothing_loaded(r, "option_100k", &[]);

    // 7. No existence oracle: a refusal of a path in a directory alice
    //    cannot search reads the same whether the path exists or not.
    let secret = Path::new("/root/secretdir");
    let _ = mkdir(secret, 0o700, 0, 0);
    let _ = put(secret.join("x.ko"), &fixture("pmod"), 0o600, &ROOT);
    let exists = sr(&ALICE, &["/root/secretdir/x.ko"]);
    let missing = sr(&ALICE, &["/root/nosuchdir/x.ko"]);
    let norm = |o: &Out, p: &str| o.stderr.replace(p, "PATH");
    r.check(
        "no_existence_oracle_for_root_only_dirs",
        refused(&exists)
            && refused(&missing)
            && norm(&exists, "/root/secretdir/x.ko") == norm(&missing, "/root/nosuchdir/x.ko"),
        format!(
            "existing: {:?} | missing: {:?}",
            exists.stderr.trim(),
            missing.stderr.trim()
        ),
    );
    let _ = fs::remove_dir_all(secret);
    let _ = fs::remove_dir_all(p);
    let _ = fs::remove_dir_all("/tmp/p");
    let _ = fs::remove_dir_all("/tmp/x");
    check_nothing_loaded(r, "end", &[]);
}
