//! Structured replies and block status (`base:allocation`), byte by byte, and with
//! real clients (qemu-img map, nbdinfo --map) against a sparse file.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nbd_export::proto::*;
use nbd_export::{BlockDevice, FileDevice, MemDevice};

struct Raw(UnixStream);

/// One structured chunk: (flags, type, cookie, payload).
type Chunk = (u16, u16, u64, Vec<u8>);

impl Raw {
    fn connect(srv: &TestServer) -> Raw {
        let s = UnixStream::connect(&srv.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = Raw(s);
        let g = r.recv(18);
        assert_eq!(&g[..8], b"NBDMAGIC");
        r.send(&3u32.to_be_bytes());
        r
    }
    fn send(&mut self, b: &[u8]) {
        self.0.write_all(b).unwrap();
    }
    fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.0.read_exact(&mut v).unwrap();
        v
    }
    fn option(&mut self, option: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut b = Vec::new();
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b);
        let mut replies = Vec::new();
        loop {
            let h = self.recv(20);
            let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
            let body = self.recv(len as usize);
            replies.push((ty, body));
            if ty == REP_ACK || ty & REP_FLAG_ERROR != 0 {
                return replies;
            }
        }
    }
    fn request(&mut self, command: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        self.send(&encode_request(&Request {
            flags,
            command,
            cookie,
            offset,
            len,
        }));
    }
    fn chunk(&mut self) -> Chunk {
        let h = self.recv(20);
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().unwrap()),
            STRUCTURED_REPLY_MAGIC
        );
        let flags = u16::from_be_bytes([h[4], h[5]]);
        let ty = u16::from_be_bytes([h[6], h[7]]);
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        (flags, ty, cookie, self.recv(len as usize))
    }
    fn simple(&mut self) -> (u32, u64) {
        let h: [u8; 16] = self.recv(16).try_into().unwrap();
        let r = parse_simple_reply(&h).unwrap();
        (r.error, r.cookie)
    }
}

fn name_data(name: &str) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

fn meta_data(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

fn descriptors(payload: &[u8]) -> (u32, Vec<(u32, u32)>) {
    let id = u32::from_be_bytes(payload[..4].try_into().unwrap());
    let d = payload[4..]
        .chunks_exact(8)
        .map(|c| {
            (
                u32::from_be_bytes(c[..4].try_into().unwrap()),
                u32::from_be_bytes(c[4..].try_into().unwrap()),
            )
        })
        .collect();
    (id, d)
}

/// 64 KiB: 8 KiB of data, 16 KiB of zeroes, data to the end.
fn device() -> (Arc<MemDevice>, Vec<u8>) {
    let mut data = pattern(64 << 10, 21);
    data[8192..24576].fill(0);
    (Arc::new(MemDevice::from_vec(data.clone())), data)
}

/// Structured replies and base:allocation negotiated, GO done.
fn negotiated(srv: &TestServer) -> Raw {
    let mut r = Raw::connect(srv);
    assert_eq!(r.option(OPT_STRUCTURED_REPLY, &[]), vec![(REP_ACK, vec![])]);
    let listed = r.option(OPT_LIST_META_CONTEXT, &meta_data("vol", &[]));
    assert_eq!(listed[0].0, REP_META_CONTEXT);
    assert_eq!(&listed[0].1[4..], BASE_ALLOCATION.as_bytes());
    let set = r.option(
        OPT_SET_META_CONTEXT,
        &meta_data("vol", &["base:allocation", "x-other:thing"]),
    );
    assert_eq!(set.len(), 2, "one context and the ACK: {set:?}");
    assert_eq!(set[0].0, REP_META_CONTEXT);
    assert_eq!(set[0].1[..4], BASE_ALLOCATION_ID.to_be_bytes());
    let go = r.option(OPT_GO, &name_data("vol"));
    assert_eq!(go.last().unwrap().0, REP_ACK);
    r
}

#[test]
fn reads_get_structured_replies_and_errors_get_error_chunks() {
    let (dev, data) = device();
    let srv = TestServer::unix(vec![("vol", dev as Arc<dyn BlockDevice>)]);
    let mut r = negotiated(&srv);
    r.request(CMD_READ, 0, 1, 100, 50);
    let (flags, ty, cookie, payload) = r.chunk();
    assert_eq!(
        (flags, ty, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 1)
    );
    assert_eq!(payload[..8], 100u64.to_be_bytes());
    assert_eq!(payload[8..], data[100..150]);
    // Out of range: an error chunk, not a simple reply.
    r.request(CMD_READ, 0, 2, (64 << 10) - 1, 2);
    let (flags, ty, cookie, payload) = r.chunk();
    assert_eq!((flags, ty, cookie), (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 2));
    assert_eq!(payload[..4], NBD_EINVAL.to_be_bytes());
    // Other commands keep simple replies.
    r.request(CMD_FLUSH, 0, 3, 0, 0);
    assert_eq!(r.simple(), (0, 3));
    r.request(CMD_READ, 0, 4, 0, 0);
    assert_eq!(r.chunk(), (REPLY_FLAG_DONE, REPLY_TYPE_NONE, 4, vec![]));
}

#[test]
fn block_status_reports_zero_runs_and_follows_writes() {
    let (dev, _) = device();
    let srv = TestServer::unix(vec![("vol", dev.clone() as Arc<dyn BlockDevice>)]);
    let mut r = negotiated(&srv);
    r.request(CMD_BLOCK_STATUS, 0, 1, 0, 64 << 10);
    let (flags, ty, cookie, payload) = r.chunk();
    assert_eq!(
        (flags, ty, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, 1)
    );
    let (id, d) = descriptors(&payload);
    assert_eq!(id, BASE_ALLOCATION_ID);
    assert_eq!(d, vec![(8192, 0), (16384, STATE_ZERO), (40960, 0)]);
    // REQ_ONE: one descriptor, within the request.
    r.request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 2, 4096, 8192);
    let (_, _, _, payload) = r.chunk();
    assert_eq!(descriptors(&payload).1, vec![(4096, 0)]);
    // Clipped to the request even if the device knows more.
    r.request(CMD_BLOCK_STATUS, 0, 3, 12288, 100);
    let (_, _, _, payload) = r.chunk();
    assert_eq!(descriptors(&payload).1, vec![(100, STATE_ZERO)]);
    // A write turns the zero run into data.
    dev.write_at(&[1; 4096], 8192, false).unwrap();
    r.request(CMD_BLOCK_STATUS, 0, 4, 8192, 16384);
    let (_, _, _, payload) = r.chunk();
    assert_eq!(
        descriptors(&payload).1,
        vec![(4096, 0), (12288, STATE_ZERO)]
    );
    // Out of range and zero length: error chunks.
    r.request(CMD_BLOCK_STATUS, 0, 5, 64 << 10, 1);
    let (_, ty, cookie, payload) = r.chunk();
    assert_eq!((ty, cookie), (REPLY_TYPE_ERROR, 5));
    assert_eq!(payload[..4], NBD_EINVAL.to_be_bytes());
    r.request(CMD_BLOCK_STATUS, 0, 6, 0, 0);
    assert_eq!(r.chunk().1, REPLY_TYPE_ERROR);
}

