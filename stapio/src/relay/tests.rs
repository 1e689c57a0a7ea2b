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

/// A relay whose bytes a test adds while the pump runs.
struct MemRelay(Arc<std::sync::Mutex<Vec<u8>>>);

impl Relay for MemRelay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut b = self.0.lock().unwrap();
        let n = b.len().min(buf.len());
        buf[..n].copy_from_slice(&b[..n]);
        b.drain(..n);
        Ok(n)
    }
    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if !self.0.lock().unwrap().is_empty() {
                return Ok(true);
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(false)
    }
}

/// Serial mode into DIR/out, with a gap timeout (600 s) no test waits out.
fn serial_to_file(g: Generation, d: &std::path::Path) -> PumpConfig {
    PumpConfig {
        generation: g,
        bulk: false,
        attach: false,
        reader_timeout: None,
        merge_gap: Duration::from_secs(600),
        naming: Naming {
            pattern: Some(format!("{}/out", d.display())),
            rotation: None,
        },
        pin: false,
    }
}

/// CPU 0 lost sequence 3 (the module spent the number); CPU 1 prints
/// nothing and its reader has no poll timeout. The merge asks CPU 1's
/// reader to look, and skips the gap when it finds nothing: 4 and 5 are
/// written long before the gap timeout.
#[test]
fn a_gap_is_skipped_once_an_idle_cpu_has_looked() {
    let g = Generation::V4;
    let d = std::env::temp_dir().join(format!("stapio-idle-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let mut bytes = Vec::new();
    for seq in [1u32, 2, 4, 5] {
        encode_record(g, seq, format!("{seq}\n").as_bytes(), &mut bytes);
    }
    let busy = Arc::new(std::sync::Mutex::new(bytes));
    let idle = Arc::new(std::sync::Mutex::new(Vec::new()));
    let relays: Vec<(usize, Box<dyn Relay>)> =
        vec![(0, Box::new(MemRelay(busy))), (1, Box::new(MemRelay(idle)))];
    let cfg = serial_to_file(g, &d);
    let mut pump = Pump::start(relays, &cfg, None, Signals::new()).unwrap();
    pump.kick();
    let t0 = Instant::now();
    while std::fs::read(d.join("out")).unwrap() != b"1\n2\n4\n5\n" {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the gap is still held"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let (stats, err) = pump.close(Close::Drain);
    assert!(err.is_none(), "{err:?}");
    assert_eq!((stats.records, stats.lost_messages), (4, 1));
    let _ = std::fs::remove_dir_all(&d);
}

/// Two CPUs printing with numbers spent on dropped records, one CPU
/// stopping early: everything printed arrives, in order, without the merge
/// waiting out gap timeouts (600 s here) or spinning.
#[test]
fn gaps_while_printing_cost_no_timeouts() {
    let g = Generation::V4;
    let d = std::env::temp_dir().join(format!("stapio-gaps-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let cpus: Vec<Arc<std::sync::Mutex<Vec<u8>>>> = (0..2)
        .map(|_| Arc::new(std::sync::Mutex::new(Vec::new())))
        .collect();
    let relays: Vec<(usize, Box<dyn Relay>)> = cpus
        .iter()
        .enumerate()
        .map(|(i, c)| (i, Box::new(MemRelay(c.clone())) as Box<dyn Relay>))
        .collect();
    let cfg = serial_to_file(g, &d);
    let mut pump = Pump::start(relays, &cfg, None, Signals::new()).unwrap();
    pump.kick();
    let t0 = Instant::now();
    let mut want = Vec::new();
    let total = 300_000u32;
    for seq in 1..=total {
        let cpu = if seq > total * 3 / 5 {
            1
        } else {
            (seq / 3 % 2) as usize
        };
        if seq % 7 == 0 {
            continue;
        }
        let payload = format!("{seq:>63}\n");
        want.extend_from_slice(payload.as_bytes());
        let mut rec = Vec::new();
        encode_record(g, seq, payload.as_bytes(), &mut rec);
        cpus[cpu].lock().unwrap().extend_from_slice(&rec);
        if seq % 4096 == 0 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    while std::fs::metadata(d.join("out")).unwrap().len() < want.len() as u64 {
        assert!(t0.elapsed() < Duration::from_secs(60), "a gap is held");
        thread::sleep(Duration::from_millis(5));
    }
    let (stats, err) = pump.close(Close::Drain);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(std::fs::read(d.join("out")).unwrap(), want);
    assert_eq!(stats.lost_messages, u64::from(total / 7));
    eprintln!(
        "{:?}; merger CPU {:?}, readers {:?}",
        t0.elapsed(),
        stats.merger_cpu,
        stats.reader_cpu
    );
    let _ = std::fs::remove_dir_all(&d);
}
