//! A simulated kernel that behaves like a loaded SystemTap module: load and
//! unload bookkeeping, a control channel with one opener and one message
//! per read, per-CPU relay buffers filled by a producer, and injectable
//! faults. Host tests drive staprun's and stapio's logic through it.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Control, KernelOps, ModuleDir, ModuleInput, Relay, Relocation, Transport};
use crate::modname::ModName;
use crate::protocol::{Generation, MsgKind, Notice, Request};
use crate::record::encode_record;

/// What a simulated module does once started.
#[derive(Debug, Clone)]
pub struct Script {
    pub generation: Generation,
    /// Lines printed by the begin probe (spread over the CPUs in turn).
    pub begin: Vec<String>,
    /// Per CPU, this many records of `record_size` bytes after begin.
    pub records_per_cpu: u32,
    pub record_size: usize,
    /// Lines printed by the end probe.
    pub end: Vec<String>,
    /// Out-of-band messages sent right after the start reply.
    pub oob: Vec<String>,
    /// `system()` commands sent after the start reply.
    pub system: Vec<String>,
    /// Request exit after the output (like a script calling `exit()`).
    pub exit_after_output: bool,
    /// The value of the start reply (non-zero: probes failed to start).
    pub start_res: i32,
    /// Raw, malformed control messages queued before TRANSPORT.
    pub malformed: Vec<Vec<u8>>,
    /// Relay buffer bytes per CPU (as `_stp_bufsize` sets it).
    pub relay_capacity: usize,
    /// Input probes (`probe input.char` / `input.line`): the module has a
    /// `__stdin` file once started, and prints what they receive.
    pub input: Option<InputProbe>,
    /// A 5.0 module: `STP_MNT_NS_FDS` (5.1) is unknown to it (EINVAL).
    pub no_mnt_ns_fds: bool,
}

/// What the simulated module's input probe prints for each write to
/// `__stdin` (as a script would).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputProbe {
    /// `probe input.char { printf("char:%s\n", char) }`: one line per
    /// write, with the write's bytes (`{:?}` of the text, so a write of two
    /// bytes shows).
    Char,
    /// `probe input.line { printf("line:%s", line) }`: the tapset's
    /// assembly, `_line .= $value` until a write that *is* "\n".
    Line,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            generation: Generation::V4,
            begin: vec!["hello from begin".into()],
            records_per_cpu: 0,
            record_size: 64,
            end: vec![],
            oob: vec![],
            system: vec![],
            exit_after_output: true,
            start_res: 0,
            malformed: vec![],
            relay_capacity: 16 << 20,
            input: None,
            no_mnt_ns_fds: false,
        }
    }
}

/// Faults the simulated kernel injects.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// `init_module` fails with this errno.
    pub load_errno: Option<i32>,
    /// Opening `.cmd` fails with EBUSY even when nobody has it.
    pub control_busy: bool,
    /// `delete_module` fails with this errno.
    pub delete_errno: Option<i32>,
}

/// Who is calling, for access checks (the sim has no processes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub ruid: u32,
    pub euid: u32,
}

/// What happened, in order, for tests to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Loaded {
        name: String,
        params: String,
        owner: u32,
        size: usize,
    },
    LoadFailed {
        errno: i32,
    },
    Deleted {
        name: String,
    },
    Request {
        module: String,
        euid: u32,
        req: Request,
    },
    RequestRejected {
        module: String,
        kind: Option<MsgKind>,
        errno: i32,
    },
    ControlOpened {
        module: String,
    },
    ControlClosed {
        module: String,
    },
    /// One write to the module's `__stdin`, with its bytes.
    StdinWrite {
        module: String,
        bytes: Vec<u8>,
    },
    /// The probes started after an `STP_MNT_NS_FDS`: what its two
    /// descriptor numbers were in this process then (the real module
    /// `fget`s them then), as `/proc/self/fd/N` says (`mnt:[INODE]`;
    /// `<closed>` when not open).
    MountNamespacesAtStart {
        module: String,
        target: String,
        orig: String,
    },
}

