//! The harness's own scenarios: `boot` (the guest comes up; vm-prepare's KVM probe) and
//! `infra_boot` (the fixture modules and the harness without staprun/stapio: the
//! control/relay exchange done by hand with [`proto`]).

pub mod proto;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{
    self, ALICE, Reporter, STAPUSR, Scenario, blessed_dir, insmod_as, install_fixture, rmmod, sys,
};
use proto::{Ctl, Gen, Relay, msg};

pub const SCENARIOS: &[(&str, Scenario)] = &[("boot", boot), ("infra_boot", infra_boot)];

/// Reads control messages until `want` (relative type) arrives or the time is up.
fn collect_until(
    ctl: &mut Ctl,
    relay: &mut Relay,
    want: u32,
    timeout: Duration,
    seen: &mut Vec<(u32, Vec<u8>)>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        relay.poll().map_err(|e| format!("relay read: {e}"))?;
        match ctl.recv().map_err(|e| format!("control read: {e}"))? {
            Some((t, p)) => {
                let done = ctl.rel(t) == Some(want);
                seen.push((t, p));
                if done {
                    return Ok(());
                }
            }
            None => {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "no message {want} within {timeout:?}; saw types {:?}",
                        types(seen)
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn types(seen: &[(u32, Vec<u8>)]) -> Vec<u32> {
    seen.iter().map(|(t, _)| *t).collect()
}

fn errno(r: &io::Result<usize>) -> Option<i32> {
    r.as_ref().err().and_then(|e| e.raw_os_error())
}

/// Loads `module`, runs the whole control/relay exchange by hand, unloads it.
fn exchange(r: &mut Reporter, module: &str, generation: Gen, loader: sys::Creds, records: usize) {
    let path = blessed_dir().join(format!("{module}.ko"));
    if let Err(e) = install_fixture(module, &path, 0o644, 0, 0) {
        r.check(&format!("{module}_install"), false, e.to_string());
        return;
    }
    let malformed = generation == Gen::V5;
    let recs = format!("records={records}");
    let mut params = vec![recs.as_str(), "record_size=48"];
    if malformed {
        params.push("malformed=1");
    }
    let (owner_uid, owner_gid) = (loader.ruid, loader.rgid);
    let out = insmod_as(loader, &path, &params);
    if !r.check(
        &format!("{module}_insmod"),
        out.code == Some(0),
        out.summary(),
    ) {
        return;
    }
    let dir = format!("/proc/systemtap/{module}");
    let ncpu = harness::num_cpus();
    r.check_eq(
        &format!("{module}_cmd_mode_owner"),
        harness::stat(format!("{dir}/.cmd")),
        Some((0o600, owner_uid, owner_gid)),
    );
    for cpu in 0..ncpu {
        r.check_eq(
            &format!("{module}_trace{cpu}_mode_owner"),
            harness::stat(format!("{dir}/trace{cpu}")),
            Some((0o400, owner_uid, owner_gid)),
        );
    }
    r.check_eq(
        &format!("{module}_no_extra_trace"),
        harness::stat(format!("{dir}/trace{ncpu}")),
        None,
    );

    let mut ctl = match Ctl::open(module, generation) {
        Ok(c) => c,
        Err(e) => {
            r.check(&format!("{module}_open_cmd"), false, e.to_string());
            let _ = rmmod(module);
            return;
        }
    };
    let second = Ctl::open(module, generation);
    r.check_eq(
        &format!("{module}_second_open_ebusy"),
        second.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::EBUSY),
    );
    let out = rmmod(module);
    r.check(
        &format!("{module}_rmmod_refused_while_attached"),
        out.code != Some(0) && harness::is_loaded(module),
        out.summary(),
    );

    let mut relay = match Relay::open(module) {
        Ok(rl) => rl,
        Err(e) => {
            r.check(&format!("{module}_open_relay"), false, e.to_string());
            return;
        }
    };
    r.check_eq(&format!("{module}_relay_files"), relay.cpus(), ncpu);

    if generation == Gen::V4 {
        // One message per read; a too-small buffer loses the message with EFAULT.
        let small = ctl.recv_with(2);
        r.check_eq(
            &format!("{module}_small_read_efault"),
            small.as_ref().err().and_then(|e| e.raw_os_error()),
            Some(libc::EFAULT),
        );
        let next = ctl.recv();
        r.check(
            &format!("{module}_transport_lost_after_efault"),
            matches!(next, Ok(None)),
            format!("{next:?}"),
        );
    } else {
        let base = generation.base();
        let mut first = Vec::new();
        let got = collect_until(
            &mut ctl,
            &mut relay,
            msg::TRANSPORT,
            Duration::from_secs(5),
            &mut first,
        );
        let want = vec![
            0x7777,
            base + msg::OOB_DATA,
            base + msg::OOB_DATA,
            base + msg::REALTIME_DATA,
            base + msg::CONNECT,
            base + msg::TRANSPORT,
        ];
        r.check(
            &format!("{module}_malformed_then_transport"),
            got.is_ok() && types(&first) == want,
            format!("{got:?} types {:?}", types(&first)),
        );
        let lens: Vec<usize> = first.iter().map(|(_, p)| p.len()).collect();
        r.check_eq(
            &format!("{module}_malformed_lengths"),
            lens,
            vec![8, 0, 384, 8, 0, 0],
        );
    }

    // Writes: count semantics, unknown types, privileged types.
    r.check_eq(
        &format!("{module}_write_ready"),
        ctl.send(msg::READY, &[]).ok(),
        Some(4),
    );
    r.check_eq(
        &format!("{module}_write_short"),
        ctl.write_bytes(&[1, 2]).ok(),
        Some(0),
    );
    r.check_eq(
        &format!("{module}_write_bulk_einval"),
        errno(&ctl.send(msg::BULK, &[0; 128])),
        Some(libc::EINVAL),
    );
    r.check_eq(
        &format!("{module}_write_unknown_einval"),
        errno(&ctl.send_raw(0x7777, &[0; 8])),
        Some(libc::EINVAL),
    );
    r.check_eq(
        &format!("{module}_write_credentials_root"),
        ctl.send(msg::PRIVILEGE_CREDENTIALS, &1i32.to_ne_bytes())
            .ok(),
        Some(8),
    );
    r.check_eq(
        &format!("{module}_write_short_start_ignored"),
        ctl.send(msg::START, &[0; 4]).ok(),
        Some(0),
    );
    match sys::setresuid(0, 1001, 0) {
        Ok(()) => {
            let tz = ctl.send(msg::TZINFO, &[0; 72]);
            let cred = ctl.send(msg::PRIVILEGE_CREDENTIALS, &[0; 4]);
            let ready = ctl.send(msg::READY, &[]);
            let back = sys::setresuid(0, 0, 0);
            r.check_eq(
                &format!("{module}_tzinfo_non_root_eperm"),
                errno(&tz),
                Some(libc::EPERM),
            );
            r.check_eq(
                &format!("{module}_credentials_non_root_eperm"),
                errno(&cred),
                Some(libc::EPERM),
            );
            r.check_eq(&format!("{module}_ready_non_root_ok"), ready.ok(), Some(4));
            r.check(
                &format!("{module}_euid_restored"),
                back.is_ok(),
                format!("{back:?}"),
            );
        }
        Err(e) => {
            r.check(&format!("{module}_seteuid"), false, e.to_string());
        }
    }

    // START: begin output, reply, records, REQUEST_EXIT (records done), EXIT.
    let mut start = Vec::new();
    start.extend_from_slice(&0i32.to_ne_bytes());
    start.extend_from_slice(&0i32.to_ne_bytes());
    r.check_eq(
        &format!("{module}_write_start"),
        ctl.send(msg::START, &start).ok(),
        Some(12),
    );
    let mut run_msgs = Vec::new();
    let got = collect_until(
        &mut ctl,
        &mut relay,
        msg::REQUEST_EXIT,
        Duration::from_secs(20),
        &mut run_msgs,
    );
    r.check(
        &format!("{module}_request_exit"),
        got.is_ok(),
        format!("{got:?}"),
    );
    let start_reply = run_msgs
        .iter()
        .find(|(t, _)| ctl.rel(*t) == Some(msg::START));
    r.check(
        &format!("{module}_start_reply_res0"),
        start_reply.is_some_and(|(_, p)| p.len() == 8 && p[4..8] == [0, 0, 0, 0]),
        format!("{start_reply:?}"),
    );
    r.check_eq(
        &format!("{module}_write_exit"),
        ctl.send(msg::EXIT, &[]).ok(),
        Some(4),
    );
    let got = collect_until(
        &mut ctl,
        &mut relay,
        msg::EXIT,
        Duration::from_secs(10),
        &mut run_msgs,
    );
    r.check(
        &format!("{module}_exit_reply"),
        got.is_ok(),
        format!("{got:?}"),
    );
    std::thread::sleep(Duration::from_millis(100));
    let _ = relay.poll();

    // Records: framing, global sequence 1..=N, each exactly once, in order per CPU.
    let mut all = Vec::new();
    let mut framing_ok = true;
    for (cpu, bytes) in relay.bytes.iter().enumerate() {
        match proto::parse_records(cpu, bytes, generation) {
            Ok(v) => all.extend(v),
            Err(e) => {
                framing_ok = r.check(&format!("{module}_framing_cpu{cpu}"), false, e);
            }
        }
    }
    if framing_ok {
        r.check(
            &format!("{module}_framing"),
            true,
            format!("{} records", all.len()),
        );
    }
    let mut per_cpu_ordered = true;
    let mut by_cpu: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for rec in &all {
        by_cpu.entry(rec.cpu).or_default().push(rec.seq);
    }
    for seqs in by_cpu.values() {
        per_cpu_ordered &= seqs.windows(2).all(|w| w[0] < w[1]);
    }
    r.check(
        &format!("{module}_per_cpu_in_order"),
        per_cpu_ordered,
        format!("{by_cpu:?}"),
    );
    all.sort_by_key(|rec| rec.seq);
    let seqs: Vec<u32> = all.iter().map(|rec| rec.seq).collect();
    let expected_total = u32::try_from(2 + records * ncpu).unwrap_or(u32::MAX);
    r.check_eq(
        &format!("{module}_sequence_complete"),
        seqs,
        (1..=expected_total).collect::<Vec<u32>>(),
    );
    let text = |rec: &proto::Record| String::from_utf8_lossy(&rec.data).into_owned();
    r.check_eq(
        &format!("{module}_begin_first"),
        all.first().map(text),
        Some("pmod: hello from begin\n".to_owned()),
    );
    r.check_eq(
        &format!("{module}_end_last"),
        all.last().map(text),
        Some("pmod: end\n".to_owned()),
    );
    let sized = all[1..all.len().saturating_sub(1)]
        .iter()
        .all(|rec| rec.data.len() == 48 && rec.data.ends_with(b"\n"));
    r.check(
        &format!("{module}_record_size"),
        sized,
        "every record line 48 bytes",
    );

    drop(ctl);
    drop(relay);
    let out = rmmod(module);
    r.check(
        &format!("{module}_rmmod"),
        out.code == Some(0),
        out.summary(),
    );
    r.check(
        &format!("{module}_unloaded"),
        !harness::is_loaded(module),
        "not in /proc/modules",
    );
    r.check(
        &format!("{module}_procfs_removed"),
        !Path::new(&dir).exists(),
        &dir,
    );
    let _ = fs::remove_file(&path);
}

/// `infra_boot`: the fixture and the harness, without staprun/stapio.
fn infra_boot(r: &mut Reporter) {
    let root = harness::ROOT.creds();
    exchange(r, "pmod", Gen::V4, root, 50);
    // Loaded like setuid staprun does it: real uid alice, effective uid 0.
    let mut as_alice = ALICE.creds();
    as_alice.euid = 0;
    as_alice.egid = 0;
    as_alice.rgid = STAPUSR;
    exchange(r, "pmod5", Gen::V5, as_alice, 50);

    // init failure: nothing created, nothing loaded.
    let path = blessed_dir().join("pmod.ko");
    let _ = install_fixture("pmod", &path, 0o644, 0, 0);
    let out = insmod_as(harness::ROOT.creds(), &path, &["init_errno=22"]);
    r.check(
        "init_errno_fails",
        out.code != Some(0) && !harness::is_loaded("pmod"),
        out.summary(),
    );
    r.check(
        "init_errno_no_procfs",
        !Path::new("/proc/systemtap/pmod").exists(),
        "",
    );

    // plain module loads and unloads.
    let plain = blessed_dir().join("plainmod.ko");
    let _ = install_fixture("plainmod", &plain, 0o644, 0, 0);
    let out = insmod_as(harness::ROOT.creds(), &plain, &[]);
    r.check(
        "plainmod_insmod",
        out.code == Some(0) && harness::is_loaded("plainmod"),
        out.summary(),
    );
    let out = rmmod("plainmod");
    r.check("plainmod_rmmod", out.code == Some(0), out.summary());
}

/// `boot`: the guest comes up (used for the KVM probe).
fn boot(r: &mut Reporter) {
    r.check(
        "proc_mounted",
        Path::new("/proc/self/status").exists(),
        "/proc",
    );
    r.check(
        "blessed_dir",
        blessed_dir().is_dir(),
        blessed_dir().display().to_string(),
    );
}
