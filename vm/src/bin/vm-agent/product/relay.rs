//! The data path: ordering across CPUs, bulk mode, overrun, `system()` and OOB messages.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::common::{
    RUN, check_full_run, check_no_new_modules, check_run_ended, dir_names, force_unload, log_run,
    module_snapshot, no_script_output, read_text, root_script, staprun, user_dir,
};
use crate::harness::{
    self, ALICE, END, HELLO, Out, Reporter, STAPRUN, command_as, product_installed, publish,
    record_seqs, run,
};

fn ordering(r: &mut Reporter, module: &str, records: usize) {
    publish(module);
    let recs = format!("records={records}");
    let out = staprun(&ALICE, &[module, &recs, "record_size=100"]);
    check_full_run(r, &format!("{module}_bulk_run"), module, &out);
    let mut seqs = Vec::new();
    let mut per_cpu: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    let mut malformed = 0;
    for l in out.stdout.lines().filter(|l| l.starts_with("cpu=")) {
        let mut cpu = None;
        let mut n = None;
        let mut seq = None;
        for w in l.split_whitespace() {
            if let Some(v) = w.strip_prefix("cpu=") {
                cpu = v.parse::<u32>().ok();
            } else if let Some(v) = w.strip_prefix("n=") {
                n = v.parse::<u32>().ok();
            } else if let Some(v) = w.strip_prefix("seq=") {
                seq = v.parse::<u32>().ok();
            }
        }
        match (cpu, n, seq, l.len()) {
            (Some(c), Some(n), Some(s), 99) => {
                seqs.push(s);
                per_cpu.entry(c).or_default().push(n);
            }
            _ => malformed += 1,
        }
    }
    let ncpu = harness::num_cpus();
    r.check_eq(&format!("{module}_no_malformed_lines"), malformed, 0);
    r.check_eq(
        &format!("{module}_record_count"),
        seqs.len(),
        records * ncpu,
    );
    let in_order = seqs.windows(2).all(|w| w[0] < w[1]);
    let first_bad = seqs.windows(2).position(|w| w[0] >= w[1]);
    r.check(
        &format!("{module}_global_sequence_order"),
        in_order,
        format!("first disorder at index {first_bad:?}"),
    );
    let want: Vec<u32> = (2..2 + u32::try_from(records * ncpu).unwrap_or(0)).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    r.check(
        &format!("{module}_each_record_once"),
        sorted == want,
        format!(
            "{} records, expected seq 2..={}",
            sorted.len(),
            want.len() + 1
        ),
    );
    let want_n: Vec<u32> = (0..u32::try_from(records).unwrap_or(0)).collect();
    let per_cpu_detail: Vec<String> = per_cpu
        .iter()
        .map(|(c, v)| {
            let bad = v.iter().zip(&want_n).position(|(a, b)| a != b);
            format!("cpu{c}: {} lines, first mismatch at {bad:?}", v.len())
        })
        .collect();
    let per_cpu_ok = per_cpu.len() == ncpu && per_cpu.values().all(|v| *v == want_n);
    r.check(
        &format!("{module}_per_cpu_complete_in_order"),
        per_cpu_ok,
        per_cpu_detail.join("; "),
    );
    if let Some(i) = first_bad {
        let lines: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("cpu="))
            .collect();
        let from = i.saturating_sub(3);
        let to = (i + 4).min(lines.len());
        r.log(&format!(
            "{module}: output around the first disorder (record lines {from}..{to}):"
        ));
        for l in &lines[from..to] {
            r.log(&l[..l.len().min(40)]);
        }
    }
    for l in out.stderr.lines().take(10) {
        r.log(&format!("[{module} stderr] {l}"));
    }
}

pub fn relay_ordering(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    ordering(r, "pmod", 3000);
    ordering(r, "pmod5", 1000);
}

