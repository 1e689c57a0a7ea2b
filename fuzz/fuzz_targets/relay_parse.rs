//! Relay streams: arbitrary bytes split at arbitrary points never panic the
//! parser, every record it yields is within bounds, and the merge releases
//! every payload it was given at most once, never the same sequence number
//! twice in a row.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use stap_common::record::{MAX_PDU, header_len};
use stapio::framing::{Parser, Span};
use stapio::merge::{ChunkData, ChunkMerge, Piece};
use stap_common::protocol::Generation;

/// What a reader hands the merge: the bytes read and the records in them.
struct Chunk {
    buf: Vec<u8>,
    spans: Vec<Span>,
}

impl ChunkData for Chunk {
    fn buf(&self) -> &[u8] {
        &self.buf
    }
    fn spans(&self) -> &[Span] {
        &self.spans
    }
}

/// The sequence number of a released payload (strays are copies: none).
fn sequence(p: &Piece<'_, Chunk>) -> Option<u32> {
    match p {
        Piece::Chunk(c, r) => c
            .spans
            .iter()
            .find(|s| s.payload() == *r)
            .map(|s| s.sequence),
        Piece::Copied(_) => None,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let g = if data[0] & 1 == 0 { Generation::V4 } else { Generation::V5 };
    let step = usize::from(data[0] >> 1).max(1);
    let mut p = Parser::new(g);
    let mut m: ChunkMerge<Chunk> = ChunkMerge::new(1, data[0] & 2 == 0, Duration::from_millis(0));
    let (mut pushed, mut released) = (0u64, 0u64);
    let mut last: Option<u32> = None;
    let mut emit = |piece: Piece<'_, Chunk>| -> Result<(), ()> {
        assert!(!piece.bytes().is_empty() && piece.bytes().len() <= MAX_PDU);
        let seq = sequence(&piece);
        if let (Some(a), Some(b)) = (last, seq) {
            assert_ne!(a, b, "merge released a duplicate");
        }
        last = seq;
        released += 1;
        Ok(())
    };
    let t0 = Instant::now();
    for part in data[1..].chunks(step) {
        p.feed(part);
        let mut spans = Vec::new();
        while let Some(s) = p.next_span() {
            assert!(!s.is_empty() && s.len() <= MAX_PDU);
            assert_eq!(s.header().len(), header_len(g));
            spans.push(s);
        }
        pushed += spans.len() as u64;
        let buf = p.buffer().to_vec();
        m.push(0, Chunk { buf, spans });
        m.ready(t0 + Duration::from_secs(1), &mut emit).unwrap();
    }
    p.finish();
    m.finish(&mut emit).unwrap();
    assert_eq!(released, m.stats.delivered);
    assert_eq!(pushed, m.stats.delivered + m.stats.late);
});
