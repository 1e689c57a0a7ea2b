//! The data pump: one reader thread per CPU relay file, parsing records
//! with [`crate::framing::Parser`]. In serial mode the records go to a
//! merger thread that writes payloads in sequence order to one output; in
//! bulk mode each reader writes header and payload to its own file.
#![forbid(unsafe_code)]

use std::io::{self, IoSlice, Read, Write};
use std::ops::Range;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::framing::{Parser, Span};
use stap_common::kernel::Relay;
use stap_common::protocol::Generation;
use stap_common::sys;

use crate::error::Error;
use crate::merge::{ChunkData, ChunkMerge, Piece};
use crate::output::{Naming, Output, Stream};
use crate::signals::{self, Signals};

/// Bytes asked of the relay file per read.
pub const READ_CHUNK: usize = 256 * 1024;
/// Serial mode: read on into the same buffer while this much is free.
const MIN_TAIL: usize = 64 * 1024;
/// Serial mode: buffers per reader (the one it reads into and those the
/// merger holds). A reader whose buffers are all with the merger waits for
/// one to come back, and the module's relay buffer holds the backlog.
pub const POOL: usize = 4;
/// Serial mode: small payloads copied together are written once this many
/// bytes are gathered.
const STAGED_MAX: usize = 256 * 1024;

/// How often the merger looks at gap timeouts and SIGUSR2 when idle.
const MERGE_TICK: Duration = Duration::from_millis(50);

const RUN: u8 = 0;
const DRAIN: u8 = 1;
const KILL: u8 = 2;
const DETACH: u8 = 3;
/// Longest a normal end reads what the module still has.
const DRAIN_CAP: std::time::Duration = std::time::Duration::from_secs(10);
/// A reader without a poll timeout still wakes this often at the latest
/// (a safety net: data, a stop and a rotation wake it at once).
const NO_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Detaching reads what is there for twice the poll timeout; without one,
/// twice this.
const DETACH_READ: Duration =
    Duration::from_millis(stap_common::cli::DEFAULT_READER_TIMEOUT_MS as u64);

/// How the pump is set up.
#[derive(Debug, Clone)]
pub struct PumpConfig {
    pub generation: Generation,
    pub bulk: bool,
    /// Attached to a running module: its first record is not sequence 1.
    pub attach: bool,
    /// The readers' poll timeout (`-T`, or the generation's default);
    /// `None`: they wait for data, a stop or a rotation only.
    pub reader_timeout: Option<Duration>,
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
    /// CPU time of the reader threads, and of the merger (serial mode).
    pub reader_cpu: Duration,
    pub merger_cpu: Duration,
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
    /// Read what is left, then stop (the normal end: the module has
    /// answered EXIT after flushing its buffers, so each reader stops at
    /// its first empty read; capped at DRAIN_CAP for a module that keeps
    /// writing).
    Drain,
    /// Detaching from a module that keeps running: read what is there
    /// now (until an empty read, for at most twice the poll timeout), then
    /// stop; the rest stays in the module's buffers for the next `-A`.
    Detach,
    /// Stop now (a third interrupt).
    Kill,
}

#[derive(Debug, Default)]
struct ReaderEnd {
    records: u64,
    bytes: u64,
    lost_bytes: u64,
    cpu: Duration,
}

/// What the merger counted: lost and late records, and its CPU time.
type MergerEnd = (u64, u64, Duration);

/// Running reader (and merger) threads.
pub struct Pump {
    stop: Arc<AtomicU8>,
    failed: Arc<AtomicBool>,
    /// One pipe per reader: a byte wakes it from its wait for data.
    wake: Vec<std::fs::File>,
    readers: Vec<JoinHandle<Result<ReaderEnd, Error>>>,
    merger: Option<JoinHandle<Result<MergerEnd, Error>>>,
    /// SIGUSR2 count the readers were last woken for.
    signals: Arc<Signals>,
    rotations_seen: u64,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("readers", &self.readers.len())
            .field("serial", &self.merger.is_some())
            .finish()
    }
}

/// What a reader hands the merger: the buffer it read into and where the
/// records are in it. The merger sends both back when done, for reuse.
struct Chunk {
    source: usize,
    buf: Vec<u8>,
    spans: Vec<Span>,
    back: Sender<(Vec<u8>, Vec<Span>)>,
    /// A chunk without records: the relay file was empty at a read begun
    /// after the merger's question stamped this (see [`Probes`]).
    probe: u64,
}

