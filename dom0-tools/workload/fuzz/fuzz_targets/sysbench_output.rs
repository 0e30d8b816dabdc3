#![no_main]
//! sysbench's output is another process's text: any text in, figures or an error
//! out, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = workload::sysbench::parse_output(text);
});
