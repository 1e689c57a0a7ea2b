//! Serial mode's merge, over whole chunks as the readers hand them over.
//!
//! It releases records by (sequence, arrival), skips a missing sequence
//! number (counted as lost) as soon as every source holds a later record or
//! found its relay file empty at a read begun [`EMPTY_SETTLE`] after that
//! record came, else after `gap_timeout` (a source with nothing queued may
//! still bring it), and drops
//! records whose turn has passed (counted as late): exactly what one heap of
//! every record would release, which a randomized test below compares it
//! with. It is cheaper per record: a chunk is queued as it came
//! (its buffer, its spans and their unwrapped sequence numbers), each
//! source is a cursor into its queue, and the next record is found by
//! comparing the few cursors' heads; nothing is allocated or moved per
//! record. A record that is out of order within its own source (which a
//! module does not produce, but a damaged stream might) is copied into a
//! small heap and merged from there.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::framing::{MergeStats, Span, unwrap_sequence};

/// A released payload: in a reader's chunk (which the receiver may keep
/// alive by cloning the `Rc` to write it later without copying), or in a
/// copy the merge made of a stray record.
pub enum Piece<'a, C> {
    Chunk(&'a Rc<C>, Range<usize>),
    Copied(&'a [u8]),
}

impl<C: ChunkData> Piece<'_, C> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Piece::Chunk(c, r) => &c.buf()[r.clone()],
            Piece::Copied(b) => b,
        }
    }
}

/// How long after a record came an empty read of another source must begin
/// to show that a sequence number missing before the record is not on its
/// way from there. A module takes a record's number and then writes it; a
/// CPU (or, under emulation or a loaded host, its virtual CPU or the
/// writing thread) can stop in between, so an empty read right after a
/// later record came proves nothing. One empty read covers every record
/// that came this long before it.
pub const EMPTY_SETTLE: Duration = Duration::from_millis(50);

/// A skipped entry (late at arrival, or moved to the stray heap).
const SKIP: u64 = u64::MAX;

/// The head of a source that holds nothing (above every record's).
const EMPTY: (u64, u64) = (SKIP, SKIP);

/// A chunk as a reader hands it over. Dropping it gives the buffers back
/// (see `relay.rs`).
pub trait ChunkData {
    fn buf(&self) -> &[u8];
    fn spans(&self) -> &[Span];
}

struct Queued<C> {
    chunk: Rc<C>,
    /// Unwrapped sequence per span, `SKIP` for spans not merged from here.
    seqs: Vec<u64>,
    /// Arrival id of span 0 (span i arrived as `id + i`).
    id: u64,
    /// When it came.
    at: Instant,
    pos: usize,
}

struct Source<C> {
    queue: VecDeque<Queued<C>>,
    /// Sequence of the last record queued here while the queue is not empty.
    last: Option<u64>,
    /// The latest question answered by an empty read of this source's relay
    /// file: the read began after it (see [`ChunkMerge::empty`]).
    empty_probe: Option<Instant>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Stray {
    seq: u64,
    id: u64,
    at: Instant,
    src: usize,
    payload: Vec<u8>,
}

/// Where the next record comes from.
#[derive(Clone, Copy)]
enum From {
    Source(usize),
    Stray,
}

pub struct ChunkMerge<C: ChunkData> {
    sources: Vec<Source<C>>,
    /// The head of each source's queue: (sequence, arrival), kept current
    /// as records are queued and taken; `EMPTY` when it holds nothing.
    heads: Vec<(u64, u64)>,
    stray: BinaryHeap<Reverse<Stray>>,
    next_id: u64,
    expected: Option<u64>,
    last_seen: Option<u64>,
    gap_since: Option<Instant>,
    gap_timeout: Duration,
    settle: Duration,
    spare_seqs: Vec<Vec<u64>>,
    pub stats: MergeStats,
}

impl<C: ChunkData> ChunkMerge<C> {
    /// `from_start`: the module was just started, so sequence 1 comes first.
    pub fn new(sources: usize, from_start: bool, gap_timeout: Duration) -> Self {
        ChunkMerge {
            sources: (0..sources.max(1))
                .map(|_| Source {
                    queue: VecDeque::new(),
                    last: None,
                    empty_probe: None,
                })
                .collect(),
            heads: vec![EMPTY; sources.max(1)],
            stray: BinaryHeap::new(),
            next_id: 0,
            expected: from_start.then_some(1),
            last_seen: None,
            gap_since: None,
            gap_timeout,
            settle: EMPTY_SETTLE,
            spare_seqs: Vec::new(),
            stats: MergeStats::default(),
        }
    }

