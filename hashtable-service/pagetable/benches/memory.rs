//! Bytes of heap per entry (target <= 64), measured with a counting allocator.
//!
//! `cargo bench -p pagetable --bench memory`
//!
//! Registers N entries (one domain, distinct pages, one frame each) into an empty
//! table and divides the growth of live heap bytes by N. Hash tables grow by
//! doubling, so the figure depends on where N falls between two growth steps; the
//! bench prints several N to show the range.

use pagetable::{DomainId, FamilyId, Frame, PageKey, PageTable, Registration, TableConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's arguments;
// the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged; the caller upholds alloc's contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged; `p` came from System.alloc with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged; the caller upholds realloc's contract.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn measure(n: u32, domains: u32) -> f64 {
    let t = PageTable::new(TableConfig {
        quota_per_domain: n as usize,
    });
    let f = FamilyId(1);
    t.create_family(f).unwrap();
    for d in 0..domains {
        t.add_to_family(f, DomainId(d)).unwrap();
    }
    // One batch per domain: entry i belongs to domain i % domains, in that domain's
    // frame i / domains. The batches' own memory is allocated before measuring.
    let mut batches: Vec<Vec<Registration>> =
        (0..domains).map(|_| Vec::with_capacity(4096)).collect();
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..n {
        let d = i % domains;
        let batch = &mut batches[d as usize];
        batch.push(Registration {
            key: PageKey::new(f, i % 64, i / 64),
            frame: Frame::LocalPool {
                offset: u64::from(i / domains) * 16384,
            },
            lsn: u64::from(i),
            valid_from: u64::MAX,
            page_size: 16384,
        });
        if batch.len() == 4096 || i + domains >= n {
            t.register_many(DomainId(d), batch).unwrap();
            batch.clear();
        }
    }
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(t.stats()[0].entries, u64::from(n), "every entry registered");
    drop(batches);
    let per = (after - before) as f64 / f64::from(n);
    drop(t);
    per
}

/// Sizes just past a growth step of the indexes, where they are emptiest: swiss
/// tables double when they pass 7/8 of a power of two (the reverse index at
/// 7/8 * 2^k, the 16 store shards' page indexes around the same totals).
const JUST_GROWN: [u32; 4] = [14_400, 114_800, 917_700, 1_835_200];

fn main() {
    // `cargo test --benches` runs this with --bench absent; keep that fast.
    let quick = !std::env::args().any(|a| a == "--bench");
    // PAGETABLE_MEM_SIZES=1000,2000 measures those sizes instead;
    // PAGETABLE_MEM_DOMAINS=4 spreads the entries over 4 domains (4 reverse indexes).
    let domains: u32 = std::env::var("PAGETABLE_MEM_DOMAINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let custom: Option<Vec<u32>> = std::env::var("PAGETABLE_MEM_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let mut sizes: Vec<u32> = match custom {
        Some(v) => v,
        None if quick => vec![10_000],
        None => {
            let mut v = vec![
                10_000,
                100_000,
                300_000,
                500_000,
                1 << 20,
                1_500_000,
                3_000_000,
            ];
            v.extend(JUST_GROWN);
            v
        }
    };
    sizes.sort_unstable();
    println!("entries      bytes/entry (heap growth / entries), {domains} domain(s)");
    let mut worst = 0f64;
    for &n in &sizes {
        let per = measure(n, domains);
        worst = worst.max(per);
        println!("{n:>9}    {per:6.1}");
    }
    println!("worst        {worst:6.1}");
}
