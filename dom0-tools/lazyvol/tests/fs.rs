//! Tests on real file systems: a full tmpfs (ENOSPC), import by reflink on an XFS
//! loop image, import by sparse copy on the ext4 root.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{used_bytes, Mount};
use lazyvol::{CloneOptions, Error, ImportMethod, Store};

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn disk_full_is_reported_and_the_volume_stays_consistent() {
    let mnt = match Mount::new(&["-t", "tmpfs", "-o", "size=8m", "tmpfs"]) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipping: cannot mount a small tmpfs ({e})");
            return;
        }
    };
    let store = Store::open(mnt.path().join("store")).unwrap();
    // A clone whose regions are all still in its snapshot.
    store.create("base", 1 << 20).unwrap();
    let base = noise(50, 1 << 20);
    {
        let b = store.open_volume("base").unwrap();
        b.write_at(&base, 0, true).unwrap();
    }
    store.snapshot("base", "snap").unwrap();
    store
        .clone(
            "snap",
            "c",
            lazyvol::CloneOptions {
                hydrate: false,
                ..Default::default()
            },
        )
        .unwrap();
    let c = store.open_volume("c").unwrap();
    store.create("v", 64 << 20).unwrap();
    let v = store.open_volume("v").unwrap();
    let a = noise(1, 1 << 20);
    v.write_at(&a, 0, false).unwrap();
    v.flush().unwrap();

    let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut full = None;
    for i in 1..64u64 {
        let chunk = noise(i + 1, 1 << 20);
        let res = v.write_at(&chunk, i << 20, false);
        pending.push((i << 20, chunk));
        if let Err(e) = res {
            full = Some(e);
            break;
        }
    }
    let err = full.expect("an 8 MiB tmpfs fills up");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");

    // Reads of the unhydrated clone still work: served from the snapshot when
    // there is no room to hydrate.
    let mut got = vec![0u8; 1 << 20];
    c.read_at(&mut got, 0).unwrap();
    assert!(
        got == base,
        "clone reads its snapshot's bytes on a full disk"
    );
    drop(c);

    // Control-plane calls name the problem.
    let src = tempfile::NamedTempFile::new().unwrap();
    src.as_file().write_all_at(&noise(99, 4 << 20), 0).unwrap();
    match store.import("big", src.path()) {
        Err(Error::DiskFull { .. }) => {}
        other => panic!("expected DiskFull, got {other:?}"),
    }
    assert!(
        store.status("big").is_err(),
        "failed import leaves no volume"
    );

    let check = |v: &lazyvol::Volume| {
        let mut buf = vec![0u8; 1 << 20];
        v.read_at(&mut buf, 0).unwrap();
        assert!(buf == a, "flushed data intact");
        for (off, data) in &pending {
            v.read_at(&mut buf, *off).unwrap();
            for (i, (&got, &want)) in buf.iter().zip(data).enumerate() {
                assert!(
                    got == want || got == 0,
                    "byte {}: neither old nor new",
                    off + i as u64
                );
            }
        }
    };
    check(&v);
    drop(v);
    let v = store.open_volume("v").unwrap();
    check(&v);
    drop(v);
    // Space freed: everything works again.
    store.delete("v").unwrap();
    store.create("w", 1 << 20).unwrap();
    let w = store.open_volume("w").unwrap();
    w.write_at(&a[..4096], 0, true).unwrap();
}