#[test]
fn block_status_without_a_selected_context_is_einval() {
    let (dev, _) = device();
    let srv = TestServer::unix(vec![
        ("vol", dev.clone() as Arc<dyn BlockDevice>),
        ("other", dev as Arc<dyn BlockDevice>),
    ]);
    // Context selected for "other", transmission on "vol".
    let mut r = Raw::connect(&srv);
    r.option(OPT_STRUCTURED_REPLY, &[]);
    let set = r.option(
        OPT_SET_META_CONTEXT,
        &meta_data("other", &["base:allocation"]),
    );
    assert_eq!(set[0].0, REP_META_CONTEXT);
    r.option(OPT_GO, &name_data("vol"));
    r.request(CMD_BLOCK_STATUS, 0, 1, 0, 4096);
    let (_, ty, _, payload) = r.chunk();
    assert_eq!(ty, REPLY_TYPE_ERROR);
    assert_eq!(payload[..4], NBD_EINVAL.to_be_bytes());
    // Unknown contexts select nothing; malformed data is ERR_INVALID.
    let mut r = Raw::connect(&srv);
    r.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(
        r.option(
            OPT_SET_META_CONTEXT,
            &meta_data("vol", &["qemu:dirty-bitmap:x"])
        ),
        vec![(REP_ACK, vec![])]
    );
    let mut bad = meta_data("vol", &["base:allocation"]);
    bad[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(r.option(OPT_SET_META_CONTEXT, &bad)[0].0, REP_ERR_INVALID);
    assert_eq!(
        r.option(OPT_LIST_META_CONTEXT, &meta_data("nope", &[]))[0].0,
        REP_ERR_UNKNOWN
    );
}

/// A sparse file: data, hole, data, hole (4 MiB, 1 MiB pieces).
fn sparse_image(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("sparse.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(4 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pattern(1 << 20, 1), 0).unwrap();
    f.write_all_at(&pattern(1 << 20, 2), 2 << 20).unwrap();
    f.sync_all().unwrap();
    p
}

#[test]
fn qemu_img_map_over_nbd_matches_the_file() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = sparse_image(dir.path());
    let dev = Arc::new(FileDevice::open(&p, true).unwrap());
    let srv = TestServer::unix(vec![("vol", dev as Arc<dyn BlockDevice>)]);
    let map = |target: &str| -> Vec<(u64, u64, bool, bool)> {
        let out =
            run_ok(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", target]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["start"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                    e["data"].as_bool().unwrap(),
                    e["zero"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let over_nbd = map(&srv.uri("vol"));
    let local = map(p.to_str().unwrap());
    assert_eq!(
        over_nbd,
        vec![
            (0, 1 << 20, true, false),
            (1 << 20, 1 << 20, false, true),
            (2 << 20, 1 << 20, true, false),
            (3 << 20, 1 << 20, false, true)
        ],
        "local map: {local:?}"
    );
    assert_eq!(over_nbd, local);
}

#[test]
fn nbdinfo_map_and_sparse_nbdcopy() {
    if !have("nbdinfo") || !have("nbdcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = sparse_image(dir.path());
    let dev = Arc::new(FileDevice::open(&p, true).unwrap());
    let srv = TestServer::unix(vec![("vol", dev as Arc<dyn BlockDevice>)]);
    let out = run_ok(Command::new("nbdinfo").args(["--map", "--json", &srv.uri("vol")]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let extents: Vec<(u64, u64, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        extents,
        vec![
            (0, 1 << 20, 0),
            (1 << 20, 1 << 20, 3),
            (2 << 20, 1 << 20, 0),
            (3 << 20, 1 << 20, 3)
        ]
    );
    // nbdcopy uses the map to skip holes; the copy still matches and stays sparse.
    let copy = dir.path().join("copy.raw");
    run_ok(Command::new("nbdcopy").args([&srv.uri("vol"), copy.to_str().unwrap()]));
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&p).unwrap());
    use std::os::unix::fs::MetadataExt;
    let blocks = std::fs::metadata(&copy).unwrap().blocks() * 512;
    assert!(
        blocks <= 3 << 20,
        "copy allocated {blocks} bytes: holes were not skipped"
    );
}
