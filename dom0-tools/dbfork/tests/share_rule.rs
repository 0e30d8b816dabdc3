//! The share rule checked from outside, against real servers: after clones taken under
//! a write load, every frame of the family's pool that the rule would let a replica
//! read (`lsn <= S`, `valid_from >= S`, a page the replica has not written) is compared
//! byte for byte with that replica's own page on its disk. A broken rule (a frame read
//! before the snapshot and superseded, a page the replica wrote, a stale image offered
//! by the scan) shows up as a stale frame; there must be none.
//!
//! The checker reads the pool's record file, the replica's written-page file and its
//! datadir with its own decoder (the formats of guest-agent's `pool` and `written`
//! modules), not the agent's code.

mod common;
use common::cluster::*;
use common::*;
use dbfork::registry::Registry;
use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const PAGE: u64 = 16384;
const RECORD_LEN: usize = 32;
const RECORD_MAGIC: u32 = 0xDBF0_0001;

/// A pool slot's record: space, page, LSN, valid_from (guest-agent `pool`).
struct Record {
    space: u32,
    page: u32,
    lsn: u64,
    valid_from: u64,
}

fn decode(b: &[u8]) -> Option<Record> {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    (u32_at(24) == RECORD_MAGIC && u32_at(28) == crc32c::crc32c(&b[..28])).then(|| Record {
        space: u32_at(0),
        page: u32_at(4),
        lsn: u64_at(8),
        valid_from: u64_at(16),
    })
}