    /// Another settle time than [`EMPTY_SETTLE`] (tests).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    fn unwrap(&self, seq: u32) -> u64 {
        unwrap_sequence(self.expected.or(self.last_seen), seq)
    }

    /// Queue a chunk of `source` (sources past the number given to
    /// [`ChunkMerge::new`] share the last one).
    pub fn push(&mut self, source: usize, chunk: C) {
        self.push_at(source, chunk, Instant::now());
    }

    /// [`ChunkMerge::push`] of a chunk that came at `at`.
    pub fn push_at(&mut self, source: usize, chunk: C, at: Instant) {
        let src = source.min(self.sources.len() - 1);
        let n = chunk.spans().len();
        let mut seqs = self.spare_seqs.pop().unwrap_or_default();
        seqs.clear();
        seqs.reserve(n);
        let id = self.next_id;
        let mut queued_any = false;
        for (i, s) in chunk.spans().iter().enumerate() {
            let seq = self.unwrap(s.sequence);
            if self.expected.is_some_and(|e| seq < e) {
                self.stats.late += 1;
                seqs.push(SKIP);
                continue;
            }
            self.last_seen = Some(seq);
            let last = &mut self.sources[src].last;
            if last.is_some_and(|l| l > seq) {
                self.stray.push(Reverse(Stray {
                    seq,
                    id: id + i as u64,
                    at,
                    src,
                    payload: chunk.buf()[s.payload()].to_vec(),
                }));
                seqs.push(SKIP);
                continue;
            }
            *last = Some(seq);
            seqs.push(seq);
            queued_any = true;
        }
        self.next_id += n as u64;
        if queued_any {
            self.sources[src].queue.push_back(Queued {
                chunk: Rc::new(chunk),
                seqs,
                id,
                at,
                pos: 0,
            });
            if self.heads[src] == EMPTY {
                self.heads[src] = self.head(src);
            }
        } else {
            self.spare_seqs.push(seqs);
        }
    }

    /// The head of `src`: (sequence, arrival id), dropping spent chunks;
    /// `EMPTY` when it holds nothing.
    fn head(&mut self, src: usize) -> (u64, u64) {
        let s = &mut self.sources[src];
        loop {
            let Some(q) = s.queue.front_mut() else {
                return EMPTY;
            };
            while q.pos < q.seqs.len() && q.seqs[q.pos] == SKIP {
                q.pos += 1;
            }
            if q.pos < q.seqs.len() {
                return (q.seqs[q.pos], q.id + q.pos as u64);
            }
            let done = s.queue.pop_front().expect("front exists");
            self.spare_seqs.push(done.seqs);
            if s.queue.is_empty() {
                s.last = None;
            }
        }
    }

    /// The least (sequence, arrival) held, and where it is.
    #[inline]
    fn min(&self) -> Option<(u64, u64, From)> {
        let mut best: Option<(u64, u64, From)> = None;
        for (src, &(seq, id)) in self.heads.iter().enumerate() {
            if seq != SKIP && best.is_none_or(|(bs, bi, _)| (seq, id) < (bs, bi)) {
                best = Some((seq, id, From::Source(src)));
            }
        }
        if let Some(Reverse(s)) = self.stray.peek()
            && best.is_none_or(|(bs, bi, _)| (s.seq, s.id) < (bs, bi))
        {
            best = Some((s.seq, s.id, From::Stray));
        }
        best
    }

