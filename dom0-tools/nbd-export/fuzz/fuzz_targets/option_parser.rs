//! Handshake-phase parsers on arbitrary bytes: client flags, option headers, option
//! data (INFO/GO, export names). None may panic; accepted values must be consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd_export::proto::*;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = parse_client_flags(data[..4].try_into().unwrap());
    }
    if data.len() >= OPTION_HEADER_LEN {
        let _ = parse_option_header(data[..OPTION_HEADER_LEN].try_into().unwrap());
    }
    if let Ok(req) = parse_info_request(data) {
        assert!(req.name.len() <= MAX_NAME_LEN);
        assert_eq!(4 + req.name.len() + 2 + 2 * req.requests.len(), data.len());
    }
    if let Ok(name) = parse_name(data) {
        assert_eq!(name.as_bytes(), data);
    }
});
