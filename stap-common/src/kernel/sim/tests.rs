use super::*;
use crate::elf::build_test_module;

#[test]
fn load_start_exit_unload() {
    let k = SimKernel::new(2);
    k.set_caller(1000, 0);
    k.init_module(&build_test_module("pmod", &[]), "").unwrap();
    assert_eq!(k.owner_of("pmod"), Some(1000));
    let e = k
        .init_module(&build_test_module("pmod", &[]), "")
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    let dir = k.open_module_dir(&ModName::new("pmod").unwrap()).unwrap();
    let mut c = dir.open_control().unwrap();
    // Single opener.
    assert_eq!(
        dir.open_control().err().and_then(|e| e.raw_os_error()),
        Some(libc::EBUSY)
    );
    let g = Generation::V4;
    let mut buf = [0u8; 512];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(Notice::decode(g, &buf[..n]).unwrap(), Notice::Transport);
    c.send(&Request::Start { target: 0 }.encode(g).unwrap())
        .unwrap();
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(
        Notice::decode(g, &buf[..n]).unwrap(),
        Notice::Start { res: 0 }
    );
    // A 5.x-numbered message is unknown to a 4.x module.
    let e = c
        .send(&Request::Ready.encode(Generation::V5).unwrap())
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    // Privileged messages need euid 0.
    k.set_caller(1000, 1000);
    let e = c
        .send(&Request::PrivilegeCredentials { mask: 8 }.encode(g).unwrap())
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    let mut r = dir.open_relay(0).unwrap().unwrap();
    let n = r.read(&mut buf).unwrap();
    assert!(n > 8);
    drop(c);
    k.delete_module("pmod").unwrap();
    assert!(!k.is_loaded("pmod"));
}

#[test]
fn relay_overrun_is_counted() {
    let k = SimKernel::new(1);
    k.set_default_script(Script {
        records_per_cpu: 100,
        record_size: 100,
        relay_capacity: 1000,
        ..Script::default()
    });
    k.init_module(&build_test_module("m", &[]), "").unwrap();
    let dir = k.open_module_dir(&ModName::new("m").unwrap()).unwrap();
    let mut c = dir.open_control().unwrap();
    c.send(&Request::Start { target: 0 }.encode(Generation::V4).unwrap())
        .unwrap();
    assert!(k.relay_lost("m") > 80);
}

#[test]
fn stdin_file_appears_with_the_probes_and_feeds_the_input_probes() {
    let k = SimKernel::new(1);
    k.set_caller(1000, 0);
    k.set_default_script(Script {
        begin: vec![],
        input: Some(InputProbe::Line),
        exit_after_output: false,
        ..Script::default()
    });
    k.init_module(&build_test_module("m", &[]), "").unwrap();
    k.set_caller(1000, 1000);
    let name = ModName::new("m").unwrap();
    let dir = k.open_module_dir(&name).unwrap();
    let enoent = |r: io::Result<Box<dyn ModuleInput>>| r.err().and_then(|e| e.raw_os_error());
    // Not before the probes start.
    assert_eq!(enoent(dir.open_input(&name)), Some(libc::ENOENT));
    let mut c = dir.open_control().unwrap();
    c.send(&Request::Start { target: 0 }.encode(Generation::V4).unwrap())
        .unwrap();
    let mut input = dir.open_input(&name).unwrap();
    for b in b"ab\ncd" {
        input.send_byte(*b).unwrap();
    }
    assert_eq!(
        k.stdin_writes("m"),
        [b"a", b"b", b"\n", b"c", b"d"].map(|w| w.to_vec())
    );
    let mut r = dir.open_relay(0).unwrap().unwrap();
    let mut buf = [0u8; 256];
    let n = r.read(&mut buf).unwrap();
    // One record: the completed line; "cd" waits for its newline.
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("line:ab\n"));
    // Another user may not write to it (0222, owned by the loader).
    k.set_caller(1001, 1001);
    assert_eq!(enoent(dir.open_input(&name)), Some(libc::EACCES));
    // A module without input probes never has the file.
    k.set_caller(1000, 0);
    k.set_default_script(Script::default());
    k.init_module(&build_test_module("n", &[]), "").unwrap();
    let n_name = ModName::new("n").unwrap();
    let ndir = k.open_module_dir(&n_name).unwrap();
    let mut nc = ndir.open_control().unwrap();
    nc.send(&Request::Start { target: 0 }.encode(Generation::V4).unwrap())
        .unwrap();
    assert_eq!(enoent(ndir.open_input(&n_name)), Some(libc::ENOENT));
}

#[test]
fn mnt_ns_fds_are_looked_at_when_the_probes_start_and_unknown_to_4x() {
    let open = |p: &str| crate::sys::open(std::ffi::OsStr::new(p), libc::O_RDONLY).unwrap();
    let fds = |t: &std::os::fd::OwnedFd, o: &std::os::fd::OwnedFd| {
        use std::os::fd::AsRawFd;
        Request::MntNsFds {
            target_fd: t.as_raw_fd(),
            orig_fd: o.as_raw_fd(),
        }
    };
    let k = SimKernel::new(1);
    k.set_default_script(Script {
        generation: Generation::V5,
        ..Script::default()
    });
    k.init_module(&build_test_module("m", &[]), "").unwrap();
    let dir = k.open_module_dir(&ModName::new("m").unwrap()).unwrap();
    let mut c = dir.open_control().unwrap();
    let (t, o) = (open("/proc/self/ns/mnt"), open("/proc/self/ns/mnt"));
    c.send(&fds(&t, &o).encode(Generation::V5).unwrap())
        .unwrap();
    c.send(&Request::Start { target: 0 }.encode(Generation::V5).unwrap())
        .unwrap();
    let (lt, lo) = k.mnt_ns_at_start("m").unwrap();
    assert!(lt.starts_with("mnt:[") && lt == lo, "{lt} {lo}");

    // A 5.0 module does not know the message.
    k.set_default_script(Script {
        generation: Generation::V5,
        no_mnt_ns_fds: true,
        ..Script::default()
    });
    k.init_module(&build_test_module("old", &[]), "").unwrap();
    let dir = k.open_module_dir(&ModName::new("old").unwrap()).unwrap();
    let mut c = dir.open_control().unwrap();
    let e = c
        .send(&fds(&t, &o).encode(Generation::V5).unwrap())
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(k.mnt_ns_at_start("old"), None);

    // A 4.x module has no number for it: whatever comes as 19 is EINVAL.
    k.set_default_script(Script::default());
    k.init_module(&build_test_module("four", &[]), "").unwrap();
    let dir = k.open_module_dir(&ModName::new("four").unwrap()).unwrap();
    let mut c = dir.open_control().unwrap();
    let mut raw = 19u32.to_ne_bytes().to_vec();
    raw.extend_from_slice(&[3, 0, 0, 0, 4, 0, 0, 0]);
    assert_eq!(c.send(&raw).unwrap_err().raw_os_error(), Some(libc::EINVAL));
}