    /// `source` found its relay file empty at a read begun after
    /// `probed_at` (when the merger asked its reader to look).
    pub fn empty(&mut self, source: usize, probed_at: Instant) {
        let src = source.min(self.sources.len() - 1);
        let e = &mut self.sources[src].empty_probe;
        if e.is_none_or(|p| p < probed_at) {
            *e = Some(probed_at);
        }
    }

    /// When the record at `from` came.
    fn arrived(&self, from: From) -> Option<Instant> {
        match from {
            From::Source(src) => self.sources[src].queue.front().map(|q| q.at),
            From::Stray => self.stray.peek().map(|Reverse(s)| s.at),
        }
    }

    /// Whether source `src` holds no record but found its relay file empty
    /// at a read begun `settle` after `at`.
    fn empty_since(&self, src: usize, at: Instant) -> bool {
        self.sources[src]
            .empty_probe
            .is_some_and(|p| p >= at + self.settle)
    }

    fn holds_stray(&self, src: usize) -> bool {
        self.stray.iter().any(|Reverse(s)| s.src == src)
    }

    /// Whether no source can bring a record before the least held, which
    /// came at `at`: each holds a record (every CPU's records come in
    /// sequence order), or found its relay file empty at a read begun
    /// `settle` after that record came. A gap is then skipped at once;
    /// otherwise after the gap timeout.
    fn all_past(&self, at: Instant) -> bool {
        self.heads
            .iter()
            .enumerate()
            .all(|(src, h)| h.0 != SKIP || self.empty_since(src, at) || self.holds_stray(src))
    }

