#![no_main]
//! Text from a server, an operator or the kernel: GTID positions (any text in, a
//! position or an error out), an operator's server's SHOW GRANTS lines, option files
//! (an operator's --defaults-file, a copy's backup-my.cnf), mariadb-backup's binlog
//! info, a server's printed options, /proc's memory files; never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let _ = dbinstance::external::global_privileges(&lines);
    let _ = dbinstance::memory::parse_smaps_rollup(text);
    let _ = dbinstance::memory::parse_meminfo(text);
    let _ = dbinstance::backup::parse_binlog_info(text);
    let _ = dbinstance::external::parse_printed_options(text);
    if let Ok(f) = dbinstance::option_file::OptionFile::parse(text) {
        let _ = f.get(&dbinstance::option_file::CLIENT_GROUPS, "password");
    }
    if let Ok(pos) = dbinstance::GtidPos::parse(text) {
        // What we print, we parse back to the same position.
        let again = dbinstance::GtidPos::parse(&pos.to_string()).expect("round trip");
        assert_eq!(again, pos);
    }
});
