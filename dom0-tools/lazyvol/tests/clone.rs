//! Clone lifecycle: hydration, independence, prefetch, counters, busy/in-use rules.

use std::time::{Duration, Instant};

use lazyvol::{CloneOptions, Error, OpenOptions, Store, VolumeKind};

fn pattern(seed: u8, off: u64, len: u64) -> Vec<u8> {
    (off..off + len)
        .map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed) ^ ((i >> 9) as u8))
        .collect()
}

/// Polls `cond` until it holds or `limit` passes.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A store with volume "v" (2 MiB of pattern 1) and its snapshot "s".
fn store_with_snapshot() -> (tempfile::TempDir, Store, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create("v", 2 << 20).unwrap();
    let data = pattern(1, 0, 2 << 20);
    {
        let v = store.open_volume("v").unwrap();
        v.write_at(&data, 0, false).unwrap();
        v.flush().unwrap();
    }
    store.snapshot("v", "s").unwrap();
    (dir, store, data)
}

fn opts(hydrate: bool, rate: Option<u64>, region_size: u64) -> CloneOptions {
    CloneOptions {
        hydrate,
        rate,
        region_size,
    }
}

#[test]
fn background_hydration_makes_clone_independent_and_snapshot_deletable() {
    let (_d, store, data) = store_with_snapshot();
    store.clone("s", "c", opts(true, None, 65536)).unwrap();
    let st = store.status("c").unwrap();
    assert_eq!(st.kind, VolumeKind::Clone);
    assert_eq!(st.depends_on.as_deref(), Some("s"));
    assert!(!st.independent);
    assert_eq!(st.hydrated_bytes, 0);

    match store.delete("s") {
        Err(Error::SnapshotInUse { snapshot, clones }) => {
            assert_eq!(snapshot, "s");
            assert_eq!(clones, vec!["c".to_string()]);
        }
        other => panic!("expected SnapshotInUse, got {other:?}"),
    }

    let c = store.open_volume("c").unwrap();
    wait_until(Duration::from_secs(30), "independence", || !c.dependent());
    let st = c.status();
    assert!(st.independent);
    assert_eq!(st.hydrated_bytes, 2 << 20);
    assert_eq!(st.background_fetches + st.on_demand_fetches, 32);
    drop(c);

    let on_disk = store.status("c").unwrap();
    assert!(on_disk.independent && on_disk.depends_on.is_none());
    store.delete("s").unwrap();
    store.delete("v").unwrap();
    // Only the clone's own layer is left.
    assert_eq!(
        std::fs::read_dir(store.root().join("layers"))
            .unwrap()
            .count(),
        1
    );
    let c = store.open_volume("c").unwrap();
    let mut buf = vec![0u8; 2 << 20];
    c.read_at(&mut buf, 0).unwrap();
    assert!(buf == data);
}

#[test]
fn on_demand_reads_fetch_each_region_once() {
    let (_d, store, data) = store_with_snapshot();
    store.clone("s", "c", opts(false, None, 65536)).unwrap();
    let c = store.open_volume("c").unwrap();
    let mut buf = vec![0u8; 16384];
    c.read_at(&mut buf, 70_000).unwrap();
    assert!(buf[..] == data[70_000..70_000 + 16384]);
    assert_eq!(c.counters().on_demand_fetches, 1);
    c.read_at(&mut buf, 65536 + 100).unwrap();
    assert_eq!(
        c.counters().on_demand_fetches,
        1,
        "region 1 already hydrated"
    );
    // Spanning regions 1..=3: two new fetches.
    let mut big = vec![0u8; 3 * 65536];
    c.read_at(&mut big, 65536).unwrap();
    assert_eq!(c.counters().on_demand_fetches, 3);
    assert_eq!(c.counters().fetched_bytes, 3 * 65536);
    assert_eq!(c.counters().background_fetches, 0);
    c.flush().unwrap();
    assert_eq!(c.committed_regions(), 3);
    drop(c);
    let st = store.status("c").unwrap();
    assert_eq!(st.on_demand_fetches, 3);
    assert_eq!(st.hydrated_bytes, 3 * 65536);
}