#[test]
fn import_without_reflink_copies_sparsely() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.raw");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(16 << 20).unwrap();
    let d1 = noise(7, 300_000);
    let d2 = noise(8, 5000);
    f.write_all_at(&d1, 1 << 20).unwrap();
    f.write_all_at(&d2, (16 << 20) - 5000).unwrap();
    drop(f);
    let store = Store::open(dir.path().join("store")).unwrap();
    let r = store.import("img", &img).unwrap();
    assert_eq!(store.supports_reflink(), r.method == ImportMethod::Reflink);
    if r.method == ImportMethod::Reflink {
        eprintln!(
            "note: {} supports reflink; sparse path not exercised here",
            dir.path().display()
        );
    } else {
        assert!(
            r.copied_bytes < 2 << 20,
            "holes were not copied ({} bytes)",
            r.copied_bytes
        );
    }
    assert_eq!(r.size, 16 << 20);
    let v = store.open_volume("img").unwrap();
    let mut all = vec![0u8; 16 << 20];
    v.read_at(&mut all, 0).unwrap();
    let mut want = vec![0u8; 16 << 20];
    want[1 << 20..(1 << 20) + d1.len()].copy_from_slice(&d1);
    want[(16 << 20) - 5000..].copy_from_slice(&d2);
    assert!(all == want);
    let layers: Vec<PathBuf> = std::fs::read_dir(store.root().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("data"))
        .collect();
    let blocks = std::fs::metadata(&layers[0]).unwrap().blocks() * 512;
    assert!(
        blocks < 4 << 20,
        "imported layer is sparse ({blocks} bytes allocated)"
    );
}

#[test]
fn import_on_xfs_uses_reflink_and_leaves_the_source_alone() {
    let mnt = match Mount::xfs_reflink() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipping: no XFS loop mount ({e})");
            return;
        }
    };
    let src_path = mnt.path().join("src.raw");
    let src = noise(3, 8 << 20);
    std::fs::write(&src_path, &src).unwrap();
    let store = Store::open(mnt.path().join("store")).unwrap();
    let r = store.import("img", &src_path).unwrap();
    assert_eq!(r.method, ImportMethod::Reflink);
    assert_eq!(r.copied_bytes, 0);
    let v = store.open_volume("img").unwrap();
    let mut all = vec![0u8; 8 << 20];
    v.read_at(&mut all, 0).unwrap();
    assert!(all == src);
    v.write_at(&[0xee; 8192], 4096, true).unwrap();
    drop(v);
    assert!(
        std::fs::read(&src_path).unwrap() == src,
        "source unchanged by volume writes"
    );
}

#[test]
fn hydration_on_xfs_shares_extents_instead_of_copying() {
    let mnt = match Mount::xfs_reflink() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipping: no XFS loop mount ({e})");
            return;
        }
    };
    let size = 64usize << 20;
    let src_path = mnt.path().join("src.raw");
    let src = noise(11, size);
    std::fs::write(&src_path, &src).unwrap();
    let store = Store::open(mnt.path().join("store")).unwrap();
    assert_eq!(
        store.import("base", &src_path).unwrap().method,
        ImportMethod::Reflink
    );
    store.snapshot("base", "snap").unwrap();
    store
        .clone(
            "snap",
            "c",
            CloneOptions {
                hydrate: true,
                rate: None,
                region_size: 65536,
            },
        )
        .unwrap();
    // Make the file system's own accounting current before measuring.
    assert!(std::process::Command::new("sync")
        .status()
        .unwrap()
        .success());
    let before = used_bytes(mnt.path());
    let c = store.open_volume("c").unwrap();
    // A partial write to an unhydrated region, and an on-demand read.
    c.write_at(&[0xab; 100], 70_000, false).unwrap();
    let mut buf = vec![0u8; 4096];
    c.read_at(&mut buf, 40 << 20).unwrap();
    assert!(buf[..] == src[40 << 20..(40 << 20) + 4096]);
    let start = Instant::now();
    while c.dependent() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "hydration did not finish"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = c.status();
    assert_eq!(st.background_fetches + st.on_demand_fetches, 1024);
    let mut all = vec![0u8; size];
    c.read_at(&mut all, 0).unwrap();
    let mut want = src.clone();
    want[70_000..70_100].fill(0xab);
    assert!(all == want);
    drop(c);
    assert!(std::process::Command::new("sync")
        .status()
        .unwrap()
        .success());
    let grew = used_bytes(mnt.path()).saturating_sub(before);
    assert!(
        grew < (size as u64) / 4,
        "hydrating {size} bytes used {grew} bytes: extents were copied, not shared"
    );
    // The snapshot is unchanged by the clone's write (extents were unshared on write).
    let s = store.open_volume("snap").unwrap();
    s.read_at(&mut all, 0).unwrap();
    assert!(all == src);
}

