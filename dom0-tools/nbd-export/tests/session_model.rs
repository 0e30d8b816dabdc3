//! Whole sessions over an in-memory stream: random request sequences checked against
//! a model of the device and of the error rules, and random garbage that must end the
//! session without a panic.

use std::io::Cursor;
use std::sync::Arc;

use nbd_export::proto::*;
use nbd_export::{serve_session, Export, Exports, MemDevice};
use proptest::prelude::*;

const SIZE: usize = 64 << 10;

fn option(b: &mut Vec<u8>, option: u32, data: &[u8]) {
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
}

/// Handshake bytes: optionally structured replies + base:allocation, then GO.
fn handshake(name: &str, structured: bool) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&3u32.to_be_bytes());
    if structured {
        option(&mut b, OPT_STRUCTURED_REPLY, &[]);
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
        d.extend_from_slice(BASE_ALLOCATION.as_bytes());
        option(&mut b, OPT_SET_META_CONTEXT, &d);
    }
    b.extend_from_slice(&handshake_go(name)[4..]);
    b
}

fn handshake_go(name: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&(name.len() as u32 + 6).to_be_bytes());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
    b
}

/// Skip the greeting and every option reply up to GO's ACK; return the rest.
fn after_go(out: &[u8]) -> &[u8] {
    let mut p = 18;
    loop {
        let opt = u32::from_be_bytes(out[p + 8..p + 12].try_into().unwrap());
        let ty = u32::from_be_bytes(out[p + 12..p + 16].try_into().unwrap());
        let len = u32::from_be_bytes(out[p + 16..p + 20].try_into().unwrap()) as usize;
        p += 20 + len;
        assert_eq!(ty & REP_FLAG_ERROR, 0, "option {opt} failed");
        if opt == OPT_GO && ty == REP_ACK {
            return &out[p..];
        }
    }
}

/// One reply off the front of `out`: (error, cookie, read data or block-status
/// descriptor total).
fn take_reply<'a>(
    out: &mut &'a [u8],
    command: u16,
    structured: bool,
) -> (u32, u64, Option<&'a [u8]>) {
    let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().unwrap());
    if !(structured && matches!(command, CMD_READ | CMD_BLOCK_STATUS)) {
        let r = parse_simple_reply(out[..16].try_into().unwrap()).unwrap();
        *out = &out[16..];
        return (r.error, r.cookie, None);
    }
    assert_eq!(be32(out), STRUCTURED_REPLY_MAGIC);
    let flags = u16::from_be_bytes([out[4], out[5]]);
    let ty = u16::from_be_bytes([out[6], out[7]]);
    let cookie = u64::from_be_bytes(out[8..16].try_into().unwrap());
    let len = be32(&out[16..]) as usize;
    let payload = &out[20..20 + len];
    *out = &out[20 + len..];
    assert_eq!(flags, REPLY_FLAG_DONE);
    match ty {
        REPLY_TYPE_NONE => (0, cookie, Some(&payload[..0])),
        REPLY_TYPE_OFFSET_DATA => (0, cookie, Some(&payload[8..])),
        REPLY_TYPE_BLOCK_STATUS => (0, cookie, Some(payload)),
        REPLY_TYPE_ERROR => (be32(payload), cookie, None),
        other => panic!("unexpected chunk type {other}"),
    }
}

fn exports(dev: Arc<MemDevice>) -> Exports {
    let e = Exports::default();
    e.add(Export {
        name: "vol".into(),
        description: None,
        device: dev,
    })
    .unwrap();
    e
}

#[derive(Debug, Clone)]
struct Op {
    command: u16,
    flags: u16,
    offset: u64,
    len: u32,
    fill: u8,
}

fn op() -> impl Strategy<Value = Op> {
    (
        prop_oneof![Just(CMD_READ), Just(CMD_WRITE), Just(CMD_FLUSH), Just(CMD_TRIM), Just(CMD_WRITE_ZEROES), Just(CMD_BLOCK_STATUS), Just(CMD_CACHE), Just(9u16)],
        prop_oneof![4 => Just(0u16), 2 => Just(CMD_FLAG_FUA), 1 => Just(CMD_FLAG_NO_HOLE), 1 => Just(1u16 << 7)],
        prop_oneof![3 => 0u64..SIZE as u64, 1 => (SIZE as u64 - 8192)..(SIZE as u64 + 64), 1 => Just(u64::MAX - 3)],
        0u32..8192,
        any::<u8>(),
    )
        .prop_map(|(command, flags, offset, len, fill)| Op {
            command,
            flags,
            offset,
            len,
            fill,
        })
}

