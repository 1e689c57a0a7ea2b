use super::*;

fn p(program: Program, args: &[&str]) -> Result<Options, CliError> {
    let v: Vec<OsString> = args.iter().map(OsString::from).collect();
    parse(program, &v)
}
fn sr(args: &[&str]) -> Result<Options, CliError> {
    p(Program::Staprun, args)
}

#[test]
fn bundled_flags_and_attached_values() {
    let o = sr(&["-vvwL", "-b4", "m.ko"]).unwrap();
    assert_eq!(o.verbose, 2);
    assert!(o.suppress_warnings && o.load_only);
    assert_eq!(o.buffer_size_mb, Some(4));
    let o = sr(&["-vb", "7", "m.ko"]).unwrap();
    assert_eq!((o.verbose, o.buffer_size_mb), (1, Some(7)));
    let o = sr(&["-Lvo/tmp/f", "m.ko"]).unwrap();
    assert_eq!(o.outfile.as_deref(), Some("/tmp/f"));
}

#[test]
fn uprobes_value_is_optional_and_only_attached() {
    let o = sr(&["-u", "m.ko"]).unwrap();
    assert_eq!(o.uprobes, Some(None));
    assert_eq!(o.module, "m.ko");
    let o = sr(&["-u/x/uprobes.ko", "m.ko"]).unwrap();
    assert_eq!(o.uprobes, Some(Some("/x/uprobes.ko".into())));
    let o = sr(&["-vu", "m.ko"]).unwrap();
    assert_eq!((o.verbose, o.uprobes.clone()), (1, Some(None)));
    assert_eq!(sr(&["m.ko"]).unwrap().uprobes, None);
}

#[test]
fn permutation_and_double_dash() {
    let o = sr(&["m.ko", "-v", "a=1", "-w", "b=2"]).unwrap();
    assert_eq!(o.verbose, 1);
    assert!(o.suppress_warnings);
    assert_eq!(o.module_options, vec!["a=1", "b=2"]);
    // After --, an option-looking word is an operand (and then not
    // a valid module option).
    assert_eq!(
        sr(&["--", "m.ko", "-v"]).unwrap_err(),
        CliError::BadModuleOption("-v".into())
    );
    let o = sr(&["-v", "--", "-odd.ko"]).unwrap();
    assert_eq!(o.module, "-odd.ko");
}

#[test]
fn values_may_look_like_options() {
    let o = sr(&["-c", "-x", "m.ko"]).unwrap();
    assert_eq!(o.target_cmd.as_deref(), Some("-x"));
    let o = sr(&["-o", "-v", "m.ko"]).unwrap();
    assert_eq!(o.outfile.as_deref(), Some("-v"));
}

#[test]
fn long_forms_shown_by_help_are_accepted() {
    let o = sr(&[
        "--verbose",
        "--buffer",
        "4",
        "--output=/tmp/f",
        "--uprobes",
        "m.ko",
    ])
    .unwrap();
    assert_eq!((o.verbose, o.buffer_size_mb), (1, Some(4)));
    assert_eq!(o.outfile.as_deref(), Some("/tmp/f"));
    assert_eq!(o.uprobes, Some(None));
    assert_eq!(o.module, "m.ko");
    assert_eq!(
        sr(&["--relay-fd=3", "m"]).unwrap_err(),
        CliError::RelayFdForStaprun
    );
    assert!(matches!(
        sr(&["--bogus", "m"]),
        Err(CliError::UnknownOption(_))
    ));
    assert_eq!(sr(&["--buffer"]).unwrap_err(), CliError::MissingValue('b'));
    assert_eq!(
        p(Program::Stapio, &["--relay-fd", "3", "m"])
            .unwrap()
            .relay_fd,
        Some(3)
    );
}

#[test]
fn f_is_rejected_by_staprun_and_accepted_by_stapio() {
    assert_eq!(
        sr(&["-F3", "m.ko"]).unwrap_err(),
        CliError::RelayFdForStaprun
    );
    assert_eq!(
        sr(&["-vF", "3", "m.ko"]).unwrap_err(),
        CliError::RelayFdForStaprun
    );
    let o = p(Program::Stapio, &["-F3", "m.ko"]).unwrap();
    assert_eq!(o.relay_fd, Some(3));
    assert!(matches!(
        p(Program::Stapio, &["-F", "-1", "m"]),
        Err(CliError::RelayFd(_))
    ));
}

