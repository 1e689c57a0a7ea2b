//! Serial mode's merge, over whole chunks as the readers hand them over.
//!
//! It releases records by (sequence, arrival), waits `gap_timeout` for a
//! missing sequence number before skipping it (counted as lost), and drops
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

/// Where released payloads go.
pub type Emit<'a, C, E> = dyn FnMut(Piece<'_, C>) -> Result<(), E> + 'a;

/// A skipped entry (late at arrival, or moved to the stray heap).
const SKIP: u64 = u64::MAX;

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
    pos: usize,
}

struct Source<C> {
    queue: VecDeque<Queued<C>>,
    /// Sequence of the last record queued here while the queue is not empty.
    last: Option<u64>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Stray {
    seq: u64,
    id: u64,
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
    /// as records are queued and taken.
    heads: Vec<Option<(u64, u64)>>,
    stray: BinaryHeap<Reverse<Stray>>,
    next_id: u64,
    expected: Option<u64>,
    last_seen: Option<u64>,
    gap_since: Option<Instant>,
    gap_timeout: Duration,
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
                })
                .collect(),
            heads: vec![None; sources.max(1)],
            stray: BinaryHeap::new(),
            next_id: 0,
            expected: from_start.then_some(1),
            last_seen: None,
            gap_since: None,
            gap_timeout,
            spare_seqs: Vec::new(),
            stats: MergeStats::default(),
        }
    }

    fn unwrap(&self, seq: u32) -> u64 {
        unwrap_sequence(self.expected.or(self.last_seen), seq)
    }

    /// Queue a chunk of `source` (sources past the number given to
    /// [`ChunkMerge::new`] share the last one).
    pub fn push(&mut self, source: usize, chunk: C) {
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
                pos: 0,
            });
            if self.heads[src].is_none() {
                self.heads[src] = self.head(src);
            }
        } else {
            self.spare_seqs.push(seqs);
        }
    }

    /// The head of `src`: (sequence, arrival id), dropping spent chunks.
    fn head(&mut self, src: usize) -> Option<(u64, u64)> {
        let s = &mut self.sources[src];
        loop {
            let q = s.queue.front_mut()?;
            while q.pos < q.seqs.len() && q.seqs[q.pos] == SKIP {
                q.pos += 1;
            }
            if q.pos < q.seqs.len() {
                return Some((q.seqs[q.pos], q.id + q.pos as u64));
            }
            let done = s.queue.pop_front().expect("front exists");
            self.spare_seqs.push(done.seqs);
            if s.queue.is_empty() {
                s.last = None;
            }
        }
    }

    /// The least (sequence, arrival) held, and where it is.
    fn min(&self) -> Option<(u64, u64, From)> {
        let mut best: Option<(u64, u64, From)> = None;
        for (src, h) in self.heads.iter().enumerate() {
            if let Some((seq, id)) = *h
                && best.is_none_or(|(bs, bi, _)| (seq, id) < (bs, bi))
            {
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

    /// Give the record at `from` (the current minimum) to `emit` (or
    /// drop it), and move past it.
    fn take<E>(&mut self, from: From, emit: Option<&mut Emit<'_, C, E>>) -> Result<(), E> {
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
    pub fn ready<E>(&mut self, now: Instant, emit: &mut Emit<'_, C, E>) -> Result<(), E> {
        loop {
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
                self.take(from, None)?;
                self.stats.late += 1;
                continue;
            }
            if min > expected {
                let since = *self.gap_since.get_or_insert(now);
                if now.duration_since(since) < self.gap_timeout {
                    return Ok(());
                }
                self.stats.lost += min - expected;
            }
            self.expected = Some(min + 1);
            self.gap_since = None;
            self.stats.delivered += 1;
            self.take(from, Some(&mut *emit))?;
            if let From::Source(src) = from {
                self.run_from(src, emit)?;
            }
        }
    }

    /// After a record of `src` was released: while the next records of
    /// `src` are the next sequence numbers and come before everything
    /// held elsewhere, release them without looking at the other sources
    /// for each (one CPU, or a CPU printing a burst).
    fn run_from<E>(&mut self, src: usize, emit: &mut Emit<'_, C, E>) -> Result<(), E> {
        if self.heads[src].map(|h| h.0) != self.expected {
            return Ok(());
        }
        let mut bound: Option<(u64, u64)> = None;
        for (other, h) in self.heads.iter().enumerate() {
            if other != src
                && let Some(h) = *h
                && bound.is_none_or(|b| h < b)
            {
                bound = Some(h);
            }
        }
        if let Some(Reverse(s)) = self.stray.peek()
            && bound.is_none_or(|b| (s.seq, s.id) < b)
        {
            bound = Some((s.seq, s.id));
        }
        while let Some((seq, id)) = self.heads[src] {
            if Some(seq) != self.expected || bound.is_some_and(|b| (seq, id) >= b) {
                break;
            }
            self.expected = Some(seq + 1);
            self.stats.delivered += 1;
            self.take(From::Source(src), Some(&mut *emit))?;
        }
        Ok(())
    }

    /// At the end: everything held, in order, gaps counted as lost.
    pub fn finish<E>(&mut self, emit: &mut Emit<'_, C, E>) -> Result<(), E> {
        while let Some((seq, _, from)) = self.min() {
            if settle(&mut self.stats, &mut self.expected, seq) {
                self.take(from, Some(&mut *emit))?;
            } else {
                self.take(from, None)?;
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
mod tests {
    use super::*;
    use stap_common::protocol::Generation;
    use stap_common::record::{encode_record, header_len};

    struct TestChunk {
        buf: Vec<u8>,
        spans: Vec<Span>,
    }

    impl ChunkData for TestChunk {
        fn buf(&self) -> &[u8] {
            &self.buf
        }
        fn spans(&self) -> &[Span] {
            &self.spans
        }
    }

    /// Records whose payload is "SEQ SOURCE\n" (duplicates differ by source).
    fn chunk_of(seqs: &[u32], source: usize) -> TestChunk {
        let g = Generation::V5;
        let hl = header_len(g) as u32;
        let (mut buf, mut spans) = (Vec::new(), Vec::new());
        for s in seqs {
            let start = buf.len() as u32;
            encode_record(g, *s, format!("{s} {source}\n").as_bytes(), &mut buf);
            spans.push(Span {
                sequence: *s,
                start,
                payload: start + hl,
                end: buf.len() as u32,
            });
        }
        TestChunk { buf, spans }
    }

    fn chunk(seqs: &[u32]) -> TestChunk {
        chunk_of(seqs, 0)
    }

    fn text(out: &[Vec<u8>]) -> Vec<u32> {
        out.iter()
            .map(|b| {
                let t = String::from_utf8_lossy(b);
                t.split_whitespace().next().unwrap().parse().unwrap()
            })
            .collect()
    }

    fn lines(out: &[Vec<u8>]) -> Vec<String> {
        out.iter()
            .map(|b| String::from_utf8_lossy(b).trim().to_owned())
            .collect()
    }

    /// The rule in its plainest form: one heap of every record, ordered by
    /// (sequence, arrival).
    struct HeapMerger<T> {
        heap: BinaryHeap<Reverse<(u64, u64, T)>>,
        next_id: u64,
        expected: Option<u64>,
        last_seen: Option<u64>,
        gap_since: Option<Instant>,
        gap_timeout: Duration,
        stats: MergeStats,
    }

    impl<T: Ord> HeapMerger<T> {
        fn new(from_start: bool, gap_timeout: Duration) -> Self {
            HeapMerger {
                heap: BinaryHeap::new(),
                next_id: 0,
                expected: from_start.then_some(1),
                last_seen: None,
                gap_since: None,
                gap_timeout,
                stats: MergeStats::default(),
            }
        }

        fn push(&mut self, s: u32, item: T) {
            let seq = unwrap_sequence(self.expected.or(self.last_seen), s);
            if self.expected.is_some_and(|e| seq < e) {
                self.stats.late += 1;
                return;
            }
            self.last_seen = Some(seq);
            self.heap.push(Reverse((seq, self.next_id, item)));
            self.next_id += 1;
        }

        fn ready(&mut self, now: Instant, out: &mut Vec<T>) {
            loop {
                let Some(min) = self.heap.peek().map(|Reverse(h)| h.0) else {
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
                let Some(Reverse((seq, _, item))) = self.heap.pop() else {
                    return;
                };
                self.expected = Some(seq + 1);
                self.gap_since = None;
                self.stats.delivered += 1;
                out.push(item);
            }
        }

        fn finish(&mut self, out: &mut Vec<T>) {
            while let Some(Reverse((seq, _, item))) = self.heap.pop() {
                if settle(&mut self.stats, &mut self.expected, seq) {
                    out.push(item);
                }
            }
        }
    }

    fn emit_into(
        got: &mut Vec<Vec<u8>>,
    ) -> impl FnMut(Piece<'_, TestChunk>) -> Result<(), ()> + '_ {
        move |p| {
            got.push(p.bytes().to_vec());
            Ok(())
        }
    }

    /// Sequence numbers released now.
    fn ready_seqs(m: &mut ChunkMerge<TestChunk>, now: Instant) -> Vec<u32> {
        let mut got = Vec::new();
        m.ready(now, &mut emit_into(&mut got)).unwrap();
        text(&got)
    }

    fn finish_seqs(m: &mut ChunkMerge<TestChunk>) -> Vec<u32> {
        let mut got = Vec::new();
        m.finish(&mut emit_into(&mut got)).unwrap();
        text(&got)
    }

    #[test]
    fn orders_and_counts_gaps() {
        let t0 = Instant::now();
        let mut m = ChunkMerge::new(1, true, Duration::from_millis(100));
        m.push(0, chunk(&[2, 1, 4]));
        let mut out = ready_seqs(&mut m, t0);
        assert_eq!(out, [1, 2]);
        // 3 is missing: held until the timeout.
        out.extend(ready_seqs(&mut m, t0 + Duration::from_millis(50)));
        assert_eq!(out.len(), 2);
        out.extend(ready_seqs(&mut m, t0 + Duration::from_millis(200)));
        out.extend(ready_seqs(&mut m, t0 + Duration::from_millis(350)));
        assert_eq!(out, [1, 2, 4]);
        assert_eq!(m.stats.lost, 1);
        // 3 arrives late: dropped and counted, not printed out of order.
        m.push(0, chunk(&[3]));
        out.extend(ready_seqs(&mut m, t0 + Duration::from_millis(400)));
        assert_eq!(out.len(), 3);
        assert_eq!(m.stats.late, 1);
    }

    #[test]
    fn attached_starts_at_the_lowest_without_loss() {
        let t0 = Instant::now();
        let mut m = ChunkMerge::new(1, false, Duration::from_millis(10));
        m.push(0, chunk(&[101, 100]));
        assert!(ready_seqs(&mut m, t0).is_empty());
        assert_eq!(
            ready_seqs(&mut m, t0 + Duration::from_millis(20)),
            [100, 101]
        );
        assert_eq!(m.stats.lost, 0);
    }

    #[test]
    fn survives_the_32_bit_wrap() {
        let t0 = Instant::now();
        let mut m = ChunkMerge::new(1, false, Duration::from_millis(0));
        m.push(0, chunk(&[u32::MAX - 1, 1, u32::MAX, 0, 2]));
        let mut out = ready_seqs(&mut m, t0);
        out.extend(finish_seqs(&mut m));
        assert_eq!(out, [u32::MAX - 1, u32::MAX, 0, 1, 2]);
        assert_eq!((m.stats.lost, m.stats.late), (0, 0));
    }

    #[test]
    fn finish_flushes_in_order() {
        let mut m = ChunkMerge::new(1, true, Duration::from_secs(60));
        m.push(0, chunk(&[5, 3, 1]));
        assert_eq!(finish_seqs(&mut m), [1, 3, 5]);
        assert_eq!(m.stats.lost, 2);
    }

    #[test]
    fn waits_for_an_empty_source_before_releasing_later_records() {
        // CPU 1 has nothing yet; CPU 0 holds 2 and 3. Sequence 1 (on CPU 1)
        // is due first: nothing may be released before the gap timeout.
        let t0 = Instant::now();
        let mut m = ChunkMerge::new(2, true, Duration::from_millis(100));
        m.push(0, chunk_of(&[2, 3], 0));
        let mut out = ready_seqs(&mut m, t0);
        out.extend(ready_seqs(&mut m, t0 + Duration::from_millis(99)));
        assert!(out.is_empty());
        // 1 comes: everything in order.
        m.push(1, chunk_of(&[1], 1));
        out.extend(ready_seqs(&mut m, t0 + Duration::from_millis(99)));
        assert_eq!(out, [1, 2, 3]);
        // 5 on CPU 0, 4 missing on CPU 1: held until the timeout, then skipped.
        m.push(0, chunk_of(&[5], 0));
        out.extend(ready_seqs(&mut m, t0 + Duration::from_millis(200)));
        assert_eq!(out.len(), 3);
        out.extend(ready_seqs(&mut m, t0 + Duration::from_millis(301)));
        assert_eq!(out, [1, 2, 3, 5]);
        assert_eq!((m.stats.lost, m.stats.late), (1, 0));
        m.push(1, chunk_of(&[4, 6], 1));
        out.extend(ready_seqs(&mut m, t0 + Duration::from_millis(302)));
        assert_eq!(out, [1, 2, 3, 5, 6]);
        assert_eq!((m.stats.lost, m.stats.late), (1, 1));
    }

    #[test]
    fn duplicates_across_sources_keep_the_first_arrival() {
        let mut m = ChunkMerge::new(2, true, Duration::from_secs(1));
        m.push(1, chunk_of(&[1], 1));
        m.push(0, chunk_of(&[1, 2], 0));
        let mut got = Vec::new();
        m.ready(Instant::now(), &mut emit_into(&mut got)).unwrap();
        assert_eq!(lines(&got), ["1 1", "2 0"]);
        assert_eq!(m.stats.late, 1);
        assert_eq!(m.buffered(), 0);
    }

    /// xorshift, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The same arrivals, release calls and end as one heap of every
    /// record: the same records in the same order and the same counts.
    #[test]
    fn releases_exactly_what_one_heap_of_all_records_releases() {
        for seed in 1..400u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let sources = 1 + rng.below(4) as usize;
            let from_start = rng.below(4) != 0;
            let gap = Duration::from_millis(100);
            let base: u32 = if rng.below(3) == 0 { u32::MAX - 50 } else { 0 };
            let total = 20 + rng.below(200) as u32;
            // Deal sequence numbers to sources in increasing order, then
            // damage the streams: gaps, duplicates, a swap within a source.
            let mut streams: Vec<Vec<u32>> = vec![Vec::new(); sources];
            for i in 1..=total {
                let s = base.wrapping_add(i);
                match rng.below(20) {
                    0 => {}
                    1 => {
                        let a = rng.below(sources as u64) as usize;
                        let b = rng.below(sources as u64) as usize;
                        streams[a].push(s);
                        streams[b].push(s);
                    }
                    _ => streams[rng.below(sources as u64) as usize].push(s),
                }
            }
            for st in &mut streams {
                if st.len() > 3 && rng.below(3) == 0 {
                    let i = rng.below(st.len() as u64 - 1) as usize;
                    st.swap(i, i + 1);
                }
            }
            let mut reference: HeapMerger<String> = HeapMerger::new(from_start, gap);
            let mut ours: ChunkMerge<TestChunk> = ChunkMerge::new(sources, from_start, gap);
            let (mut want, mut got) = (Vec::new(), Vec::<Vec<u8>>::new());
            let t0 = Instant::now();
            let mut now = t0;
            let mut pos = vec![0usize; sources];
            while pos.iter().zip(&streams).any(|(p, s)| *p < s.len()) {
                let src = rng.below(sources as u64) as usize;
                let n = (1 + rng.below(6) as usize).min(streams[src].len() - pos[src]);
                if n > 0 {
                    let part = &streams[src][pos[src]..pos[src] + n];
                    pos[src] += n;
                    for s in part {
                        reference.push(*s, format!("{s} {src}"));
                    }
                    ours.push(src, chunk_of(part, src));
                }
                if rng.below(3) == 0 {
                    now += Duration::from_millis(rng.below(120));
                    let mut v = Vec::new();
                    reference.ready(now, &mut v);
                    want.extend(v);
                    ours.ready(now, &mut |p: Piece<'_, TestChunk>| -> Result<(), ()> {
                        got.push(p.bytes().to_vec());
                        Ok(())
                    })
                    .unwrap();
                    assert_eq!(lines(&got), want, "seed {seed} after ready");
                    assert_eq!(ours.buffered(), reference.heap.len(), "seed {seed}");
                }
            }
            let mut v = Vec::new();
            reference.finish(&mut v);
            want.extend(v);
            ours.finish(&mut |p: Piece<'_, TestChunk>| -> Result<(), ()> {
                got.push(p.bytes().to_vec());
                Ok(())
            })
            .unwrap();
            assert_eq!(lines(&got), want, "seed {seed} at finish");
            assert_eq!(ours.stats, reference.stats, "seed {seed}");
        }
    }

    #[test]
    fn interleaved_sources_come_out_in_order_and_a_gap_waits() {
        let gap = Duration::from_secs(2);
        let mut m: ChunkMerge<TestChunk> = ChunkMerge::new(2, true, gap);
        m.push(0, chunk(&[1, 3, 5, 8]));
        m.push(1, chunk(&[2, 4, 6, 9]));
        let mut got = Vec::new();
        let t0 = Instant::now();
        m.ready(t0, &mut |p: Piece<'_, TestChunk>| -> Result<(), ()> {
            got.push(p.bytes().to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(text(&got), [1, 2, 3, 4, 5, 6]);
        // 7 is missing: nothing more until the gap timeout.
        m.ready(
            t0 + Duration::from_secs(1),
            &mut |p: Piece<'_, TestChunk>| -> Result<(), ()> {
                got.push(p.bytes().to_vec());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got.len(), 6);
        m.ready(
            t0 + Duration::from_secs(4),
            &mut |p: Piece<'_, TestChunk>| -> Result<(), ()> {
                got.push(p.bytes().to_vec());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(text(&got), [1, 2, 3, 4, 5, 6, 8, 9]);
        assert_eq!(m.stats.lost, 1);
    }
}
