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
    let mut batch = Vec::with_capacity(4096);
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..n {
        batch.push(Registration {
            key: PageKey::new(f, i % 64, i / 64),
            frame: Frame::LocalPool {
                offset: u64::from(i / domains) * 16384,
            },
            lsn: u64::from(i),
            valid_from: u64::MAX,
            page_size: 16384,
        });
        if batch.len() == 4096 || i + 1 == n {
            t.register_many(DomainId(i % domains), &batch).unwrap();
            batch.clear();
        }
    }
    let after = LIVE.load(Ordering::Relaxed);
    drop(batch);
    let per = (after - before) as f64 / f64::from(n);
    drop(t);
    per
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; keep that fast.
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes: &[u32] = if quick {
        &[10_000]
    } else {
        &[100_000, 300_000, 500_000, 1 << 20, 1_500_000, 3_000_000]
    };
    println!("entries      bytes/entry (heap growth / entries)");
    for &n in sizes {
        println!("{n:>9}    {:6.1}", measure(n, 1));
    }
}
