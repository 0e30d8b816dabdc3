#![no_main]
//! The region map file parser must reject garbage with an error, never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lazyvol::fuzzing::parse_region_map(data);
});
