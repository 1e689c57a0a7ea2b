//! Relay record framing and the serial-mode merge.
//!
//! Each record the module prints is a header followed by `pdu_len` bytes:
//! generation 4 `{u32 sequence; u32 pdu_len}`, generation 5
//! `{magic F0 9F A9 BA; u32 sequence; u32 pdu_len}`, host byte order.
//! Sequence numbers are global across CPUs and start at 1.
//!
//! [`Parser`] turns the byte stream of one `traceN` file into records,
//! resynchronising after garbage (on the magic in generation 5; by dropping
//! the buffered bytes in generation 4, which has no magic). [`Merger`] puts
//! the records of all CPUs back in sequence order and counts gaps.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::protocol::Generation;

/// The 5.x header magic (U+1FA7A, a stethoscope, in UTF-8).
pub const MAGIC: [u8; 4] = [0xF0, 0x9F, 0xA9, 0xBA];
/// Largest payload a single probe flush can produce.
pub const MAX_PDU: usize = 128 * 1024;

pub fn header_len(g: Generation) -> usize {
    match g {
        Generation::V4 => 8,
        Generation::V5 => 12,
    }
}

/// Encode one record as the module writes it (used by the simulated
/// kernel, benchmarks and tests).
pub fn encode_record(g: Generation, sequence: u32, payload: &[u8], out: &mut Vec<u8>) {
    if g == Generation::V5 {
        out.extend_from_slice(&MAGIC);
    }
    out.extend_from_slice(&sequence.to_ne_bytes());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_ne_bytes(),
    );
    out.extend_from_slice(payload);
}

/// One record: its global sequence number, its header bytes as read
/// (bulk mode writes them out unchanged) and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub sequence: u32,
    pub header: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Where one record lies in the parser's buffer ([`Parser::buffer`]):
/// the header starts at `start`, the payload at `payload`, and the record
/// ends at `end` (exclusive). Offsets fit in 32 bits: the buffer never
/// grows past a read chunk plus one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub sequence: u32,
    pub start: u32,
    pub payload: u32,
    pub end: u32,
}

impl Span {
    /// Header and payload.
    pub fn record(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    pub fn payload(&self) -> std::ops::Range<usize> {
        self.payload as usize..self.end as usize
    }

    pub fn header(&self) -> std::ops::Range<usize> {
        self.start as usize..self.payload as usize
    }

    /// Payload bytes.
    pub fn len(&self) -> usize {
        (self.end - self.payload) as usize
    }

    /// Never true for a parsed record (`pdu_len` 0 is rejected).
    pub fn is_empty(&self) -> bool {
        self.end == self.payload
    }
}

/// Damage seen while parsing one CPU's stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParseStats {
    pub records: u64,
    pub bytes: u64,
    /// Bytes skipped to find the next record boundary.
    pub resync_bytes: u64,
    pub resyncs: u64,
}

/// Default size of the parser's buffer: what one read may fill.
pub const PARSE_BUFFER: usize = 256 * 1024;

/// Streaming parser for one relay file.
///
/// The bytes live in one buffer: `buf[pos..end]` is not parsed yet,
/// `buf[end..]` is room for the next read. Records come out as [`Span`]s
/// into that buffer (no copy) or as owned [`Record`]s.
#[derive(Debug)]
pub struct Parser {
    generation: Generation,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// The buffer size asked for; a record larger than half of it makes
    /// the buffer grow.
    size: usize,
    pub stats: ParseStats,
}

impl Parser {
    pub fn new(generation: Generation) -> Self {
        Parser::with_buffer(generation, PARSE_BUFFER)
    }

    /// A parser whose buffer takes reads of up to about `size` bytes.
    pub fn with_buffer(generation: Generation, size: usize) -> Self {
        Parser {
            generation,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            size: size.max(64),
            stats: ParseStats::default(),
        }
    }

