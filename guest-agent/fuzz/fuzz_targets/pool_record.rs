//! Arbitrary bytes as a pool record: decode never panics and round-trips.
#![no_main]

use dbfork_agent::pool::PoolRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = PoolRecord::decode(data) {
        assert_eq!(PoolRecord::decode(&r.encode()), Some(r));
    }
});
