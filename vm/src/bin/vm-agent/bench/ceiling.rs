//! The copy ceiling of the guest: what reading the relay files alone achieves, splice, and
//! the memory bandwidth.

use std::fs;
use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{FIXTURES, sys};

use super::throughput::read_param;
use super::{HLEN, ncpus, pieces};

/// The copy ceiling: pmod started at load (autostart=1, no stapio), one
/// pinned thread per CPU reading its traceN into a 1 MiB buffer that is
/// thrown away. Returns (seconds, payload bytes).
pub(crate) fn ceiling(size: u64, prints: u64) -> Result<(f64, u64), String> {
    let params = format!("autostart=1 records={prints} record_size={size}");
    let path = format!("{FIXTURES}/pmod.ko");
    sys::finit_module(&path, &params).map_err(|e| format!("load pmod: {e}"))?;
    let t0 = Instant::now();
    let total = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for cpu in 0..ncpus() {
        let total = total.clone();
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            sys::pin_to_cpu(cpu);
            let p = format!("/proc/systemtap/pmod/trace{cpu}");
            let mut f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&p)
                .map_err(|e| format!("open {p}: {e}"))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut idle_done = false;
            loop {
                match f.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        total.fetch_add(n as u64, Ordering::Relaxed);
                        idle_done = false;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENODATA) | Some(libc::EAGAIN) | Some(libc::EINTR)
                        ) => {}
                    Err(e) => return Err(format!("read {p}: {e}")),
                }
                // Empty: done once every CPU has printed everything and a
                // last read after that found nothing.
                if idle_done {
                    return Ok(());
                }
                if read_param("producing") == Some(0) {
                    idle_done = true;
                    continue;
                }
                let mut pfd = libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                sys::poll(&mut pfd, 10);
            }
        }));
    }
    let mut err = None;
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            err.get_or_insert(e);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let unload = sys::delete_module("pmod");
    if let Some(e) = err {
        return Err(e);
    }
    unload.map_err(|e| format!("unload pmod: {e}"))?;
    let raw = total.load(Ordering::Relaxed);
    // Payload share of the relay bytes.
    let payload = raw * size / (size + pieces(size) * HLEN);
    Ok((secs, payload))
}

/// Whether splice(2) can move data out of a relay file (it would spare
/// bulk mode a copy): the answer for pmod's procfs trace0.
pub(crate) fn splice_probe() -> String {
    let path = format!("{FIXTURES}/pmod.ko");
    if let Err(e) = sys::finit_module(&path, "autostart=1 records=100 record_size=64") {
        return format!("load_failed:{e}");
    }
    std::thread::sleep(Duration::from_millis(50));
    let r = fs::File::open("/proc/systemtap/pmod/trace0")
        .and_then(|f| sys::splice_to_pipe(std::os::fd::AsFd::as_fd(&f), 4096));
    let _ = sys::delete_module("pmod");
    match r {
        Ok(n) => format!("ok:{n}"),
        Err(e) => format!("errno:{}", e.raw_os_error().unwrap_or(0)),
    }
}

/// Memory bandwidth: GB/s of copying a 64 MiB buffer (read + write counted once).
pub(crate) fn memory_bandwidth() -> f64 {
    let n = 64 << 20;
    let src = vec![0x5au8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src);
    let reps = 8;
    let t0 = Instant::now();
    for i in 0..reps {
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst[i]);
    }
    (n * reps) as f64 / 1e9 / t0.elapsed().as_secs_f64()
}
