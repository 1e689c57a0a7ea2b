//! The record pipeline: relay files -> reader threads -> (serial merge) ->
//! output file, on the simulated kernel and on plain files, next to the
//! ceiling of a plain file-to-file copy of the same bytes.
//!
//! Run: `cargo bench -p stapio --bench pipeline` (about 20 s).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stap_common::elf::build_test_module;
use stap_common::kernel::sim::{Script, SimKernel};
use stap_common::kernel::{KernelOps, Relay};
use stap_common::modname::ModName;
use stap_common::protocol::{Generation, Request};
use stap_common::relay::encode_record;
use stapio::output::Naming;
use stapio::relay::{Close, Pump, PumpConfig, PumpStats};
use stapio::signals::Signals;

const G: Generation = Generation::V5;
/// Payload bytes per configuration.
const PAYLOAD: usize = 32 << 20;
const REPS: usize = 3;

/// Relay files by CPU, as the pump takes them.
type Relays = Vec<(usize, Box<dyn Relay>)>;

fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("stapio-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pump_config(bulk: bool, out: &Path) -> PumpConfig {
    PumpConfig {
        generation: G,
        bulk,
        attach: false,
        reader_timeout: Duration::from_millis(1),
        merge_gap: Duration::from_secs(2),
        naming: Naming {
            pattern: Some(out.display().to_string()),
            rotation: None,
        },
        pin: true,
    }
}

/// Run the pump over `relays` until they are empty; the elapsed time.
fn pump(relays: Relays, bulk: bool, out: &Path) -> (Duration, PumpStats) {
    let t0 = Instant::now();
    let p = Pump::start(relays, &pump_config(bulk, out), None, Signals::new()).unwrap();
    let (stats, err) = p.close(Close::Drain);
    let dt = t0.elapsed();
    assert!(err.is_none(), "{err:?}");
    (dt, stats)
}

/// Sim source: a started simulated module whose relay buffers hold
/// every record.
fn sim_relays(ncpus: usize, size: usize) -> (SimKernel, Relays) {
    let per_cpu = PAYLOAD / size / ncpus;
    let k = SimKernel::new(ncpus);
    k.set_caller(1000, 0);
    k.set_script(
        "bench",
        Script {
            generation: G,
            begin: vec![],
            records_per_cpu: per_cpu as u32,
            record_size: size,
            exit_after_output: false,
            relay_capacity: PAYLOAD + (PAYLOAD / size + 1) * 12 + (1 << 20),
            ..Script::default()
        },
    );
    k.init_module(&build_test_module("bench", &[]), "").unwrap();
    k.set_caller(1000, 1000);
    let dir = k.open_module_dir(&ModName::new("bench").unwrap()).unwrap();
    let mut c = dir.open_control().unwrap();
    c.send(&Request::Start { target: 0 }.encode(G).unwrap())
        .unwrap();
    // Closing .cmd switches the module to overwrite mode; harmless here,
    // as its buffers hold every record.
    drop(c);
    let relays = (0..ncpus)
        .map(|cpu| (cpu, dir.open_relay(cpu).unwrap().unwrap()))
        .collect();
    (k, relays)
}

/// A relay file that is a plain file (the data already there).
struct FileRelay(File);

impl Relay for FileRelay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
    fn wait(&mut self, _timeout: Duration) -> io::Result<bool> {
        Ok(false)
    }
}

/// Write per-CPU relay streams to files, records interleaved round-robin
/// (global sequence numbers) as the module would.
fn make_relay_files(dir: &Path, ncpus: usize, size: usize) -> Vec<PathBuf> {
    let per_cpu = PAYLOAD / size / ncpus;
    let mut bufs = vec![Vec::with_capacity(PAYLOAD / ncpus + per_cpu * 12); ncpus];
    let payload = {
        let mut p = vec![b'x'; size];
        p[size - 1] = b'\n';
        p
    };
    let mut seq = 0u32;
    for _ in 0..per_cpu {
        for b in bufs.iter_mut() {
            seq += 1;
            encode_record(G, seq, &payload, b);
        }
    }
    bufs.iter()
        .enumerate()
        .map(|(cpu, b)| {
            let p = dir.join(format!("relay-{ncpus}-{size}-trace{cpu}"));
            std::fs::write(&p, b).unwrap();
            p
        })
        .collect()
}

