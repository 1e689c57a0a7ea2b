//! Start-up: from exec of staprun to the first record, and what the setup steps cost.

use std::fs;
use std::io::{self, Read as _};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{ALICE, STAPRUN, command_as, sys};

use super::throughput::read_param;

/// Start-up of one `staprun pmod records=0` (begin line, then exit), in
/// seconds from the spawn: module loaded (/sys/module/pmod appears), begin
/// probes run (STP_START answered), first byte on stdout, module unloaded,
/// exit.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Startup {
    pub(crate) loaded: f64,
    pub(crate) started: f64,
    pub(crate) first: f64,
    pub(crate) unloaded: f64,
    pub(crate) exit: f64,
    /// CPU seconds of the whole run (staprun, stapio, staprun -d).
    pub(crate) cpu: f64,
}

pub(crate) fn startup_once() -> Result<Startup, String> {
    let mut cmd = command_as(&ALICE, &[STAPRUN, "pmod", "records=0"], &[]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout pipe")?;
    let reader = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let first = match out.read(&mut b) {
            Ok(1) => Some(t0.elapsed()),
            _ => None,
        };
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
        first
    });
    let pid = child.id();
    // Phases seen from outside, polled every 2 ms (first byte and exit are exact).
    let watcher = std::thread::spawn(move || {
        let (mut loaded, mut started, mut unloaded) = (None, None, None);
        while unloaded.is_none() && t0.elapsed() < Duration::from_secs(30) {
            let present = Path::new("/sys/module/pmod").exists();
            if present && loaded.is_none() {
                loaded = Some(t0.elapsed());
            }
            if present && started.is_none() && read_param("started") == Some(1) {
                started = Some(t0.elapsed());
            }
            if !present && loaded.is_some() {
                unloaded = Some(t0.elapsed());
            }
            if !present && !crate::compat::alive(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (loaded, started, unloaded)
    });
    let ended = sys::wait4(pid).map_err(|e| format!("wait4: {e}"))?;
    let exit = t0.elapsed();
    std::mem::forget(child);
    let first = reader
        .join()
        .ok()
        .flatten()
        .ok_or("no output from the module")?;
    let (loaded, started, unloaded) = watcher.join().unwrap_or_default();
    if ended.code != Some(0) {
        return Err(format!("exit {:?}", ended.code));
    }
    let s = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    Ok(Startup {
        loaded: s(loaded),
        started: s(started),
        first: first.as_secs_f64(),
        unloaded: s(unloaded),
        exit: exit.as_secs_f64(),
        cpu: ended.cpu_secs,
    })
}

/// What staprun's setup messages cost to gather in this guest (ms): all of
/// /proc/kallsyms, /proc/kallsyms up to the last of the four kernel symbols
/// staprun relocates, and every /sys/module/*/sections/* file.
pub(crate) fn setup_costs() -> (f64, f64, f64, usize) {
    use std::io::BufRead as _;
    let t = Instant::now();
    let full = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let full_ms = t.elapsed().as_secs_f64() * 1e3;
    let lines = full.lines().count();
    let want = [
        "_stext",
        "kallsyms_lookup_name",
        "kallsyms_on_each_symbol",
        "module_kallsyms_on_each_symbol",
    ];
    let t = Instant::now();
    let mut found = 0;
    if let Ok(f) = fs::File::open("/proc/kallsyms") {
        for l in io::BufReader::with_capacity(64 << 10, f).lines() {
            let Ok(l) = l else { break };
            if l.split_whitespace()
                .nth(2)
                .is_some_and(|s| want.contains(&s))
            {
                found += 1;
                if found == want.len() {
                    break;
                }
            }
        }
    }
    let upto_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    for m in fs::read_dir("/sys/module").into_iter().flatten().flatten() {
        for sec in fs::read_dir(m.path().join("sections"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::read_to_string(sec.path());
        }
    }
    let sections_ms = t.elapsed().as_secs_f64() * 1e3;
    (full_ms, upto_ms, sections_ms, lines)
}
