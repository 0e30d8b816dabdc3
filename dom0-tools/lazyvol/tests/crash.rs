//! kill -9 of a real process that writes to a hydrating clone, at random points,
//! many times; after each kill the clone is reopened and every byte must be one the
//! model allows, and regions committed as hydrated must not be fetched again.
//!
//! The child is this test binary re-executed with `LAZYVOL_CRASH_CHILD` set (so
//! cargo builds it; no extra binary). It announces every write on stdout BEFORE
//! issuing it and every acknowledged flush / FUA write AFTER it returns.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use lazyvol::{CloneOptions, OpenOptions, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "LAZYVOL_CRASH_CHILD";
const SIZE: u64 = 4 << 20;

fn pattern(seed: u64, off: u64, len: u64) -> Vec<u8> {
    (off..off + len)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ seed as u8 ^ (seed >> 8) as u8)
        .collect()
}

/// Child side: runs only when re-executed by the parent test.
#[test]
fn crash_child() {
    let Ok(store_dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let name = std::env::var("LAZYVOL_CRASH_VOL").unwrap();
    let seed: u64 = std::env::var("LAZYVOL_CRASH_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let store = Store::open(store_dir).unwrap();
    let vol = store.open_volume(&name).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "@@ OPEN").unwrap();
    out.flush().unwrap();
    loop {
        let off = rng.gen_range(0..SIZE - 1);
        let len = rng.gen_range(1..=(SIZE - off).min(100_000));
        match rng.gen_range(0..100) {
            0..=49 => {
                let fua = rng.gen_bool(0.1);
                let wseed: u64 = rng.gen();
                writeln!(out, "@@ W {off} {len} {wseed} {}", u8::from(fua)).unwrap();
                out.flush().unwrap();
                vol.write_at(&pattern(wseed, off, len), off, fua).unwrap();
                if fua {
                    writeln!(out, "@@ D").unwrap();
                    out.flush().unwrap();
                }
            }
            50..=59 => {
                writeln!(out, "@@ Z {off} {len}").unwrap();
                out.flush().unwrap();
                vol.write_zeroes(off, len, false).unwrap();
            }
            60..=84 => {
                let mut buf = vec![0u8; len as usize];
                vol.read_at(&mut buf, off).unwrap();
            }
            _ => {
                vol.flush().unwrap();
                writeln!(out, "@@ F").unwrap();
                out.flush().unwrap();
            }
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Bytes the volume may hold: the last flushed state plus, per byte, whatever any
/// write issued since then would have put there.
struct Model {
    flushed: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
}

impl Model {
    fn apply(&mut self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[1] {
            "OPEN" => {}
            "W" => {
                let (off, len, seed) = (
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                );
                self.pending.push((off, pattern(seed, off, len)));
            }
            "Z" => {
                let (off, len): (u64, u64) = (f[2].parse().unwrap(), f[3].parse().unwrap());
                self.pending.push((off, vec![0u8; len as usize]));
            }
            "D" => {
                // The last announced write was FUA and returned: its bytes are durable
                // and no earlier unflushed write can show through them.
                let (off, data) = self.pending.pop().expect("D follows a W");
                let end = off + data.len() as u64;
                self.flushed[off as usize..end as usize].copy_from_slice(&data);
                let mut kept = Vec::new();
                for (o, d) in self.pending.drain(..) {
                    let e = o + d.len() as u64;
                    if o < off {
                        let cut = e.min(off);
                        kept.push((o, d[..(cut - o) as usize].to_vec()));
                    }
                    if e > end {
                        let from = o.max(end);
                        kept.push((from, d[(from - o) as usize..].to_vec()));
                    }
                }
                self.pending = kept;
            }
            "F" => {
                for (off, data) in self.pending.drain(..) {
                    self.flushed[off as usize..off as usize + data.len()].copy_from_slice(&data);
                }
            }
            other => panic!("unknown child line {other}"),
        }
    }

    fn check(&self, got: &[u8]) -> Result<(), String> {
        let mut allowed_by_pending = vec![false; got.len()];
        for (off, data) in &self.pending {
            for (i, &b) in data.iter().enumerate() {
                let p = *off as usize + i;
                if got[p] == b {
                    allowed_by_pending[p] = true;
                }
            }
        }
        for p in 0..got.len() {
            if got[p] != self.flushed[p] && !allowed_by_pending[p] {
                return Err(format!(
                    "byte {p}: got {:#x}, flushed {:#x}, {} pending writes",
                    got[p],
                    self.flushed[p],
                    self.pending.len()
                ));
            }
        }
        Ok(())
    }
}

fn budget(default_secs: u64) -> Duration {
    Duration::from_secs(
        std::env::var("LAZYVOL_CRASH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_secs),
    )
}

#[test]
fn kill_9_at_random_points_loses_nothing_flushed() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    crash_loop(&std::env::temp_dir(), budget(40));
}

/// The same on XFS with reflink, where hydration shares extents instead of copying.
#[test]
fn kill_9_on_xfs_with_reflink_hydration() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let mnt = match common::Mount::xfs_reflink() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipping: no XFS loop mount ({e})");
            return;
        }
    };
    crash_loop(mnt.path(), budget(40) / 3);
}

fn crash_loop(parent: &std::path::Path, budget: Duration) {
    let seed: u64 = std::env::var("LAZYVOL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    eprintln!("crash test: seed {seed}, budget {budget:?}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir_in(parent).unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create("base", SIZE).unwrap();
    let base = pattern(0xba5e, 0, SIZE);
    {
        let v = store.open_volume("base").unwrap();
        v.write_at(&base, 0, false).unwrap();
        v.write_zeroes(SIZE / 2, SIZE / 8, false).unwrap();
    }
    let mut snapshot = base.clone();
    snapshot[(SIZE / 2) as usize..(SIZE / 2 + SIZE / 8) as usize].fill(0);
    store.snapshot("base", "snap").unwrap();

    let start = Instant::now();
    let mut iterations = 0u32;
    let mut resumed_regions = 0u64;
    while iterations < 8 || (start.elapsed() < budget && iterations < 500) {
        iterations += 1;
        let name = format!("c{iterations}");
        let region_size = [4096u64, 16384, 65536][rng.gen_range(0..3)];
        let rate = rng.gen_range(1u64..16) << 20;
        store
            .clone(
                "snap",
                &name,
                CloneOptions {
                    hydrate: true,
                    rate: Some(rate),
                    region_size,
                },
            )
            .unwrap();
        let child_seed: u64 = rng.gen();
        let kill_after = rng.gen_range(1..300);
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("LAZYVOL_CRASH_VOL", &name)
            .env("LAZYVOL_CRASH_SEED", child_seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = BufReader::new(child.0.stdout.take().unwrap());
        let mut model = Model {
            flushed: snapshot.clone(),
            pending: Vec::new(),
        };
        let mut seen = 0;
        let mut killed = false;
        for line in stdout.lines() {
            let line = line.unwrap();
            if !line.starts_with("@@ ") {
                continue;
            }
            model.apply(&line);
            seen += 1;
            if seen == kill_after {
                child.0.kill().unwrap(); // SIGKILL; lines already in the pipe still count
                killed = true;
            }
        }
        let status = child.0.wait().unwrap();
        if !killed {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
            panic!("child ended on its own ({status}): {err}");
        }

        // Reopen without the background hydrator and read everything.
        let vol = store
            .open_volume_with(
                &name,
                OpenOptions {
                    background: Some(false),
                },
            )
            .unwrap();
        let regions = SIZE.div_ceil(region_size);
        let hydrated_at_open = (0..regions)
            .filter(|r| vol.region_hydrated(r * region_size))
            .count() as u64;
        let before = vol.counters();
        assert!(
            before.on_demand_fetches + before.background_fetches <= hydrated_at_open,
            "persisted counters {before:?} count more regions than the map holds ({hydrated_at_open})"
        );
        let mut got = vec![0u8; SIZE as usize];
        vol.read_at(&mut got, 0).unwrap();
        if let Err(e) = model.check(&got) {
            panic!("iteration {iterations} (seed {seed}, child seed {child_seed}, region {region_size}, kill after {kill_after}): {e}");
        }
        let after = vol.counters();
        assert_eq!(
            after.on_demand_fetches - before.on_demand_fetches,
            regions - hydrated_at_open,
            "iteration {iterations}: regions hydrated before the crash were fetched again"
        );
        resumed_regions += hydrated_at_open;
        drop(vol);
        store.delete(&name).unwrap();
    }
    eprintln!(
        "crash test: {iterations} kills in {:?}, {resumed_regions} regions kept across kills",
        start.elapsed()
    );
    assert!(
        resumed_regions > 0,
        "no kill happened after a committed hydration"
    );
}
