//! Transmission-phase request parsing and planning on arbitrary bytes: every header
//! maps to a plan whose effect stays inside the export and whose payload accounting
//! keeps the stream in sync.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd_export::proto::*;

fuzz_target!(|data: &[u8]| {
    if data.len() < REQUEST_LEN + 9 {
        return;
    }
    let size = u64::from_be_bytes(data[..8].try_into().unwrap());
    let read_only = data[8] & 1 != 0;
    let block_status = data[8] & 2 != 0;
    for chunk in data[9..].chunks_exact(REQUEST_LEN) {
        let mut b: [u8; REQUEST_LEN] = chunk.try_into().unwrap();
        if b[0] & 0x80 != 0 {
            // Mostly exercise planning: keep the magic valid half the time.
            b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        }
        let Ok(req) = parse_request(&b) else { continue };
        assert_eq!(encode_request(&req), b);
        match plan_request(&req, size, read_only, block_status) {
            Plan::BlockStatus { offset, len, .. } => {
                assert!(block_status && len > 0);
                assert!(offset.checked_add(u64::from(len)).unwrap() <= size);
            }
            Plan::Read { offset, len }
            | Plan::Write { offset, len, .. }
            | Plan::Trim { offset, len, .. }
            | Plan::WriteZeroes { offset, len, .. }
            | Plan::Cache { offset, len } => {
                assert!(offset.checked_add(u64::from(len)).unwrap() <= size);
                if read_only {
                    assert!(matches!(req.command, CMD_READ | CMD_CACHE), "{req:?}");
                }
            }
            Plan::Reject { skip, .. } => {
                let payload = if req.command == CMD_WRITE { req.len } else { 0 };
                assert_eq!(skip, payload);
            }
            Plan::RejectAndClose { .. } => assert!(req.len > MAX_PAYLOAD),
            Plan::Flush | Plan::Disconnect => {}
        }
    }
});