/// The reply the spec (and this server) gives, applied to the model. Block status
/// is only checked for shape (its content is the device's business).
fn model(op: &Op, m: &mut [u8], structured: bool) -> (u32, Option<Vec<u8>>) {
    let allowed = match op.command {
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_BLOCK_STATUS if structured => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => CMD_FLAG_FUA,
        _ => return (NBD_EINVAL, None),
    };
    if op.flags & !allowed != 0 {
        return (NBD_EINVAL, None);
    }
    let range = op
        .offset
        .checked_add(op.len as u64)
        .filter(|&e| e <= m.len() as u64)
        .map(|e| op.offset as usize..e as usize);
    match (op.command, range) {
        (CMD_FLUSH, _) => (0, None),
        (CMD_CACHE, Some(_)) => (0, None),
        (CMD_BLOCK_STATUS, Some(_)) if op.len == 0 => (NBD_EINVAL, None),
        (CMD_BLOCK_STATUS, Some(_)) => (0, None),
        (CMD_READ, Some(r)) => (0, Some(m[r].to_vec())),
        (CMD_WRITE, Some(r)) => {
            m[r].fill(op.fill);
            (0, None)
        }
        (CMD_TRIM | CMD_WRITE_ZEROES, Some(r)) => {
            m[r].fill(0);
            (0, None)
        }
        (CMD_WRITE | CMD_WRITE_ZEROES, None) => (NBD_ENOSPC, None),
        (_, None) => (NBD_EINVAL, None),
        _ => unreachable!(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_request_sequences_match_the_model(ops in proptest::collection::vec(op(), 1..40),
                                                structured in any::<bool>()) {
        let initial: Vec<u8> = (0..SIZE).map(|i| (i * 7) as u8).collect();
        let dev = Arc::new(MemDevice::from_vec(initial.clone()));
        let mut input = handshake("vol", structured);
        for (i, op) in ops.iter().enumerate() {
            input.extend_from_slice(&encode_request(&Request {
                flags: op.flags,
                command: op.command,
                cookie: i as u64,
                offset: op.offset,
                len: op.len,
            }));
            if op.command == CMD_WRITE {
                input.resize(input.len() + op.len as usize, op.fill);
            }
        }
        input.extend_from_slice(&encode_request(&Request { flags: 0, command: CMD_DISC, cookie: 0, offset: 0, len: 0 }));
        let mut output = Vec::new();
        serve_session(Cursor::new(input), &mut output, &exports(dev.clone())).unwrap();
        let mut m = initial;
        let mut out = after_go(&output);
        for (i, op) in ops.iter().enumerate() {
            let (error, data) = model(op, &mut m, structured);
            let (got_error, cookie, payload) = take_reply(&mut out, op.command, structured);
            prop_assert_eq!((got_error, cookie), (error, i as u64), "op {:?}", op);
            if op.command == CMD_READ && error == 0 {
                let payload = if structured {
                    payload.unwrap()
                } else {
                    let (d, rest) = out.split_at(op.len as usize);
                    out = rest;
                    d
                };
                prop_assert!(payload == &data.unwrap()[..], "read data differs for {:?}", op);
            }
            if op.command == CMD_BLOCK_STATUS && error == 0 {
                let p = payload.unwrap();
                let total: u64 = p[4..].chunks_exact(8)
                    .map(|c| u64::from(u32::from_be_bytes(c[..4].try_into().unwrap()))).sum();
                prop_assert!(total > 0 && total <= u64::from(op.len), "{:?}: {} bytes described", op, total);
            }
        }
        prop_assert!(out.is_empty(), "extra output");
        prop_assert!(dev.contents() == m, "device differs from model");
    }

    #[test]
    fn garbage_after_handshake_ends_session_cleanly(tail in proptest::collection::vec(any::<u8>(), 0..256),
                                                     magic in any::<bool>()) {
        let dev = Arc::new(MemDevice::new(4096));
        let mut input = handshake_go("vol");
        if magic {
            // Keep the request magic so the garbage reaches command decoding.
            input.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        }
        input.extend_from_slice(&tail);
        let mut output = Vec::new();
        let _ = serve_session(Cursor::new(input), &mut output, &exports(dev.clone()));
        prop_assert_eq!(dev.contents().len(), 4096);
    }

    #[test]
    fn garbage_handshake_ends_session_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dev = Arc::new(MemDevice::new(4096));
        let mut output = Vec::new();
        let _ = serve_session(Cursor::new(bytes), &mut output, &exports(dev.clone()));
        // Whatever the bytes, the server greeted first and the session ended (the
        // input is finite, so a hang would show as a test timeout).
        prop_assert!(output.starts_with(b"NBDMAGICIHAVEOPT"));
    }
}