#[test]
fn partial_writes_to_unhydrated_regions_keep_the_rest_of_the_region() {
    let (_d, store, mut data) = store_with_snapshot();
    store.clone("s", "c", opts(false, None, 65536)).unwrap();
    let c = store.open_volume("c").unwrap();
    let w = pattern(9, 0, 1000);
    c.write_at(&w, 65536 + 5000, false).unwrap();
    data[65536 + 5000..65536 + 6000].copy_from_slice(&w);
    // A whole-region write is not a fetch.
    let whole = pattern(3, 0, 65536);
    c.write_at(&whole, 4 * 65536, false).unwrap();
    data[4 * 65536..5 * 65536].copy_from_slice(&whole);
    c.write_zeroes(10 * 65536 + 10, 65536, false).unwrap();
    data[10 * 65536 + 10..11 * 65536 + 10].fill(0);
    let n = c.counters();
    assert_eq!(
        n.on_demand_fetches, 3,
        "partial write + two partial zero pieces"
    );
    let mut got = vec![0u8; 2 << 20];
    c.read_at(&mut got, 0).unwrap();
    assert!(got == data);
}

#[test]
fn prefetch_moves_ranges_to_the_front() {
    let (_d, store, _) = store_with_snapshot();
    // 64 KiB/s: the sweep from region 0 would need ~8 s to reach the last region.
    store
        .clone("s", "c", opts(true, Some(64 * 1024), 16384))
        .unwrap();
    let c = store.open_volume("c").unwrap();
    let last = (2 << 20) - 16384;
    c.set_rate(Some(256 * 1024));
    c.prefetch(&[(last, 16384)]).unwrap();
    wait_until(Duration::from_secs(20), "prefetched region", || {
        c.region_hydrated(last)
    });
    let st = c.status();
    assert_eq!(st.on_demand_fetches, 0);
    assert!(
        st.background_fetches < 20,
        "prefetched region came before most of the sweep ({} fetched)",
        st.background_fetches
    );
    assert!(
        c.prefetch(&[(2 << 20, 1)]).is_err(),
        "out of range prefetch is an error"
    );
}

#[test]
fn hydrate_fully_reports_progress_and_frees_the_snapshot() {
    let (_d, store, data) = store_with_snapshot();
    store.clone("s", "c", opts(true, Some(1), 262144)).unwrap();
    let mut calls = Vec::new();
    store
        .hydrate_fully("c", |done, total| calls.push((done, total)))
        .unwrap();
    assert_eq!(calls.last(), Some(&(8, 8)));
    assert!(store.status("c").unwrap().independent);
    assert!(store.dependents("s").unwrap().is_empty());
    store.delete("s").unwrap();
    let c = store.open_volume("c").unwrap();
    let mut got = vec![0u8; 2 << 20];
    c.read_at(&mut got, 0).unwrap();
    assert!(got == data);
}

#[test]
fn hydrator_races_with_partial_writes_from_many_threads() {
    let (_d, store, data) = store_with_snapshot();
    store.clone("s", "c", opts(true, None, 4096)).unwrap();
    let c = store.open_volume("c").unwrap();
    let mut model = data.clone();
    let writes: Vec<(u64, Vec<u8>)> = (0..400u64)
        .map(|i| {
            let off = (i * 5237) % ((2 << 20) - 3000);
            (off, pattern(i as u8, off, 100 + (i * 7) % 2900))
        })
        .collect();
    // Threads write disjoint stripes so the model does not depend on interleaving.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let c = &c;
            let writes = &writes;
            s.spawn(move || {
                for (off, w) in writes.iter().filter(|(off, _)| (off / 524288) % 4 == t) {
                    if (off + w.len() as u64 - 1) / 524288 % 4 == t {
                        c.write_at(w, *off, false).unwrap();
                    }
                }
            });
        }
    });
    for (off, w) in &writes {
        if (off / 524288) % 4 == (off + w.len() as u64 - 1) / 524288 % 4 {
            model[*off as usize..*off as usize + w.len()].copy_from_slice(w);
        }
    }
    let mut got = vec![0u8; 2 << 20];
    c.read_at(&mut got, 0).unwrap();
    assert!(got == model);
    wait_until(Duration::from_secs(30), "independence", || !c.dependent());
    c.read_at(&mut got, 0).unwrap();
    assert!(got == model);
}

