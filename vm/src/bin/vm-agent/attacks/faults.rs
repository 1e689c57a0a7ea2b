//! Fault injection.

use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::common::{RUN, check_nothing_loaded, helper_run, log_out, refused, sr, stapio_pids};
use crate::harness::{
    self, ALICE, END, HELLO, Out, ROOT, Reporter, Rng, STAPRUN, comm, command_as,
    product_installed, publish, record_seqs, run, sys,
};

/// The fd number of `module`'s `.cmd` in process `pid`.
fn cmd_fd(pid: u32, module: &str) -> Option<String> {
    let want = format!("/proc/systemtap/{module}/.cmd");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|e| fs::read_link(e.path()).is_ok_and(|t| t == Path::new(&want)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// `text` is a prefix of a lossless stream of the fixture: the begin
/// line, then whole records of `size` bytes with consecutive sequence
/// numbers from 2; only the very last line may be cut short.
fn valid_prefix(text: &str, size: usize) -> Result<usize, String> {
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    let last_partial = lines.last().is_some_and(|l| !l.ends_with('\n'));
    let partial = if last_partial { lines.pop() } else { None };
    let mut it = lines.iter();
    if it.next().map(|l| l.trim_end()) != Some(HELLO) {
        return Err(format!(
            "does not start with the begin line: {:?}",
            harness::clip(text)
        ));
    }
    let mut want = 2u64;
    for l in it {
        let seq = record_seqs::<u64>(l).first().copied();
        if l.len() != size || !l.trim_end().ends_with('.') || seq != Some(want) {
            return Err(format!("record {want}: bad line {l:?}"));
        }
        want += 1;
    }
    if let Some(p) = partial {
        let ok = p.starts_with("cpu=") || "cpu=".starts_with(p);
        if !ok || p.len() >= size {
            return Err(format!("bad last partial line {p:?}"));
        }
    }
    Ok(usize::try_from(want - 2).unwrap_or(0))
}

pub(crate) fn faults(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");

    // 1. The module's init fails.
    let out = sr(&ALICE, &["pmod", "init_errno=12"]);
    log_out(r, "alice$ staprun pmod init_errno=12", &out);
    r.check(
        "init_fails_clear_error",
        refused(&out) && out.stderr.contains("Cannot allocate memory"),
        out.summary(),
    );
    r.check("init_fails_no_stapio", stapio_pids().is_empty(), "");
    check_nothing_loaded(r, "init_fails", &[]);

    // 2. The control channel breaks mid-run: root closes stapio's .cmd
    //    descriptor under it (a ptrace-injected close()).
    match harness::spawn(command_as(&ALICE, &[STAPRUN, "pmod", "run_ms=100"], &[])) {
        Err(e) => {
            r.check("ctl_break_spawn", false, e.to_string());
        }
        Ok(mut running) => {
            let mut target = None;
            harness::wait_until(Duration::from_secs(20), || {
                target = stapio_pids()
                    .into_iter()
                    .find_map(|p| cmd_fd(p, "pmod").map(|fd| (p, fd)));
                target.is_some()
                    && fs::read_to_string("/sys/module/pmod/parameters/started")
                        .is_ok_and(|s| s.trim() == "1")
            });
            let injected = target.as_ref().map(|(pid, fd)| {
                std::thread::sleep(Duration::from_millis(300));
                helper_run(&ROOT, &["close-fd", &pid.to_string(), fd])
            });
            // If stapio does not end, record where its threads wait.
            let pid = target.as_ref().map(|(p, _)| *p);
            if !harness::wait_until(Duration::from_secs(20), || {
                !matches!(running.child.try_wait(), Ok(None))
            }) && let Some(p) = pid
            {
                for t in fs::read_dir(format!("/proc/{p}/task"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let at = |f: &str| {
                        fs::read_to_string(t.path().join(f))
                            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                            .unwrap_or_default()
                    };
                    r.log(&format!(
                        "  stapio task {}: {} wchan {} syscall {}",
                        t.file_name().to_string_lossy(),
                        at("comm"),
                        at("wchan"),
                        at("syscall")
                    ));
                }
                if let Ok(fds) = fs::read_dir(format!("/proc/{p}/fd")) {
                    let v: Vec<String> = fds
                        .flatten()
                        .map(|e| {
                            format!(
                                "{}->{}",
                                e.file_name().to_string_lossy(),
                                fs::read_link(e.path())
                                    .map(|l| l.display().to_string())
                                    .unwrap_or_default()
                            )
                        })
                        .collect();
                    r.log(&format!("  stapio fds: {}", v.join(" ")));
                }
            }
            let out = running.wait(Duration::from_secs(1));
            log_out(
                r,
                "alice$ staprun pmod run_ms=100   (root closes stapio's .cmd fd)",
                &out,
            );
            let inj_ok = injected.as_ref().is_some_and(|o| o.code == Some(0));
            r.check(
                "ctl_break_injected",
                inj_ok,
                format!(
                    "target {target:?}: {}",
                    injected.map(|o| o.summary()).unwrap_or_default()
                ),
            );
            r.check(
                "ctl_break_stapio_ends_with_error",
                inj_ok
                    && !out.timed_out
                    && out.signal.is_none()
                    && out.code.is_some_and(|c| c != 0)
                    && !out.stderr.trim().is_empty(),
                out.summary(),
            );
            r.check(
                "ctl_break_module_unloaded",
                !harness::is_loaded("pmod") && !Path::new("/proc/systemtap/pmod").exists(),
                "",
            );
            check_nothing_loaded(r, "ctl_break", &[]);
        }
    }

    // 3. SIGKILL at random points (staprun or stapio), then `staprun -d`
    //    cleans up (PR10854).
    let mut rng = Rng::new(r);
    for i in 0..10 {
        let delay = Duration::from_millis(rng.below(2000));
        let running =
            match harness::spawn(command_as(&ALICE, &[STAPRUN, "pmod", "run_ms=100"], &[])) {
                Ok(rn) => rn,
                Err(e) => {
                    r.check(&format!("kill_{i}_spawn"), false, e.to_string());
                    continue;
                }
            };
        std::thread::sleep(delay);
        let pid = running.child.id();
        let what = comm(pid);
        let _ = sys::kill(pid, libc::SIGKILL);
        let out = running.wait(Duration::from_secs(10));
        let loaded = harness::is_loaded("pmod");
        let d = sr(&ALICE, &["-d", "pmod"]);
        r.log(&format!(
            "SIGKILL {what} after {delay:?}: signal {:?}; pmod loaded after: {loaded}; staprun -d: code {:?}",
            out.signal, d.code
        ));
        r.check(
            &format!("kill_{i}_d_cleans_up"),
            !harness::is_loaded("pmod")
                && !Path::new("/proc/systemtap/pmod").exists()
                && (!loaded || d.code == Some(0)),
            format!("killed {what} after {delay:?}; -d: {}", d.summary()),
        );
        r.check(
            &format!("kill_{i}_no_stapio_left"),
            harness::wait_until(Duration::from_secs(5), || stapio_pids().is_empty()),
            format!("{:?}", stapio_pids()),
        );
        check_nothing_loaded(r, &format!("kill_{i}"), &[]);
    }

    // 4. Output file system full.
    let full = "/tmp/full";
    let _ = fs::create_dir_all(full);
    let mounted = sys::mount("tmpfs", full, "tmpfs", 0, "size=64k,mode=1777");
    if r.check("full_fs_mounted", mounted.is_ok(), format!("{mounted:?}")) {
        let size = 200;
        let out = sr(
            &ALICE,
            &[
                "-o",
                "/tmp/full/out",
                "pmod",
                "records=2000",
                &format!("record_size={size}"),
            ],
        );
        log_out(
            r,
            "alice$ staprun -o /tmp/full/out pmod records=2000 record_size=200  (64 KiB fs)",
            &out,
        );
        let text = fs::read("/tmp/full/out")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        r.check(
            "full_fs_clear_error_nonzero",
            refused_after_start(&out) && out.stderr.contains("No space left on device"),
            out.summary(),
        );
        let prefix = valid_prefix(&text, size);
        r.log(&format!(
            "{} bytes written before the fs filled: {prefix:?}",
            text.len()
        ));
        r.check(
            "full_fs_data_is_intact_prefix",
            prefix.as_ref().is_ok_and(|n| *n > 0) && text.len() > 32 * 1024,
            format!("{} bytes: {prefix:?}", text.len()),
        );
        check_nothing_loaded(r, "full_fs", &[]);
        // The same with a module that keeps running (a timer probe): the
        // session must still end, unload, and say why.
        let _ = fs::remove_file("/tmp/full/out");
        let out = run(
            command_as(
                &ALICE,
                &[
                    STAPRUN,
                    "-o",
                    "/tmp/full/out",
                    "pmod",
                    "records=2000",
                    "record_size=200",
                    "run_ms=50",
                ],
                &[],
            ),
            Duration::from_secs(30),
        );
        log_out(
            r,
            "alice$ staprun -o /tmp/full/out pmod records=2000 record_size=200 run_ms=50  (64 KiB fs)",
            &out,
        );
        r.check(
            "full_fs_running_module_ends_with_error",
            refused_after_start(&out) && out.stderr.contains("No space left on device"),
            out.summary(),
        );
        check_nothing_loaded(r, "full_fs_running_module", &[]);
        let um = run(command_as(&ROOT, &["/bin/umount", full], &[]), RUN);
        r.check("full_fs_umount", um.code == Some(0), um.summary());
    }

    // 5. Relay overrun: stapio stopped for 2 s while the module writes
    //    far more than its 1 MiB buffers hold; the loss is counted.
    overrun_while_stopped(r);
    check_nothing_loaded(r, "end", &[]);
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<char> = s.chars().collect();
    v[v.len().saturating_sub(n)..].iter().collect()
}

/// Failed after the module started: non-zero exit, a message, no hang.
fn refused_after_start(out: &Out) -> bool {
    out.code.is_some_and(|c| c != 0)
        && !out.timed_out
        && out.signal.is_none()
        && !out.stderr.trim().is_empty()
}

fn overrun_while_stopped(r: &mut Reporter) {
    let mut cmd = command_as(
        &ALICE,
        &[
            STAPRUN,
            "-b",
            "1",
            "pmod",
            "records=3000",
            "record_size=2048",
        ],
        &[],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            r.check("overrun_spawn", false, e.to_string());
            return;
        }
    };
    let err = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let mut stdout = child.stdout.take();
    // The begin line, byte by byte, then stop stapio.
    let mut first = Vec::new();
    if let Some(o) = stdout.as_mut() {
        let mut b = [0u8; 1];
        while first.len() < 200 && !first.ends_with(b"\n") {
            match o.read(&mut b) {
                Ok(1) => first.push(b[0]),
                _ => break,
            }
        }
    }
    let stapio = stapio_pids().first().copied();
    if let Some(p) = stapio {
        let _ = sys::kill(p, libc::SIGSTOP);
        std::thread::sleep(Duration::from_secs(2));
        let _ = sys::kill(p, libc::SIGCONT);
    }
    let rest = stdout.map(|mut o| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = o.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    });
    let ended = harness::wait_until(Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
    }
    let status = child.wait().ok();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&first),
        rest.and_then(|h| h.join().ok()).unwrap_or_default()
    );
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    for l in stderr.lines().take(5) {
        r.log(&format!("[overrun stderr] {l}"));
    }
    r.check(
        "overrun_stopped_stapio",
        stapio.is_some() && first.starts_with(HELLO.as_bytes()),
        format!(
            "stapio {stapio:?}, first line {:?}",
            String::from_utf8_lossy(&first)
        ),
    );
    r.check(
        "overrun_run_ends_normally",
        ended && status.and_then(|s| s.code()) == Some(0) && text.starts_with(HELLO),
        format!("status {status:?}, tail {:?}", tail(&text, 200)),
    );
    // The end line itself may be lost (written while the buffers are still
    // full); the count covers the gaps up to the last record delivered.
    let s = record_seqs::<u64>(&text);
    let ncpu = harness::num_cpus() as u64;
    let total = 2 + 3000 * ncpu;
    let with_end = text.trim_end().ends_with(END);
    let delivered = s.len() as u64 + 1 + u64::from(with_end);
    let last = if with_end {
        total
    } else {
        s.iter().copied().max().unwrap_or(1)
    };
    let lost = stderr
        .lines()
        .find(|l| l.contains("lost messages"))
        .and_then(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "were")
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
        });
    r.check(
        "overrun_in_order",
        s.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers increase",
    );
    r.check(
        "overrun_loss_reported_and_counted",
        delivered < total && lost == Some(last.saturating_sub(delivered)),
        format!(
            "{delivered} of {total} records delivered (end line {with_end}, last seq {last}); warning says {lost:?} lost; stderr {stderr:?}"
        ),
    );
}
