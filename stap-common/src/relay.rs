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
use std::collections::BinaryHeap;
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

/// Damage seen while parsing one CPU's stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParseStats {
    pub records: u64,
    pub bytes: u64,
    /// Bytes skipped to find the next record boundary.
    pub resync_bytes: u64,
    pub resyncs: u64,
}

/// Streaming parser for one relay file.
#[derive(Debug)]
pub struct Parser {
    generation: Generation,
    buf: Vec<u8>,
    pos: usize,
    pub stats: ParseStats,
}

impl Parser {
    pub fn new(generation: Generation) -> Self {
        Parser {
            generation,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
            stats: ParseStats::default(),
        }
    }

    /// Append bytes read from the relay file.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held back waiting for the rest of a record.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete record, if any; calls `sink` for each one.
    pub fn next_record(&mut self) -> Option<Record> {
        let hl = header_len(self.generation);
        loop {
            let avail = &self.buf[self.pos..];
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
            let rec = Record {
                sequence: seq,
                header: avail[..hl].to_vec(),
                payload: avail[hl..hl + len].to_vec(),
            };
            self.pos += hl + len;
            self.stats.records += 1;
            self.stats.bytes += len as u64;
            return Some(rec);
        }
    }

    fn resync(&mut self) {
        self.stats.resyncs += 1;
        let avail = &self.buf[self.pos..];
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
        self.pos = self.buf.len();
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
struct Held {
    /// The sequence number, unwrapped to 64 bits (see [`Merger::unwrap`]).
    seq: u64,
    id: u64,
    rec: Record,
}

impl Held {
    fn key(&self) -> (u64, u64) {
        (self.seq, self.id)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// Serial-mode merge: a min-heap on sequence numbers that releases records
/// in order, waits `gap_timeout` for a missing one, then skips the gap.
#[derive(Debug)]
pub struct Merger {
    /// Records held, ordered by (sequence, arrival): the records live in
    /// the heap itself (no side table), which keeps the merge cheap for
    /// small records.
    heap: BinaryHeap<Reverse<Held>>,
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

impl Merger {
    /// `from_start`: the module was just started, so sequence 1 comes first.
    pub fn new(from_start: bool, gap_timeout: Duration) -> Self {
        Merger {
            heap: BinaryHeap::new(),
            next_id: 0,
            expected: from_start.then_some(1),
            last_seen: None,
            gap_since: None,
            gap_timeout,
            stats: MergeStats::default(),
        }
    }

    /// The module's sequence numbers are 32 bits and wrap after 2^32
    /// records: place `seq` in the 64-bit number line nearest to where the
    /// stream is now, so ordering survives the wrap.
    fn unwrap(&self, seq: u32) -> u64 {
        const SPAN: u64 = 1 << 32;
        let Some(r) = self.expected.or(self.last_seen) else {
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

    pub fn push(&mut self, rec: Record) {
        let seq = self.unwrap(rec.sequence);
        if let Some(e) = self.expected
            && seq < e
        {
            self.stats.late += 1;
            return;
        }
        self.last_seen = Some(seq);
        let id = self.next_id;
        self.next_id += 1;
        self.heap.push(Reverse(Held { seq, id, rec }));
    }

    pub fn buffered(&self) -> usize {
        self.heap.len()
    }

    fn pop_min(&mut self) -> Option<(u64, Record)> {
        self.heap.pop().map(|Reverse(h)| (h.seq, h.rec))
    }

    /// Release what is in order now; after `gap_timeout` without the
    /// missing sequence, skip to the lowest one held.
    pub fn ready(&mut self, now: Instant, out: &mut Vec<Record>) {
        loop {
            let Some(min) = self.heap.peek().map(|Reverse(h)| h.seq) else {
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
            let (seq, rec) = self.pop_min().expect("peeked");
            self.expected = Some(seq + 1);
            self.gap_since = None;
            self.stats.delivered += 1;
            out.push(rec);
        }
    }

    /// At the end: everything held, in order, gaps counted as lost.
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        while let Some((seq, rec)) = self.pop_min() {
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
            out.push(rec);
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
}