#[test]
fn open_volumes_are_busy_and_names_are_checked() {
    let (_d, store, _) = store_with_snapshot();
    let v = store.open_volume("v").unwrap();
    assert!(matches!(
        store.open_volume("v"),
        Err(Error::VolumeBusy { .. })
    ));
    match store.snapshot("v", "s2") {
        Err(Error::VolumeBusy { name, pid }) => {
            assert_eq!(name, "v");
            assert_eq!(pid, Some(std::process::id()));
        }
        other => panic!("expected VolumeBusy, got {other:?}"),
    }
    assert!(matches!(store.delete("v"), Err(Error::VolumeBusy { .. })));
    // The holder can snapshot.
    v.snapshot("s2").unwrap();
    assert!(matches!(v.snapshot("s2"), Err(Error::NameClash(_))));
    drop(v);
    // Snapshots can be opened by several readers at once.
    let a = store.open_volume("s").unwrap();
    let b = store.open_volume("s").unwrap();
    assert!(a.read_only() && b.read_only());

    assert!(matches!(store.status("nope"), Err(Error::UnknownVolume(_))));
    assert!(matches!(store.create("v", 1), Err(Error::NameClash(_))));
    assert!(matches!(
        store.create("../x", 1),
        Err(Error::InvalidName(_))
    ));
    assert!(matches!(store.create("z", 0), Err(Error::InvalidSize(0))));
    assert!(matches!(
        store.clone("v", "c", CloneOptions::default()),
        Err(Error::NotASnapshot(_))
    ));
    assert!(matches!(
        store.clone("s", "c", opts(true, None, 4096 + 512)),
        Err(Error::InvalidRegionSize(_))
    ));
    let names: Vec<String> = store.list().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["s", "s2", "v"]);
    let c = store.open_volume_with("s", OpenOptions::default()).unwrap();
    let mut buf = [0u8; 10];
    assert!(
        c.read_at(&mut buf, (2 << 20) - 5).is_err(),
        "read past the end"
    );
    assert!(c.write_at(&buf, 0, false).is_err());
}

#[test]
fn snapshot_of_a_clone_while_it_hydrates() {
    let (_d, store, data) = store_with_snapshot();
    store
        .clone("s", "c", opts(true, Some(512 * 1024), 65536))
        .unwrap();
    let c = store.open_volume("c").unwrap();
    let mut model = data.clone();
    let w = pattern(5, 0, 5000);
    c.write_at(&w, 100_000, false).unwrap();
    model[100_000..105_000].copy_from_slice(&w);
    c.snapshot("cs").unwrap();
    let after = pattern(6, 0, 5000);
    c.write_at(&after, 100_000, false).unwrap();
    c.set_rate(None);
    wait_until(Duration::from_secs(30), "independence", || !c.dependent());
    let cs = store.open_volume("cs").unwrap();
    let mut got = vec![0u8; 2 << 20];
    cs.read_at(&mut got, 0).unwrap();
    assert!(
        got == model,
        "snapshot of the clone unchanged by later writes"
    );
    model[100_000..105_000].copy_from_slice(&after);
    c.read_at(&mut got, 0).unwrap();
    assert!(got == model);
    // The clone's snapshot still reads through "s"'s layers; deleting "s" hands
    // them over to it instead of being refused.
    assert_eq!(store.status("cs").unwrap().depends_on.as_deref(), Some("s"));
    drop(cs);
    drop(c);
    store.delete("s").unwrap();
    let st = store.status("cs").unwrap();
    assert!(st.independent && st.depends_on.is_none());
    let mut snap_model = data.clone();
    snap_model[100_000..105_000].copy_from_slice(&w);
    let cs = store.open_volume("cs").unwrap();
    cs.read_at(&mut got, 0).unwrap();
    assert!(
        got == snap_model,
        "layers were kept for the snapshot of the clone"
    );
}

#[test]
fn hydration_resumes_after_reopen_without_fetching_twice() {
    let (_d, store, data) = store_with_snapshot();
    // 1 MiB/s with 64 KiB regions: ~16 regions/s, 32 regions in all.
    store
        .clone("s", "c", opts(true, Some(1 << 20), 65536))
        .unwrap();
    let c = store.open_volume("c").unwrap();
    wait_until(Duration::from_secs(20), "some background progress", || {
        c.status().background_fetches >= 4
    });
    drop(c); // commits the map
    let mid = store.status("c").unwrap();
    assert!(mid.background_fetches >= 4 && !mid.independent);
    assert_eq!(mid.hydrated_bytes, mid.background_fetches * 65536);
    let c = store.open_volume("c").unwrap();
    c.set_rate(None);
    wait_until(Duration::from_secs(30), "independence", || !c.dependent());
    let end = c.status();
    assert_eq!(
        end.background_fetches + end.on_demand_fetches,
        32,
        "every region fetched exactly once across the reopen"
    );
    let mut got = vec![0u8; 2 << 20];
    c.read_at(&mut got, 0).unwrap();
    assert!(got == data);
}

