//! Relay streams: arbitrary bytes split at arbitrary points never panic the
//! parser, every record it yields is within bounds, and the merger never
//! releases the same sequence number twice in a row.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use stap_common::protocol::Generation;
use stap_common::relay::{MAX_PDU, Merger, Parser, header_len};

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let g = if data[0] & 1 == 0 { Generation::V4 } else { Generation::V5 };
    let step = usize::from(data[0] >> 1).max(1);
    let mut p = Parser::new(g);
    let mut m = Merger::new(data[0] & 2 == 0, Duration::from_millis(0));
    let mut out = Vec::new();
    let t0 = Instant::now();
    for chunk in data[1..].chunks(step) {
        p.feed(chunk);
        while let Some(r) = p.next_record() {
            assert!(!r.payload.is_empty() && r.payload.len() <= MAX_PDU);
            assert_eq!(r.header.len(), header_len(g));
            m.push(r);
        }
        m.ready(t0 + Duration::from_secs(1), &mut out);
    }
    p.finish();
    m.finish(&mut out);
    for w in out.windows(2) {
        assert_ne!(w[0].sequence, w[1].sequence, "merge released a duplicate");
    }
    assert_eq!(out.len() as u64, m.stats.delivered);
});
