//! The data pump: one reader thread per CPU relay file, parsing records
//! with [`stap_common::relay::Parser`]. In serial mode the records go to a
//! merger thread that writes payloads in sequence order to one output; in
//! bulk mode each reader writes header and payload to its own file.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use stap_common::kernel::Relay;
use stap_common::protocol::Generation;
use stap_common::relay::{Merger, Parser, Record};
use stap_common::sys;

use crate::error::Error;
use crate::output::{Naming, Output, Stream};
use crate::signals::{self, Signals};

/// Bytes asked of the relay file per read.
pub const READ_CHUNK: usize = 256 * 1024;
/// Batches of records in flight between the readers and the merger.
const CHANNEL_DEPTH: usize = 64;
/// How often the merger looks at gap timeouts and SIGUSR2 when idle.
const MERGE_TICK: Duration = Duration::from_millis(50);

const RUN: u8 = 0;
const DRAIN: u8 = 1;
const KILL: u8 = 2;
const DETACH: u8 = 3;
/// Longest a normal end reads what the module still has.
const DRAIN_CAP: std::time::Duration = std::time::Duration::from_secs(10);

/// How the pump is set up.
#[derive(Debug, Clone)]
pub struct PumpConfig {
    pub generation: Generation,
    pub bulk: bool,
    /// Attached to a running module: its first record is not sequence 1.
    pub attach: bool,
    /// `-T`: the readers' poll timeout.
    pub reader_timeout: Duration,
    /// How long the merge waits for a missing sequence number.
    pub merge_gap: Duration,
    pub naming: Naming,
    /// Pin each reader to its CPU (off in tests where the simulated CPUs
    /// need not exist).
    pub pin: bool,
}

/// What the pump counted, for the closing report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PumpStats {
    pub records: u64,
    pub bytes: u64,
    /// Sequence numbers never seen (serial mode only).
    pub lost_messages: u64,
    /// Bytes skipped to resynchronise on record boundaries.
    pub lost_bytes: u64,
    /// Records that came after their turn, or twice.
    pub unexpected: u64,
}

impl PumpStats {
    /// The C stapio's closing warning, if anything was lost.
    pub fn loss_warning(&self) -> Option<String> {
        (self.lost_messages > 0 || self.lost_bytes > 0 || self.unexpected > 0).then(|| {
            format!(
                "There were {} lost messages, {} lost bytes, and {} unexpected sequences.",
                self.lost_messages, self.lost_bytes, self.unexpected
            )
        })
    }
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Read what is left, then stop (the normal end).
    Drain,
    /// Detaching from a module that keeps running: read what is there
    /// now for at most twice the poll timeout, then stop; the rest stays in
    /// the module's buffers for the next `-A`.
    Detach,
    /// Stop now (a third interrupt).
    Kill,
}

#[derive(Debug, Default)]
struct ReaderEnd {
    records: u64,
    bytes: u64,
    lost_bytes: u64,
}

/// Running reader (and merger) threads.
pub struct Pump {
    stop: Arc<AtomicU8>,
    failed: Arc<AtomicBool>,
    readers: Vec<JoinHandle<Result<ReaderEnd, Error>>>,
    merger: Option<JoinHandle<Result<(u64, u64), Error>>>,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("readers", &self.readers.len())
            .field("serial", &self.merger.is_some())
            .finish()
    }
}

enum Sink {
    Merge(SyncSender<Vec<Record>>),
    Bulk(Output),
}

impl Pump {
    /// Open the outputs and start one thread per relay file (and the
    /// merger in serial mode). `stdout` receives serial output without
    /// `-o`.
    pub fn start(
        relays: Vec<(usize, Box<dyn Relay>)>,
        cfg: &PumpConfig,
        stdout: Option<Box<dyn Write + Send>>,
        signals: Arc<Signals>,
    ) -> Result<Pump, Error> {
        let stop = Arc::new(AtomicU8::new(RUN));
        let failed = Arc::new(AtomicBool::new(false));
        let rotations = signals.rotations();
        // Open every output before starting any thread, so a bad -o fails
        // cleanly.
        let mut sinks = Vec::with_capacity(relays.len());
        let mut merger = None;
        if cfg.bulk {
            for (cpu, _) in &relays {
                let out = Output::open(
                    cfg.naming.clone(),
                    Stream::Bulk { cpu: *cpu },
                    None,
                    rotations,
                )?;
                sinks.push(Sink::Bulk(out));
            }
        } else {
            let out = Output::open(cfg.naming.clone(), Stream::Serial, stdout, rotations)?;
            let (tx, rx) = mpsc::sync_channel(CHANNEL_DEPTH);
            for _ in &relays {
                sinks.push(Sink::Merge(tx.clone()));
            }
            drop(tx);
            let m = Merger::new(!cfg.attach, cfg.merge_gap);
            let sig = signals.clone();
            let fl = failed.clone();
            merger = Some(
                thread::Builder::new()
                    .name("stapio-merge".into())
                    .spawn(move || {
                        signals::block_in_this_thread();
                        let r = merge_thread(rx, m, out, &sig);
                        if r.is_err() {
                            fl.store(true, Ordering::SeqCst);
                        }
                        r
                    })
                    .map_err(Error::Thread)?,
            );
        }
        let mut pump = Pump {
            stop,
            failed,
            readers: Vec::new(),
            merger,
        };
        for ((cpu, relay), sink) in relays.into_iter().zip(sinks) {
            let stop = pump.stop.clone();
            let failed = pump.failed.clone();
            let sig = signals.clone();
            let g = cfg.generation;
            let timeout = cfg.reader_timeout;
            let pin = cfg.pin;
            let handle = thread::Builder::new()
                .name(format!("stapio-cpu{cpu}"))
                .spawn(move || {
                    signals::block_in_this_thread();
                    if pin {
                        sys::pin_to_cpu(cpu);
                    }
                    let r = reader_thread(cpu, relay, g, sink, &stop, timeout, &sig);
                    if r.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    r
                });
            match handle {
                Ok(h) => pump.readers.push(h),
                Err(e) => {
                    pump.close(Close::Kill);
                    return Err(Error::Thread(e));
                }
            }
        }
        Ok(pump)
    }