#[test]
fn unknown_and_missing() {
    assert_eq!(
        sr(&["-q", "m.ko"]).unwrap_err(),
        CliError::UnknownOption("q".into())
    );
    assert_eq!(
        sr(&["m.ko", "-b"]).unwrap_err(),
        CliError::MissingValue('b')
    );
    assert_eq!(sr(&[]).unwrap_err(), CliError::MissingModule);
    assert_eq!(sr(&["-v"]).unwrap_err(), CliError::MissingModule);
}

#[test]
fn help_and_version_win() {
    assert!(sr(&["-h"]).unwrap().help);
    assert!(sr(&["-V", "-b", "0"]).unwrap().version);
}

/// SystemTap's parseko cases cmdline09-21: each must be refused.
#[test]
fn parseko_cases_fail() {
    let long = "stap_1234567890123456789012345678901234567890123456789012345678901234567890";
    let cases: &[(&str, &[&str])] = &[
        ("cmdline09", &[long]),
        ("cmdline10", &["-b", "0", "m.ko"]),
        ("cmdline11", &["-L", "-A", "m.ko"]),
        ("cmdline12", &["-A", "-b", "2", "m.ko"]),
        ("cmdline13", &["-A", "-c", "bash", "m.ko"]),
        ("cmdline14", &["-A", "-x", "100", "m.ko"]),
        ("cmdline16", &["-c", "/bin/ls", "-x", "100", "m.ko"]),
        ("cmdline17", &["-L", "-D", "-o", "f", "m.ko"]),
        ("cmdline18", &["-d", "-D", "-o", "f", "m.ko"]),
        ("cmdline19", &["-c", "ls", "-D", "-o", "f", "m.ko"]),
        ("cmdline20", &["-D", "m.ko"]),
        ("cmdline21", &["-S", "1,1", "m.ko"]),
    ];
    for (name, args) in cases {
        let r = sr(args).and_then(|o| resolve_module(&o.module, Path::new("/blessed")).map(|_| o));
        assert!(r.is_err(), "{name}: {args:?} was accepted");
    }
    assert_eq!(
        sr(&["-L", "-A", "m.ko"]).unwrap_err(),
        CliError::Exclusive('A', 'L')
    );
    assert_eq!(sr(&["-D", "m.ko"]).unwrap_err(), CliError::NeedsOutput('D'));
    assert_eq!(
        sr(&["-S", "1,1", "m.ko"]).unwrap_err(),
        CliError::NeedsOutput('S')
    );
}

#[test]
fn option_values_are_validated() {
    assert!(matches!(
        sr(&["-b", "4096", "m"]),
        Err(CliError::BufferSize(_))
    ));
    assert!(matches!(
        sr(&["-b", "x", "m"]),
        Err(CliError::BufferSize(_))
    ));
    assert_eq!(sr(&["-b", "4095", "m"]).unwrap().buffer_size_mb, Some(4095));
    assert!(matches!(
        sr(&["-T", "0", "m"]),
        Err(CliError::ReaderTimeout(_))
    ));
    assert!(matches!(
        sr(&["-C", "sometimes", "m"]),
        Err(CliError::Color(_))
    ));
    assert!(matches!(
        sr(&["-N", "0", "m"]),
        Err(CliError::NamespacesPid(_))
    ));
    assert!(matches!(sr(&["-r", "x", "m"]), Err(CliError::RemoteId(_))));
    assert!(matches!(sr(&["-r", "1:", "m"]), Err(CliError::RemoteId(_))));
    assert_eq!(
        sr(&["-r", "3:ssh://h", "m"]).unwrap().remote,
        Some(Remote {
            id: 3,
            uri: "ssh://h".into()
        })
    );
    assert!(matches!(
        sr(&["-S", "1x", "-o", "f", "m"]),
        Err(CliError::FileSize(_))
    ));
    assert_eq!(
        sr(&["-S", "2,5", "-o", "f", "m"]).unwrap().rotation,
        Some(Rotation {
            bytes: 2 << 20,
            keep: 5
        })
    );
    assert!(matches!(
        sr(&["-x", "abc", "m"]),
        Err(CliError::TargetPid(_))
    ));
    assert_eq!(sr(&["-t", "5", "m"]).unwrap().target_pid, Some(5));
    assert_eq!(
        sr(&["-x", "5", "-t", "6", "m"]).unwrap().target_pid,
        Some(6)
    );
    assert_eq!(
        sr(&["-t", "6", "-x", "5", "m"]).unwrap().target_pid,
        Some(5)
    );
    assert_eq!(
        sr(&["-A", "m", "a=1"]).unwrap_err(),
        CliError::AttachWithOptions
    );
    assert!(matches!(
        sr(&["m", "noequals"]),
        Err(CliError::BadModuleOption(_))
    ));
    assert!(matches!(
        sr(&["m", "a/b=1"]),
        Err(CliError::BadModuleOption(_))
    ));
}

