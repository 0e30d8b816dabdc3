//! Cost of the agent's per-read work: verifying a 16 KiB page and finding it in the
//! frame store's own directory. `cargo bench -p dbfork-agent --bench read_path`.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dbfork_agent::directory::{PageDirectory, StoreIndex};
use dbfork_agent::frame_store::FrameRecord;
use dbfork_agent::page::{self, SpaceFormat};
use dbfork_agent::pool::Pool;

fn page_bytes(space: u32, page_no: u32, lsn: u64) -> Vec<u8> {
    let mut p = vec![0u8; 16384];
    p[4..8].copy_from_slice(&page_no.to_be_bytes());
    p[16..24].copy_from_slice(&lsn.to_be_bytes());
    p[34..38].copy_from_slice(&space.to_be_bytes());
    for (i, b) in p[38..16376].iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    let n = p.len();
    p[n - 8..n - 4].copy_from_slice(&(lsn as u32).to_be_bytes());
    let c = page::full_crc32(&p);
    p[n - 4..].copy_from_slice(&c.to_be_bytes());
    p
}

fn bench(c: &mut Criterion) {
    let p = page_bytes(5, 77, 123_456);
    c.bench_function("verify_identity full_crc32 16K", |b| {
        b.iter(|| page::verify_identity(black_box(&p), SpaceFormat::FullCrc32, 5, 77).unwrap())
    });

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let pool = Arc::new(Pool::open(&path, true).unwrap());
    for n in 0..4096u32 {
        let rec = FrameRecord {
            space_id: 5,
            page_no: n,
            lsn: 100,
            valid_from: 200,
        };
        pool.append(&page_bytes(5, n, 100), rec).unwrap();
    }
    let mut idx = StoreIndex::new(Arc::new(Pool::open(&path, false).unwrap()));
    let mut n = 0u32;
    c.bench_function("pool index lookup (4096 pages)", |b| {
        b.iter(|| {
            n = (n + 1) % 4096;
            idx.lookup(5, black_box(n), 200).unwrap().unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
