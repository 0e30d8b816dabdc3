//! `xl info`'s output is read by dom0 tooling (grant limits): any text gives the
//! command line or none, and any option a value or none, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlcfg::info::{boot_option, xen_commandline};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(c) = xen_commandline(text) {
        assert!(text.contains(c));
        for name in ["gnttab_max_frames", "gnttab_max_maptrack_frames", ""] {
            if let Some(v) = boot_option(c, name) {
                assert!(c.contains(v));
            }
        }
    }
});
