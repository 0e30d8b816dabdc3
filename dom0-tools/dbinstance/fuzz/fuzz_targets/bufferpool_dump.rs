#![no_main]
//! The ib_buffer_pool parser must turn any bytes into pages or an error, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pages) = dbinstance::parse_buffer_pool_dump(data, std::path::Path::new("fuzz")) {
        // Every accepted page came from a non-empty line.
        assert!(pages.len() <= data.len() / 3 + 1);
    }
});
