//! Tests on real file systems: a full tmpfs (ENOSPC), import by reflink on an XFS
//! loop image, import by sparse copy on the ext4 root.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use lazyvol::{Error, ImportMethod, Store};

/// A mounted file system, unmounted (lazily, if busy) on drop.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn new(args: &[&str]) -> Result<Mount, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(args)
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Mount { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

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
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("xfs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(320 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&img)
        .output();
    match mkfs {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "skipping: mkfs.xfs failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            eprintln!("skipping: mkfs.xfs unavailable ({e})");
            return;
        }
    }
    let mnt = match Mount::new(&["-o", "loop", img.to_str().unwrap()]) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipping: cannot loop-mount XFS ({e})");
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