#[derive(Debug)]
struct SimModule {
    owner: u32,
    params: String,
    script: Script,
    control_open: bool,
    to_user: VecDeque<Vec<u8>>,
    relay: Vec<VecDeque<u8>>,
    relay_lost_records: u64,
    seq: u32,
    started: bool,
    exiting: bool,
    overwrite: bool,
    next_cpu: usize,
    /// The tapset's `_line` of `input.line`.
    partial_line: Vec<u8>,
    /// The last `STP_MNT_NS_FDS` (target, orig).
    mnt_ns_fds: Option<(i32, i32)>,
}

#[derive(Debug)]
struct State {
    ncpus: usize,
    caller: Caller,
    faults: Faults,
    scripts: BTreeMap<String, Script>,
    default_script: Script,
    modules: BTreeMap<String, SimModule>,
    /// Names present that are not SystemTap modules (no transport dir).
    other_modules: Vec<String>,
    events: Vec<Event>,
    /// Monitor-mode files, by module name (modules built with `--monitor`).
    monitors: BTreeMap<String, SimMonitor>,
}

/// A module's `monitor_status` text and what was written to `monitor_control`.
#[derive(Debug, Default, Clone)]
struct SimMonitor {
    status: Vec<u8>,
    commands: Vec<String>,
}

/// The simulated kernel; clones share one state.
#[derive(Debug, Clone)]
pub struct SimKernel {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl SimKernel {
    pub fn new(ncpus: usize) -> Self {
        SimKernel {
            inner: Arc::new((
                Mutex::new(State {
                    ncpus,
                    caller: Caller { ruid: 0, euid: 0 },
                    faults: Faults::default(),
                    scripts: BTreeMap::new(),
                    default_script: Script::default(),
                    modules: BTreeMap::new(),
                    other_modules: Vec::new(),
                    events: Vec::new(),
                    monitors: BTreeMap::new(),
                }),
                Condvar::new(),
            )),
        }
    }

    /// Wait until `done` has an answer for module `name` (`None`: not
    /// loaded), or `timeout` passes (false).
    fn wait_until(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(Option<&SimModule>) -> Option<bool>,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(answer) = done(s.modules.get(name)) {
                return answer;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .inner
                .1
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.inner.1.notify_all();
    }

    pub fn set_caller(&self, ruid: u32, euid: u32) {
        self.lock().caller = Caller { ruid, euid };
    }
    pub fn set_faults(&self, f: Faults) {
        self.lock().faults = f;
    }
    pub fn set_default_script(&self, s: Script) {
        self.lock().default_script = s;
    }
    pub fn set_script(&self, module: &str, s: Script) {
        self.lock().scripts.insert(module.to_string(), s);
    }
    /// A loaded module that is not a SystemTap module (e.g. `ext4`).
    pub fn add_other_module(&self, name: &str) {
        self.lock().other_modules.push(name.to_string());
    }
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }
    pub fn loaded(&self) -> Vec<String> {
        let s = self.lock();
        s.modules
            .keys()
            .cloned()
            .chain(s.other_modules.iter().cloned())
            .collect()
    }
    /// Requests the module `name` received, in order.
    pub fn requests(&self, name: &str) -> Vec<Request> {
        self.lock()
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Request { module, req, .. } if module == name => Some(req.clone()),
                _ => None,
            })
            .collect()
    }
    pub fn owner_of(&self, name: &str) -> Option<u32> {
        self.lock().modules.get(name).map(|m| m.owner)
    }
    pub fn relay_lost(&self, name: &str) -> u64 {
        self.lock()
            .modules
            .get(name)
            .map_or(0, |m| m.relay_lost_records)
    }
    /// Every write the module `name` received on `__stdin`, in order.
    pub fn stdin_writes(&self, name: &str) -> Vec<Vec<u8>> {
        self.lock()
            .events
            .iter()
            .filter_map(|e| match e {
                Event::StdinWrite { module, bytes } if module == name => Some(bytes.clone()),
                _ => None,
            })
            .collect()
    }
    /// [`Event::MountNamespacesAtStart`] of module `name`: (target, orig).
    pub fn mnt_ns_at_start(&self, name: &str) -> Option<(String, String)> {
        self.lock().events.iter().find_map(|e| match e {
            Event::MountNamespacesAtStart {
                module,
                target,
                orig,
            } if module == name => Some((target.clone(), orig.clone())),
            _ => None,
        })
    }
    /// Make the module ask to exit (as a script's timer calling `exit()`).
    pub fn request_exit(&self, name: &str) {
        let mut s = self.lock();
        if let Some(m) = s.modules.get_mut(name) {
            let msg = Notice::RequestExit.encode(m.script.generation);
            m.to_user.push_back(msg);
        }
        drop(s);
        self.notify();
    }
    /// Give module `name` (loaded or not yet) monitor-mode files, with
    /// this `monitor_status` content (as `stap --monitor` does).
    pub fn set_monitor_status(&self, name: &str, text: &str) {
        self.lock()
            .monitors
            .entry(name.to_string())
            .or_default()
            .status = text.as_bytes().to_vec();
    }
    /// What was written to module `name`'s `monitor_control`, in order.
    pub fn monitor_commands(&self, name: &str) -> Vec<String> {
        self.lock()
            .monitors
            .get(name)
            .map(|m| m.commands.clone())
            .unwrap_or_default()
    }
    /// Print a line from the module's probes now.
    pub fn print(&self, name: &str, line: &str) {
        let mut s = self.lock();
        let ncpus = s.ncpus;
        if let Some(m) = s.modules.get_mut(name) {
            let cpu = m.next_cpu % ncpus.max(1);
            m.next_cpu += 1;
            emit(m, cpu, line.as_bytes());
        }
        drop(s);
        self.notify();
    }
}

