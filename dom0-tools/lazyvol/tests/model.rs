//! Random operations on several volumes, snapshots and clones of one store, checked
//! against a plain in-memory model of every volume. Clones are open with their
//! background hydrator running, so hydration races with the operations.

mod common;

use lazyvol::{CloneOptions, Store, Volume, VolumeKind};
use proptest::prelude::*;

const SIZE: u64 = 300_000; // not a multiple of any region size: short last region

struct Entry {
    name: String,
    data: Vec<u8>,
    vol: Option<Volume>,
    kind: VolumeKind,
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        v: usize,
        off: u64,
        len: u64,
        seed: u8,
        fua: bool,
    },
    Zero {
        v: usize,
        off: u64,
        len: u64,
    },
    Read {
        v: usize,
        off: u64,
        len: u64,
    },
    Flush {
        v: usize,
    },
    Snapshot {
        v: usize,
        live: bool,
    },
    Clone {
        s: usize,
        shift: u32,
        hydrate: bool,
    },
    Reopen {
        v: usize,
    },
    Prefetch {
        v: usize,
        off: u64,
        len: u64,
    },
    Delete {
        v: usize,
    },
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..SIZE).prop_flat_map(|off| (Just(off), 1..=(SIZE - off).min(70_000)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<usize>(), range(), any::<u8>(), any::<bool>())
            .prop_map(|(v, (off, len), seed, fua)| Op::Write { v, off, len, seed, fua: fua && seed % 4 == 0 }),
        2 => (any::<usize>(), range()).prop_map(|(v, (off, len))| Op::Zero { v, off, len }),
        6 => (any::<usize>(), range()).prop_map(|(v, (off, len))| Op::Read { v, off, len }),
        2 => any::<usize>().prop_map(|v| Op::Flush { v }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(v, live)| Op::Snapshot { v, live }),
        2 => (any::<usize>(), 12u32..15, any::<bool>()).prop_map(|(s, shift, hydrate)| Op::Clone { s, shift, hydrate }),
        1 => any::<usize>().prop_map(|v| Op::Reopen { v }),
        1 => (any::<usize>(), range()).prop_map(|(v, (off, len))| Op::Prefetch { v, off, len }),
        1 => any::<usize>().prop_map(|v| Op::Delete { v }),
    ]
}

