//! The relay record's wire format.
//!
//! Each record the module prints is a header followed by `pdu_len` bytes:
//! generation 4 `{u32 sequence; u32 pdu_len}`, generation 5
//! `{magic F0 9F A9 BA; u32 sequence; u32 pdu_len}`, host byte order.
//! Sequence numbers are global across CPUs and start at 1. stapio's
//! `framing` parses a stream of them, its `merge` orders them.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_both_generations() {
        let mut v = Vec::new();
        encode_record(Generation::V4, 7, b"ab", &mut v);
        assert_eq!(v.len(), header_len(Generation::V4) + 2);
        assert_eq!(&v[..4], &7u32.to_ne_bytes());
        assert_eq!(&v[4..8], &2u32.to_ne_bytes());
        let mut v = Vec::new();
        encode_record(Generation::V5, 7, b"ab", &mut v);
        assert_eq!(v.len(), header_len(Generation::V5) + 2);
        assert_eq!(&v[..4], &MAGIC);
        assert_eq!(&v[4..8], &7u32.to_ne_bytes());
        assert_eq!(&v[8..12], &2u32.to_ne_bytes());
        assert_eq!(&v[12..], b"ab");
    }
}
