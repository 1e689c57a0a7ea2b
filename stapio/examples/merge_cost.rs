//! Serial mode's merge alone, for counting its instructions per record:
//! `valgrind --tool=callgrind --toggle-collect='*merge_all*'
//! target/release/examples/merge_cost [RECORDS [CPUS]]` (default 200000
//! records of 64 B over 2 CPUs). The CPUs take numbers from one counter in
//! runs of 1-3, hand chunks of 256 KiB over as they fill, and the released
//! payloads are appended to a batch written (here: dropped) at 256 KiB, as
//! serial mode does.

use std::time::{Duration, Instant};

use stap_common::protocol::Generation;
use stap_common::record::{encode_record, header_len};
use stapio::framing::Span;
use stapio::merge::{ChunkData, ChunkMerge, Piece};

const PAYLOAD: usize = 64;
const CHUNK: usize = 256 << 10;

#[derive(Default)]
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

/// The chunks in the order they are handed over, with their CPU.
fn chunks(records: u32, cpus: usize) -> Vec<(usize, Chunk)> {
    let g = Generation::V5;
    let hl = header_len(g) as u32;
    let payload = [b'x'; PAYLOAD];
    let mut open: Vec<Chunk> = (0..cpus).map(|_| Chunk::default()).collect();
    let (mut out, mut rng, mut seq) = (Vec::new(), 0x2545_f491_4f6c_dd1d_u64, 1);
    while seq <= records {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let cpu = (rng >> 32) as usize % cpus;
        for _ in 0..1 + (rng >> 8) % 3 {
            if seq > records {
                break;
            }
            let c = &mut open[cpu];
            let start = c.buf.len() as u32;
            encode_record(g, seq, &payload, &mut c.buf);
            c.spans.push(Span {
                sequence: seq,
                start,
                payload: start + hl,
                end: c.buf.len() as u32,
            });
            if c.buf.len() + PAYLOAD + hl as usize > CHUNK {
                out.push((cpu, std::mem::take(c)));
            }
            seq += 1;
        }
    }
    out.extend(
        open.into_iter()
            .enumerate()
            .filter(|(_, c)| !c.spans.is_empty()),
    );
    out
}

#[inline(never)]
fn merge_all(cpus: usize, chunks: Vec<(usize, Chunk)>) -> (u64, usize) {
    let mut m = ChunkMerge::new(cpus, true, Duration::from_secs(2));
    let (mut batch, mut written) = (Vec::with_capacity(CHUNK + 4096), 0);
    let mut emit = |p: Piece<'_, Chunk>| -> Result<(), ()> {
        batch.extend_from_slice(p.bytes());
        if batch.len() >= CHUNK {
            written += batch.len();
            batch.clear();
        }
        Ok(())
    };
    let now = Instant::now();
    for (cpu, c) in chunks {
        m.push(cpu, c);
        m.ready(now, &mut emit).unwrap();
    }
    m.finish(&mut emit).unwrap();
    written += batch.len();
    (m.stats.delivered, written)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let records = args.next().map_or(200_000, |a| a.parse().expect("records"));
    let cpus = args.next().map_or(2, |a| a.parse().expect("cpus"));
    let (delivered, written) = merge_all(cpus, chunks(records, cpus));
    assert_eq!(
        (delivered, written),
        (u64::from(records), records as usize * PAYLOAD)
    );
    println!("{delivered} records, {written} bytes");
}
