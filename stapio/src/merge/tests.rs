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
/// (sequence, arrival); a gap is skipped at once when every source has a
/// record in it or found its relay file empty `settle` after the least
/// record came.
/// (sequence, arrival id, arrival time, source, record).
type Entry<T> = (u64, u64, Instant, usize, T);

struct HeapMerger<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    sources: usize,
    /// Per source: the latest question its empty read answered.
    empty_probe: Vec<Option<Instant>>,
    settle: Duration,
    next_id: u64,
    expected: Option<u64>,
    last_seen: Option<u64>,
    gap_since: Option<Instant>,
    gap_timeout: Duration,
    stats: MergeStats,
}

impl<T: Ord> HeapMerger<T> {
    fn new(sources: usize, from_start: bool, gap_timeout: Duration, settle: Duration) -> Self {
        HeapMerger {
            heap: BinaryHeap::new(),
            sources,
            empty_probe: vec![None; sources],
            settle,
            next_id: 0,
            expected: from_start.then_some(1),
            last_seen: None,
            gap_since: None,
            gap_timeout,
            stats: MergeStats::default(),
        }
    }

    fn push(&mut self, s: u32, src: usize, item: T, at: Instant) {
        let seq = unwrap_sequence(self.expected.or(self.last_seen), s);
        if self.expected.is_some_and(|e| seq < e) {
            self.stats.late += 1;
            return;
        }
        self.last_seen = Some(seq);
        self.heap.push(Reverse((seq, self.next_id, at, src, item)));
        self.next_id += 1;
    }

    fn empty(&mut self, src: usize, probed_at: Instant) {
        let e = &mut self.empty_probe[src];
        *e = Some(e.map_or(probed_at, |p| p.max(probed_at)));
    }

    fn ready(&mut self, now: Instant, out: &mut Vec<T>) {
        loop {
            let Some((min, min_at)) = self.heap.peek().map(|Reverse(h)| (h.0, h.2)) else {
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
                let all_past = (0..self.sources).all(|src| {
                    self.empty_probe[src].is_some_and(|p| p >= min_at + self.settle)
                        || self.heap.iter().any(|Reverse(h)| h.3 == src)
                });
                if !all_past {
                    let since = *self.gap_since.get_or_insert(now);
                    if now.duration_since(since) < self.gap_timeout {
                        return;
                    }
                }
                self.stats.lost += min - expected;
            }
            let Some(Reverse((seq, _, _, _, item))) = self.heap.pop() else {
                return;
            };
            self.expected = Some(seq + 1);
            self.gap_since = None;
            self.stats.delivered += 1;
            out.push(item);
        }
    }

    fn finish(&mut self, out: &mut Vec<T>) {
        while let Some(Reverse((seq, _, _, _, item))) = self.heap.pop() {
            if settle(&mut self.stats, &mut self.expected, seq) {
                out.push(item);
            }
        }
    }
}

