//! Helpers for driving stapio's session through the simulated kernel.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stap_common::elf::build_test_module;
use stap_common::kernel::sim::{Script, SimKernel};
use stap_common::kernel::{Control, KernelOps, ModuleDir, Relay, Transport};
use stap_common::modname::ModName;
use stap_common::protocol::Generation;
use stapio::diag::{Diag, SharedBuf};
use stapio::signals::Signals;
use stapio::{Config, Error, Outcome, Session, Streams};

pub const UID: u32 = 1000;
pub const MODULE: &str = "pmod";

pub fn modname() -> ModName {
    ModName::new(MODULE).unwrap()
}

/// A simulated kernel with `pmod` loaded by UID (through a setuid
/// staprun: euid 0), then the caller switched to the user as stapio runs.
pub fn loaded(ncpus: usize, script: Script) -> SimKernel {
    let k = SimKernel::new(ncpus);
    k.set_caller(UID, 0);
    k.set_script(MODULE, script);
    k.init_module(&build_test_module(MODULE, &[]), "").unwrap();
    k.set_caller(UID, UID);
    k
}

/// Test timings: short polls so tests are quick.
pub fn config() -> Config {
    let mut c = Config::new(modname());
    c.reader_timeout = Some(Duration::from_millis(10));
    c.control_poll = Duration::from_millis(20);
    c.merge_gap = Duration::from_millis(200);
    c.pin_readers = false;
    c
}

/// The lines the simulated module prints for `records_per_cpu` records of
/// `size` bytes on `ncpus` CPUs, in sequence order.
pub fn record_lines(ncpus: usize, records_per_cpu: u32, size: usize) -> String {
    let mut s = String::new();
    for i in 0..records_per_cpu {
        for cpu in 0..ncpus {
            let mut line = format!("cpu={cpu} n={i} ");
            let want = size.max(line.len() + 1);
            while line.len() < want - 1 {
                line.push('x');
            }
            line.push('\n');
            s.push_str(&line);
        }
    }
    s
}

pub struct Ran {
    pub out: SharedBuf,
    pub err: SharedBuf,
    pub result: Result<Outcome, Error>,
    pub generation: Option<Generation>,
}

impl Ran {
    pub fn outcome(&self) -> Outcome {
        match &self.result {
            Ok(o) => *o,
            Err(e) => panic!("session failed: {e}\nstderr:\n{}", self.err.text()),
        }
    }
}

/// Unload through the simulated kernel (what `staprun -d` would do).
pub fn sim_unloader(k: &SimKernel) -> impl Fn(&ModName) -> Result<(), Error> + '_ {
    move |m: &ModName| {
        k.delete_module(m.as_str()).map_err(|e| Error::Unload {
            module: m.clone(),
            detail: e.to_string(),
        })
    }
}

pub fn connect<'k>(
    k: &'k SimKernel,
    dir: Box<dyn ModuleDir>,
    cfg: Config,
    signals: Arc<Signals>,
) -> (Result<Session<'k>, Error>, SharedBuf, SharedBuf) {
    let out = SharedBuf::new();
    let err = SharedBuf::new();
    let streams = Streams {
        stdout: Box::new(out.clone()),
        diag: Diag::new(Box::new(err.clone()), false),
    };
    (Session::connect(cfg, k, dir, streams, signals), out, err)
}

/// Connect and run to the end, unloading through the sim.
pub fn run_with(k: &SimKernel, dir: Box<dyn ModuleDir>, cfg: Config, signals: Arc<Signals>) -> Ran {
    let (s, out, err) = connect(k, dir, cfg, signals);
    match s {
        Ok(s) => {
            let generation = Some(s.generation());
            let result = s.run(&sim_unloader(k));
            Ran {
                out,
                err,
                result,
                generation,
            }
        }
        Err(e) => Ran {
            out,
            err,
            result: Err(e),
            generation: None,
        },
    }
}

pub fn run(k: &SimKernel, cfg: Config) -> Ran {
    let dir = k.open_module_dir(&modname()).unwrap();
    run_with(k, dir, cfg, Signals::new())
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh directory under the system temp dir (std only, so no
/// `tempfile` dependency).
pub fn tempdir(tag: &str) -> TempDir {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "stapio-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn read(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// A module built for bulk mode: the simulated module answers STP_BULK
/// with EINVAL (serial), so this wrapper accepts it instead.
pub struct BulkDir(pub Box<dyn ModuleDir>);
struct BulkControl(Box<dyn Control>);

impl ModuleDir for BulkDir {
    fn transport(&self) -> Transport {
        self.0.transport()
    }
    fn real_user_may_use_control(&self) -> std::io::Result<()> {
        self.0.real_user_may_use_control()
    }
    fn control_owner(&self) -> std::io::Result<u32> {
        self.0.control_owner()
    }
    fn open_control(&self) -> std::io::Result<Box<dyn Control>> {
        Ok(Box::new(BulkControl(self.0.open_control()?)))
    }
    fn open_relay(&self, cpu: usize) -> std::io::Result<Option<Box<dyn Relay>>> {
        self.0.open_relay(cpu)
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

impl Control for BulkControl {
    fn send(&mut self, msg: &[u8]) -> std::io::Result<()> {
        if msg.len() == 4 + 128 {
            let t = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
            if t == Generation::V4.number(stap_common::protocol::MsgKind::Bulk)
                || t == Generation::V5.number(stap_common::protocol::MsgKind::Bulk)
            {
                return Ok(());
            }
        }
        self.0.send(msg)
    }
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn wait(&mut self, timeout: Duration) -> std::io::Result<bool> {
        self.0.wait(timeout)
    }
}

/// In a scoped test that runs a session on another thread: if the test
/// thread panics (a failed wait), detach the session so the scope can end
/// and the failure is reported instead of hanging.
pub struct EndOnPanic<'a>(pub &'a Signals);

impl Drop for EndOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.detach();
        }
    }
}