/// The replica's written-page set: u64 keys, space << 32 | page, little endian.
fn written(path: &Path) -> HashSet<u64> {
    std::fs::read(path)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Every tablespace file of a datadir by the space id its page 0 names.
fn spaces(datadir: &Path) -> BTreeMap<u32, PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeMap<u32, PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let data = name.ends_with(".ibd")
                || name
                    .strip_prefix("ibdata")
                    .is_some_and(|d| d.parse::<u32>().is_ok())
                || name
                    .strip_prefix("undo")
                    .is_some_and(|d| d.parse::<u32>().is_ok());
            if !data {
                continue;
            }
            let mut page0 = [0u8; 38];
            if std::fs::File::open(&p)
                .and_then(|f| f.read_exact_at(&mut page0, 0))
                .is_ok()
            {
                let space = u32::from_be_bytes(page0[34..38].try_into().unwrap());
                out.insert(space, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(datadir, &mut out);
    out
}

#[derive(Debug, Default)]
struct Tally {
    servable: u64,
    compared: u64,
    stale: u64,
    no_counterpart: u64,
}

/// Compares every frame the rule would serve to `replica` (stopped, its volume
/// attached read-only at `datadir`) with its own page: the family's entries as the page
/// table holds them (a revalidation makes a new entry for an existing frame), the
/// bytes from the pool file.
fn check(c: &Cluster, replica: &str, datadir: &Path) -> Tally {
    let reg = Registry::new(c.store.path());
    let rec = reg.load(replica).unwrap();
    let m = rec.sharing.as_ref().expect("the replica shares");
    let s = rec.clone.as_ref().unwrap().snapshot_lsn;
    let w = written(&reg.run_dir(replica).join("replica-writes"));
    let entries = substrate::PageTableService::new(c.store.path(), DBFORK.as_ref())
        .family_entries(m.family_id)
        .unwrap();
    let pool = substrate::local::agent::pool_path(c.store.path(), m.family_id);
    let mut meta_path = pool.clone().into_os_string();
    meta_path.push(".meta");
    let meta = std::fs::read(&meta_path).unwrap();
    let pool = std::fs::File::open(&pool).unwrap();
    let files = spaces(datadir);
    let mut t = Tally::default();
    let (mut slot, mut own) = (vec![0u8; PAGE as usize], vec![0u8; PAGE as usize]);
    for e in entries {
        let key = (u64::from(e.space_id) << 32) | u64::from(e.page_no);
        if e.lsn > s || e.valid_from < s || w.contains(&key) {
            continue;
        }
        t.servable += 1;
        let offset = e.pool_offset.expect("a local frame");
        // The slot's own record names the same page and version as the entry.
        let at = (offset / PAGE) as usize * RECORD_LEN;
        let r = decode(&meta[at..at + RECORD_LEN]).expect("a registered slot has its record");
        assert_eq!(
            (r.space, r.page, r.lsn),
            (e.space_id, e.page_no, e.lsn),
            "entry and slot record disagree"
        );
        assert!(r.valid_from <= e.valid_from);
        let Some(file) = files.get(&e.space_id) else {
            t.no_counterpart += 1;
            continue;
        };
        let f = std::fs::File::open(file).unwrap();
        if f.read_exact_at(&mut own, u64::from(e.page_no) * PAGE)
            .is_err()
        {
            t.no_counterpart += 1;
            continue;
        }
        pool.read_exact_at(&mut slot, offset).unwrap();
        t.compared += 1;
        if slot != own {
            t.stale += 1;
            let lsn = |b: &[u8]| u64::from_be_bytes(b[16..24].try_into().unwrap());
            eprintln!(
                "STALE: {replica} would be served space {} page {} at lsn {} (valid from {}), its own page has lsn {} (S = {s})",
                e.space_id,
                e.page_no,
                e.lsn,
                e.valid_from,
                lsn(&own)
            );
        }
    }
    t
}

#[test]
fn no_frame_the_rule_serves_differs_from_the_replicas_own_page() {
    let Some(c) = Cluster::new() else { return };
    c.source("src");
    // Four tables, two of them written during the clones (superseded frames), two read
    // (frames offered and revalidated across both snapshots).
    load(&c, "src", 4, 10000);
    c.inst("src")
        .exec("CHECKSUM TABLE sbtest.sbtest3, sbtest.sbtest4")
        .unwrap();
    // Their pages clean before the load: what the first clone's offer has to serve
    // does not depend on when the page cleaner ran.
    let f = dbinstance::flush_dirty_pages(&c.inst("src"), 0, std::time::Duration::from_secs(60))
        .unwrap();
    assert!(f.dirty_after < 50, "{f:?}");
    let writer = write_load(&c, "src", 30);
    c.clone("src", "r1", &[]);
    // A second snapshot while the load goes on: frames of the first offer are read
    // before it, and must not be served to r2 once superseded.
    let inst = c.inst("src");
    let pos = inst.gtid_binlog_pos().unwrap().to_string();
    assert!(wait_until(std::time::Duration::from_secs(30), || inst
        .gtid_binlog_pos()
        .unwrap()
        .to_string()
        != pos));
    c.clone("src", "r2", &[]);
    // The replicas read while the source writes: more frames offered and mapped.
    for r in ["r1", "r2"] {
        c.inst(r)
            .exec("CHECKSUM TABLE sbtest.sbtest1, sbtest.sbtest2, sbtest.sbtest3, sbtest.sbtest4")
            .unwrap();
    }
    writer.wait().unwrap();

    let mut total = Tally::default();
    for r in ["r1", "r2"] {
        // Stopped cleanly: everything its recovery and replication changed is on its
        // disk, and in its written-page set (synced by the stop).
        c.store.ok(&["stop", r]);
        let mp = tempfile::tempdir().unwrap();
        c.store.ok(&[
            "volume",
            "attach",
            r,
            mp.path().to_str().unwrap(),
            "--read-only",
        ]);
        let t = check(&c, r, &mp.path().join("data"));
        c.store.ok(&["volume", "detach", r]);
        eprintln!("share rule, {r}: {t:?}");
        total.servable += t.servable;
        total.compared += t.compared;
        total.stale += t.stale;
        total.no_counterpart += t.no_counterpart;
    }
    println!(
        "share rule under a write load: {} frames servable to r1/r2, {} compared with the replica's own page, {} stale, {} without a counterpart",
        total.servable, total.compared, total.stale, total.no_counterpart
    );
    assert!(total.compared > 200, "too little was checked: {total:?}");
    assert_eq!(
        total.stale, 0,
        "stale frames the rule would serve: {total:?}"
    );
}