    /// Make room for at least `want` more bytes after what is pending,
    /// moving the pending bytes to the front of the buffer.
    fn make_room(&mut self, want: usize) {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.pos > 0 && self.buf.len() - self.end < want {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.buf.is_empty() {
            // Zeroed by the allocator (fresh pages, not a memset): nothing
            // is touched until a read fills it.
            self.buf = vec![0; want.max(self.size)];
        } else if self.buf.len() - self.end < want {
            self.buf.resize(self.end + want.max(self.size), 0);
        }
    }

    /// Append bytes read from the relay file.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.make_room(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Read straight into the buffer: `read` gets the free room (at least
    /// half the buffer size) and returns how many bytes it filled.
    pub fn fill<E>(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        self.make_room(self.size / 2);
        let room = &mut self.buf[self.end..];
        let n = read(room)?.min(room.len());
        self.end += n;
        Ok(n)
    }

    /// Free bytes after the data read so far.
    pub fn room(&self) -> usize {
        self.buf.len() - self.end
    }

    /// Read into the free room after the data, moving nothing: the spans
    /// already returned stay valid (unlike [`Parser::fill`], which may move
    /// the pending bytes to the front). `read` gets [`Parser::room`] bytes.
    pub fn fill_tail<E>(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let room = &mut self.buf[self.end..];
        let n = read(room)?.min(room.len());
        self.end += n;
        Ok(n)
    }

    /// Bytes held back waiting for the rest of a record.
    pub fn pending(&self) -> usize {
        self.end - self.pos
    }

    /// The buffer the [`Span`]s returned by [`Parser::next_span`] point
    /// into; valid until the next `feed`, `fill` or `swap_buffer`.
    pub fn buffer(&self) -> &[u8] {
        &self.buf[..self.end]
    }

    /// Hand the buffer (and the records parsed from it) to someone else:
    /// the pending bytes move to the front of `fresh`, which becomes the
    /// parser's buffer, and the old buffer is returned. Its contents up to
    /// the end of the last parsed record are what the spans point into.
    pub fn swap_buffer(&mut self, mut fresh: Vec<u8>) -> Vec<u8> {
        let pending = self.pending();
        let want = self.size.max(pending + self.size / 2);
        if fresh.is_empty() {
            fresh = vec![0; want];
        } else if fresh.len() < want {
            fresh.resize(want, 0);
        }
        fresh[..pending].copy_from_slice(&self.buf[self.pos..self.end]);
        let old = std::mem::replace(&mut self.buf, fresh);
        self.pos = 0;
        self.end = pending;
        old
    }

    /// The next complete record, copied out of the buffer.
    pub fn next_record(&mut self) -> Option<Record> {
        let s = self.next_span()?;
        Some(Record {
            sequence: s.sequence,
            header: self.buf[s.header()].to_vec(),
            payload: self.buf[s.payload()].to_vec(),
        })
    }

    /// The next complete record, as a place in [`Parser::buffer`]. Bytes
    /// that cannot start a record are skipped (counted as resync bytes),
    /// so two spans are adjacent exactly when nothing was skipped between
    /// them.
    pub fn next_span(&mut self) -> Option<Span> {
        let hl = header_len(self.generation);
        loop {
            let avail = &self.buf[self.pos..self.end];
            if avail.len() < hl {
                return None;
            }
            let (seq_at, magic_ok) = match self.generation {
                Generation::V4 => (0, true),
                Generation::V5 => (4, avail[..4] == MAGIC),
            };
            let seq = u32::from_ne_bytes(avail[seq_at..seq_at + 4].try_into().ok()?);
            let len = u32::from_ne_bytes(avail[seq_at + 4..seq_at + 8].try_into().ok()?) as usize;
            if !magic_ok || len == 0 || len > MAX_PDU {
                self.resync();
                continue;
            }
            if avail.len() < hl + len {
                return None;
            }
            let start = self.pos;
            self.pos += hl + len;
            self.stats.records += 1;
            self.stats.bytes += len as u64;
            // The buffer is at most a read chunk plus one record.
            let at = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
            return Some(Span {
                sequence: seq,
                start: at(start),
                payload: at(start + hl),
                end: at(self.pos),
            });
        }
    }

    fn resync(&mut self) {
        self.stats.resyncs += 1;
        let avail = &self.buf[self.pos..self.end];
        let skip = match self.generation {
            // Find the next magic after the current position.
            Generation::V5 => avail[1..]
                .windows(4)
                .position(|w| w == MAGIC)
                .map(|i| i + 1)
                .unwrap_or(avail.len().saturating_sub(3).max(1)),
            // No magic: give up on what is buffered, as the C reader does.
            Generation::V4 => avail.len(),
        };
        self.stats.resync_bytes += skip as u64;
        self.pos += skip;
    }

    /// At end of stream: what is left is a truncated record or garbage.
    pub fn finish(&mut self) -> usize {
        let left = self.pending();
        self.stats.resync_bytes += left as u64;
        self.pos = self.end;
        left
    }
}

/// Loss and ordering counters of the serial merge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeStats {
    pub delivered: u64,
    /// Sequence numbers never seen (skipped after the gap timeout).
    pub lost: u64,
    /// Records that arrived after their turn had been skipped, or twice.
    pub late: u64,
}

