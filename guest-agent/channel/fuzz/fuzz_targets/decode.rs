//! What crosses the domain boundary: a guest's reply read by dom0 and dom0's request
//! read by the guest (and the agent setup dom0 hands a guest at boot). Any bytes decode to a message or an error, never a panic, and
//! read_line never returns more than its bound.
#![no_main]

use guest_channel::{read_line, AgentSetup, Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Request::decode(data);
    let _ = Reply::decode(data);
    let _ = AgentSetup::decode(data);
    let mut r = std::io::Cursor::new(data);
    while let Ok(Some(line)) = read_line(&mut r, 64) {
        assert!(line.len() <= 64);
    }
});
