//! The one client both servers see: nbd-export's blocking client, QD1.

use crate::procs::{self, ChildGuard};
use anyhow::{bail, Context, Result};
use nbd_export::client::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub const READ_LEN: usize = 16 * 1024;

pub type Conn = Client<UnixStream>;

/// Connect and negotiate `export`, retrying until the server is up. The time this
/// takes after spawning the server is its start-up time.
pub fn connect(sock: &Path, export: &str, server: &mut ChildGuard) -> Result<Conn> {
    procs::poll(
        &format!("NBD export {export} at {}", sock.display()),
        Duration::from_secs(60),
        Duration::from_millis(1),
        || {
            server.check_alive()?;
            Ok(Client::connect_unix(sock, export).ok())
        },
    )
}

/// Offsets for a random-read run: each in a different 1 MiB region (so with any
/// region size up to 1 MiB every read is a first touch of its region on an
/// unhydrated clone), 16 KiB aligned at a random place inside the region.
pub fn random_offsets(size: u64, n: usize, seed: u64) -> Result<Vec<u64>> {
    random_offsets_in(0, size, n, seed)
}

/// `random_offsets` within [from, to): 1 MiB aligned bounds.
pub fn random_offsets_in(from: u64, to: u64, n: usize, seed: u64) -> Result<Vec<u64>> {
    const SPREAD: u64 = 1 << 20;
    let (first, end) = (from / SPREAD, to / SPREAD);
    let regions = end.saturating_sub(first);
    if (n as u64) > regions {
        bail!("{n} distinct 1 MiB regions asked of [{from}, {to})");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut idx: Vec<u64> = (first..end).collect();
    idx.shuffle(&mut rng);
    let slots = SPREAD / READ_LEN as u64;
    Ok(idx[..n]
        .iter()
        .map(|r| r * SPREAD + rng.gen_range(0..slots) * READ_LEN as u64)
        .collect())
}

/// QD1 reads of READ_LEN at `offsets`, one latency sample each; the data of each is
/// checked against the image the clone came from, so a fast wrong answer cannot
/// pass as a result.
pub fn read_samples(conn: &mut Conn, offsets: &[u64], truth: &Path) -> Result<Vec<Duration>> {
    use std::os::unix::fs::FileExt;
    let img = std::fs::File::open(truth)?;
    let mut buf = vec![0u8; READ_LEN];
    let mut want = vec![0u8; READ_LEN];
    let mut samples = Vec::with_capacity(offsets.len());
    for &off in offsets {
        let t = Instant::now();
        conn.read(off, &mut buf)
            .with_context(|| format!("NBD read at {off}"))?;
        samples.push(t.elapsed());
        img.read_exact_at(&mut want, off)?;
        if buf != want {
            bail!("NBD read at {off} returned bytes that differ from the image");
        }
    }
    Ok(samples)
}

/// QD1 sequential READ_LEN reads over `len` bytes from `start`, as a scan would do
/// on a cold clone; bytes/s over the time spent in reads (the checks are not
/// counted). Checked against the image like the random reads.
pub fn sequential(conn: &mut Conn, start: u64, len: u64, truth: &Path) -> Result<f64> {
    let offsets: Vec<u64> = (start..start + len).step_by(READ_LEN).collect();
    let busy: Duration = read_samples(conn, &offsets, truth)?.iter().sum();
    Ok(len as f64 / busy.as_secs_f64())
}