    /// While a gap is held, from `settle` after its least held record
    /// came: the sources that hold nothing and have not found their relay
    /// file empty since (asking their readers to look, at `now`, is what
    /// can end the wait early).
    pub fn waiting_on(&self, now: Instant) -> impl Iterator<Item = usize> + '_ {
        let at = self
            .min()
            .filter(|(seq, _, _)| self.expected.is_some_and(|e| *seq > e))
            .and_then(|(_, _, from)| self.arrived(from))
            .filter(|at| now >= *at + self.settle);
        (0..self.sources.len()).filter(move |src| {
            at.is_some_and(|at| {
                self.heads[*src] == EMPTY && !self.empty_since(*src, at) && !self.holds_stray(*src)
            })
        })
    }

    /// Give the record at `from` (the current minimum) to `emit` (or
    /// drop it), and move past it.
    #[inline]
    fn take<E, F>(&mut self, from: From, emit: Option<&mut F>) -> Result<(), E>
    where
        F: FnMut(Piece<'_, C>) -> Result<(), E>,
    {
        match from {
            From::Stray => {
                let Some(Reverse(s)) = self.stray.pop() else {
                    return Ok(());
                };
                if let Some(f) = emit {
                    f(Piece::Copied(&s.payload))?;
                }
            }
            From::Source(src) => {
                let s = &mut self.sources[src];
                let Some(q) = s.queue.front_mut() else {
                    return Ok(());
                };
                let span = q.chunk.spans()[q.pos];
                q.pos += 1;
                let r = match emit {
                    Some(f) => f(Piece::Chunk(&q.chunk, span.payload())),
                    None => Ok(()),
                };
                self.heads[src] = self.head(src);
                r?;
            }
        }
        Ok(())
    }

    /// Release what is in order now to `emit`; after `gap_timeout` without
    /// the missing sequence, skip to the lowest one held.
    pub fn ready<E, F>(&mut self, now: Instant, emit: &mut F) -> Result<(), E>
    where
        F: FnMut(Piece<'_, C>) -> Result<(), E>,
    {
        loop {
            self.release_runs(emit)?;
            let Some((min, _, from)) = self.min() else {
                self.gap_since = None;
                return Ok(());
            };
            let expected = match self.expected {
                Some(e) => e,
                None => {
                    // Attached: start at the lowest held once the window passed.
                    let since = *self.gap_since.get_or_insert(now);
                    if now.duration_since(since) < self.gap_timeout {
                        return Ok(());
                    }
                    min
                }
            };
            if min < expected {
                self.take(from, None::<&mut F>)?;
                self.stats.late += 1;
                continue;
            }
            if min > expected {
                if !self.arrived(from).is_some_and(|at| self.all_past(at)) {
                    let since = *self.gap_since.get_or_insert(now);
                    if now.duration_since(since) < self.gap_timeout {
                        return Ok(());
                    }
                }
                self.stats.lost += min - expected;
            }
            self.expected = Some(min + 1);
            self.gap_since = None;
            self.stats.delivered += 1;
            self.take(from, Some(&mut *emit))?;
        }
    }

    /// The common case, ahead of the general step in [`ChunkMerge::ready`]:
    /// while exactly one source's head is the expected number and every
    /// other record held is later, release it and the records after it in
    /// its chunk that are the next numbers and below every other held one
    /// (what the general step would release one by one). Stops at anything
    /// else (a gap, a late or duplicate record, a source with nothing
    /// queued, or not started yet) for the general step to decide.
    #[inline]
    fn release_runs<E, F>(&mut self, emit: &mut F) -> Result<(), E>
    where
        F: FnMut(Piece<'_, C>) -> Result<(), E>,
    {
        let Some(mut e) = self.expected else {
            return Ok(());
        };
        // The stray heap does not change here.
        let stray = self.stray.peek().map_or(SKIP, |Reverse(s)| s.seq);
        loop {
            // The one source whose head is `e`, and the least other head.
            let (mut src, mut bound) = (usize::MAX, stray);
            for (i, &(seq, _)) in self.heads.iter().enumerate() {
                if seq == e && src == usize::MAX {
                    src = i;
                } else {
                    bound = bound.min(seq);
                }
            }
            if bound <= e {
                return Ok(());
            }
            let Some(q) = self.sources.get_mut(src).and_then(|s| s.queue.front_mut()) else {
                return Ok(());
            };
            let (start, first) = (q.pos, e);
            let mut r = Ok(());
            let (seqs, spans) = (&q.seqs[start..], &q.chunk.spans()[start..]);
            for (&seq, span) in seqs.iter().zip(spans) {
                if seq != e || e >= bound {
                    break;
                }
                e += 1;
                r = emit(Piece::Chunk(&q.chunk, span.payload()));
                if r.is_err() {
                    break;
                }
            }
            let pos = start + (e - first) as usize;
            q.pos = pos;
            let next = q.seqs.get(pos).copied().filter(|&s| s != SKIP);
            let next = next.map(|s| (s, q.id + pos as u64));
            self.stats.delivered += (pos - start) as u64;
            self.expected = Some(e);
            self.gap_since = None;
            self.heads[src] = match next {
                Some(h) => h,
                None => self.head(src),
            };
            r?;
        }
    }

    /// At the end: everything held, in order, gaps counted as lost.
    pub fn finish<E, F>(&mut self, emit: &mut F) -> Result<(), E>
    where
        F: FnMut(Piece<'_, C>) -> Result<(), E>,
    {
        while let Some((seq, _, from)) = self.min() {
            if settle(&mut self.stats, &mut self.expected, seq) {
                self.take(from, Some(&mut *emit))?;
            } else {
                self.take(from, None::<&mut F>)?;
            }
        }
        Ok(())
    }

    /// Records held.
    pub fn buffered(&self) -> usize {
        self.stray.len()
            + self
                .sources
                .iter()
                .flat_map(|s| s.queue.iter())
                .map(|q| q.seqs[q.pos..].iter().filter(|s| **s != SKIP).count())
                .sum::<usize>()
    }
}

/// At the end, with no gap timeout left to wait: record `seq` is
/// delivered (true) unless its turn has passed (late); the sequence numbers
/// skipped before it are lost.
fn settle(stats: &mut MergeStats, expected: &mut Option<u64>, seq: u64) -> bool {
    match *expected {
        Some(e) if seq < e => {
            stats.late += 1;
            return false;
        }
        Some(e) => stats.lost += seq - e,
        None => {}
    }
    *expected = Some(seq + 1);
    stats.delivered += 1;
    true
}

#[cfg(test)]
mod tests;