/// The merger's questions to the serial readers, one per source: 0 for
/// none, else when it was asked (microseconds after `base`, plus one). A
/// reader takes it before a read and, if the read finds nothing, answers
/// with an empty chunk carrying the stamp it took, so an answer is never
/// credited with a later question than the one it answers.
struct Probes {
    base: std::time::Instant,
    asked: Vec<AtomicU64>,
}

impl Probes {
    fn stamp(&self, at: std::time::Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX - 1)
            + 1
    }

    fn when(&self, stamp: u64) -> std::time::Instant {
        self.base + Duration::from_micros(stamp.saturating_sub(1))
    }
}

enum Sink {
    Merge {
        tx: SyncSender<Chunk>,
        source: usize,
        back: Sender<(Vec<u8>, Vec<Span>)>,
        spare: Receiver<(Vec<u8>, Vec<Span>)>,
        /// Buffers made so far (at most [`POOL`]).
        made: usize,
        /// Set by the merger when it waits on a gap and this source has
        /// nothing queued: an empty read begun after it is reported.
        probe: Arc<Probes>,
    },
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
        // One wake-up pipe per reader: (its end, the pump's end).
        let mut pipes = Vec::with_capacity(relays.len());
        for _ in &relays {
            let (r, w) = sys::pipe_nonblocking().map_err(Error::Thread)?;
            pipes.push((std::fs::File::from(r), std::fs::File::from(w)));
        }
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
            let (tx, rx) = mpsc::sync_channel(POOL * relays.len());
            let probe = Arc::new(Probes {
                base: std::time::Instant::now(),
                asked: relays.iter().map(|_| AtomicU64::new(0)).collect(),
            });
            let kicks = pipes
                .iter()
                .map(|(_, w)| w.try_clone())
                .collect::<io::Result<Vec<_>>>()
                .map_err(Error::Thread)?;
            for source in 0..relays.len() {
                let (back, spare) = mpsc::channel();
                sinks.push(Sink::Merge {
                    tx: tx.clone(),
                    source,
                    back,
                    spare,
                    // The parser's first buffer.
                    made: 1,
                    probe: probe.clone(),
                });
            }
            drop(tx);
            let (sources, from_start, gap) = (relays.len(), !cfg.attach, cfg.merge_gap);
            let sig = signals.clone();
            let fl = failed.clone();
            merger = Some(
                thread::Builder::new()
                    .name("stapio-merge".into())
                    .spawn(move || {
                        signals::block_in_this_thread();
                        let m = ChunkMerge::new(sources, from_start, gap);
                        let r = merge_thread(rx, m, out, &sig, &probe, kicks);
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
            wake: Vec::new(),
            readers: Vec::new(),
            merger,
            signals: signals.clone(),
            rotations_seen: rotations,
        };
        for (((cpu, relay), sink), (wake, kick)) in relays.into_iter().zip(sinks).zip(pipes) {
            let stop = pump.stop.clone();
            let failed = pump.failed.clone();
            let sig = signals.clone();
            let g = cfg.generation;
            pump.wake.push(kick);
            let waiter = Waiter {
                timeout: cfg.reader_timeout,
                wake,
            };
            let pin = cfg.pin;
            let handle = thread::Builder::new()
                .name(format!("stapio-cpu{cpu}"))
                .spawn(move || {
                    signals::block_in_this_thread();
                    if pin {
                        sys::pin_to_cpu(cpu);
                    }
                    let r = reader_thread(cpu, relay, g, sink, &stop, waiter, &sig);
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

    /// Wake the readers now (the begin probes have printed: read it at
    /// once rather than after the poll timeout).
    pub fn kick(&mut self) {
        for w in &mut self.wake {
            // Non-blocking: a full pipe already holds a wake-up.
            let _ = w.write(&[1]);
        }
    }

    /// After a SIGUSR2, wake the readers so that a bulk-mode reader
    /// switches files now, not at its next data or poll timeout (the C
    /// stapio interrupts their `ppoll` with SIGUSR2). The main loop calls
    /// this whenever it looks at signals.
    pub fn wake_for_rotation(&mut self) {
        let n = self.signals.rotations();
        if n != self.rotations_seen {
            self.rotations_seen = n;
            self.kick();
        }
    }

    /// Whether a thread has failed (e.g. the output disk is full); the
    /// session then ends the script.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Stop the threads and collect what they counted; the first error
    /// of any thread comes back with the counts.
    pub fn close(mut self, how: Close) -> (PumpStats, Option<Error>) {
        let mut stats = PumpStats::default();
        let mut first_err = None;
        match how {
            Close::Drain => self.stop.store(DRAIN, Ordering::SeqCst),
            Close::Detach => self.stop.store(DETACH, Ordering::SeqCst),
            Close::Kill => {
                // Do not wait for threads that may be stuck in a write.
                self.stop.store(KILL, Ordering::SeqCst);
                self.kick();
                return (stats, None);
            }
        }
        self.kick();
        for h in self.readers {
            match h.join() {
                Ok(Ok(end)) => {
                    stats.records += end.records;
                    stats.bytes += end.bytes;
                    stats.lost_bytes += end.lost_bytes;
                    stats.reader_cpu += end.cpu;
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
                Ok(Ok((lost, late, cpu))) => {
                    stats.lost_messages += lost;
                    stats.unexpected += late;
                    stats.merger_cpu = cpu;
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
    mut waiter: Waiter,
    signals: &Signals,
) -> Result<ReaderEnd, Error> {
    let detach_read = waiter.timeout.unwrap_or(DETACH_READ) * 2;
    let mut parser = Parser::with_buffer(generation, READ_CHUNK);
    let mut spans: Vec<Span> = Vec::new();
    let mut end = ReaderEnd::default();
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
                > detach_read
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
        // Serial mode keeps reading into the same buffer while the module
        // has more and there is room, and hands the records over when it
        // runs dry (or the room runs low): fewer, larger chunks for the
        // merger (each hand-over wakes another thread).
        let accumulating = matches!(sink, Sink::Merge { .. }) && !spans.is_empty();
        // Asked whether this CPU has anything before a gap: this read
        // begins after the question.
        let probed = match &sink {
            Sink::Merge { probe, source, .. } => probe.asked[*source].swap(0, Ordering::SeqCst),
            Sink::Bulk(_) => 0,
        };
        let read = |room: &mut [u8]| {
            let ask = room.len().min(READ_CHUNK);
            relay.read(&mut room[..ask])
        };
        let got = if accumulating {
            parser.fill_tail(read)
        } else {
            parser.fill(read)
        };
        let n = match got {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(Error::RelayRead { cpu, source }),
        };
        if n > 0 {
            if let Sink::Bulk(_) = sink {
                spans.clear();
            }
            while let Some(s) = parser.next_span() {
                end.records += 1;
                end.bytes += s.len() as u64;
                spans.push(s);
            }
            match &mut sink {
                Sink::Bulk(out) => {
                    write_runs(out, parser.buffer(), &spans)?;
                    continue;
                }
                Sink::Merge { .. } if parser.room() >= MIN_TAIL => continue,
                Sink::Merge { .. } => {}
            }
        }
        if !hand_over(&mut sink, &mut parser, &mut spans, stop) {
            // The merger stopped (it reports why).
            break;
        }
        if n > 0 {
            continue;
        }
        if let Sink::Bulk(out) = &mut sink {
            out.flush()?;
        }
        if probed != 0 && !report_empty(&sink, probed) {
            break;
        }
        // Detaching, or the module has said EXIT (after flushing its
        // buffers): an empty read means there is nothing left.
        if state == DETACH || state == DRAIN {
            break;
        }
        match waiter.wait(relay.as_mut()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::RelayRead { cpu, source }),
        }
    }
    // Records read but not handed over yet (the loop ended on a cap).
    if stop.load(Ordering::SeqCst) != KILL {
        hand_over(&mut sink, &mut parser, &mut spans, stop);
    }
    parser.finish();
    end.lost_bytes = parser.stats.resync_bytes;
    end.cpu = sys::thread_cpu_time().unwrap_or_default();
    if let Sink::Bulk(out) = sink {
        out.finish()?;
    }
    Ok(end)
}

/// Serial mode: give the records parsed so far (and the buffer they lie
/// in) to the merger, and go on in a buffer it returned (a new one while
/// fewer than [`POOL`] exist; else it waits for one). False if the merger
/// has stopped, or the pump is killed while waiting.
fn hand_over(sink: &mut Sink, parser: &mut Parser, spans: &mut Vec<Span>, stop: &AtomicU8) -> bool {
    let Sink::Merge {
        tx,
        source,
        back,
        spare,
        made,
        ..
    } = sink
    else {
        return true;
    };
    if spans.is_empty() {
        return true;
    }
    let Some((fresh, fresh_spans)) = take_spare(spare, made, stop) else {
        return false;
    };
    let buf = parser.swap_buffer(fresh);
    let chunk = Chunk {
        source: *source,
        buf,
        spans: std::mem::replace(spans, fresh_spans),
        back: back.clone(),
        probe: 0,
    };
    tx.send(chunk).is_ok()
}

/// Serial mode: tell the merger that this CPU's relay file was empty (a
/// chunk without records). False if the merger has stopped.
fn report_empty(sink: &Sink, probe: u64) -> bool {
    let Sink::Merge {
        tx, source, back, ..
    } = sink
    else {
        return true;
    };
    let marker = Chunk {
        source: *source,
        buf: Vec::new(),
        spans: Vec::new(),
        back: back.clone(),
        probe,
    };
    tx.send(marker).is_ok()
}

/// How a reader waits for data: up to `-T` (without one, for data only),
/// or until the pump wakes it (the begin probes have run, a SIGUSR2, or
/// the pump is closing).
struct Waiter {
    timeout: Option<Duration>,
    wake: std::fs::File,
}

impl Waiter {
    fn wait(&mut self, relay: &mut dyn Relay) -> io::Result<()> {
        let timeout = self.timeout.unwrap_or(NO_TIMEOUT);
        if !relay.wait_or_wake(timeout, self.wake.as_fd())?
            && sys::poll_one(self.wake.as_fd(), libc::POLLIN, Duration::ZERO)?
        {
            // Take the wake-up bytes (non-blocking; at most a few are queued).
            let mut b = [0u8; 64];
            while matches!(self.wake.read(&mut b), Ok(n) if n == b.len()) {}
        }
        Ok(())
    }
}

/// A buffer the merger returned, or an empty one (the parser allocates
/// it) while fewer than [`POOL`] were made, or else the first to come
/// back. `None` if the pump is killed meanwhile.
fn take_spare(
    spare: &Receiver<(Vec<u8>, Vec<Span>)>,
    made: &mut usize,
    stop: &AtomicU8,
) -> Option<(Vec<u8>, Vec<Span>)> {
    let got = match spare.try_recv() {
        Ok(b) => b,
        Err(_) if *made < POOL => {
            *made += 1;
            return Some(Default::default());
        }
        Err(_) => loop {
            match spare.recv_timeout(MERGE_TICK) {
                Ok(b) => break b,
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) != KILL => {}
                // Killed; or every buffer was dropped (cannot happen while
                // this reader holds a sender).
                Err(_) => return None,
            }
        },
    };
    let (buf, mut spans) = got;
    spans.clear();
    Some((buf, spans))
}

/// Bulk mode: write the records read, each run of adjacent records (no
/// skipped bytes between them) in one piece.
fn write_runs(out: &mut Output, buf: &[u8], spans: &[Span]) -> Result<(), Error> {
    let mut i = 0;
    while i < spans.len() {
        let mut j = i + 1;
        while j < spans.len() && spans[j].start == spans[j - 1].end {
            j += 1;
        }
        let run = &spans[i..j];
        let bytes = &buf[run[0].start as usize..run[j - i - 1].end as usize];
        out.write_records(bytes, run.iter().map(|s| s.record().len()))?;
        i = j;
    }
    Ok(())
}

/// A chunk's buffer while the merger holds records in it; dropping the
/// last record sends the buffer back to its reader.
struct Held {
    buf: Vec<u8>,
    spans: Vec<Span>,
    back: Sender<(Vec<u8>, Vec<Span>)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // The reader may be gone; then the buffer is freed here.
        let _ = self.back.send((
            std::mem::take(&mut self.buf),
            std::mem::take(&mut self.spans),
        ));
    }
}

impl ChunkData for Held {
    fn buf(&self) -> &[u8] {
        &self.buf
    }

    fn spans(&self) -> &[Span] {
        &self.spans
    }
}

/// Payloads at least this long are written from the reader's buffer
/// (writev) instead of being copied into the batch.
const ZERO_COPY_MIN: usize = 512;
/// Pieces per writev (the kernel's IOV_MAX is 1024).
const MAX_PARTS: usize = 1024;

/// One piece of a batch: bytes copied into the batch buffer, or a
/// payload left in the reader's buffer (kept alive until written).
enum Part {
    Staged(Range<usize>),
    Ref(Rc<Held>, Range<usize>),
}

/// How the merger writes what it releases: without -S, payloads are
/// gathered and written a batch at a time (small ones copied together,
/// large ones written from where they lie); with it, record by record (a
/// file switch falls between records).
struct Release {
    per_record: bool,
    staged: Vec<u8>,
    parts: Vec<Part>,
}

impl Release {
    fn run(
        &mut self,
        merger: &mut ChunkMerge<Held>,
        out: &mut Output,
        end: bool,
    ) -> Result<(), Error> {
        if self.per_record {
            let mut emit = |p: Piece<'_, Held>| out.write_record(&[p.bytes()]);
            return if end {
                merger.finish(&mut emit)
            } else {
                merger.ready(Instant::now(), &mut emit)
            };
        }
        let (staged, parts) = (&mut self.staged, &mut self.parts);
        // staged[mark..] is not in `parts` yet: small payloads only append.
        let mut mark = 0;
        let mut emit = |p: Piece<'_, Held>| -> Result<(), Error> {
            match p {
                Piece::Chunk(c, r) if r.len() >= ZERO_COPY_MIN => {
                    if staged.len() > mark {
                        parts.push(Part::Staged(mark..staged.len()));
                        mark = staged.len();
                    }
                    parts.push(Part::Ref(c.clone(), r));
                    if parts.len() >= MAX_PARTS {
                        write_parts(out, staged, parts)?;
                        mark = 0;
                    }
                }
                p => {
                    staged.extend_from_slice(p.bytes());
                    if staged.len() >= STAGED_MAX {
                        parts.push(Part::Staged(mark..staged.len()));
                        write_parts(out, staged, parts)?;
                        mark = 0;
                    }
                }
            }
            Ok(())
        };
        if end {
            merger.finish(&mut emit)?;
        } else {
            merger.ready(Instant::now(), &mut emit)?;
        }
        if self.staged.len() > mark {
            self.parts.push(Part::Staged(mark..self.staged.len()));
        }
        write_parts(out, &mut self.staged, &mut self.parts)
    }
}

/// Write a batch in one writev, then let its buffers go.
fn write_parts(out: &mut Output, staged: &mut Vec<u8>, parts: &mut Vec<Part>) -> Result<(), Error> {
    if parts.is_empty() {
        return Ok(());
    }
    let slices: Vec<IoSlice<'_>> = parts
        .iter()
        .map(|p| match p {
            Part::Staged(r) => IoSlice::new(&staged[r.clone()]),
            Part::Ref(c, r) => IoSlice::new(&c.buf[r.clone()]),
        })
        .collect();
    let r = out.write_vectored(&slices);
    drop(slices);
    staged.clear();
    parts.clear();
    r
}

fn merge_thread(
    rx: Receiver<Chunk>,
    mut merger: ChunkMerge<Held>,
    mut out: Output,
    signals: &Signals,
    probe: &Probes,
    mut kicks: Vec<std::fs::File>,
) -> Result<MergerEnd, Error> {
    let mut release = Release {
        per_record: out.size_limited(),
        staged: Vec::new(),
        parts: Vec::new(),
    };
    let take =
        |merger: &mut ChunkMerge<Held>, release: &mut Release, c: Chunk, out: &mut Output| {
            if c.spans.is_empty() {
                // A reader found its relay file empty.
                merger.empty(c.source, probe.when(c.probe));
                return release.run(merger, out, false);
            }
            merger.push(
                c.source,
                Held {
                    buf: c.buf,
                    spans: c.spans,
                    back: c.back,
                },
            );
            out.check_rotation(signals.rotations())?;
            // Release as chunks come: their buffers go back to the readers.
            release.run(merger, out, false)
        };
    loop {
        match rx.recv_timeout(MERGE_TICK) {
            Ok(chunk) => {
                take(&mut merger, &mut release, chunk, &mut out)?;
                // Take everything already queued before flushing.
                while let Ok(chunk) = rx.try_recv() {
                    take(&mut merger, &mut release, chunk, &mut out)?;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        out.check_rotation(signals.rotations())?;
        release.run(&mut merger, &mut out, false)?;
        // Nothing more queued: show what we have (interactive use).
        out.flush()?;
        // A gap waits on CPUs with nothing queued: ask their readers to
        // look, so that it is skipped as soon as they find nothing.
        let now = std::time::Instant::now();
        for src in merger.waiting_on(now) {
            // A newer stamp replaces a question not yet taken: the read that
            // takes it begins after now.
            if let (Some(p), Some(k)) = (probe.asked.get(src), kicks.get_mut(src))
                && p.swap(probe.stamp(now), Ordering::SeqCst) == 0
            {
                // Non-blocking: a full pipe already holds a wake-up.
                let _ = k.write(&[1]);
            }
        }
    }
    release.run(&mut merger, &mut out, true)?;
    out.finish()?;
    let cpu = sys::thread_cpu_time().unwrap_or_default();
    Ok((merger.stats.lost, merger.stats.late, cpu))
}

#[cfg(test)]
mod tests;
