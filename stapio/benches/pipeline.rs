//! The record pipeline: relay files -> reader threads -> (serial merge) ->
//! output file, on the simulated kernel and on plain files, next to the
//! ceiling of a plain file-to-file copy of the same bytes.
//!
//! Run: `cargo bench -p stapio --bench pipeline` (about 15 s). Every run
//! checks what was written (record count and size of every output file)
//! and panics on a difference, so CI can run it as a smoke test.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stap_common::elf::build_test_module;
use stap_common::kernel::sim::{Script, SimKernel};
use stap_common::kernel::{KernelOps, Relay};
use stap_common::modname::ModName;
use stap_common::protocol::{Generation, Request};
use stap_common::record::{encode_record, header_len};
use stap_common::sys;
use stapio::framing::Parser;
use stapio::output::Naming;
use stapio::relay::{Close, Pump, PumpConfig, PumpStats};
use stapio::signals::Signals;

const G: Generation = Generation::V5;
/// Payload bytes per configuration.
const PAYLOAD: usize = 32 << 20;
const REPS: usize = 5;

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
        reader_timeout: Some(Duration::from_millis(1)),
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
    /// Wall time of each repetition, sorted.
    times: Vec<Duration>,
    /// Expected records minus records found in the output (last rep).
    lost: i64,
    /// CPU time of all repetitions / payload delivered by them.
    cpu_per_gb: f64,
    peak_rss_kib: u64,
}

fn print_header() {
    println!(
        "{:<6} {:<6} {:>4} {:>6} {:>8} {:>7} {:>10} {:>8} {:>8} {:>5} {:>8} {:>8}",
        "source",
        "mode",
        "cpus",
        "record",
        "records",
        "ms",
        "records/s",
        "MiB/s",
        "median",
        "lost",
        "cpu-s/GB",
        "RSS MiB"
    );
}

fn print_row(r: &Row) {
    let best = r.times[0].as_secs_f64();
    let median = r.times[r.times.len() / 2].as_secs_f64();
    let mib = r.bytes as f64 / 1048576.0;
    println!(
        "{:<6} {:<6} {:>4} {:>6} {:>8} {:>7.1} {:>10.0} {:>8.1} {:>8.1} {:>5} {:>8.2} {:>8.1}",
        r.source,
        r.mode,
        r.cpus,
        format!("{}B", r.size),
        r.records,
        best * 1000.0,
        r.records as f64 / best,
        mib / best,
        mib / median,
        r.lost,
        r.cpu_per_gb,
        r.peak_rss_kib as f64 / 1024.0,
    );
}

/// The process's peak resident set so far (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What the pump wrote: (records, payload bytes), after checking every
/// file's size. Serial: one file of payloads, each ending in its only
/// newline. Bulk: one file per CPU of whole records.
fn check_output(out: &Path, bulk: bool, ncpus: usize, size: usize) -> (u64, u64) {
    if !bulk {
        let bytes = std::fs::read(out).expect("serial output");
        let records = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(
            bytes.len() as u64,
            records * size as u64,
            "serial output: {} bytes is not {records} records of {size}",
            bytes.len()
        );
        return (records, bytes.len() as u64);
    }
    let (mut records, mut payload) = (0u64, 0u64);
    for cpu in 0..ncpus {
        let path = PathBuf::from(format!("{}_{cpu}", out.display()));
        let bytes = std::fs::read(&path).expect("bulk output");
        let mut p = Parser::new(G);
        p.feed(&bytes);
        let mut n = 0u64;
        while let Some(r) = p.next_record() {
            assert_eq!(r.payload.len(), size, "{}: record size", path.display());
            n += 1;
        }
        assert_eq!(p.finish(), 0, "{}: trailing bytes", path.display());
        assert_eq!(p.stats.resyncs, 0, "{}: garbage", path.display());
        assert_eq!(
            bytes.len() as u64,
            n * (size + header_len(G)) as u64,
            "{}: size",
            path.display()
        );
        records += n;
        payload += p.stats.bytes;
    }
    (records, payload)
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
    // STAPIO_BENCH_FILTER=file/bulk/1/64: only rows whose
    // source/mode/cpus/size contains that (for profiling).
    let filter = std::env::var("STAPIO_BENCH_FILTER").ok();
    let reps: usize = std::env::var("STAPIO_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(REPS);
    println!(
        "stapio record pipeline, {} MiB of payload per row, generation {G}, {reps} runs per row; output in {}",
        PAYLOAD >> 20,
        dir.display()
    );
    println!(
        "best and median MiB/s of payload; lost = expected records minus records in the output;"
    );
    println!(
        "cpu-s/GB = user+sys CPU seconds of the whole process per 1e9 payload bytes (the sim rows"
    );
    println!(
        "include the simulated module producing the records); RSS = peak resident set of the process"
    );
    println!("so far (VmHWM, a high-water mark: it never goes down from row to row)");
    print_header();
    let t_all = Instant::now();
    for size in [64usize, 1024] {
        for ncpus in [1usize, 2] {
            let files = make_relay_files(&dir, ncpus, size);
            let per_cpu = PAYLOAD / size / ncpus;
            let expected = (per_cpu * ncpus) as u64;
            for (mode, bulk) in [("serial", false), ("bulk", true)] {
                for source in ["sim", "file"] {
                    let name = format!("{source}/{mode}/{ncpus}/{size}");
                    if !filter.as_deref().is_none_or(|f| name.contains(f)) {
                        continue;
                    }
                    let mut times = Vec::new();
                    let mut stats = PumpStats::default();
                    let (mut cpu, mut delivered_bytes) = (Duration::ZERO, 0u64);
                    let mut found = (0, 0);
                    for _ in 0..reps {
                        let c0 = sys::cpu_time().unwrap();
                        let (dt, st) = if source == "sim" {
                            let (_k, relays) = sim_relays(ncpus, size);
                            pump(relays, bulk, &out)
                        } else {
                            pump(file_relays(&files), bulk, &out)
                        };
                        cpu += sys::cpu_time().unwrap() - c0;
                        assert_eq!(
                            (st.lost_messages, st.lost_bytes, st.unexpected),
                            (0, 0, 0),
                            "{source} {mode} {ncpus} CPUs {size}B: loss counted"
                        );
                        found = check_output(&out, bulk, ncpus, size);
                        delivered_bytes += found.1;
                        times.push(dt);
                        stats = st;
                    }
                    times.sort();
                    print_row(&Row {
                        source,
                        mode,
                        cpus: ncpus,
                        size,
                        records: stats.records,
                        bytes: stats.bytes,
                        times,
                        lost: expected as i64 - found.0 as i64,
                        cpu_per_gb: cpu.as_secs_f64() / (delivered_bytes as f64 / 1e9),
                        peak_rss_kib: peak_rss_kib(),
                    });
                    assert_eq!(
                        found,
                        (expected, expected * size as u64),
                        "records in the output"
                    );
                    assert_eq!(stats.bytes, expected * size as u64, "payload bytes read");
                }
            }
            for f in &files {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    println!();
    println!(
        "ceiling: file-to-file copy of a relay stream, in MiB/s of all bytes (headers included; a bulk"
    );
    println!("row writes 76/64 of its payload figure for 64B records, 1036/1024 for 1KiB)");
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
