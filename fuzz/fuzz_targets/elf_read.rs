//! The ELF reader: arbitrary images never panic it, and a module name it
//! finds lies inside the image.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stap_common::elf;

fuzz_target!(|data: &[u8]| {
    if let Ok((at, name)) = elf::module_name(data) {
        assert!(at + elf::THIS_MODULE_NAME_LEN <= data.len());
        assert!(name.len() <= elf::THIS_MODULE_NAME_LEN);
    }
    let _ = elf::required_privilege(data);
});
