//! Relay record framing: [`Parser`] turns the byte stream of one `traceN`
//! file into records (the wire format is `stap_common::record`),
//! resynchronising after garbage (on the magic in generation 5; by dropping
//! the buffered bytes in generation 4, which has no magic).
//! [`crate::merge::ChunkMerge`] puts the records of all CPUs back in
//! sequence order and counts gaps.

use stap_common::protocol::Generation;
use stap_common::record::{MAGIC, MAX_PDU, header_len};

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

#[cfg(test)]
mod tests {
    use super::*;
    use stap_common::record::encode_record;

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
}