fn emit(m: &mut SimModule, cpu: usize, payload: &[u8]) {
    m.seq = m.seq.wrapping_add(1);
    let mut rec = Vec::with_capacity(payload.len() + 12);
    encode_record(m.script.generation, m.seq, payload, &mut rec);
    let cap = m.script.relay_capacity;
    let Some(q) = m.relay.get_mut(cpu) else {
        return;
    };
    if q.len() + rec.len() > cap {
        if m.overwrite {
            // Flight-recorder mode: drop the oldest bytes (a reader then
            // resynchronises).
            let drop_n = (q.len() + rec.len()).saturating_sub(cap).min(q.len());
            q.drain(..drop_n);
        } else {
            m.relay_lost_records += 1;
            return;
        }
    }
    q.extend(rec);
}

/// What descriptor `fd` of this process is, as `/proc/self/fd/N` says.
fn fd_link(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "<closed>".into())
}

/// A write to `__stdin`: the input probe runs once with its bytes.
fn stdin_write(m: &mut SimModule, ncpus: usize, bytes: &[u8]) {
    let line = match m.script.input {
        Some(InputProbe::Char) => Some(format!("char:{:?}\n", String::from_utf8_lossy(bytes))),
        Some(InputProbe::Line) => {
            m.partial_line.extend_from_slice(bytes);
            (bytes == b"\n").then(|| {
                let l = std::mem::take(&mut m.partial_line);
                format!("line:{}", String::from_utf8_lossy(&l))
            })
        }
        None => None,
    };
    if let Some(l) = line {
        let cpu = m.next_cpu % ncpus.max(1);
        m.next_cpu += 1;
        emit(m, cpu, l.as_bytes());
    }
}

fn start_probes(m: &mut SimModule, ncpus: usize) {
    let g = m.script.generation;
    let begin = m.script.begin.clone();
    for line in begin {
        let cpu = m.next_cpu % ncpus;
        m.next_cpu += 1;
        emit(m, cpu, format!("{line}\n").as_bytes());
    }
    for i in 0..m.script.records_per_cpu {
        for cpu in 0..ncpus {
            let mut line = format!("cpu={cpu} n={i} ").into_bytes();
            let size = m.script.record_size.max(line.len() + 1);
            line.resize(size - 1, b'x');
            line.push(b'\n');
            emit(m, cpu, &line);
        }
    }
    m.to_user.push_back(
        Notice::Start {
            res: m.script.start_res,
        }
        .encode(g),
    );
    for o in m.script.oob.clone() {
        m.to_user.push_back(Notice::OobData(o).encode(g));
    }
    for c in m.script.system.clone() {
        m.to_user.push_back(Notice::System(c).encode(g));
    }
    if m.script.exit_after_output {
        m.to_user.push_back(Notice::RequestExit.encode(g));
    }
}