fn file_relays(paths: &[PathBuf]) -> Relays {
    paths
        .iter()
        .enumerate()
        .map(|(cpu, p)| {
            (
                cpu,
                Box::new(FileRelay(File::open(p).unwrap())) as Box<dyn Relay>,
            )
        })
        .collect()
}

struct Row {
    source: &'static str,
    mode: &'static str,
    cpus: usize,
    size: usize,
    records: u64,
    bytes: u64,
    best: Duration,
}

fn print_row(r: &Row) {
    let s = r.best.as_secs_f64();
    println!(
        "{:<8} {:<7} {:>4} {:>6} {:>10} {:>9.1} {:>9.1} {:>12.0} {:>9.1}",
        r.source,
        r.mode,
        r.cpus,
        format!("{}B", r.size),
        r.records,
        r.bytes as f64 / 1048576.0,
        s * 1000.0,
        r.records as f64 / s,
        r.bytes as f64 / 1048576.0 / s,
    );
}

/// The ceiling: copy `src` to a new file with `io::copy`, or with 1 MiB
/// read/write blocks (`dd bs=1M`). Best of REPS, in MB/s.
fn ceiling(src: &Path, dst: &Path, block: Option<usize>) -> (u64, Duration) {
    let mut best = Duration::MAX;
    let mut n = 0;
    for _ in 0..REPS {
        let t0 = Instant::now();
        let mut i = File::open(src).unwrap();
        let mut o = File::create(dst).unwrap();
        n = match block {
            None => io::copy(&mut i, &mut o).unwrap(),
            Some(bs) => {
                let mut buf = vec![0u8; bs];
                let mut total = 0u64;
                loop {
                    let k = i.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    o.write_all(&buf[..k]).unwrap();
                    total += k as u64;
                }
                total
            }
        };
        o.sync_data().ok();
        best = best.min(t0.elapsed());
    }
    (n, best)
}

fn main() {
    let dir = scratch();
    let out = dir.join("out");
    println!(
        "stapio record pipeline, {} MiB of payload per row, generation {G}, best of {REPS}; output in {}",
        PAYLOAD >> 20,
        dir.display()
    );
    println!(
        "{:<8} {:<7} {:>4} {:>6} {:>10} {:>9} {:>9} {:>12} {:>9}",
        "source", "mode", "cpus", "record", "records", "MiB", "ms", "records/s", "MiB/s"
    );
    let t_all = Instant::now();
    for size in [64usize, 1024] {
        for ncpus in [1usize, 2] {
            let files = make_relay_files(&dir, ncpus, size);
            for (mode, bulk) in [("serial", false), ("bulk", true)] {
                for source in ["sim", "file"] {
                    let mut best = Duration::MAX;
                    let mut stats = PumpStats::default();
                    for _ in 0..REPS {
                        let (dt, st) = if source == "sim" {
                            let (_k, relays) = sim_relays(ncpus, size);
                            pump(relays, bulk, &out)
                        } else {
                            pump(file_relays(&files), bulk, &out)
                        };
                        assert_eq!(st.lost_messages + st.lost_bytes + st.unexpected, 0);
                        best = best.min(dt);
                        stats = st;
                    }
                    assert_eq!(stats.bytes as usize, PAYLOAD / size / ncpus * ncpus * size);
                    print_row(&Row {
                        source,
                        mode,
                        cpus: ncpus,
                        size,
                        records: stats.records,
                        bytes: stats.bytes,
                        best,
                    });
                }
            }
            for f in &files {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    println!();
    println!("ceiling: file-to-file copy of a relay stream (headers included)");
    for size in [64usize, 1024] {
        let files = make_relay_files(&dir, 1, size);
        for (name, block) in [("io::copy", None), ("dd bs=1M", Some(1 << 20))] {
            let (n, dt) = ceiling(&files[0], &out, block);
            println!(
                "{:<10} {:>6} {:>9.1} MiB {:>9.1} ms {:>9.1} MiB/s",
                name,
                format!("{size}B"),
                n as f64 / 1048576.0,
                dt.as_secs_f64() * 1000.0,
                n as f64 / 1048576.0 / dt.as_secs_f64()
            );
        }
        for f in &files {
            let _ = std::fs::remove_file(f);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("\ntotal {:.1} s", t_all.elapsed().as_secs_f64());
}
