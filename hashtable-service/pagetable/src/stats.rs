//! Per-family counters. Lookups run on every core at once, so the hot counters are
//! striped over cache lines; a single shared atomic would make two threads slower
//! than one.

use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use crate::ids::FamilyId;

const STRIPES: usize = 16;

#[repr(align(64))]
#[derive(Default)]
struct Line(AtomicU64);

/// A counter that many threads increment without sharing a cache line.
pub(crate) struct StripedCounter {
    lines: [Line; STRIPES],
}

impl Default for StripedCounter {
    fn default() -> Self {
        Self {
            lines: std::array::from_fn(|_| Line::default()),
        }
    }
}

fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        s.get()
    })
}

impl StripedCounter {
    pub(crate) fn add(&self, n: u64) {
        self.lines[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.lines.iter().map(|l| l.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Default)]
pub(crate) struct FamilyCounters {
    /// A gauge: changed only on the register/remove paths, which are not hot.
    pub(crate) entries: AtomicI64,
    pub(crate) lookups: StripedCounter,
    pub(crate) hits: StripedCounter,
    pub(crate) misses: StripedCounter,
    pub(crate) invalidations: StripedCounter,
}

impl FamilyCounters {
    pub(crate) fn snapshot(&self, family: FamilyId, domains: usize) -> FamilyStats {
        FamilyStats {
            family,
            domains,
            entries: self.entries.load(Ordering::Relaxed).max(0) as u64,
            lookups: self.lookups.get(),
            hits: self.hits.get(),
            misses: self.misses.get(),
            invalidations: self.invalidations.get(),
        }
    }
}

/// What `stats` reports for one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyStats {
    pub family: FamilyId,
    /// Member domains.
    pub domains: usize,
    /// Entries registered now.
    pub entries: u64,
    /// Keys looked up (a batch of 64 counts 64).
    pub lookups: u64,
    pub hits: u64,
    pub misses: u64,
    /// Entries removed by `invalidate`.
    pub invalidations: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_across_threads() {
        let c = StripedCounter::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.add(1);
                    }
                });
            }
        });
        assert_eq!(c.get(), 4000);
    }
}
