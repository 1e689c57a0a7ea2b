//! Group `compat_monitor`: `staprun -M 1` (monitor mode) with a real module on a
//! pseudo-terminal. The module (compat/monitor.stp) has the files `stap --monitor`
//! adds; the screen is read through a VT100 model of the terminal, keys are typed
//! on the master side. Debian's C stapio is built without monitor mode, so the C
//! side only shows that (D3 in docs/compat.md).

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{self, ALICE, Reporter, STAPRUN, command_as, sys};

use super::ctx::{Ctx, loaded_like, loaded_text};
use super::driver::{Case, run_group};
use super::{C_STAPIO, Impl};

pub(crate) const MONITOR_CASES: &[Case] = &[Case {
    name: "monitor_keys",
    f: monitor_keys,
    modules: &["monitor"],
    c_fails: &[],
}];

pub(crate) fn compat_monitor(r: &mut Reporter) {
    run_group(r, MONITOR_CASES);
}

const COLS: u16 = 120;
const ROWS: u16 = 50;

/// staprun on a pseudo-terminal, its screen kept up to date by a reader thread.
struct Term {
    child: Child,
    master: std::fs::File,
    screen: Arc<Mutex<vt100::Parser>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Term {
    fn start(argv: &[&str]) -> Result<Term, String> {
        if !std::path::Path::new("/dev/pts/ptmx").exists() {
            let _ = std::fs::create_dir_all("/dev/pts");
            sys::mount("devpts", "/dev/pts", "devpts", 0, "mode=620,ptmxmode=666")
                .map_err(|e| format!("mount devpts on /dev/pts: {e}"))?;
        }
        let (master, slave) = sys::open_pty(COLS, ROWS).map_err(|e| format!("open a pty: {e}"))?;
        let io = |fd: &OwnedFd| -> Result<Stdio, String> {
            Ok(Stdio::from(
                fd.try_clone().map_err(|e| format!("dup the pty: {e}"))?,
            ))
        };
        let mut cmd = command_as(&ALICE, argv, &[("TERM", "xterm")]);
        cmd.stdin(io(&slave)?)
            .stdout(io(&slave)?)
            .stderr(io(&slave)?);
        sys::controlling_tty(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("spawn {argv:?}: {e}"))?;
        drop(slave);
        let master = std::fs::File::from(master);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(ROWS, COLS, 0)));
        let mut input = master
            .try_clone()
            .map_err(|e| format!("dup the pty master: {e}"))?;
        let s = Arc::clone(&screen);
        // Reads until the last holder of the slave is gone (EIO).
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = input.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .process(&buf[..n]);
            }
        });
        Ok(Term {
            child,
            master,
            screen,
            reader: Some(reader),
        })
    }

    fn rows(&self) -> Vec<String> {
        let p = self.screen.lock().unwrap_or_else(|e| e.into_inner());
        p.screen().rows(0, COLS).collect()
    }

    fn text(&self) -> String {
        self.rows().join("\n")
    }

    fn keys(&mut self, keys: &str) {
        let _ = self.master.write_all(keys.as_bytes());
    }

    /// Waits up to `secs` for the screen to satisfy `f`.
    fn until(&self, secs: u64, f: impl Fn(&[String]) -> bool) -> bool {
        harness::wait_until(Duration::from_secs(secs), || f(&self.rows()))
    }

    /// Waits for staprun to exit; its exit code.
    fn wait(&mut self, secs: u64) -> Option<Option<i32>> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    if let Some(r) = self.reader.take() {
                        let _ = r.join();
                    }
                    return Some(st.code());
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => return None,
            }
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The probe table's row for `name`: (state, hits).
fn probe_row(rows: &[String], name: &str) -> Option<(String, u64)> {
    rows.iter().find_map(|r| {
        let fields: Vec<&str> = r.trim_matches(['│', ' ']).split_whitespace().collect();
        // index state hits min avg max name
        (fields.len() == 7 && fields[6] == name)
            .then(|| (fields[1].to_owned(), fields[2].parse().unwrap_or(0)))
    })
}

/// The value the screen shows for global `name` (`globals: ticks: 12 ...`).
fn global(rows: &[String], name: &str) -> Option<u64> {
    let key = format!(" {name}: ");
    rows.iter().find_map(|r| {
        let at = r.find(&key)? + key.len();
        r[at..].split_whitespace().next()?.parse().ok()
    })
}

