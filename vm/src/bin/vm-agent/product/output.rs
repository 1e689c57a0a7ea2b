//! The output options (`-o`, `-S`, `-D`).

use std::fs;
use std::time::Duration;

use super::common::{
    QUICK, RUN, STARTUP, check_no_new_modules, check_run_ended, consecutive, dir_names, log_run,
    module_snapshot, no_script_output, process_ended, read_text, record_lines, signal_stapio,
    staprun, staprun_bg, status_field, ticks, user_dir, wait_file_contains,
};
use crate::harness::{
    self, ALICE, END, HELLO, ROOT, Reporter, STAPRUN, command_as, product_installed, publish,
    record_seqs, run,
};

pub fn output_options(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let before = module_snapshot();
    publish("pmod");
    let ncpu = harness::num_cpus();

    // -o FILE: the output is in the file, owned by the user; stdout has none of it.
    let f = "/tmp/o1.out";
    let _ = fs::remove_file(f);
    let out = staprun(&ALICE, &["-o", f, "pmod"]);
    log_run(r, &format!("alice$ staprun -o {f} pmod"), &out);
    check_run_ended(r, "o", &out, 0);
    let text = read_text(f);
    r.check(
        "o_file_has_output",
        text.starts_with(HELLO)
            && text.trim_end().ends_with(END)
            && record_lines(&text) == 4 * ncpu,
        harness::clip(&text),
    );
    r.check(
        "o_stdout_has_no_output",
        no_script_output(&out.stdout),
        out.summary(),
    );
    r.check_eq(
        "o_file_owner_alice",
        harness::stat(f).map(|s| (s.1, s.2)),
        Some((ALICE.uid, ALICE.gid)),
    );

    // -o where the user may not write: an error, and the module is unloaded.
    let out = staprun(&ALICE, &["-o", "/root/forbidden.out", "pmod"]);
    check_run_ended(r, "o_forbidden", &out, 1);
    r.check(
        "o_forbidden_says_why",
        out.stderr.contains("/root/forbidden.out") && out.stderr.contains("Permission denied"),
        out.summary(),
    );

    // -o with a strftime(3) name, relative to the working directory (/tmp).
    let year = harness::run_as(&ROOT, &["/bin/date", "+%Y"], &[])
        .stdout
        .trim()
        .to_owned();
    let dir = user_dir("/tmp/strf", &ALICE);
    let mut cmd = command_as(&ALICE, &[STAPRUN, "-o", "out-%Y.log", "pmod"], &[]);
    cmd.current_dir(&dir);
    let out = run(cmd, RUN);
    check_run_ended(r, "strftime", &out, 0);
    r.check_eq(
        "strftime_name_expanded",
        dir_names(&dir),
        vec![format!("out-{year}.log")],
    );
    r.check(
        "strftime_file_has_output",
        read_text(&format!("{dir}/out-{year}.log")).contains(END),
        "",
    );

    // -S 1,2: 1 MiB files F.0, F.1, ...; only the newest 2 kept.
    let dir = user_dir("/tmp/rot", &ALICE);
    let f = format!("{dir}/F");
    let (records, size) = (1600usize, 1024usize);
    let recs = format!("records={records}");
    let rsize = format!("record_size={size}");
    let out = staprun(&ALICE, &["-S", "1,2", "-o", &f, "pmod", &recs, &rsize]);
    check_run_ended(r, "S", &out, 0);
    r.check(
        "S_stdout_has_no_output",
        no_script_output(&out.stdout),
        out.summary(),
    );
    let names = dir_names(&dir);
    let nums: Vec<u32> = names
        .iter()
        .filter_map(|n| n.strip_prefix("F.")?.parse().ok())
        .collect();
    let total = (ncpu * records * size) as u64;
    let want_files = total.div_ceil(1 << 20) as u32;
    r.check(
        "S_keeps_newest_2",
        nums.len() == 2 && names.len() == 2 && nums[1] == nums[0] + 1 && nums[1] + 1 >= want_files,
        format!("files {names:?}, about {want_files} written"),
    );
    let mut kept = String::new();
    for (i, n) in nums.iter().enumerate() {
        let p = format!("{f}.{n}");
        let len = fs::metadata(&p).map_or(0, |m| m.len());
        let full = i + 1 < nums.len();
        let ok = len <= (1 << 20) + size as u64 && (!full || len > (1 << 20) - size as u64);
        r.check(
            &format!("S_file_{i}_size"),
            ok,
            format!("{p}: {len} bytes (limit 1 MiB, record {size})"),
        );
        r.check_eq(
            &format!("S_file_{i}_owner"),
            harness::stat(&p).map(|s| s.1),
            Some(ALICE.uid),
        );
        kept.push_str(&read_text(&p));
    }
    let seqs = record_seqs::<u32>(&kept);
    let last = u32::try_from(1 + ncpu * records).unwrap_or(0);
    r.check(
        "S_kept_files_are_the_tail",
        consecutive(&seqs) && seqs.last() == Some(&last) && kept.trim_end().ends_with(END),
        format!(
            "{} records, seq {:?}..{:?}, want ..{last} then the end line",
            seqs.len(),
            seqs.first(),
            seqs.last()
        ),
    );

    // SIGUSR2 without -S: F, then F.1.
    let dir = user_dir("/tmp/usr2", &ALICE);
    let f = format!("{dir}/F");
    match staprun_bg(&ALICE, &["-o", &f, "pmod", "run_ms=100"]) {
        None => {
            r.check("usr2_start", false, "spawn failed");
        }
        Some(bg) => {
            let running = wait_file_contains(&f, "pmod: tick 2\n", STARTUP);
            r.check("usr2_running", running, bg.stderr());
            let mut sent = false;
            if running && signal_stapio(r, "usr2_stapio_pid", libc::SIGUSR2) {
                let f1 = format!("{f}.1");
                r.check(
                    "usr2_switches_to_F1",
                    wait_file_contains(&f1, "pmod: tick", Duration::from_secs(20)),
                    format!("{:?}", dir_names(&dir)),
                );
                sent = signal_stapio(r, "usr2_stapio_pid_int", libc::SIGINT);
            }
            let out = bg.wait(if sent { RUN } else { QUICK });
            check_run_ended(r, "usr2", &out, 0);
            let (a, b) = (read_text(&f), read_text(&format!("{f}.1")));
            let (ta, tb) = (ticks(&a), ticks(&b));
            let mut all = ta.clone();
            all.extend(&tb);
            r.check_eq(
                "usr2_files",
                dir_names(&dir),
                vec!["F".into(), "F.1".into()],
            );
            r.check(
                "usr2_split_without_loss",
                a.starts_with(HELLO)
                    && !a.contains(END)
                    && b.trim_end().ends_with(END)
                    && !ta.is_empty()
                    && !tb.is_empty()
                    && all.first() == Some(&1)
                    && consecutive(&all),
                format!("F ticks {ta:?}, F.1 ticks {tb:?}"),
            );
        }
    }

    // -D -o F: prints the daemon's pid and returns; the run goes on and ends.
    // F is relative: it names a file in the caller's directory, not in the
    // daemon's (/).
    let dir = user_dir("/tmp/daemon", &ALICE);
    let f = format!("{dir}/F");
    let t0 = std::time::Instant::now();
    let mut cmd = command_as(
        &ALICE,
        &[
            STAPRUN,
            "-D",
            "-o",
            "F",
            "pmod",
            "run_ms=100",
            "exit_after_ms=2000",
        ],
        &[],
    );
    cmd.current_dir(&dir);
    let out = run(cmd, RUN);
    let returned = t0.elapsed();
    let still_loaded = harness::is_loaded("pmod");
    log_run(
        r,
        &format!("alice:{dir}$ staprun -D -o F pmod run_ms=100 exit_after_ms=2000"),
        &out,
    );
    let pid = out.stdout.trim().parse::<u32>().ok();
    r.check(
        "D_prints_pid_exit0",
        out.code == Some(0) && pid.is_some() && out.stdout.lines().count() == 1,
        out.summary(),
    );
    r.check(
        "D_returns_while_running",
        still_loaded,
        format!("returned after {returned:?}"),
    );
    if let Some(pid) = pid {
        r.check(
            "D_daemon_is_alices_stapio",
            status_field(pid, "Name") == "stapio"
                && status_field(pid, "Uid").split_whitespace().next() == Some("1001"),
            format!("{:?}", harness::proc_status(pid)),
        );
        r.check(
            "D_daemon_ends",
            harness::wait_until(Duration::from_secs(40), || process_ended(pid)),
            format!("pid {pid}"),
        );
    }
    let text = read_text(&f);
    r.check(
        "D_output_in_file",
        text.starts_with(HELLO) && !ticks(&text).is_empty() && text.trim_end().ends_with(END),
        harness::clip(&text),
    );
    r.check(
        "D_unloaded",
        harness::wait_until(Duration::from_secs(10), || !harness::is_loaded("pmod")),
        "",
    );
    check_no_new_modules(r, "end", &before);
}