fn end_probes(m: &mut SimModule, ncpus: usize) {
    let g = m.script.generation;
    for line in m.script.end.clone() {
        let cpu = m.next_cpu % ncpus;
        m.next_cpu += 1;
        emit(m, cpu, format!("{line}\n").as_bytes());
    }
    m.to_user.push_back(Notice::Exit.encode(g));
}

impl KernelOps for SimKernel {
    fn init_module(&self, image: &[u8], params: &str) -> io::Result<()> {
        let mut s = self.lock();
        if let Some(e) = s.faults.load_errno {
            s.events.push(Event::LoadFailed { errno: e });
            return Err(io::Error::from_raw_os_error(e));
        }
        let name = crate::elf::module_name(image)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOEXEC))?
            .1;
        if s.modules.contains_key(&name) || s.other_modules.contains(&name) {
            s.events.push(Event::LoadFailed {
                errno: libc::EEXIST,
            });
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        let mut script = s
            .scripts
            .get(&name)
            .cloned()
            .unwrap_or_else(|| s.default_script.clone());
        if let Some(mb) = params
            .split(' ')
            .find_map(|p| p.strip_prefix("_stp_bufsize=")?.parse::<usize>().ok())
        {
            script.relay_capacity = mb << 20;
        }
        let owner = s.caller.ruid;
        let ncpus = s.ncpus;
        let mut to_user: VecDeque<Vec<u8>> = script.malformed.iter().cloned().collect();
        to_user.push_back(Notice::Transport.encode(script.generation));
        s.events.push(Event::Loaded {
            name: name.clone(),
            params: params.to_string(),
            owner,
            size: image.len(),
        });
        s.modules.insert(
            name,
            SimModule {
                owner,
                params: params.to_string(),
                script,
                control_open: false,
                to_user,
                relay: vec![VecDeque::new(); ncpus],
                relay_lost_records: 0,
                seq: 0,
                started: false,
                exiting: false,
                overwrite: false,
                next_cpu: 0,
                partial_line: Vec::new(),
                mnt_ns_fds: None,
            },
        );
        Ok(())
    }

    fn delete_module(&self, name: &str) -> io::Result<()> {
        let mut s = self.lock();
        if let Some(e) = s.faults.delete_errno {
            return Err(io::Error::from_raw_os_error(e));
        }
        if s.modules.remove(name).is_some() {
            s.events.push(Event::Deleted {
                name: name.to_string(),
            });
            drop(s);
            self.notify();
            return Ok(());
        }
        if let Some(i) = s.other_modules.iter().position(|n| n == name) {
            s.other_modules.remove(i);
            s.events.push(Event::Deleted {
                name: name.to_string(),
            });
            return Ok(());
        }
        Err(io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn is_loaded(&self, name: &str) -> bool {
        let s = self.lock();
        s.modules.contains_key(name) || s.other_modules.iter().any(|n| n == name)
    }

    fn open_module_dir(&self, name: &ModName) -> io::Result<Box<dyn ModuleDir>> {
        if !self.lock().modules.contains_key(name.as_str()) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(Box::new(SimDir {
            k: self.clone(),
            name: name.as_str().to_string(),
        }))
    }

    fn systemtap_modules(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().modules.keys().cloned().collect())
    }

    fn relocations(&self) -> Vec<Relocation> {
        vec![
            Relocation {
                module: "kernel".into(),
                symbol: "_stext".into(),
                address: 0xffff_ffff_8100_0000,
            },
            Relocation {
                module: "ext4".into(),
                symbol: ".text".into(),
                address: 0xffff_ffff_c000_0000,
            },
        ]
    }

    fn possible_cpus(&self) -> usize {
        self.lock().ncpus
    }
}