/// Bulk files of one run: every record exactly once across them, each
/// file in sequence order, each CPU's record lines in its own file.
fn check_bulk_files(
    r: &mut Reporter,
    tag: &str,
    files: &[String],
    generation: crate::infra::proto::Gen,
    records: usize,
) {
    let mut all = Vec::new();
    for (cpu, p) in files.iter().enumerate() {
        let bytes = fs::read(p).unwrap_or_default();
        match crate::infra::proto::parse_records(cpu, &bytes, generation) {
            Ok(recs) => {
                let seqs: Vec<u32> = recs.iter().map(|x| x.seq).collect();
                r.check(
                    &format!("{tag}_{cpu}_in_order"),
                    seqs.windows(2).all(|w| w[0] < w[1]),
                    format!("{p}: {} records", recs.len()),
                );
                let own = format!("cpu={cpu} ");
                let foreign = recs
                    .iter()
                    .filter(|x| x.data.starts_with(b"cpu=") && !x.data.starts_with(own.as_bytes()))
                    .count();
                r.check_eq(&format!("{tag}_{cpu}_only_its_cpu"), foreign, 0);
                r.check_eq(
                    &format!("{tag}_{cpu}_owner"),
                    harness::stat(p).map(|s| s.1),
                    Some(ALICE.uid),
                );
                all.extend(recs);
            }
            Err(e) => {
                r.check(&format!("{tag}_{cpu}_framing"), false, format!("{p}: {e}"));
            }
        }
    }
    all.sort_by_key(|x| x.seq);
    let seqs: Vec<u32> = all.iter().map(|x| x.seq).collect();
    let n = u32::try_from(2 + records * files.len()).unwrap_or(0);
    r.check(
        &format!("{tag}_merge_every_record_once"),
        seqs == (1..=n).collect::<Vec<u32>>(),
        format!("{} records, want seq 1..={n}", seqs.len()),
    );
    let text = |i: usize| {
        all.get(i)
            .map(|x| String::from_utf8_lossy(&x.data).into_owned())
    };
    r.check(
        &format!("{tag}_begin_and_end"),
        text(0).as_deref() == Some("pmod: hello from begin\n")
            && all.last().map(|x| x.data.as_slice()) == Some(&b"pmod: end\n"[..]),
        format!(
            "{:?} .. {:?}",
            text(0),
            all.last()
                .map(|x| String::from_utf8_lossy(&x.data).into_owned())
        ),
    );
}

