use super::*;
use stap_common::record::encode_record;

/// Serial batches mix copied small payloads and large ones written
/// from the readers' buffers: the file has them all, in sequence order,
/// and every buffer goes back to its reader.
#[test]
fn serial_batches_keep_order_across_small_and_large_payloads() {
    let g = Generation::V4;
    let d = std::env::temp_dir().join(format!("stapio-batch-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let naming = Naming {
        pattern: Some(format!("{}/out", d.display())),
        rotation: None,
    };
    let mut out = Output::open(naming, crate::output::Stream::Serial, None, 0).unwrap();
    let mut merger: ChunkMerge<Held> = ChunkMerge::new(2, true, Duration::from_secs(2));
    let (back, returned) = mpsc::channel();
    let mut want = Vec::new();
    let payload = |seq: u32| {
        let len = if seq % 3 == 0 {
            700 + seq as usize
        } else {
            10 + seq as usize
        };
        let mut p = format!("{seq}:").into_bytes();
        p.resize(len - 1, b'.');
        p.push(b'\n');
        p
    };
    for seq in 1..=60u32 {
        want.extend(payload(seq));
    }
    // Source 0 has the odd sequence numbers, source 1 the even ones,
    // three chunks each.
    for part in 0..3u32 {
        for src in 0..2u32 {
            let mut buf = Vec::new();
            let mut spans = Vec::new();
            for seq in (1 + part * 20..=20 + part * 20).filter(|s| s % 2 == (src + 1) % 2) {
                let start = buf.len() as u32;
                encode_record(g, seq, &payload(seq), &mut buf);
                spans.push(Span {
                    sequence: seq,
                    start,
                    payload: start + 8,
                    end: buf.len() as u32,
                });
            }
            merger.push(
                src as usize,
                Held {
                    buf,
                    spans,
                    back: back.clone(),
                },
            );
        }
    }
    let mut release = Release {
        per_record: false,
        staged: Vec::new(),
        parts: Vec::new(),
    };
    release.run(&mut merger, &mut out, false).unwrap();
    release.run(&mut merger, &mut out, true).unwrap();
    out.finish().unwrap();
    assert_eq!(std::fs::read(d.join("out")).unwrap(), want);
    assert_eq!(
        returned.try_iter().count(),
        6,
        "every chunk buffer came back"
    );
    assert_eq!(merger.stats.delivered, 60);
    let _ = std::fs::remove_dir_all(&d);
}

/// Bulk mode writes runs of adjacent records; bytes skipped to
/// resynchronise are not written.
#[test]
fn bulk_runs_leave_out_skipped_garbage() {
    let g = Generation::V5;
    let (mut good, mut stream) = (Vec::new(), Vec::new());
    for (i, junk) in [(1u32, false), (2, true), (3, false), (4, true)] {
        let mut rec = Vec::new();
        encode_record(g, i, format!("record {i}\n").as_bytes(), &mut rec);
        if junk {
            stream.extend_from_slice(b"junk");
        }
        stream.extend_from_slice(&rec);
        good.extend_from_slice(&rec);
    }
    let mut p = Parser::new(g);
    p.feed(&stream);
    let spans: Vec<Span> = std::iter::from_fn(|| p.next_span()).collect();
    assert_eq!(spans.len(), 4);
    let d = std::env::temp_dir().join(format!("stapio-runs-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let naming = Naming {
        pattern: Some(format!("{}/f", d.display())),
        rotation: None,
    };
    let mut out = Output::open(naming, crate::output::Stream::Bulk { cpu: 0 }, None, 0).unwrap();
    write_runs(&mut out, p.buffer(), &spans).unwrap();
    out.finish().unwrap();
    assert_eq!(std::fs::read(d.join("f_0")).unwrap(), good);
    assert_eq!(p.stats.resync_bytes, 8);
    let _ = std::fs::remove_dir_all(&d);
}
