#![no_main]
//! GTID positions: any text in, a position or an error out, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pos) = dbinstance::GtidPos::parse(text) {
        // What we print, we parse back to the same position.
        let again = dbinstance::GtidPos::parse(&pos.to_string()).expect("round trip");
        assert_eq!(again, pos);
    }
});