#[test]
fn too_many_module_options() {
    let mut v = vec!["m".to_string()];
    for i in 0..=MAX_MODULE_OPTIONS {
        v.push(format!("o{i}=1"));
    }
    let v: Vec<&str> = v.iter().map(String::as_str).collect();
    assert_eq!(sr(&v).unwrap_err(), CliError::TooManyModuleOptions);
}

#[test]
fn module_resolution() {
    let b = Path::new("/lib/modules/K/systemtap");
    let m = resolve_module("pmod", b).unwrap();
    assert_eq!(m.path, b.join("pmod.ko"));
    assert_eq!(m.name.as_str(), "pmod");
    let m = resolve_module("pmod.ko", b).unwrap();
    assert_eq!(m.path, PathBuf::from("pmod.ko"));
    let m = resolve_module("/tmp/x/abc.ko", b).unwrap();
    assert_eq!(
        (m.path, m.name.as_str()),
        (PathBuf::from("/tmp/x/abc.ko"), "abc")
    );
    let m = resolve_module("./d/abc", b).unwrap();
    assert_eq!(m.name.as_str(), "abc");
    // 56 characters is the limit (64 - sizeof(unsigned long)).
    let ok = "a".repeat(56);
    assert!(resolve_module(&ok, b).is_ok());
    assert!(resolve_module(&"a".repeat(57), b).is_err());
    assert!(resolve_module("bad\nname", b).is_err());
    assert!(resolve_module("..", b).is_err());
}

#[test]
fn the_table_has_systemtaps_getopt_letters() {
    // The C tools' getopt strings, as sets of (letter, kind).
    let kinds = |g: &str| {
        let mut v: Vec<(char, usize)> = Vec::new();
        for c in g.chars() {
            match (c, v.last_mut()) {
                (':', Some(last)) => last.1 += 1,
                _ => v.push((c, 0)),
            }
        }
        v.sort();
        v
    };
    let c_staprun = "ALu::vihb:t:dc:o:x:N:S:DwRr:VT:C:M:";
    assert_eq!(kinds(&getopt_letters(Program::Staprun)), kinds(c_staprun));
    assert_eq!(
        kinds(&getopt_letters(Program::Stapio)),
        kinds(&format!("{c_staprun}F:"))
    );
    // Every long name is unique, and every letter.
    for (i, a) in OPTIONS.iter().enumerate() {
        for b in &OPTIONS[i + 1..] {
            assert!(a.short != b.short && a.long != b.long, "{}", a.long);
        }
    }
}

#[test]
fn to_args_is_every_forwarded_option_in_order() {
    let o = sr(&[
        "-vv", "-w", "-x", "42", "-N", "5", "-o", "out", "-b", "4", "-C", "always", "-M", "2",
        "-D", "-S", "3,2", "-T", "50", "-i", "-u", "-R", "-r", "1:x", "m.ko", "a=1",
    ])
    .unwrap();
    assert_eq!(
        o.to_args("m", Some(4)),
        [
            "-v", "-v", "-w", "-x", "42", "-N", "5", "-o", "out", "-b", "4", "-C", "always", "-M",
            "2", "-D", "-S", "3,2", "-T", "50", "-i", "-F", "4", "--", "m"
        ]
    );
    let o = sr(&["-c", "ls", "-L", "-S", "3", "-o", "x", "m.ko"]).unwrap();
    assert_eq!(
        o.to_args("m", None),
        [
            "-c", "ls", "-o", "x", "-L", "-C", "auto", "-S", "3", "--", "m"
        ]
    );
    let o = sr(&["-A", "m"]).unwrap();
    assert_eq!(o.to_args("m", None), ["-A", "-C", "auto", "--", "m"]);
}

