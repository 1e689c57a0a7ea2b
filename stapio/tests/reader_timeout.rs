//! `-T` and its default per module generation (the C tools': 4.8 readers
//! wait in `ppoll` without a timeout, 5.x ones wake every 200 ms): reader
//! wake-ups over an idle second, counted on a relay of the simulated
//! kernel, and that a reader without a timeout still stops at once and
//! follows a SIGUSR2.

mod common;

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stap_common::kernel::sim::Script;
use stap_common::kernel::{KernelOps, Relay};
use stap_common::protocol::Generation;
use stapio::output::Naming;
use stapio::relay::{Close, Pump, PumpConfig};
use stapio::session::reader_timeout_for;
use stapio::signals::Signals;

use common::{TempDir, loaded, modname, tempdir};

/// A relay that counts its reads: each wake-up of a reader is one read.
struct Counting {
    inner: Box<dyn Relay>,
    reads: Arc<AtomicUsize>,
}

impl Relay for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(buf)
    }
    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        self.inner.wait(timeout)
    }
    fn wait_or_wake(&mut self, timeout: Duration, wake: BorrowedFd<'_>) -> io::Result<bool> {
        self.inner.wait_or_wake(timeout, wake)
    }
}

struct Idle {
    pump: Pump,
    reads: Arc<AtomicUsize>,
    signals: Arc<Signals>,
}

/// One reader (bulk mode when `bulk_dir` is given) on CPU 0 of an idle
/// simulated module of generation `g`, with `-T` `given`.
fn idle_pump(g: Generation, given: Option<Duration>, bulk_dir: Option<&TempDir>) -> Idle {
    let k = loaded(
        1,
        Script {
            generation: g,
            ..Script::default()
        },
    );
    let dir = k.open_module_dir(&modname()).unwrap();
    let relay = dir.open_relay(0).unwrap().expect("trace0");
    let reads = Arc::new(AtomicUsize::new(0));
    let relays: Vec<(usize, Box<dyn Relay>)> = vec![(
        0,
        Box::new(Counting {
            inner: relay,
            reads: reads.clone(),
        }),
    )];
    let cfg = PumpConfig {
        generation: g,
        bulk: bulk_dir.is_some(),
        attach: false,
        reader_timeout: reader_timeout_for(given, g),
        merge_gap: Duration::from_secs(2),
        naming: Naming {
            pattern: bulk_dir.map(|d| format!("{}/out", d.display())),
            rotation: None,
        },
        pin: false,
    };
    let signals = Signals::new();
    let pump = Pump::start(relays, &cfg, Some(Box::new(io::sink())), signals.clone()).unwrap();
    Idle {
        pump,
        reads,
        signals,
    }
}

/// Reads in one idle second, and how long closing then takes.
fn wakeups(g: Generation, given: Option<Duration>) -> (usize, Duration) {
    let idle = idle_pump(g, given, None);
    std::thread::sleep(Duration::from_secs(1));
    let n = idle.reads.load(Ordering::SeqCst);
    let t = Instant::now();
    let (_, err) = idle.pump.close(Close::Drain);
    assert!(err.is_none(), "{err:?}");
    (n, t.elapsed())
}

#[test]
fn default_timeout_follows_the_generation() {
    assert_eq!(reader_timeout_for(None, Generation::V4), None);
    assert_eq!(
        reader_timeout_for(None, Generation::V5),
        Some(Duration::from_millis(200))
    );
    let given = Some(Duration::from_millis(50));
    assert_eq!(reader_timeout_for(given, Generation::V4), given);
    assert_eq!(reader_timeout_for(given, Generation::V5), given);
}

/// What the default changes: an idle 4.x reader reads once and then sleeps
/// until something happens; a 5.x one wakes every 200 ms (about 5 times a
/// second); `-T 50` wakes about 20 times in either.
#[test]
fn idle_wakeups_per_second() {
    let (v4, close4) = wakeups(Generation::V4, None);
    let (v5, close5) = wakeups(Generation::V5, None);
    let (t50, _) = wakeups(Generation::V4, Some(Duration::from_millis(50)));
    eprintln!("reads in an idle second: 4.x default {v4}, 5.x default {v5}, 4.x -T 50 {t50}");
    assert_eq!(v4, 1, "4.x default: only the first read");
    // A loaded machine delays wake-ups (fewer), never adds them.
    assert!((2..=7).contains(&v5), "5.x default: every 200 ms, got {v5}");
    assert!(
        (8..=22).contains(&t50) && t50 > v5,
        "-T 50: every 50 ms, got {t50}"
    );
    // Without a timeout the stop still wakes the reader at once.
    assert!(
        close4 < Duration::from_millis(500),
        "4.x close took {close4:?}"
    );
    assert!(
        close5 < Duration::from_millis(500),
        "5.x close took {close5:?}"
    );
}

/// A SIGUSR2 wakes a reader that has no timeout (the C 4.8 stapio's
/// `ppoll` is interrupted by it), so a bulk-mode file switches at once.
#[test]
fn sigusr2_wakes_a_reader_without_timeout() {
    let dir = tempdir("reader-timeout-usr2");
    let mut idle = idle_pump(Generation::V4, None, Some(&dir));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(idle.reads.load(Ordering::SeqCst), 1);
    assert!(dir.join("out_0").exists());
    idle.signals.rotate();
    idle.pump.wake_for_rotation();
    common::wait_until("out_cpu0.1 after SIGUSR2", Duration::from_secs(10), || {
        dir.join("out_cpu0.1").exists()
    });
    assert_eq!(idle.reads.load(Ordering::SeqCst), 2, "one wake-up");
    // Nothing new: no second wake-up.
    idle.pump.wake_for_rotation();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(idle.reads.load(Ordering::SeqCst), 2);
    let (_, err) = idle.pump.close(Close::Drain);
    assert!(err.is_none(), "{err:?}");
}
