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
    let trace = Ftrace::start();
    let mark = trace.as_ref().map(Ftrace::marker);
    let res = startup_run(mark);
    if let Some(t) = trace {
        t.finish();
    }
    res
}

fn startup_run(mark: Option<Marker>) -> Result<Startup, String> {
    let mark = std::sync::Arc::new(mark);
    let phase = {
        let mark = mark.clone();
        move |what: &str| {
            if let Some(m) = mark.as_ref() {
                m.write(what);
            }
        }
    };
    let mut cmd = command_as(&ALICE, &[STAPRUN, "pmod", "records=0"], &[]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    phase("spawn");
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout pipe")?;
    let p = phase.clone();
    let reader = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let first = match out.read(&mut b) {
            Ok(1) => Some(t0.elapsed()),
            _ => None,
        };
        p("first_byte");
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
        first
    });
    let pid = child.id();
    // Phases seen from outside, polled every 2 ms (first byte and exit are exact).
    let p = phase.clone();
    let watcher = std::thread::spawn(move || {
        let (mut loaded, mut started, mut unloaded) = (None, None, None);
        while unloaded.is_none() && t0.elapsed() < Duration::from_secs(30) {
            let present = Path::new("/sys/module/pmod").exists();
            if present && loaded.is_none() {
                loaded = Some(t0.elapsed());
                p("loaded");
            }
            if present && started.is_none() && read_param("started") == Some(1) {
                started = Some(t0.elapsed());
                p("started");
            }
            if !present && loaded.is_some() {
                unloaded = Some(t0.elapsed());
                p("unloaded");
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
    phase("exit");
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

/// `--tools ...,trace` (`bench.tools` holds `trace`): every start-up run is
/// traced with ftrace (syscalls, exec/fork/exit and module load/free of the
/// agent's children, plus phase markers), and the trace goes out as
/// `LOG TRACE tool=T ...` lines for a per-phase attribution on the host.
struct Ftrace {
    tool: &'static str,
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// Writes phase names into the trace.
struct Marker(fs::File);

impl Marker {
    fn write(&self, what: &str) {
        use std::io::Write as _;
        let _ = (&self.0).write_all(format!("PHASE {what}").as_bytes());
    }
}

impl Ftrace {
    fn wanted() -> bool {
        crate::compat::cmdline_list("bench.tools")
            .is_some_and(|l| l.iter().any(|t| t == "trace" || t == "tracefull"))
    }

    fn put(file: &str, val: &str) -> io::Result<()> {
        use std::io::Write as _;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(format!("{TRACEFS}/{file}"))?;
        f.write_all(val.as_bytes())
    }

    fn start() -> Option<Ftrace> {
        if !Self::wanted() {
            return None;
        }
        if !Path::new(TRACEFS).join("trace").exists() {
            let _ = crate::harness::sys::mount("nodev", TRACEFS, "tracefs", 0, "");
        }
        let tool = if crate::compat::same_file(STAPRUN, crate::compat::C_STAPRUN) {
            "theirs"
        } else if crate::compat::same_file(crate::harness::STAPIO, "/opt/base/stapio") {
            "base"
        } else {
            "ours"
        };
        let setup = || -> io::Result<()> {
            Self::put("tracing_on", "0")?;
            Self::put("set_event", "")?;
            Self::put("trace", "")?;
            Self::put("buffer_size_kb", "8192")?;
            Self::put("trace_clock", "mono")?;
            Self::put("options/event-fork", "1")?;
            Self::put("set_event_pid", &std::process::id().to_string())?;
            // `bench.tools=...,trace`: phases only (light); `tracefull`:
            // every syscall, scheduler switches and user page faults.
            let full = crate::compat::cmdline_list("bench.tools")
                .is_some_and(|l| l.iter().any(|t| t == "tracefull"));
            let mut events = vec![
                "sched:sched_process_exec",
                "sched:sched_process_fork",
                "sched:sched_process_exit",
                "module:module_load",
                "module:module_free",
            ];
            if full {
                events.extend([
                    "syscalls:*",
                    "sched:sched_switch",
                    "exceptions:page_fault_user",
                ]);
            } else {
                for sc in [
                    "init_module",
                    "finit_module",
                    "delete_module",
                    "execve",
                    "wait4",
                    "write",
                    "clone",
                    "clone3",
                ] {
                    events.push(Box::leak(
                        format!("syscalls:sys_enter_{sc}").into_boxed_str(),
                    ));
                    events.push(Box::leak(
                        format!("syscalls:sys_exit_{sc}").into_boxed_str(),
                    ));
                }
            }
            for ev in events {
                use std::io::Write as _;
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(format!("{TRACEFS}/set_event"))?;
                f.write_all(ev.as_bytes())?;
            }
            Self::put("tracing_on", "1")
        };
        match setup() {
            Ok(()) => Some(Ftrace { tool }),
            Err(e) => {
                eprintln!("bench: ftrace: {e}");
                None
            }
        }
    }

    fn marker(&self) -> Marker {
        Marker(
            fs::OpenOptions::new()
                .write(true)
                .open(format!("{TRACEFS}/trace_marker"))
                .expect("trace_marker"),
        )
    }

    /// Stops tracing and sends the trace out on the result channel.
    fn finish(self) {
        let _ = Self::put("tracing_on", "0");
        let text = fs::read_to_string(format!("{TRACEFS}/trace")).unwrap_or_default();
        let _ = Self::put("set_event", "");
        let _ = Self::put("set_event_pid", "");
        let _ = Self::put("trace", "");
        let mut r = crate::harness::Reporter::open();
        let agent: Vec<String> = fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut out = String::new();
        out.push_str(&format!(
            "TRACE tool={} begin agent={}\n",
            self.tool,
            agent.join(",")
        ));
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            out.push_str(&format!("TRACE tool={} {l}\n", self.tool));
        }
        out.push_str(&format!("TRACE tool={} end\n", self.tool));
        r.log(&out);
    }
}
