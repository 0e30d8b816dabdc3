//! Arbitrary bytes as a pool record: decode never panics and round-trips.
#![no_main]

use dbfork_agent::pool::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = decode_record(data) {
        assert_eq!(decode_record(&encode_record(&r)), Some(r));
    }
});
