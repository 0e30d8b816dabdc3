//! Test images and the page cache.

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

pub const MIB: u64 = 1 << 20;

/// A sparse image: random data in the first 16 MiB and in the first MiB of every
/// 64th MiB, holes elsewhere. Cheap to create at 4 GiB, yet not all zeroes, so a
/// clone cannot shortcut anything by size.
pub fn sparse(path: &Path, size: u64, seed: u64) -> Result<()> {
    let mut f = create(path, size)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; MIB as usize];
    let mut write_mib = |f: &mut File, at: u64| -> Result<()> {
        rng.fill_bytes(&mut buf);
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&buf)?;
        Ok(())
    };
    for mib in 0..(16 * MIB).min(size) / MIB {
        write_mib(&mut f, mib * MIB)?;
    }
    let mut at = 64 * MIB;
    while at + MIB <= size {
        write_mib(&mut f, at)?;
        at += 64 * MIB;
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

/// An image that is random data throughout (no holes): what the latency and
/// hydration runs copy, so every byte costs a real read and write.
pub fn dense(path: &Path, size: u64, seed: u64) -> Result<()> {
    let mut f = create(path, size)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

fn create(path: &Path, size: u64) -> Result<File> {
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)?;
    Ok(f)
}

/// Read a file once so later reads come from the page cache.
pub fn warm(path: &Path) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::copy(&mut f, &mut std::io::sink())?;
    Ok(())
}

/// `warm` for every regular file under `dir` (a store: its layers).
pub fn warm_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            warm_tree(&e.path())?;
        } else if t.is_file() {
            warm(&e.path())?;
        }
    }
    Ok(())
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`. False (and a note) where not allowed.
pub fn drop_caches() -> bool {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// `sync(2)` of everything: the fair end point of a copy that only reached the cache.
pub fn sync_all() {
    // SAFETY: as above.
    unsafe { libc::sync() };
}