/// Directory volumes on XFS with reflink: a snapshot and a clone share the tree's
/// extents (no data copied), a write to the volume after the snapshot changes neither
/// the snapshot nor the clone, the clone is independent from the start, deleting the
/// snapshot leaves the clone whole; a block volume is refused where a directory is
/// meant and the other way round.
#[test]
fn directory_volumes_snapshot_and_clone_by_sharing_extents() {
    let mnt = match Mount::xfs_reflink() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipping: no XFS loop mount ({e})");
            return;
        }
    };
    let store = Store::open(mnt.path().join("store")).unwrap();
    store.create_directory("src").unwrap();
    let dir = store.directory("src").unwrap();
    std::fs::create_dir_all(dir.join("data/db")).unwrap();
    let big = noise(7, 8 << 20);
    std::fs::write(dir.join("data/db/t.ibd"), &big).unwrap();
    std::fs::write(dir.join("data/ibdata1"), noise(8, 1 << 20)).unwrap();
    std::os::unix::fs::symlink("db/t.ibd", dir.join("data/link")).unwrap();
    // What is on disk before the copies: a tree copied by value would double it.
    let synced = || {
        std::process::Command::new("sync").status().unwrap();
        used_bytes(mnt.path())
    };
    let before = synced();

    store.snapshot("src", "snap").unwrap();
    store.clone("snap", "c", CloneOptions::default()).unwrap();
    let grown = synced() - before;
    assert!(
        grown < (1 << 20),
        "copies used {grown} bytes: extents were not shared"
    );

    let st = store.status("c").unwrap();
    assert_eq!(st.layout, lazyvol::VolumeLayout::Directory);
    assert!(st.independent && st.hydrated_bytes == st.size, "{st:?}");
    assert_eq!(st.size, (8 << 20) + (1 << 20));

    // The source changes after the snapshot: neither copy sees it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("data/db/t.ibd"))
        .unwrap();
    f.write_all_at(&[0xAB; 16384], 1 << 20).unwrap();
    drop(f);
    let clone_dir = store.directory("c").unwrap();
    for d in [store.directory("snap").unwrap(), clone_dir.clone()] {
        assert_eq!(std::fs::read(d.join("data/db/t.ibd")).unwrap(), big);
        assert_eq!(
            std::fs::read_link(d.join("data/link")).unwrap(),
            PathBuf::from("db/t.ibd")
        );
    }
    // The snapshot goes; the clone keeps every byte.
    store.delete("snap").unwrap();
    assert_eq!(std::fs::read(clone_dir.join("data/db/t.ibd")).unwrap(), big);
    assert!(!mnt.path().join("store/dirs/snap").exists());

    assert!(matches!(
        store.open_volume("c"),
        Err(Error::NotBlockVolume { .. })
    ));
    store.create("blocks", 1 << 20).unwrap();
    assert!(matches!(
        store.directory("blocks"),
        Err(Error::NotDirectoryVolume { .. })
    ));
    assert!(matches!(
        store.create_directory("c"),
        Err(Error::NameClash(_))
    ));
    store.delete("c").unwrap();
    assert!(!clone_dir.exists());
}

/// Where the file system cannot share extents, a directory volume is refused by name
/// before anything is made.
#[test]
fn directory_volumes_need_a_reflink_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    if store.supports_reflink() {
        eprintln!("skipping: the temp dir's file system shares extents");
        return;
    }
    let e = store.create_directory("d").unwrap_err();
    assert!(matches!(e, Error::NoReflink { .. }), "{e}");
    assert!(e.to_string().contains("reflink"), "{e}");
    assert!(store.list().unwrap().is_empty());
}
