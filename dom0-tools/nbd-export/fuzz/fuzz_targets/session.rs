//! A whole server session (handshake + transmission) over an in-memory stream fed
//! with fuzz bytes, against a MemDevice. The session must end (input is finite)
//! without a panic, and the device keeps its size.
#![no_main]

use std::io::Cursor;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nbd_export::proto::*;
use nbd_export::{serve_session, Export, Exports, MemDevice};

const SIZE: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::new();
    if mode & 1 != 0 {
        // Skip straight to transmission so the fuzzer spends its time on requests.
        input.extend_from_slice(&3u32.to_be_bytes());
        if mode & 2 != 0 {
            // With structured replies and base:allocation selected.
            input.extend_from_slice(&IHAVEOPT.to_be_bytes());
            input.extend_from_slice(&OPT_STRUCTURED_REPLY.to_be_bytes());
            input.extend_from_slice(&0u32.to_be_bytes());
            input.extend_from_slice(&IHAVEOPT.to_be_bytes());
            input.extend_from_slice(&OPT_SET_META_CONTEXT.to_be_bytes());
            input.extend_from_slice(&30u32.to_be_bytes());
            input.extend_from_slice(&3u32.to_be_bytes());
            input.extend_from_slice(b"vol");
            input.extend_from_slice(&1u32.to_be_bytes());
            input.extend_from_slice(&15u32.to_be_bytes());
            input.extend_from_slice(BASE_ALLOCATION.as_bytes());
        }
        input.extend_from_slice(&IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&OPT_GO.to_be_bytes());
        input.extend_from_slice(&9u32.to_be_bytes());
        input.extend_from_slice(&3u32.to_be_bytes());
        input.extend_from_slice(b"vol");
        input.extend_from_slice(&0u16.to_be_bytes());
    }
    input.extend_from_slice(rest);
    let dev = Arc::new(MemDevice::new(SIZE));
    let exports = Exports::default();
    exports
        .add(Export {
            name: "vol".into(),
            description: Some("fuzz".into()),
            device: dev.clone(),
        })
        .unwrap();
    let mut output = Vec::new();
    let _ = serve_session(Cursor::new(input), &mut output, &exports);
    assert!(output.starts_with(b"NBDMAGICIHAVEOPT"));
    assert_eq!(dev.contents().len(), SIZE);
});
