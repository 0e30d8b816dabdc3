#![no_main]
//! mariadb-backup's binlog info file (`file<TAB>offset[<TAB>gtid]`) is another
//! program's text: any text in, a GTID position or an error out, never a panic.

use experiments_support::native_clone::parse_binlog_info;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_binlog_info(text, std::path::Path::new("fuzz"));
});