fn pattern(seed: u8, off: u64, len: u64) -> Vec<u8> {
    (off..off + len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn pick(entries: &[Entry], i: usize, writable: bool) -> Option<usize> {
    let idx: Vec<usize> = (0..entries.len())
        .filter(|&k| !writable || entries[k].kind != VolumeKind::Snapshot)
        .collect();
    (!idx.is_empty()).then(|| idx[i % idx.len()])
}

fn read_all(v: &Volume) -> Vec<u8> {
    let mut buf = vec![0u8; v.size() as usize];
    v.read_at(&mut buf, 0).unwrap();
    buf
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn run(ops: Vec<Op>) {
    run_in(&std::env::temp_dir(), ops)
}

fn run_in(parent: &std::path::Path, ops: Vec<Op>) {
    let dir = tempfile::tempdir_in(parent).unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_with_region_size("base", SIZE, 8192).unwrap();
    let mut entries = vec![Entry {
        name: "base".into(),
        data: vec![0u8; SIZE as usize],
        vol: Some(store.open_volume("base").unwrap()),
        kind: VolumeKind::Volume,
    }];
    let mut counter = 0;
    for op in ops {
        match op {
            Op::Write {
                v,
                off,
                len,
                seed,
                fua,
            } => {
                let Some(k) = pick(&entries, v, true) else {
                    continue;
                };
                let data = pattern(seed, off, len);
                entries[k]
                    .vol
                    .as_ref()
                    .unwrap()
                    .write_at(&data, off, fua)
                    .unwrap();
                entries[k].data[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            Op::Zero { v, off, len } => {
                let Some(k) = pick(&entries, v, true) else {
                    continue;
                };
                let e = &mut entries[k];
                if len % 2 == 0 {
                    e.vol
                        .as_ref()
                        .unwrap()
                        .write_zeroes(off, len, false)
                        .unwrap();
                } else {
                    e.vol.as_ref().unwrap().trim(off, len).unwrap();
                }
                e.data[off as usize..(off + len) as usize].fill(0);
            }
            Op::Read { v, off, len } => {
                let Some(k) = pick(&entries, v, false) else {
                    continue;
                };
                let e = &entries[k];
                let vol = match &e.vol {
                    Some(v) => v,
                    None => continue,
                };
                let mut buf = vec![0u8; len as usize];
                vol.read_at(&mut buf, off).unwrap();
                let want = &e.data[off as usize..(off + len) as usize];
                assert!(
                    buf == want,
                    "read of {} at {off}+{len} differs at +{:?}",
                    e.name,
                    first_diff(&buf, want)
                );
            }
            Op::Flush { v } => {
                let Some(k) = pick(&entries, v, true) else {
                    continue;
                };
                entries[k].vol.as_ref().unwrap().flush().unwrap();
            }
            Op::Snapshot { v, live } => {
                let Some(k) = pick(&entries, v, true) else {
                    continue;
                };
                counter += 1;
                let snap = format!("snap{counter}");
                if live {
                    entries[k].vol.as_ref().unwrap().snapshot(&snap).unwrap();
                } else {
                    entries[k].vol = None;
                    store.snapshot(&entries[k].name, &snap).unwrap();
                    entries[k].vol = Some(store.open_volume(&entries[k].name).unwrap());
                }
                let data = entries[k].data.clone();
                entries.push(Entry {
                    vol: Some(store.open_volume(&snap).unwrap()),
                    name: snap,
                    data,
                    kind: VolumeKind::Snapshot,
                });
            }
            Op::Clone { s, shift, hydrate } => {
                let snaps: Vec<usize> = (0..entries.len())
                    .filter(|&k| entries[k].kind == VolumeKind::Snapshot)
                    .collect();
                if snaps.is_empty() {
                    continue;
                }
                let k = snaps[s % snaps.len()];
                counter += 1;
                let name = format!("clone{counter}");
                let opts = CloneOptions {
                    hydrate,
                    rate: None,
                    region_size: 1 << shift,
                };
                store.clone(&entries[k].name, &name, opts).unwrap();
                let data = entries[k].data.clone();
                entries.push(Entry {
                    vol: Some(store.open_volume(&name).unwrap()),
                    name,
                    data,
                    kind: VolumeKind::Clone,
                });
            }
            Op::Reopen { v } => {
                let Some(k) = pick(&entries, v, false) else {
                    continue;
                };
                entries[k].vol = None;
                entries[k].vol = Some(store.open_volume(&entries[k].name).unwrap());
            }
            Op::Delete { v } => {
                if entries.len() < 2 {
                    continue;
                }
                let k = v % entries.len();
                entries[k].vol = None;
                match store.delete(&entries[k].name) {
                    Ok(()) => {
                        entries.remove(k);
                    }
                    Err(lazyvol::Error::SnapshotInUse { clones, .. }) => {
                        assert!(!clones.is_empty());
                        for c in &clones {
                            // It may have become independent since (hydrator).
                            let st = store.status(c).unwrap();
                            assert!(
                                st.independent
                                    || st.depends_on.as_deref() == Some(&entries[k].name),
                                "{c} named as a dependent of {}",
                                entries[k].name
                            );
                        }
                        entries[k].vol = Some(store.open_volume(&entries[k].name).unwrap());
                    }
                    Err(e) => panic!("delete {}: {e}", entries[k].name),
                }
            }
            Op::Prefetch { v, off, len } => {
                let Some(k) = pick(&entries, v, true) else {
                    continue;
                };
                entries[k]
                    .vol
                    .as_ref()
                    .unwrap()
                    .prefetch(&[(off, len)])
                    .unwrap();
            }
        }
    }
    for e in &entries {
        let got = read_all(e.vol.as_ref().unwrap());
        assert!(
            got == e.data,
            "{} differs at {:?}",
            e.name,
            first_diff(&got, &e.data)
        );
    }
    // Everything must survive a close and reopen too (the maps were committed on
    // close).
    for e in &mut entries {
        e.vol = None;
    }
    for e in &entries {
        let v = store.open_volume(&e.name).unwrap();
        let got = read_all(&v);
        assert!(
            got == e.data,
            "{} after reopen differs at {:?}",
            e.name,
            first_diff(&got, &e.data)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn random_ops_match_model(ops in proptest::collection::vec(op(), 1..50)) {
        run(ops);
    }
}

#[test]
fn writes_to_origin_after_snapshot_never_change_snapshot_or_clone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_with_region_size("v", 1 << 20, 65536).unwrap();
    let v = store.open_volume("v").unwrap();
    let a = pattern(1, 0, 1 << 20);
    v.write_at(&a, 0, false).unwrap();
    v.snapshot("s").unwrap();
    store
        .clone(
            "s",
            "c",
            CloneOptions {
                hydrate: false,
                rate: None,
                region_size: 65536,
            },
        )
        .unwrap();
    let c = store.open_volume("c").unwrap();
    let b = pattern(2, 0, 1 << 20);
    v.write_at(&b, 0, true).unwrap();
    v.write_zeroes(4096, 300_000, false).unwrap();
    let s = store.open_volume("s").unwrap();
    assert!(read_all(&s) == a);
    assert!(read_all(&c) == a);
    assert!(
        s.write_at(&[1], 0, false).is_err(),
        "snapshots are read-only"
    );
}

/// The same model on XFS with reflink, where hydration shares extents
/// (FICLONERANGE) instead of copying.
#[test]
fn random_ops_match_model_on_xfs_reflink() {
    let mnt = match common::Mount::xfs_reflink() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipping: no XFS loop mount ({e})");
            return;
        }
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 20,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..50), |ops| {
            run_in(mnt.path(), ops);
            Ok(())
        })
        .unwrap();
}
