//! The daemon decodes bytes from any local process; none of them may panic it, and
//! whatever decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pagetable::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = wire::decode_request(data) {
        let mut again = Vec::new();
        wire::encode_request(&msg, &mut again);
        assert_eq!(&again[4..], data, "request re-encodes differently");
    }
    if let Ok(msg) = wire::decode_reply(data) {
        let mut again = Vec::new();
        wire::encode_reply(&msg, &mut again);
        assert_eq!(&again[4..], data, "reply re-encodes differently");
    }
    let mut buf = Vec::new();
    let _ = wire::read_message(&mut &data[..], &mut buf);
});