#[derive(Debug)]
struct SimDir {
    k: SimKernel,
    name: String,
}

impl ModuleDir for SimDir {
    fn transport(&self) -> Transport {
        Transport::Procfs
    }

    fn real_user_may_use_control(&self) -> io::Result<()> {
        let s = self.k.lock();
        let m = s
            .modules
            .get(&self.name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        // .cmd is mode 0600, owned by the loading user.
        if s.caller.ruid == 0 || s.caller.ruid == m.owner {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        }
    }

    fn control_owner(&self) -> io::Result<u32> {
        let s = self.k.lock();
        s.modules
            .get(&self.name)
            .map(|m| m.owner)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn open_control(&self) -> io::Result<Box<dyn Control>> {
        let mut s = self.k.lock();
        let busy = s.faults.control_busy;
        let caller = s.caller;
        let m = s
            .modules
            .get_mut(&self.name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if caller.euid != 0 && caller.euid != m.owner {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        if m.control_open || busy {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        m.control_open = true;
        m.overwrite = false;
        s.events.push(Event::ControlOpened {
            module: self.name.clone(),
        });
        Ok(Box::new(SimControl {
            k: self.k.clone(),
            name: self.name.clone(),
        }))
    }

    fn open_relay(&self, cpu: usize) -> io::Result<Option<Box<dyn Relay>>> {
        let s = self.k.lock();
        let m = s
            .modules
            .get(&self.name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if cpu >= m.relay.len() {
            return Ok(None);
        }
        if s.caller.euid != 0 && s.caller.euid != m.owner {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        Ok(Some(Box::new(SimRelay {
            k: self.k.clone(),
            name: self.name.clone(),
            cpu,
        })))
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    fn open_input(&self, _module: &ModName) -> io::Result<Box<dyn ModuleInput>> {
        let s = self.k.lock();
        let m = s
            .modules
            .get(&self.name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        // The procfs file exists once the probes have started, if the
        // script has input probes; mode 0222, owned by the loading user.
        if !m.started || m.script.input.is_none() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        if s.caller.euid != 0 && s.caller.euid != m.owner {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        Ok(Box::new(SimInput {
            k: self.k.clone(),
            name: self.name.clone(),
        }))
    }

    fn read_monitor_status(&self, limit: usize) -> io::Result<Vec<u8>> {
        let s = self.k.lock();
        let m = s
            .modules
            .get(&self.name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        // monitor_status is 0400, owned by the loading user.
        if s.caller.euid != 0 && s.caller.euid != m.owner {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        let mon = s
            .monitors
            .get(&self.name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        Ok(mon.status[..mon.status.len().min(limit)].to_vec())
    }

    fn write_monitor_control(&self, command: &str) -> io::Result<()> {
        let mut s = self.k.lock();
        let caller = s.caller;
        let State {
            modules, monitors, ..
        } = &mut *s;
        let m = modules
            .get_mut(&self.name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        // monitor_control is 0200, owned by the loading user.
        if caller.euid != 0 && caller.euid != m.owner {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        let mon = monitors
            .get_mut(&self.name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        mon.commands.push(command.to_string());
        // The generated write probe calls exit() for "quit".
        if command == "quit" && m.started && !m.exiting {
            m.to_user
                .push_back(Notice::RequestExit.encode(m.script.generation));
        }
        drop(s);
        self.k.notify();
        Ok(())
    }
}

/// The simulated `__stdin`, open for writing.
#[derive(Debug)]
struct SimInput {
    k: SimKernel,
    name: String,
}

impl ModuleInput for SimInput {
    fn send_byte(&mut self, byte: u8) -> io::Result<()> {
        let mut s = self.k.lock();
        let ncpus = s.ncpus;
        let m = s
            .modules
            .get_mut(&self.name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        stdin_write(m, ncpus, &[byte]);
        s.events.push(Event::StdinWrite {
            module: self.name.clone(),
            bytes: vec![byte],
        });
        drop(s);
        self.k.notify();
        Ok(())
    }
}

#[derive(Debug)]
struct SimControl {
    k: SimKernel,
    name: String,
}

impl Drop for SimControl {
    fn drop(&mut self) {
        let mut s = self.k.lock();
        if let Some(m) = s.modules.get_mut(&self.name) {
            m.control_open = false;
            if !m.exiting {
                m.overwrite = true;
            }
        }
        s.events.push(Event::ControlClosed {
            module: self.name.clone(),
        });
    }
}

impl Control for SimControl {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let mut s = self.k.lock();
        let euid = s.caller.euid;
        let ncpus = s.ncpus;
        let name = self.name.clone();
        let m = s
            .modules
            .get_mut(&name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        let g = m.script.generation;
        if msg.len() < 4 {
            return Ok(());
        }
        let kind = g.kind(u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]));
        let unknown = kind == Some(MsgKind::MntNsFds) && m.script.no_mnt_ns_fds;
        let req = match Request::decode(g, msg) {
            Ok(r) if !unknown => r,
            _ => {
                let errno = libc::EINVAL;
                s.events.push(Event::RequestRejected {
                    module: name,
                    kind,
                    errno,
                });
                return Err(io::Error::from_raw_os_error(errno));
            }
        };
        let privileged = matches!(
            req,
            Request::Relocation { .. }
                | Request::TzInfo { .. }
                | Request::PrivilegeCredentials { .. }
                | Request::RemoteId { .. }
        );
        if privileged && euid != 0 {
            s.events.push(Event::RequestRejected {
                module: name,
                kind,
                errno: libc::EPERM,
            });
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let mut result = Ok(());
        let mut at_start = None;
        match &req {
            Request::Start { .. } if !m.started => {
                m.started = true;
                at_start = m.mnt_ns_fds.map(|(t, o)| Event::MountNamespacesAtStart {
                    module: name.clone(),
                    target: fd_link(t),
                    orig: fd_link(o),
                });
                start_probes(m, ncpus);
            }
            Request::MntNsFds { target_fd, orig_fd } => {
                m.mnt_ns_fds = Some((*target_fd, *orig_fd));
            }
            Request::Exit if !m.exiting => {
                m.exiting = true;
                end_probes(m, ncpus);
            }
            // Not built for bulk mode.
            Request::Bulk => result = Err(io::Error::from_raw_os_error(libc::EINVAL)),
            _ => {}
        }
        s.events.extend(at_start);
        s.events.push(Event::Request {
            module: name,
            euid,
            req,
        });
        drop(s);
        self.k.notify();
        result
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.k.lock();
        let m = s
            .modules
            .get_mut(&self.name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        let Some(msg) = m.to_user.pop_front() else {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        };
        if msg.len() > buf.len() {
            // The real module loses the message in this case.
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        buf[..msg.len()].copy_from_slice(&msg);
        Ok(msg.len())
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        // Readable once the module has a message, or is gone (EOF).
        Ok(self.k.wait_until(&self.name, timeout, |m| match m {
            None => Some(true),
            Some(m) => (!m.to_user.is_empty()).then_some(true),
        }))
    }
}

#[derive(Debug)]
struct SimRelay {
    k: SimKernel,
    name: String,
    cpu: usize,
}

impl Relay for SimRelay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.k.lock();
        let Some(m) = s.modules.get_mut(&self.name) else {
            return Ok(0);
        };
        let q = &mut m.relay[self.cpu];
        let n = q.len().min(buf.len());
        for (i, b) in q.drain(..n).enumerate() {
            buf[i] = b;
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        // Readable once this CPU's buffer has data; a module that is gone
        // never becomes readable.
        Ok(self.k.wait_until(&self.name, timeout, |m| match m {
            None => Some(false),
            Some(m) => (!m.relay[self.cpu].is_empty()).then_some(true),
        }))
    }
}

impl SimModule {
    #[allow(dead_code)]
    fn params(&self) -> &str {
        &self.params
    }
}

#[cfg(test)]
mod tests;
