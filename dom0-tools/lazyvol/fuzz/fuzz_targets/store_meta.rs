#![no_main]
//! Opening a store whose store.json is arbitrary bytes must give an error or a
//! usable store, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lazyvol::fuzzing::open_store_with_metadata(data);
});