#[test]
fn status_from_disk_shows_progress_of_a_volume_open_elsewhere() {
    let (_d, store, _) = store_with_snapshot();
    store
        .clone("s", "c", opts(true, Some(512 << 10), 16384))
        .unwrap();
    let c = store.open_volume("c").unwrap();
    // The hydrator commits every second; status reads the committed map.
    wait_until(Duration::from_secs(20), "committed progress", || {
        let st = store.status("c").unwrap();
        st.hydrated_bytes > 0 && st.background_rate > 0
    });
    let st = store.status("c").unwrap();
    assert_eq!(st.open_by_pid, Some(std::process::id()));
    assert!(st.eta_secs.is_some());
    assert_eq!(st.depends_on.as_deref(), Some("s"));
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["kind"], "clone");
    drop(c);
    assert_eq!(store.status("c").unwrap().open_by_pid, None);
}

#[test]
fn orphaned_layer_directories_from_a_crash_do_not_block_new_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // What a crash between creating a layer and writing store.json leaves behind.
    for id in ["L00000001", "L00000002"] {
        let d = dir.path().join("layers").join(id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("data"), b"stale").unwrap();
    }
    store.create("a", 1 << 20).unwrap();
    let img = dir.path().join("img");
    std::fs::write(&img, vec![7u8; 8192]).unwrap();
    store.import("b", &img).unwrap();
    let a = store.open_volume("a").unwrap();
    let mut buf = [1u8; 5];
    a.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0; 5], "no stale bytes");
    let b = store.open_volume("b").unwrap();
    b.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [7; 5]);
}

/// Snapshots taken while writer threads and the hydrator are busy: each snapshot
/// shows, per writer, one whole write (never a torn one), no older than the last
/// write acknowledged before `snapshot` was called and no newer than the last one
/// started before it returned.
#[test]
fn live_snapshots_are_atomic_with_respect_to_concurrent_writes() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let (_d, store, _) = store_with_snapshot();
    store.clone("s", "c", opts(true, None, 8192)).unwrap();
    let c = store.open_volume("c").unwrap();
    const WRITERS: usize = 3;
    const STRIPE: usize = 20 * 1024;
    let stripe_off = |t: usize| (t * 300_000 + 1000) as u64;
    let acked: Vec<AtomicU32> = (0..WRITERS).map(|_| AtomicU32::new(0)).collect();
    let started: Vec<AtomicU32> = (0..WRITERS).map(|_| AtomicU32::new(0)).collect();
    let stop = AtomicBool::new(false);
    let mut checks = Vec::new();
    std::thread::scope(|s| {
        for t in 0..WRITERS {
            let (c, acked, started, stop) = (&c, &acked, &started, &stop);
            s.spawn(move || {
                let mut seq = 0u32;
                while !stop.load(Ordering::Acquire) {
                    seq += 1;
                    let buf: Vec<u8> = seq
                        .to_le_bytes()
                        .iter()
                        .copied()
                        .cycle()
                        .take(STRIPE)
                        .collect();
                    started[t].store(seq, Ordering::Release);
                    c.write_at(&buf, stripe_off(t), false).unwrap();
                    acked[t].store(seq, Ordering::Release);
                }
            });
        }
        for k in 0..8 {
            // Let the writers make progress between snapshots.
            let base: Vec<u32> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
            wait_until(Duration::from_secs(10), "writer progress", || {
                acked
                    .iter()
                    .zip(&base)
                    .all(|(a, b)| a.load(Ordering::Acquire) > *b)
            });
            let lo: Vec<u32> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
            let name = format!("live{k}");
            c.snapshot(&name).unwrap();
            let hi: Vec<u32> = started.iter().map(|a| a.load(Ordering::Acquire)).collect();
            checks.push((name, lo, hi));
        }
        stop.store(true, Ordering::Release);
    });
    for (name, lo, hi) in checks {
        let snap = store.open_volume(&name).unwrap();
        for t in 0..WRITERS {
            let mut buf = vec![0u8; STRIPE];
            snap.read_at(&mut buf, stripe_off(t)).unwrap();
            let v = u32::from_le_bytes(buf[..4].try_into().unwrap());
            let whole: Vec<u8> = v
                .to_le_bytes()
                .iter()
                .copied()
                .cycle()
                .take(STRIPE)
                .collect();
            assert!(buf == whole, "{name}: writer {t}'s stripe is torn");
            assert!(
                lo[t] <= v && v <= hi[t],
                "{name}: writer {t} shows write {v}, expected {}..={}",
                lo[t],
                hi[t]
            );
        }
    }
}