/// A record held by the merge, ordered by sequence then arrival.
#[derive(Debug)]
struct Held<T> {
    /// The sequence number, unwrapped to 64 bits (see [`Merger::unwrap`]).
    seq: u64,
    id: u64,
    item: T,
}

impl<T> Held<T> {
    fn key(&self) -> (u64, u64) {
        (self.seq, self.id)
    }
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Held<T> {}

impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// The module's sequence numbers are 32 bits and wrap after 2^32 records:
/// place `seq` in the 64-bit number line nearest to `reference` (where the
/// stream is now: the next sequence expected, or the last seen), so that
/// ordering survives the wrap.
pub fn unwrap_sequence(reference: Option<u64>, seq: u32) -> u64 {
    const SPAN: u64 = 1 << 32;
    let Some(r) = reference else {
        return u64::from(seq);
    };
    let c = (r & !(SPAN - 1)) | u64::from(seq);
    if c + SPAN / 2 < r {
        c + SPAN
    } else if c > r + SPAN / 2 && c >= SPAN {
        c - SPAN
    } else {
        c
    }
}

/// Serial-mode merge: releases records in order of (sequence, arrival),
/// waits `gap_timeout` for a missing sequence, then skips the gap.
///
/// Each source (CPU) normally delivers its records in increasing sequence
/// order, so they are held in one FIFO queue per source, and the merge
/// compares the heads of the queues (a small heap of heads, one entry per
/// non-empty queue). A record that arrives out of order within its source
/// goes to a `stray` min-heap instead. The record released next is always
/// the least (sequence, arrival) of everything held, exactly as with one
/// heap of all records.
#[derive(Debug)]
pub struct Merger<T = Record> {
    /// Per source, keys strictly increasing front to back.
    queues: Vec<VecDeque<Held<T>>>,
    /// The key of the front of every non-empty queue, with its source.
    heads: BinaryHeap<Reverse<(u64, u64, usize)>>,
    /// Records that came out of order within their source.
    stray: BinaryHeap<Reverse<Held<T>>>,
    held: usize,
    next_id: u64,
    /// The next sequence to deliver (unwrapped); `None` until the first
    /// delivery when attaching to a running module (its first record is
    /// not "lost").
    expected: Option<u64>,
    /// The last unwrapped sequence seen, the reference for unwrapping
    /// before anything was delivered.
    last_seen: Option<u64>,
    gap_since: Option<Instant>,
    gap_timeout: Duration,
    pub stats: MergeStats,
}

impl Merger<Record> {
    /// `from_start`: the module was just started, so sequence 1 comes first.
    /// One source; see [`Merger::with_sources`].
    pub fn new(from_start: bool, gap_timeout: Duration) -> Self {
        Merger::with_sources(1, from_start, gap_timeout)
    }