fn emit_into(got: &mut Vec<Vec<u8>>) -> impl FnMut(Piece<'_, TestChunk>) -> Result<(), ()> + '_ {
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
    // Source 1 has nothing queued: it may still bring 3.
    let mut m = ChunkMerge::new(2, true, Duration::from_millis(100));
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
fn a_gap_every_source_is_past_is_skipped_at_once() {
    let t0 = Instant::now();
    let mut m = ChunkMerge::new(1, true, Duration::from_secs(60));
    m.push(0, chunk(&[1, 2, 4, 7]));
    assert_eq!(ready_seqs(&mut m, t0), [1, 2, 4, 7]);
    assert_eq!((m.stats.lost, m.stats.late), (3, 0));
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
        let settle = Duration::from_millis(rng.below(3) * 20);
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
        let mut reference: HeapMerger<String> = HeapMerger::new(sources, from_start, gap, settle);
        let mut ours: ChunkMerge<TestChunk> =
            ChunkMerge::new(sources, from_start, gap).with_settle(settle);
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
                    reference.push(*s, src, format!("{s} {src}"), now);
                }
                ours.push_at(src, chunk_of(part, src), now);
                if seed == 1 {
                    eprintln!("push {src} {part:?}");
                }
            }
            if rng.below(5) == 0 {
                let src = rng.below(sources as u64) as usize;
                reference.empty(src, now);
                ours.empty(src, now);
                if seed == 1 {
                    eprintln!("empty {src}");
                }
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
fn interleaved_sources_come_out_in_order_and_a_gap_waits_for_an_empty_source() {
    let gap = Duration::from_secs(2);
    let mut m: ChunkMerge<TestChunk> = ChunkMerge::new(2, true, gap);
    m.push(0, chunk(&[1, 3, 5, 8]));
    m.push(1, chunk(&[2, 4, 6, 9, 11]));
    let t0 = Instant::now();
    // 7 is missing, but both sources are past it: skipped at once. Then
    // 10 is missing and source 0 has nothing queued: 11 waits.
    assert_eq!(ready_seqs(&mut m, t0), [1, 2, 3, 4, 5, 6, 8, 9]);
    assert_eq!(m.stats.lost, 1);
    assert!(ready_seqs(&mut m, t0 + Duration::from_secs(1)).is_empty());
    m.push(0, chunk(&[12]));
    assert_eq!(ready_seqs(&mut m, t0 + Duration::from_secs(1)), [11, 12]);
    assert_eq!(m.stats.lost, 2);
    // 13 and 14 are missing and source 0 has nothing queued: the timeout.
    m.push(1, chunk(&[15]));
    let t1 = t0 + Duration::from_secs(5);
    assert!(ready_seqs(&mut m, t1).is_empty());
    assert!(ready_seqs(&mut m, t1 + Duration::from_secs(1)).is_empty());
    assert_eq!(ready_seqs(&mut m, t1 + Duration::from_secs(3)), [15]);
    assert_eq!(m.stats.lost, 4);
}

#[test]
fn an_empty_read_begun_settle_after_the_gap_ends_the_wait() {
    let t0 = Instant::now();
    let settle = Duration::from_millis(50);
    let mut m: ChunkMerge<TestChunk> =
        ChunkMerge::new(2, true, Duration::from_secs(60)).with_settle(settle);
    // An empty read before 3 came says nothing about 2.
    m.empty(1, t0);
    m.push_at(0, chunk_of(&[1, 3], 0), t0);
    assert_eq!(ready_seqs(&mut m, t0), [1]);
    // Source 1 is not asked before 3 has been here `settle`: 2 may be on
    // its way (its number taken, not yet written).
    assert_eq!(m.waiting_on(t0).count(), 0);
    let later = t0 + settle;
    assert_eq!(m.waiting_on(later).collect::<Vec<_>>(), [1]);
    // An empty read asked for too early does not end the wait...
    m.empty(1, t0 + settle / 2);
    assert!(ready_seqs(&mut m, later).is_empty());
    assert_eq!(m.waiting_on(later).collect::<Vec<_>>(), [1]);
    // ...one asked `settle` after 3 came does: 2 is lost.
    m.empty(1, later);
    assert_eq!(m.waiting_on(later).count(), 0);
    assert_eq!(ready_seqs(&mut m, later), [3]);
    assert_eq!(m.stats.lost, 1);
}

#[test]
fn a_failed_write_consumes_its_record_and_the_next_call_goes_on() {
    let mut m: ChunkMerge<TestChunk> = ChunkMerge::new(2, true, Duration::from_secs(60));
    m.push(0, chunk_of(&[1, 2, 3, 6], 0));
    m.push(1, chunk_of(&[4, 5, 7], 1));
    let mut got = Vec::new();
    let mut n = 0;
    let r = m.ready(Instant::now(), &mut |p: Piece<'_, TestChunk>| {
        n += 1;
        if n == 2 {
            return Err(());
        }
        got.push(p.bytes().to_vec());
        Ok(())
    });
    assert_eq!(r, Err(()));
    assert_eq!(m.stats.delivered, 2);
    assert_eq!(m.buffered(), 5);
    got.extend({
        let mut more = Vec::new();
        m.ready(Instant::now(), &mut emit_into(&mut more)).unwrap();
        more
    });
    assert_eq!(lines(&got), ["1 0", "3 0", "4 1", "5 1", "6 0", "7 1"]);
    assert_eq!(m.stats.delivered, 7);
    assert_eq!((m.stats.lost, m.stats.late), (0, 0));
}
