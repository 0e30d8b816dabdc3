//! In-process lookups per second, 1 and 2 threads (target >= 5 M/s).
//!
//! `cargo bench -p pagetable --bench lookup`
//!
//! Lookups/s = 1 / (time per element) from criterion's thrpt line; with 2 threads
//! the time is wall time for the iterations of both, so thrpt is the total.
//!
//! "table" calls `PageTable::lookup(domain, ..)`; "handle" calls
//! `DomainHandle::lookup`, which skips the domain map (what the daemon's connections do).
//!
//! Setup: one family, a source domain holding 1 Mi pages (16 KiB each, 16 GiB of
//! buffer pool), a replica domain looking up uniformly random pages that are present
//! (hits), with a snapshot LSN above every page LSN. Each thread is its own replica
//! domain, as in production (one mariadbd per domain).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pagetable::{DomainId, FamilyId, Frame, PageKey, PageTable, Registration, TableConfig};
use std::time::{Duration, Instant};

const PAGES: u32 = 1 << 20;
const FAMILY: FamilyId = FamilyId(1);

fn table() -> PageTable {
    let t = PageTable::new(TableConfig {
        quota_per_domain: PAGES as usize,
    });
    t.create_family(FAMILY).unwrap();
    for d in 0..3 {
        t.add_to_family(FAMILY, DomainId(d)).unwrap();
    }
    let regs: Vec<Registration> = (0..PAGES)
        .map(|i| Registration {
            key: PageKey::new(FAMILY, i % 64, i / 64),
            frame: Frame::LocalPool {
                offset: u64::from(i) * 16384,
            },
            lsn: u64::from(i),
            valid_from: u64::MAX,
            page_size: 16384,
        })
        .collect();
    for chunk in regs.chunks(4096) {
        t.register_many(DomainId(0), chunk).unwrap();
    }
    t
}

/// Keys in a fixed pseudo-random order over the first `span` pages, so the bench
/// measures the table, not an RNG.
fn keys(seed: u64, n: usize, span: u32) -> Vec<PageKey> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % u64::from(span)) as u32;
            PageKey::new(FAMILY, i % 64, i / 64)
        })
        .collect()
}

fn run(t: &PageTable, threads: u32, span: u32, handle: bool, iters: u64) -> Duration {
    let per = iters.div_ceil(u64::from(threads)) as usize;
    let ks: Vec<Vec<PageKey>> = (0..threads)
        .map(|i| keys(u64::from(i) + 7, 1 << 16, span))
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (i, ks) in ks.iter().enumerate() {
            s.spawn(move || {
                let me = DomainId(1 + i as u32);
                let h = t.handle(me).unwrap();
                let mut hits = 0u64;
                for n in 0..per {
                    let k = ks[n & 0xffff];
                    let found = if handle {
                        h.lookup(k, u64::MAX)
                    } else {
                        t.lookup(me, k, u64::MAX)
                    };
                    hits += found.unwrap().is_some() as u64;
                }
                assert_eq!(hits, per as u64, "every key is present");
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let t = table();
    let mut g = c.benchmark_group("lookup");
    g.measurement_time(Duration::from_secs(5));
    // "random": uniform over all 1 Mi pages, so nearly every lookup misses the CPU
    // caches (the table is ~70 MiB), as replica reads would. "hot": a 4 Ki-page
    // working set that stays in cache: the cost of the table code itself.
    for (name, span) in [("random_1M", PAGES), ("hot_4K", 4096)] {
        for (api, handle) in [("table", false), ("handle", true)] {
            for threads in [1u32, 2] {
                g.throughput(Throughput::Elements(1));
                g.bench_function(format!("{name}/{api}/{threads}_thread"), |b| {
                    b.iter_custom(|iters| run(&t, threads, span, handle, iters))
                });
            }
        }
    }
    let batch = keys(99, 64, PAGES);
    g.throughput(Throughput::Elements(64));
    g.bench_function("batch_64_1_thread", |b| {
        b.iter(|| t.lookup_many(DomainId(1), &batch, u64::MAX).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