    pub fn push(&mut self, rec: Record) {
        self.push_from(0, rec.sequence, rec);
    }
}

impl<T> Merger<T> {
    /// A merge of `sources` streams (at least one) of items `T`.
    pub fn with_sources(sources: usize, from_start: bool, gap_timeout: Duration) -> Self {
        Merger {
            queues: (0..sources.max(1)).map(|_| VecDeque::new()).collect(),
            heads: BinaryHeap::new(),
            stray: BinaryHeap::new(),
            held: 0,
            next_id: 0,
            expected: from_start.then_some(1),
            last_seen: None,
            gap_since: None,
            gap_timeout,
            stats: MergeStats::default(),
        }
    }

    fn unwrap(&self, seq: u32) -> u64 {
        unwrap_sequence(self.expected.or(self.last_seen), seq)
    }

    /// Hold `item`, record `sequence` of `source` (sources past the
    /// number given to [`Merger::with_sources`] share the last queue).
    pub fn push_from(&mut self, source: usize, sequence: u32, item: T) {
        let seq = self.unwrap(sequence);
        if let Some(e) = self.expected
            && seq < e
        {
            self.stats.late += 1;
            return;
        }
        self.last_seen = Some(seq);
        let id = self.next_id;
        self.next_id += 1;
        self.held += 1;
        let src = source.min(self.queues.len() - 1);
        let q = &mut self.queues[src];
        let h = Held { seq, id, item };
        match q.back() {
            // `id` is the largest yet: the key order is the sequence order.
            Some(last) if last.seq > seq => self.stray.push(Reverse(h)),
            Some(_) => q.push_back(h),
            None => {
                q.push_back(h);
                self.heads.push(Reverse((seq, id, src)));
            }
        }
    }

    /// Whether record `sequence` is next in order: the expected sequence,
    /// with nothing held at or before it. If so it is counted as delivered
    /// and the caller writes it at once (after everything released before,
    /// before anything released later) instead of pushing it: the same
    /// order and counts as pushing it and calling [`Merger::ready`],
    /// without the queueing.
    pub fn take_if_next(&mut self, sequence: u32) -> bool {
        let Some(e) = self.expected else {
            return false;
        };
        if self.unwrap(sequence) != e || self.peek_min().is_some_and(|m| m <= e) {
            return false;
        }
        self.last_seen = Some(e);
        self.expected = Some(e + 1);
        self.gap_since = None;
        self.stats.delivered += 1;
        true
    }

    /// [`Merger::take_if_next`], else [`Merger::push_from`]: the item comes
    /// back when it is to be written now.
    pub fn push_or_release(&mut self, source: usize, sequence: u32, item: T) -> Option<T> {
        if self.take_if_next(sequence) {
            return Some(item);
        }
        self.push_from(source, sequence, item);
        None
    }

    pub fn buffered(&self) -> usize {
        self.held
    }

    /// The least key held and whether it is a queue head (else stray).
    fn min_key(&self) -> Option<(u64, bool)> {
        let head = self.heads.peek().map(|Reverse((s, i, _))| (*s, *i));
        let stray = self.stray.peek().map(|Reverse(h)| h.key());
        match (head, stray) {
            (Some(h), Some(s)) => Some(if h < s { (h.0, true) } else { (s.0, false) }),
            (Some(h), None) => Some((h.0, true)),
            (None, Some(s)) => Some((s.0, false)),
            (None, None) => None,
        }
    }

    fn peek_min(&self) -> Option<u64> {
        self.min_key().map(|(seq, _)| seq)
    }

    fn pop_min(&mut self) -> Option<(u64, T)> {
        let (_, from_queue) = self.min_key()?;
        self.held -= 1;
        if !from_queue {
            return self.stray.pop().map(|Reverse(h)| (h.seq, h.item));
        }
        let mut top = self.heads.peek_mut()?;
        let src = top.0.2;
        let q = &mut self.queues[src];
        let h = q.pop_front()?;
        match q.front() {
            Some(next) => top.0 = (next.seq, next.id, src),
            None => {
                std::collections::binary_heap::PeekMut::pop(top);
            }
        }
        Some((h.seq, h.item))
    }