pub fn bulk_mode(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    let ncpu = harness::num_cpus();
    let records = 500;
    let recs = format!("records={records}");

    // 4.x module, -o F: F_0, F_1, ...
    publish("pmod");
    let dir = user_dir("/tmp/bulk", &ALICE);
    let f = format!("{dir}/F");
    let out = staprun(
        &ALICE,
        &["-o", &f, "pmod", "bulk=1", &recs, "record_size=100"],
    );
    log_run(
        r,
        &format!("alice$ staprun -o {f} pmod bulk=1 {recs} record_size=100"),
        &out,
    );
    check_run_ended(r, "bulk_o", &out, 0);
    r.check(
        "bulk_o_stdout_has_no_output",
        no_script_output(&out.stdout),
        out.summary(),
    );
    let want: Vec<String> = (0..ncpu).map(|c| format!("F_{c}")).collect();
    r.check_eq("bulk_o_files", dir_names(&dir), want.clone());
    let files: Vec<String> = want.iter().map(|n| format!("{dir}/{n}")).collect();
    check_bulk_files(r, "bulk_o", &files, crate::infra::proto::Gen::V4, records);

    // Bulk with -S 1,2: F_cpu<N>.0, .1, ... per CPU, the newest 2 kept.
    let dir = user_dir("/tmp/bulkS", &ALICE);
    let f = format!("{dir}/F");
    let out = staprun(
        &ALICE,
        &[
            "-S",
            "1,2",
            "-o",
            &f,
            "pmod",
            "bulk=1",
            "records=2600",
            "record_size=1024",
        ],
    );
    check_run_ended(r, "bulk_S", &out, 0);
    let names = dir_names(&dir);
    for cpu in 0..ncpu {
        let prefix = format!("F_cpu{cpu}.");
        let nums: Vec<u32> = names
            .iter()
            .filter_map(|n| n.strip_prefix(&prefix)?.parse().ok())
            .collect();
        let sizes: Vec<u64> = nums
            .iter()
            .map(|n| fs::metadata(format!("{f}_cpu{cpu}.{n}")).map_or(0, |m| m.len()))
            .collect();
        r.check(
            &format!("bulk_S_cpu{cpu}_rotated_keeps_2"),
            nums.len() == 2
                && nums[1] == nums[0] + 1
                && nums[1] >= 2
                && sizes.iter().all(|s| *s <= (1 << 20) + 1024 + 8),
            format!("files {names:?}, sizes {sizes:?}"),
        );
    }
    r.check_eq(
        "bulk_S_only_numbered_files",
        names.iter().filter(|n| !n.starts_with("F_cpu")).count(),
        0,
    );

    // 5.x module, no -o: stpd_cpu<N> in the working directory.
    publish("pmod5");
    let dir = user_dir("/tmp/bulk5", &ALICE);
    let mut cmd = command_as(
        &ALICE,
        &[STAPRUN, "pmod5", "bulk=1", &recs, "record_size=100"],
        &[],
    );
    cmd.current_dir(&dir);
    let out = run(cmd, RUN);
    r.check("bulk5_exit0", out.code == Some(0), out.summary());
    r.check("bulk5_unloaded", !harness::is_loaded("pmod5"), "");
    force_unload("pmod5");
    r.check(
        "bulk5_stdout_has_no_output",
        no_script_output(&out.stdout),
        out.summary(),
    );
    let want: Vec<String> = (0..ncpu).map(|c| format!("stpd_cpu{c}")).collect();
    r.check_eq("bulk5_files", dir_names(&dir), want.clone());
    let files: Vec<String> = want.iter().map(|n| format!("{dir}/{n}")).collect();
    check_bulk_files(r, "bulk5", &files, crate::infra::proto::Gen::V5, records);
    check_no_new_modules(r, "end", &before);
}

pub fn overrun(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    publish("pmod");
    let ncpu = harness::num_cpus();
    let records = 10_000usize;
    let recs = format!("records={records}");
    // A 1 MiB relay buffer per CPU, 20 MiB per CPU written at full speed,
    // and a reader whose output (a pipe nobody reads for a while) blocks.
    let mut cmd = command_as(
        &ALICE,
        &[STAPRUN, "-b", "1", "pmod", &recs, "record_size=2048"],
        &[],
    );
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            r.check("overrun_spawn", false, e.to_string());
            return;
        }
    };
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
            s
        })
    });
    std::thread::sleep(Duration::from_secs(5));
    let stdout = child.stdout.take().map(|mut o| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut o, &mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    });
    let ended = harness::wait_until(Duration::from_secs(120), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
    }
    let status = child.wait().ok();
    let out = Out {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
        timed_out: !ended,
        stdout: stdout.and_then(|h| h.join().ok()).unwrap_or_default(),
        stderr: stderr.and_then(|h| h.join().ok()).unwrap_or_default(),
    };
    for l in out.stderr.lines() {
        r.log(&format!("[overrun stderr] {l}"));
    }
    r.log(&format!(
        "[overrun exit code {:?} signal {:?}]",
        out.code, out.signal
    ));
    // The product ends a lossy run normally: exit 0, with the warning.
    check_run_ended(r, "overrun", &out, 0);
    let warning = out
        .stderr
        .lines()
        .find(|l| l.starts_with("WARNING:") && l.contains("lost messages"))
        .map(str::to_owned);
    r.check("overrun_loss_warning", warning.is_some(), out.summary());
    let seqs = record_seqs::<u32>(&out.stdout);
    let with_end = out.stdout.trim_end().ends_with(END);
    let delivered = seqs.len() as u64 + 1 + u64::from(with_end);
    let total = (2 + records * ncpu) as u64;
    let max_seq = if with_end {
        total
    } else {
        u64::from(seqs.iter().copied().max().unwrap_or(1))
    };
    r.check(
        "overrun_output_in_order_and_lossy",
        out.stdout.starts_with(HELLO) && seqs.windows(2).all(|w| w[0] < w[1]) && delivered < total,
        format!("{delivered} of {total} records delivered, end line {with_end}"),
    );
    // "There were N lost messages, ...": N counts the gaps in what was delivered.
    let lost = warning.as_deref().and_then(|w| {
        w.split_whitespace()
            .skip_while(|x| *x != "were")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
    });
    r.check(
        "overrun_lost_count_matches_gaps",
        lost == Some(max_seq - delivered),
        format!(
            "warning {warning:?}; delivered {delivered}, highest seq {max_seq}, gaps {}",
            max_seq - delivered
        ),
    );
    check_no_new_modules(r, "end", &before);
}

