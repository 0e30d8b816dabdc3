//! Engine-level benchmarks (no NBD): time from clone() to the first 16 KiB read at
//! several snapshot sizes, and random 16 KiB read latency on an unhydrated clone, a
//! hydrated clone and the raw layer file, for several region sizes.
//!
//! Run: `cargo bench -p lazyvol --bench engine`. Data lives in a temp dir on the
//! file system of $TMPDIR (page cache warm; these are engine costs, not disk costs).

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lazyvol::{CloneOptions, OpenOptions, Store};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const KIB16: usize = 16 * 1024;

fn fill(v: &lazyvol::Volume, size: u64, every: u64) {
    let chunk = vec![0x5au8; 1 << 20];
    let mut off = 0;
    while off < size {
        v.write_at(&chunk, off, false).unwrap();
        off += every;
    }
    v.flush().unwrap();
}

/// A store with a snapshot "s" of `size` bytes; data every `every` bytes.
fn snapshot_store(size: u64, every: u64) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create("v", size).unwrap();
    fill(&store.open_volume("v").unwrap(), size, every);
    store.snapshot("v", "s").unwrap();
    (dir, store)
}

fn clone_to_first_read(c: &mut Criterion) {
    let mut g = c.benchmark_group("clone_to_first_read");
    g.sample_size(20);
    for gib_quarters in [1u64, 4, 16] {
        let size = gib_quarters << 28;
        // Sparse snapshot (1 MiB of data every 64 MiB): the cost measured is the
        // engine's, which must not grow with the size.
        let (_d, store) = snapshot_store(size, 64 << 20);
        let mut n = 0u64;
        g.bench_function(
            BenchmarkId::from_parameter(format!("{}MiB", size >> 20)),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        n += 1;
                        let name = format!("c{n}");
                        let mut buf = vec![0u8; KIB16];
                        let t = Instant::now();
                        store.clone("s", &name, CloneOptions::default()).unwrap();
                        let v = store.open_volume(&name).unwrap();
                        v.read_at(&mut buf, size / 2).unwrap();
                        total += t.elapsed();
                        drop(v);
                        store.delete(&name).unwrap();
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

fn random_reads(c: &mut Criterion) {
    let size = 256u64 << 20;
    let (_d, store) = snapshot_store(size, 1 << 20);
    let mut g = c.benchmark_group("random_16k_read");
    g.sample_size(30);
    let mut rng = StdRng::seed_from_u64(1);

    // Raw file: pread of the snapshot's layer data file.
    let layer = std::fs::read_dir(store.root().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("data"))
        .find(|p| std::fs::metadata(p).unwrap().blocks_nonzero())
        .unwrap();
    let raw = std::fs::File::open(&layer).unwrap();
    g.bench_function("raw_file", |b| {
        let mut buf = vec![0u8; KIB16];
        b.iter(|| {
            let off = rng.gen_range(0..size / KIB16 as u64) * KIB16 as u64;
            raw.read_exact_at(&mut buf, off).unwrap();
        })
    });

    for rs in [64u64 << 10, 256 << 10, 1 << 20] {
        let label = format!("{}KiB", rs >> 10);
        // Hydrated clone.
        let name = format!("h{}", rs >> 10);
        store
            .clone(
                "s",
                &name,
                CloneOptions {
                    hydrate: false,
                    rate: None,
                    region_size: rs,
                },
            )
            .unwrap();
        store.hydrate_fully(&name, |_, _| {}).unwrap();
        let hv = store.open_volume(&name).unwrap();
        g.bench_function(BenchmarkId::new("hydrated_clone", &label), |b| {
            let mut buf = vec![0u8; KIB16];
            b.iter(|| {
                let off = rng.gen_range(0..size / KIB16 as u64) * KIB16 as u64;
                hv.read_at(&mut buf, off).unwrap();
            })
        });
        drop(hv);

        // Unhydrated clone: every timed read hits a region not read before, so each
        // one is an on-demand fetch of a whole region.
        let mut gen = 0u64;
        g.bench_function(BenchmarkId::new("unhydrated_clone", &label), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = 0u64;
                let mut order: Vec<u64> = Vec::new();
                let mut vol: Option<lazyvol::Volume> = None;
                let mut buf = vec![0u8; KIB16];
                for _ in 0..iters {
                    if left == 0 {
                        drop(vol.take());
                        gen += 1;
                        let name = format!("u{}-{gen}", rs >> 10);
                        store
                            .clone(
                                "s",
                                &name,
                                CloneOptions {
                                    hydrate: false,
                                    rate: None,
                                    region_size: rs,
                                },
                            )
                            .unwrap();
                        vol = Some(
                            store
                                .open_volume_with(
                                    &name,
                                    OpenOptions {
                                        background: Some(false),
                                    },
                                )
                                .unwrap(),
                        );
                        order = (0..size / rs).collect();
                        order.shuffle(&mut rng);
                        left = order.len() as u64;
                    }
                    left -= 1;
                    let off = order[left as usize] * rs
                        + rng.gen_range(0..rs / KIB16 as u64) * KIB16 as u64;
                    let t = Instant::now();
                    vol.as_ref().unwrap().read_at(&mut buf, off).unwrap();
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

trait BlocksNonzero {
    fn blocks_nonzero(&self) -> bool;
}

impl BlocksNonzero for std::fs::Metadata {
    fn blocks_nonzero(&self) -> bool {
        std::os::unix::fs::MetadataExt::blocks(self) > 0
    }
}

criterion_group!(benches, clone_to_first_read, random_reads);
criterion_main!(benches);