    /// Release what is in order now; after `gap_timeout` without the
    /// missing sequence, skip to the lowest one held.
    pub fn ready(&mut self, now: Instant, out: &mut Vec<T>) {
        loop {
            let Some(min) = self.peek_min() else {
                self.gap_since = None;
                return;
            };
            let expected = match self.expected {
                Some(e) => e,
                None => {
                    // Attached: start at the lowest held once the window passed.
                    let since = *self.gap_since.get_or_insert(now);
                    if now.duration_since(since) < self.gap_timeout {
                        return;
                    }
                    min
                }
            };
            if min < expected {
                self.pop_min();
                self.stats.late += 1;
                continue;
            }
            if min > expected {
                let since = *self.gap_since.get_or_insert(now);
                if now.duration_since(since) < self.gap_timeout {
                    return;
                }
                self.stats.lost += min - expected;
            }
            let (seq, item) = self.pop_min().expect("peeked");
            self.expected = Some(seq + 1);
            self.gap_since = None;
            self.stats.delivered += 1;
            out.push(item);
        }
    }

    /// At the end: everything held, in order, gaps counted as lost.
    pub fn finish(&mut self, out: &mut Vec<T>) {
        while let Some((seq, item)) = self.pop_min() {
            match self.expected {
                Some(e) if seq < e => {
                    self.stats.late += 1;
                    continue;
                }
                Some(e) => self.stats.lost += seq - e,
                None => {}
            }
            self.expected = Some(seq + 1);
            self.stats.delivered += 1;
            out.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(g: Generation, recs: &[(u32, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (s, p) in recs {
            encode_record(g, *s, p, &mut v);
        }
        v
    }

    #[test]
    fn parses_both_generations_across_split_reads() {
        for g in [Generation::V4, Generation::V5] {
            let bytes = stream(g, &[(1, b"hello\n"), (2, b"world\n"), (3, &[b'x'; 5000])]);
            let mut p = Parser::new(g);
            let mut got = Vec::new();
            // Feed in awkward pieces.
            for chunk in bytes.chunks(7) {
                p.feed(chunk);
                while let Some(r) = p.next_record() {
                    got.push(r);
                }
            }
            assert_eq!(got.len(), 3, "{g}");
            assert_eq!(got[0].payload, b"hello\n");
            assert_eq!(got[2].payload.len(), 5000);
            assert_eq!(got[1].sequence, 2);
            assert_eq!(got[0].header.len(), header_len(g));
            assert_eq!(p.stats.resyncs, 0);
            assert_eq!(p.finish(), 0);
        }
    }

    #[test]
    fn v5_resyncs_on_the_magic() {
        let g = Generation::V5;
        let mut bytes = b"garbage-without-magic".to_vec();
        bytes.extend(stream(g, &[(7, b"ok\n")]));
        let mut p = Parser::new(g);
        p.feed(&bytes);
        let r = p.next_record().unwrap();
        assert_eq!((r.sequence, r.payload.as_slice()), (7, b"ok\n".as_slice()));
        assert_eq!(p.stats.resync_bytes, 21);
    }

    #[test]
    fn v4_drops_a_corrupt_header_and_recovers_on_the_next_read() {
        let g = Generation::V4;
        let mut p = Parser::new(g);
        // pdu_len 0 is invalid.
        p.feed(&[1, 0, 0, 0, 0, 0, 0, 0, 9, 9]);
        assert!(p.next_record().is_none());
        assert_eq!(p.stats.resyncs, 1);
        p.feed(&stream(g, &[(2, b"x")]));
        assert_eq!(p.next_record().unwrap().sequence, 2);
    }

    #[test]
    fn oversized_length_is_not_trusted() {
        let g = Generation::V5;
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_ne_bytes());
        bytes.extend_from_slice(&u32::MAX.to_ne_bytes());
        let mut p = Parser::new(g);
        p.feed(&bytes);
        assert!(p.next_record().is_none());
        assert!(p.stats.resyncs >= 1);
    }

    fn rec(s: u32) -> Record {
        Record {
            sequence: s,
            header: vec![],
            payload: s.to_string().into_bytes(),
        }
    }

    #[test]
    fn merger_orders_and_counts_gaps() {
        let t0 = Instant::now();
        let mut m = Merger::new(true, Duration::from_millis(100));
        let mut out = Vec::new();
        for s in [2, 1, 4] {
            m.push(rec(s));
        }
        m.ready(t0, &mut out);
        assert_eq!(
            out.iter().map(|r| r.sequence).collect::<Vec<_>>(),
            vec![1, 2]
        );
        // 3 is missing: held until the timeout.
        m.ready(t0 + Duration::from_millis(50), &mut out);
        assert_eq!(out.len(), 2);
        m.ready(t0 + Duration::from_millis(200), &mut out);
        m.ready(t0 + Duration::from_millis(350), &mut out);
        assert_eq!(out.last().unwrap().sequence, 4);
        assert_eq!(m.stats.lost, 1);
        // 3 arrives late: dropped and counted, not printed out of order.
        m.push(rec(3));
        m.ready(t0 + Duration::from_millis(400), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(m.stats.late, 1);
    }

    #[test]
    fn merger_attached_starts_at_the_lowest_without_loss() {
        let t0 = Instant::now();
        let mut m = Merger::new(false, Duration::from_millis(10));
        m.push(rec(101));
        m.push(rec(100));
        let mut out = Vec::new();
        m.ready(t0, &mut out);
        assert!(out.is_empty());
        m.ready(t0 + Duration::from_millis(20), &mut out);
        assert_eq!(
            out.iter().map(|r| r.sequence).collect::<Vec<_>>(),
            vec![100, 101]
        );
        assert_eq!(m.stats.lost, 0);
    }

    #[test]
    fn merger_survives_the_32_bit_wrap() {
        let t0 = Instant::now();
        let mut m = Merger::new(false, Duration::from_millis(0));
        let mut out = Vec::new();
        for s in [u32::MAX - 1, 1, u32::MAX, 0, 2] {
            m.push(rec(s));
        }
        m.ready(t0, &mut out);
        m.finish(&mut out);
        let seqs: Vec<u32> = out.iter().map(|r| r.sequence).collect();
        assert_eq!(seqs, vec![u32::MAX - 1, u32::MAX, 0, 1, 2]);
        assert_eq!((m.stats.lost, m.stats.late), (0, 0));
    }

    #[test]
    fn merger_finish_flushes_in_order() {
        let mut m = Merger::new(true, Duration::from_secs(60));
        for s in [5, 3, 1] {
            m.push(rec(s));
        }
        let mut out = Vec::new();
        m.finish(&mut out);
        assert_eq!(
            out.iter().map(|r| r.sequence).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        assert_eq!(m.stats.lost, 2);
    }

    #[test]
    fn spans_point_into_the_buffer_and_are_adjacent_without_garbage() {
        let g = Generation::V5;
        let mut bytes = stream(g, &[(1, b"a\n"), (2, b"bc\n")]);
        bytes.extend_from_slice(b"junk");
        bytes.extend(stream(g, &[(3, b"d\n")]));
        let mut p = Parser::with_buffer(g, 64);
        let n = p
            .fill(|room| {
                room[..bytes.len()].copy_from_slice(&bytes);
                Ok::<_, ()>(bytes.len())
            })
            .unwrap();
        assert_eq!(n, bytes.len());
        let a = p.next_span().unwrap();
        let b = p.next_span().unwrap();
        let c = p.next_span().unwrap();
        assert!(p.next_span().is_none());
        assert_eq!(a.end, b.start, "adjacent");
        assert_eq!(c.start, b.end + 4, "the junk lies between");
        assert_eq!(&p.buffer()[b.payload()], b"bc\n");
        assert_eq!(p.buffer()[b.header()].len(), header_len(g));
        assert_eq!((c.sequence, c.len()), (3, 2));
        assert_eq!(p.stats.resync_bytes, 4);
    }

    #[test]
    fn swap_buffer_keeps_the_partial_record() {
        let g = Generation::V4;
        let bytes = stream(g, &[(1, b"first\n"), (2, &[b'y'; 300])]);
        let mut p = Parser::with_buffer(g, 128);
        p.feed(&bytes[..100]);
        let s = p.next_span().unwrap();
        assert!(p.next_span().is_none());
        let old = p.swap_buffer(Vec::new());
        assert_eq!(&old[s.payload()], b"first\n");
        assert_eq!(p.pending(), 100 - s.record().len());
        // The rest arrives in reads into the new buffer, which grows.
        let mut rest = &bytes[100..];
        while !rest.is_empty() {
            let n = p
                .fill(|room| {
                    let n = room.len().min(rest.len()).min(50);
                    room[..n].copy_from_slice(&rest[..n]);
                    Ok::<_, ()>(n)
                })
                .unwrap();
            rest = &rest[n..];
        }
        let r = p.next_record().unwrap();
        assert_eq!((r.sequence, r.payload.len()), (2, 300));
        assert_eq!(p.finish(), 0);
    }

    #[test]
    fn merger_waits_for_an_empty_source_before_releasing_later_records() {
        // CPU 1 has nothing yet; CPU 0 holds 2 and 3. Sequence 1 (on CPU 1)
        // is due first: nothing may be released before the gap timeout.
        let t0 = Instant::now();
        let mut m: Merger<u32> = Merger::with_sources(2, true, Duration::from_millis(100));
        let mut out = Vec::new();
        m.push_from(0, 2, 2);
        m.push_from(0, 3, 3);
        m.ready(t0, &mut out);
        m.ready(t0 + Duration::from_millis(99), &mut out);
        assert!(out.is_empty());
        // 1 comes: everything in order.
        m.push_from(1, 1, 1);
        m.ready(t0 + Duration::from_millis(99), &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        // 5 on CPU 0, 4 missing on CPU 1: held until the timeout, then skipped.
        m.push_from(0, 5, 5);
        m.ready(t0 + Duration::from_millis(200), &mut out);
        assert_eq!(out.len(), 3);
        m.ready(t0 + Duration::from_millis(301), &mut out);
        assert_eq!(out, vec![1, 2, 3, 5]);
        assert_eq!((m.stats.lost, m.stats.late), (1, 0));
        m.push_from(1, 4, 4);
        m.push_from(1, 6, 6);
        m.ready(t0 + Duration::from_millis(302), &mut out);
        assert_eq!(out, vec![1, 2, 3, 5, 6]);
        assert_eq!((m.stats.lost, m.stats.late), (1, 1));
    }

    #[test]
    fn merger_duplicates_across_sources_keep_the_first_arrival() {
        let mut m: Merger<&str> = Merger::with_sources(2, true, Duration::from_secs(1));
        let mut out = Vec::new();
        m.push_from(1, 1, "b1");
        m.push_from(0, 1, "a1");
        m.push_from(0, 2, "a2");
        m.ready(Instant::now(), &mut out);
        assert_eq!(out, vec!["b1", "a2"]);
        assert_eq!(m.stats.late, 1);
        assert_eq!(m.buffered(), 0);
    }

    /// The merge as it was: one heap of every record.
    struct HeapMerger {
        heap: BinaryHeap<Reverse<Held<u32>>>,
        next_id: u64,
        expected: Option<u64>,
        last_seen: Option<u64>,
        gap_since: Option<Instant>,
        gap_timeout: Duration,
        stats: MergeStats,
    }

    impl HeapMerger {
        fn unwrap(&self, seq: u32) -> u64 {
            let shadow = Merger::<u32> {
                expected: self.expected,
                last_seen: self.last_seen,
                ..Merger::with_sources(1, false, self.gap_timeout)
            };
            shadow.unwrap(seq)
        }
        fn push(&mut self, s: u32, item: u32) {
            let seq = self.unwrap(s);
            if let Some(e) = self.expected
                && seq < e
            {
                self.stats.late += 1;
                return;
            }
            self.last_seen = Some(seq);
            let id = self.next_id;
            self.next_id += 1;
            self.heap.push(Reverse(Held { seq, id, item }));
        }
        fn ready(&mut self, now: Instant, out: &mut Vec<u32>) {
            loop {
                let Some(min) = self.heap.peek().map(|Reverse(h)| h.seq) else {
                    self.gap_since = None;
                    return;
                };
                let expected = match self.expected {
                    Some(e) => e,
                    None => {
                        let since = *self.gap_since.get_or_insert(now);
                        if now.duration_since(since) < self.gap_timeout {
                            return;
                        }
                        min
                    }
                };
                if min < expected {
                    self.heap.pop();
                    self.stats.late += 1;
                    continue;
                }
                if min > expected {
                    let since = *self.gap_since.get_or_insert(now);
                    if now.duration_since(since) < self.gap_timeout {
                        return;
                    }
                    self.stats.lost += min - expected;
                }
                let Reverse(h) = self.heap.pop().unwrap();
                self.expected = Some(h.seq + 1);
                self.gap_since = None;
                self.stats.delivered += 1;
                out.push(h.item);
            }
        }
        fn finish(&mut self, out: &mut Vec<u32>) {
            while let Some(Reverse(h)) = self.heap.pop() {
                match self.expected {
                    Some(e) if h.seq < e => {
                        self.stats.late += 1;
                        continue;
                    }
                    Some(e) => self.stats.lost += h.seq - e,
                    None => {}
                }
                self.expected = Some(h.seq + 1);
                self.stats.delivered += 1;
                out.push(h.item);
            }
        }
    }

    /// Also with [`Merger::push_or_release`] (odd rounds): what it releases
    /// early, the heap releases at the next `ready`.
    #[test]
    fn merger_matches_one_heap_of_all_records() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..400 {
            let sources = 1 + rnd(4) as usize;
            let from_start = rnd(2) == 0;
            let gap = Duration::from_millis(rnd(3) * 10);
            let mut m: Merger<u32> = Merger::with_sources(sources, from_start, gap);
            let mut r = HeapMerger {
                heap: BinaryHeap::new(),
                next_id: 0,
                expected: from_start.then_some(1),
                last_seen: None,
                gap_since: None,
                gap_timeout: gap,
                stats: MergeStats::default(),
            };
            let base: u32 = if rnd(3) == 0 { u32::MAX - 20 } else { 1 };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let t0 = Instant::now();
            let mut next = base;
            for step in 0..300u32 {
                let src = rnd(sources as u64) as usize;
                // Mostly increasing per source, with gaps, duplicates and
                // strays.
                let seq = match rnd(10) {
                    0 => next.wrapping_sub(rnd(8) as u32),
                    1 => next.wrapping_add(rnd(5) as u32),
                    _ => {
                        next = next.wrapping_add(1 + u32::from(rnd(4) == 0));
                        next
                    }
                };
                if round % 2 == 0 {
                    m.push_from(src, seq, step);
                } else if let Some(item) = m.push_or_release(src, seq, step) {
                    a.push(item);
                }
                r.push(seq, step);
                if rnd(4) == 0 {
                    let now = t0 + Duration::from_millis(u64::from(step) * rnd(4));
                    m.ready(now, &mut a);
                    r.ready(now, &mut b);
                    assert_eq!(a, b, "round {round} step {step}");
                }
            }
            m.finish(&mut a);
            r.finish(&mut b);
            assert_eq!(a, b, "round {round}");
            assert_eq!(m.stats, r.stats, "round {round}");
            assert_eq!(m.buffered(), 0);
        }
    }
}