/// Found by the model proptest in CI: a snapshot taken of a clone before it was
/// independent takes over the layers of the clone's snapshot when that is deleted,
/// and then owns layers of two region sizes. It must still open and read exactly.
#[test]
fn a_snapshot_that_took_over_layers_of_another_region_size_opens_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let size = 300_000u64;
    store.create_with_region_size("v", size, 8192).unwrap();
    let base = pattern(3, 0, size);
    {
        let v = store.open_volume("v").unwrap();
        v.write_at(&base, 0, false).unwrap();
        v.flush().unwrap();
    }
    store.snapshot("v", "s1").unwrap();
    store.clone("s1", "c", opts(false, None, 4096)).unwrap();
    let mut want = base.clone();
    {
        let c = store.open_volume("c").unwrap();
        let patch = pattern(9, 5000, 7000);
        c.write_at(&patch, 5000, false).unwrap();
        want[5000..12000].copy_from_slice(&patch);
        c.flush().unwrap();
    }
    store.snapshot("c", "s2").unwrap();
    store.delete("c").unwrap();
    store.delete("s1").unwrap();
    let s2 = store.open_volume("s2").unwrap();
    let mut got = vec![0u8; size as usize];
    s2.read_at(&mut got, 0).unwrap();
    assert!(got == want, "snapshot content changed after the takeover");
    // And it can still be cloned, with a region size of its own.
    drop(s2);
    store.clone("s2", "d", opts(true, None, 16384)).unwrap();
    let d = store.open_volume("d").unwrap();
    let mut got = vec![0u8; size as usize];
    d.read_at(&mut got, 0).unwrap();
    assert!(got == want);
}

/// A mostly empty volume (as a fresh 4 GiB source is): regions no origin layer holds
/// are hydrated without reading anything and count no copied bytes, while every
/// byte of the clone, written or not, still reads exactly as the origin. Partial
/// writes into unheld regions keep the zeroes around them.
#[test]
fn regions_the_origin_never_wrote_hydrate_without_copying_and_read_as_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let size = 4u64 << 20;
    store.create("v", size).unwrap();
    // Data in regions 3 and 40 (64 KiB regions), across the 35/36 boundary, and a
    // region written with zeroes (held by the layer, reads as zeroes).
    let pieces = [
        (3 * 65536 + 100, 5000u64),
        (40 * 65536, 65536),
        (36 * 65536 - 10, 20),
    ];
    let mut want = vec![0u8; size as usize];
    {
        let v = store.open_volume("v").unwrap();
        for (i, &(off, len)) in pieces.iter().enumerate() {
            let p = pattern(i as u8 + 1, off, len);
            v.write_at(&p, off, false).unwrap();
            want[off as usize..(off + len) as usize].copy_from_slice(&p);
        }
        v.write_at(&vec![0u8; 65536], 50 * 65536, false).unwrap();
        v.flush().unwrap();
    }
    store.snapshot("v", "s").unwrap();
    store.clone("s", "c", opts(false, None, 65536)).unwrap();
    let c = store.open_volume("c").unwrap();
    // A partial write into a region nobody holds: the rest of it must read as zeroes.
    let w = pattern(9, 20 * 65536 + 7, 300);
    c.write_at(&w, 20 * 65536 + 7, false).unwrap();
    want[20 * 65536 + 7..20 * 65536 + 307].copy_from_slice(&w);
    c.hydrate_fully(|_, _| {}).unwrap();
    let k = c.counters();
    let held = [3u64, 35, 36, 40, 50].len() as u64;
    assert_eq!(k.fetched_bytes, held * 65536, "{k:?}");
    assert_eq!(
        k.on_demand_fetches + k.background_fetches,
        size / 65536,
        "{k:?}"
    );
    let mut got = vec![0u8; size as usize];
    c.read_at(&mut got, 0).unwrap();
    assert!(got == want, "clone differs from the origin after hydration");
    drop(c);
    store.delete("s").unwrap();
    let c = store.open_volume("c").unwrap();
    let mut again = vec![0u8; size as usize];
    c.read_at(&mut again, 0).unwrap();
    assert!(again == want, "clone differs once independent");
}
