//! Control messages from the module: decoding never panics, and whatever
//! decodes re-encodes to a message that decodes to the same thing (when the
//! re-encoding fits: lossy UTF-8 repair can make text longer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stap_common::protocol::{CTL_BUFFER_SIZE, Generation, Notice, Request};

fuzz_target!(|data: &[u8]| {
    for g in [Generation::V4, Generation::V5] {
        if let Ok(n) = Notice::decode(g, data) {
            let bytes = n.encode(g);
            if bytes.len() <= 4 + CTL_BUFFER_SIZE {
                let again = Notice::decode(g, &bytes).expect("re-encoded notice decodes");
                assert_eq!(again, n);
            }
        }
        if let Ok(r) = Request::decode(g, data)
            && let Ok(bytes) = r.encode(g)
        {
            assert_eq!(Request::decode(g, &bytes).expect("re-encoded request decodes"), r);
        }
    }
});