fn monitor_keys(c: &mut Ctx) {
    if c.imp == Impl::Theirs {
        // Debian's C stapio has no monitor mode: its usage text has no -M.
        let out = c.command(&ALICE, &[C_STAPIO, "-h"]);
        let usage = format!("{}{}", out.stdout, out.stderr);
        c.check(
            "c_stapio_has_no_monitor_mode",
            usage.contains("-C WHEN") && !usage.contains("-M INTERVAL"),
            usage.lines().take(3).collect::<Vec<_>>().join(" | "),
        );
        c.observe("monitor_mode", "not built in");
        return;
    }
    c.observe("monitor_mode", "supported");
    // Not a terminal (stdout is a pipe here): refused before anything is loaded.
    let out = c.staprun(&ALICE, &["-M", "1", "monitor"]);
    c.check(
        "no_tty_refused",
        out.code == Some(1) && out.stderr.contains("monitor mode needs a terminal"),
        out.summary(),
    );
    c.check(
        "no_tty_nothing_loaded",
        loaded_like("monitor").is_empty(),
        loaded_text("monitor"),
    );
    c.log("$ alice$ staprun -M 1 monitor   (on a 120x50 pseudo-terminal)");
    let mut t = match Term::start(&[STAPRUN, "-M", "1", "monitor"]) {
        Ok(t) => t,
        Err(e) => {
            c.check("pty_started", false, e);
            return;
        }
    };
    let started = t.until(60, |rows| {
        probe_row(rows, "timer.ms(100)").is_some_and(|(_, hits)| hits > 0)
            && rows.iter().any(|r| r.contains("press h for help"))
            && rows.iter().any(|r| r.contains("slow timer: ticks="))
    });
    let screen = t.text();
    c.log(&format!("screen after start:\n{screen}"));
    if !c.check("screen_shows_probes", started, &screen) {
        return;
    }
    let rows = t.rows();
    for name in ["begin", "timer.ms(100)", "timer.ms(250)", "end"] {
        c.check(
            &format!("probe_listed_{name}"),
            probe_row(&rows, name).is_some(),
            &screen,
        );
    }
    c.check(
        "monitor_files_not_listed",
        !screen.contains("procfs("),
        &screen,
    );
    c.check(
        "status_lines",
        rows.iter()
            .any(|r| r.contains("module_name: monitor probes: 4"))
            && rows
                .iter()
                .any(|r| r.contains("uptime: 00:00:") && r.contains("uid: 1001")),
        &screen,
    );
    c.check(
        "begin_output_in_output_window",
        screen.contains("monitor compat script started"),
        &screen,
    );
    // s, s: sort by hits, the busiest probe first.
    t.keys("ss");
    let sorted = t.until(10, |rows| {
        let head = rows.iter().position(|r| r.contains("hits*"));
        head.is_some_and(|h| rows.get(h + 1).is_some_and(|r| r.contains("timer.ms(100)")))
    });
    let screen = t.text();
    c.log(&format!("screen after s s (sort by hits):\n{screen}"));
    c.check("sorted_by_hits", sorted, &screen);
    // p: every probe off; the hits stop.
    t.keys("p");
    let paused = t.until(10, |rows| {
        probe_row(rows, "timer.ms(100)").is_some_and(|(s, _)| s == "off")
            && probe_row(rows, "timer.ms(250)").is_some_and(|(s, _)| s == "off")
    });
    // A hit already under way when the probes went off may still be counted.
    std::thread::sleep(Duration::from_millis(1500));
    let before = probe_row(&t.rows(), "timer.ms(100)").map_or(0, |(_, h)| h);
    std::thread::sleep(Duration::from_millis(2500));
    let screen = t.text();
    let after = probe_row(&t.rows(), "timer.ms(100)").map_or(0, |(_, h)| h);
    c.log(&format!("screen after p (paused):\n{screen}"));
    c.check(
        "paused",
        paused && after == before,
        format!("state off: {paused}; hits {before} then, 2.5 s later, {after}"),
    );
    // r: on again; the hits go on.
    t.keys("r");
    let resumed = t.until(10, |rows| {
        probe_row(rows, "timer.ms(100)").is_some_and(|(s, h)| s == "on" && h > after + 2)
    });
    c.check("resumed", resumed, t.text());
    // c: the globals back to their initial values.
    let ticks = global(&t.rows(), "ticks").unwrap_or(0);
    t.keys("c");
    let cleared = t.until(10, |rows| {
        global(rows, "ticks").is_some_and(|n| n + 3 < ticks)
    });
    c.check(
        "cleared",
        cleared,
        format!("ticks {ticks} before c; screen:\n{}", t.text()),
    );
    // q: the script exits, its end probe runs, the screen says so.
    t.keys("q");
    let ended = t.until(20, |rows| {
        rows.iter()
            .any(|r| r.contains("EXITED: press q again to quit"))
            && rows.iter().any(|r| r.contains("end probe fired"))
    });
    let screen = t.text();
    c.log(&format!("screen after q:\n{screen}"));
    c.check("exited_after_q", ended, &screen);
    c.check(
        "loaded_until_second_q",
        !loaded_like("monitor").is_empty(),
        loaded_text("monitor"),
    );
    // q again: leave; the module is unloaded.
    t.keys("q");
    let code = t.wait(30);
    c.check("exit_0", code == Some(Some(0)), format!("{code:?}"));
    let gone = harness::wait_until(Duration::from_secs(10), || {
        loaded_like("monitor").is_empty()
    });
    c.check("unloaded_after_q", gone, loaded_text("monitor"));
    c.check(
        "procfs_gone",
        !std::path::Path::new("/proc/systemtap/monitor").exists(),
        "/proc/systemtap/monitor",
    );
    let screen = t.text();
    c.log(&format!("terminal after the end:\n{screen}"));
    c.check(
        "terminal_restored",
        !screen.contains("press h for help") && !screen.contains("EXITED"),
        &screen,
    );
}
