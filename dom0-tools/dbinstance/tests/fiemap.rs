//! FS_IOC_FIEMAP on a real file on this host's /tmp, checked against the raw block
//! device: the bytes at the reported physical offsets are the file's bytes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use dbinstance::fiemap::{file_extents, page_ranges, physical_ranges};
use dbinstance::Error;

const PAGE: u32 = 16384;

#[repr(C, align(4096))]
struct Aligned([u8; PAGE as usize]);

/// The block device holding `path`'s filesystem, from st_dev via sysfs.
fn backing_device(path: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    Some(PathBuf::from("/dev").join(name))
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

#[test]
fn extents_cover_data_and_point_at_the_device_bytes() {
    let dir = tempfile::Builder::new()
        .prefix("dbi-fiemap-")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("sparse.ibd");
    let head = pattern(1, 4 * PAGE as usize);
    let tail = pattern(7, 4 * PAGE as usize);
    let tail_off: u64 = 1 << 20;
    {
        let mut f = File::create(&path).unwrap();
        f.write_all(&head).unwrap();
        f.write_all_at(&tail, tail_off).unwrap();
        f.sync_all().unwrap();
    }

    let extents = match file_extents(&path) {
        Ok(e) => e,
        Err(Error::Fiemap { source, .. }) if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            eprintln!("skipping: the filesystem under /tmp does not support FIEMAP");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(!extents.is_empty());
    assert!(
        extents
            .windows(2)
            .all(|w| w[0].logical + w[0].length <= w[1].logical),
        "sorted, disjoint"
    );
    assert!(extents.last().unwrap().flags & dbinstance::fiemap::FIEMAP_EXTENT_LAST != 0);
    let covered = |off: u64, len: u64| {
        physical_ranges(&extents, off, len)
            .iter()
            .map(|r| r.length)
            .sum::<u64>()
    };
    assert_eq!(
        covered(0, head.len() as u64),
        head.len() as u64,
        "head fully mapped"
    );
    assert_eq!(
        covered(tail_off, tail.len() as u64),
        tail.len() as u64,
        "tail fully mapped"
    );
    assert_eq!(covered(256 << 10, 512 << 10), 0, "the hole has no extent");
    assert!(extents
        .iter()
        .all(|e| e.is_addressable() && !e.is_unwritten()));

    let Some(dev) = backing_device(&path) else {
        eprintln!("skipping device comparison: no block device found for /tmp");
        return;
    };
    let devf = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&dev)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "skipping device comparison: cannot open {}: {e}",
                dev.display()
            );
            return;
        }
    };
    let mut buf = Box::new(Aligned([0; PAGE as usize]));
    for (page_no, expected) in [
        (1u32, &head[PAGE as usize..2 * PAGE as usize]),
        (
            (tail_off / PAGE as u64) as u32 + 2,
            &tail[2 * PAGE as usize..3 * PAGE as usize],
        ),
    ] {
        let ranges = page_ranges(&extents, page_no, PAGE);
        let mut got = Vec::new();
        for r in &ranges {
            let mut done = 0u64;
            while done < r.length {
                let n = (r.length - done).min(PAGE as u64) as usize;
                devf.read_exact_at(&mut buf.0[..n], r.physical + done)
                    .unwrap();
                got.extend_from_slice(&buf.0[..n]);
                done += n as u64;
            }
        }
        assert_eq!(got.len(), PAGE as usize);
        assert!(
            got == expected,
            "device bytes of page {page_no} differ from the file's"
        );
    }
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

/// The use the lead has for this: a datadir file on a filesystem inside a volume
/// image; the physical offsets are byte offsets into the image.
#[test]
fn physical_offsets_are_offsets_into_a_loop_mounted_volume_image() {
    let dir = tempfile::Builder::new()
        .prefix("dbi-fiemap-loop-")
        .tempdir_in("/tmp")
        .unwrap();
    let img = dir.path().join("vol.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    File::create(&img).unwrap().set_len(32 << 20).unwrap();
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .output();
    if !mkfs.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: mkfs.ext4 unavailable or failed: {mkfs:?}");
        return;
    }
    let mount = std::process::Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&img)
        .arg(&mnt)
        .output()
        .unwrap();
    if !mount.status.success() {
        eprintln!(
            "skipping: loop mount failed: {}",
            String::from_utf8_lossy(&mount.stderr)
        );
        return;
    }
    let guard = Mounted(mnt.clone());

    let path = mnt.join("t.ibd");
    let data = pattern(3, 8 * PAGE as usize);
    {
        let mut f = File::create(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let extents = file_extents(&path).unwrap();
    drop(guard); // unmount: the image now holds everything the filesystem wrote

    let image = File::open(&img).unwrap();
    for page_no in 0..8u32 {
        let mut got = Vec::new();
        for r in page_ranges(&extents, page_no, PAGE) {
            let mut buf = vec![0u8; r.length as usize];
            image.read_exact_at(&mut buf, r.physical).unwrap();
            got.extend_from_slice(&buf);
        }
        let want = &data[(page_no * PAGE) as usize..((page_no + 1) * PAGE) as usize];
        assert!(
            got == want,
            "page {page_no}: image bytes at the reported offsets differ"
        );
    }
}