    /// Whether a thread has failed (e.g. the output disk is full); the
    /// session then ends the script.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Stop the threads and collect what they counted; the first error
    /// of any thread comes back with the counts.
    pub fn close(self, how: Close) -> (PumpStats, Option<Error>) {
        let mut stats = PumpStats::default();
        let mut first_err = None;
        match how {
            Close::Drain => self.stop.store(DRAIN, Ordering::SeqCst),
            Close::Detach => self.stop.store(DETACH, Ordering::SeqCst),
            Close::Kill => {
                // Do not wait for threads that may be stuck in a write.
                self.stop.store(KILL, Ordering::SeqCst);
                return (stats, None);
            }
        }
        for h in self.readers {
            match h.join() {
                Ok(Ok(end)) => {
                    stats.records += end.records;
                    stats.bytes += end.bytes;
                    stats.lost_bytes += end.lost_bytes;
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(Error::ThreadPanic);
                }
            }
        }
        // All senders are gone now: the merger flushes and ends.
        if let Some(m) = self.merger {
            match m.join() {
                Ok(Ok((lost, late))) => {
                    stats.lost_messages += lost;
                    stats.unexpected += late;
                }
                Ok(Err(e)) => {
                    // A write error is the root cause; reader errors that
                    // followed from it (closed channel) are not reported.
                    first_err = Some(e);
                }
                Err(_) => {
                    first_err.get_or_insert(Error::ThreadPanic);
                }
            }
        }
        (stats, first_err)
    }
}

fn reader_thread(
    cpu: usize,
    mut relay: Box<dyn Relay>,
    generation: Generation,
    mut sink: Sink,
    stop: &AtomicU8,
    timeout: Duration,
    signals: &Signals,
) -> Result<ReaderEnd, Error> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut parser = Parser::new(generation);
    let mut end = ReaderEnd::default();
    // Once draining: stop after an empty read followed by an empty wait.
    let mut idle_while_draining = false;
    let mut detach_since: Option<std::time::Instant> = None;
    loop {
        let state = stop.load(Ordering::SeqCst);
        if state == KILL {
            break;
        }
        if state == DETACH
            && detach_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                > timeout * 2
        {
            break;
        }
        // A module that keeps writing after it said EXIT must not keep us
        // here for ever: the drain is capped.
        if state == DRAIN
            && detach_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                > DRAIN_CAP
        {
            break;
        }
        if let Sink::Bulk(out) = &mut sink {
            out.check_rotation(signals.rotations())?;
        }
        let n = match relay.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(Error::RelayRead { cpu, source }),
        };
        if n == 0 {
            if let Sink::Bulk(out) = &mut sink {
                out.flush()?;
            }
            if state == DETACH {
                break;
            }
            if state == DRAIN {
                if idle_while_draining {
                    break;
                }
                idle_while_draining = true;
            }
            match relay.wait(timeout) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(Error::RelayRead { cpu, source }),
            }
            continue;
        }
        idle_while_draining = false;
        parser.feed(&buf[..n]);
        let mut batch = Vec::new();
        while let Some(rec) = parser.next_record() {
            end.records += 1;
            end.bytes += rec.payload.len() as u64;
            match &mut sink {
                Sink::Bulk(out) => out.write_record(&[&rec.header, &rec.payload])?,
                Sink::Merge(_) => batch.push(rec),
            }
        }
        if let Sink::Merge(tx) = &sink
            && !batch.is_empty()
            && tx.send(batch).is_err()
        {
            // The merger stopped (it reports why).
            break;
        }
    }
    parser.finish();
    end.lost_bytes = parser.stats.resync_bytes;
    if let Sink::Bulk(out) = sink {
        out.finish()?;
    }
    Ok(end)
}

fn merge_thread(
    rx: Receiver<Vec<Record>>,
    mut merger: Merger,
    mut out: Output,
    signals: &Signals,
) -> Result<(u64, u64), Error> {
    let mut ready = Vec::new();
    loop {
        match rx.recv_timeout(MERGE_TICK) {
            Ok(batch) => {
                batch.into_iter().for_each(|r| merger.push(r));
                // Take everything already queued before writing.
                while let Ok(batch) = rx.try_recv() {
                    batch.into_iter().for_each(|r| merger.push(r));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        out.check_rotation(signals.rotations())?;
        merger.ready(Instant::now(), &mut ready);
        for rec in ready.drain(..) {
            out.write_record(&[&rec.payload])?;
        }
        // Nothing more queued: show what we have (interactive use).
        out.flush()?;
    }
    merger.finish(&mut ready);
    for rec in ready.drain(..) {
        out.write_record(&[&rec.payload])?;
    }
    out.finish()?;
    Ok((merger.stats.lost, merger.stats.late))
}