pub fn system_and_oob(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    publish("pmod");

    // system(): runs as the user, with the user's groups and no capabilities.
    let report = "/tmp/sys.out";
    let _ = fs::remove_file(report);
    root_script(
        "/tmp/sys.sh",
        &format!(
            "{{ id -u; id -G; grep -E '^Cap(Eff|Prm):' /proc/self/status; }} > {report}.tmp && mv {report}.tmp {report}"
        ),
    );
    let out = staprun(&ALICE, &["pmod", "system_cmd=/tmp/sys.sh"]);
    log_run(r, "alice$ staprun pmod system_cmd=/tmp/sys.sh", &out);
    check_run_ended(r, "system", &out, 0);
    r.check(
        "system_output",
        out.stdout.starts_with(HELLO) && out.stdout.trim_end().ends_with(END),
        out.summary(),
    );
    let done = harness::wait_until(Duration::from_secs(10), || Path::new(report).exists());
    let text = read_text(report);
    r.check("system_ran", done, &text);
    let lines: Vec<&str> = text.lines().collect();
    r.check_eq("system_uid", lines.first().copied(), Some("1001"));
    let mut groups: Vec<u32> = lines
        .get(1)
        .map(|l| {
            l.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    groups.sort_unstable();
    let mut want = vec![ALICE.gid];
    want.extend(ALICE.groups);
    want.sort_unstable();
    r.check_eq("system_groups_exactly_alices", groups, want);
    let mut caps: Vec<&str> = lines.iter().skip(2).copied().collect();
    caps.sort_unstable();
    r.check_eq(
        "system_no_capabilities",
        caps,
        vec!["CapEff:\t0000000000000000", "CapPrm:\t0000000000000000"],
    );

    // WARNING: shown once (de-duplicated), all with -v, none with -w.
    let count = |s: &str| s.matches("WARNING: pmod warning").count();
    for (tag, extra, want) in [
        ("warn", None, 1),
        ("warn_v", Some("-v"), 3),
        ("warn_w", Some("-w"), 0),
    ] {
        let mut args: Vec<&str> = extra.into_iter().collect();
        args.extend(["pmod", "oob_warn=3"]);
        let out = staprun(&ALICE, &args);
        check_run_ended(r, tag, &out, 0);
        r.check(
            &format!("{tag}_printed_{want}"),
            count(&out.stderr) == want && out.stdout.contains(END),
            out.summary(),
        );
    }

    // ERROR: printed, exit 1.
    let out = staprun(&ALICE, &["pmod", "oob_error=1"]);
    log_run(r, "alice$ staprun pmod oob_error=1", &out);
    check_run_ended(r, "error", &out, 1);
    r.check(
        "error_printed",
        out.stderr.contains("ERROR: pmod error") && out.stdout.contains(END),
        out.summary(),
    );
    check_no_new_modules(r, "end", &before);
}