#[test]
fn the_later_of_t_and_x_wins() {
    assert_eq!(
        sr(&["-t", "1", "-x", "2", "m"]).unwrap().target_pid,
        Some(2)
    );
    assert_eq!(
        sr(&["-x", "2", "-t", "1", "m"]).unwrap().target_pid,
        Some(1)
    );
    // The loser is not even validated, as with getopt's last-wins.
    assert_eq!(
        sr(&["-x", "bad", "-t", "1", "m"]).unwrap().target_pid,
        Some(1)
    );
    assert_eq!(
        sr(&["-t", "1", "-x", "bad", "m"]).unwrap_err(),
        CliError::TargetPid("bad".into())
    );
}

#[test]
fn to_args_round_trips() {
    let o = sr(&[
        "-vv", "-w", "-c", "ls -l", "-o", "out", "-S", "3,2", "-T", "50", "-L", "m.ko",
    ])
    .unwrap();
    let args = o.to_args("m_123", Some(4));
    let v: Vec<OsString> = args.iter().map(OsString::from).collect();
    let back = parse(Program::Stapio, &v).unwrap();
    assert_eq!(back.verbose, 2);
    assert_eq!(back.target_cmd.as_deref(), Some("ls -l"));
    assert_eq!(back.rotation, o.rotation);
    assert_eq!(back.reader_timeout_ms, Some(50));
    assert_eq!(back.relay_fd, Some(4));
    assert_eq!(back.module, "m_123");
    assert!(back.load_only && back.suppress_warnings);
}

#[test]
fn staprun_help_shows_explain() {
    let help = command(Program::Staprun).render_help().to_string();
    assert!(help.contains("staprun --explain MODULE"), "{help}");
    let help = command(Program::Stapio).render_help().to_string();
    assert!(!help.contains("--explain"), "{help}");
}

#[test]
fn monitor_mode_needs_a_terminal_and_the_foreground() {
    let o = sr(&["-M", "2", "m"]).unwrap();
    assert_eq!(o.monitor_interval, Some(2));
    assert_eq!(o.stapio_refuses(true), None);
    let why = o.stapio_refuses(false).unwrap();
    assert!(why.starts_with("monitor mode needs a terminal"), "{why}");
    let daemon = sr(&["-M", "1", "-D", "-o", "f", "m"]).unwrap();
    assert!(daemon.stapio_refuses(true).unwrap().contains("-D"));
    let stdin = sr(&["-M", "1", "-i", "m"]).unwrap();
    assert!(stdin.stapio_refuses(true).unwrap().contains("-i"));
    // Without -M nothing is refused, terminal or not.
    assert_eq!(
        sr(&["-D", "-o", "f", "m"]).unwrap().stapio_refuses(false),
        None
    );
    assert_eq!(
        sr(&["-M", "0", "m"]).unwrap_err(),
        CliError::MonitorInterval("0".into())
    );
}

/// `-T` not given is not a value: stapio then waits as the C tools of the
/// module's generation do. Only a `-T` the caller gave is handed on, the
/// default value included (it is not 4.x's default).
#[test]
fn reader_timeout_given_or_not() {
    let o = sr(&["m.ko"]).unwrap();
    assert_eq!(o.reader_timeout_ms, None);
    assert!(!o.to_args("m", None).contains(&"-T".to_string()));
    let o = sr(&["-T", "200", "m.ko"]).unwrap();
    assert_eq!(o.reader_timeout_ms, Some(DEFAULT_READER_TIMEOUT_MS));
    assert_eq!(o.to_args("m", None), ["-C", "auto", "-T", "200", "--", "m"]);
    let o = sr(&["-T1", "-T", "7", "m.ko"]).unwrap();
    assert_eq!(o.reader_timeout_ms, Some(7));
    let help = command(Program::Stapio).render_help().to_string();
    assert!(
        table::T_HELP.contains(&format!("{DEFAULT_READER_TIMEOUT_MS} for SystemTap 5.x"))
            && help.contains("none for 4.x"),
        "{help}"
    );
}

#[test]
fn stdin_forwarding_is_in_the_help_of_both_programs() {
    for p in [Program::Staprun, Program::Stapio] {
        let help = command(p).render_help().to_string();
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with("-i,") && l.contains("standard input")),
            "{help}"
        );
    }
}
