//! Arbitrary bytes as an InnoDB page: parsing and verifying never panic, and a page
//! that verifies has the identity its header claims.
#![no_main]

use dbfork_agent::page::{self, SpaceFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = page::space_info(data);
    if let Ok(h) = page::header(data) {
        for fmt in [SpaceFormat::FullCrc32, SpaceFormat::Legacy] {
            if page::verify(data, fmt).is_ok() {
                assert!(page::verify_identity(data, fmt, h.space_id, h.page_no).is_ok());
            }
        }
    }
});
