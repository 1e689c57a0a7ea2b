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
