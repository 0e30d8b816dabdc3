//! The family's store of shared frames: the agent's half of the substrate seam. The
//! source offers clean page versions to it; a replica maps a stored frame over its
//! buffer-pool frame instead of reading from disk, and undoes the mapping when the
//! frame does not verify. The rest of the agent (the share rule, the directories, the
//! read path) only sees this trait and the `Frame` references it hands out.
//!
//! Implementations: `pool::Pool` (the `local` substrate: a shared-memory file mapped
//! copy-on-write) and `grant::store` (`xen`: the source grants its pool to each replica
//! domain, a replica maps the grants issued to it); mapping may fail and is then
//! undone.
//!
//! Every store keeps DESIGN.md invariant 2: a stored frame's bytes never change while
//! anybody can map it; whoever writes a mapped frame writes a private copy.

use pagetable::Frame;

use crate::error::Result;

/// Every shared frame is one 16 KiB page; other page sizes are never shared.
pub const FRAME_SIZE: usize = 16384;

/// What a stored frame holds: which page, which version, and since when it may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRecord {
    pub space_id: u32,
    pub page_no: u32,
    /// FIL_PAGE_LSN of the bytes.
    pub lsn: u64,
    /// The family's clone LSN (`clone_lsn`) as the source read it BEFORE it issued the
    /// read (or began the buffer-pool scan) that produced these bytes. The share rule
    /// lets the frame serve a snapshot S only if `valid_from >= S`.
    pub valid_from: u64,
}

/// One frame in a store's offer log, with its position in that log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredFrame {
    /// Position in offer order; `offered_since(seq + 1, ..)` continues after it.
    pub seq: u64,
    pub frame: Frame,
    pub record: FrameRecord,
}

/// The operations the agent does on shared frames. Any error means "not shared": the
/// caller reads from disk (DESIGN.md invariant 6).
pub trait FrameStore: Send + Sync {
    /// Source: keeps a copy of `page` (`FRAME_SIZE` bytes of a verified clean page
    /// version described by `record`) and returns the reference the page table stores.
    /// `AgentError::PoolFull` when the store is at its cap; what it holds stays shared.
    fn offer(&self, page: &[u8], record: FrameRecord) -> Result<Frame>;

    /// The store's own account of what `frame` holds; None if it holds nothing
    /// complete there (being written, damaged, or never offered).
    fn record(&self, frame: Frame) -> Result<Option<FrameRecord>>;

    /// Copies the bytes of `frame` into `dst` (`FRAME_SIZE` bytes).
    fn read(&self, frame: Frame, dst: &mut [u8]) -> Result<()>;

    /// The frames offered so far, in offer order from position `from`, at most `max`,
    /// stopping at the first one not completely offered yet. Directories index the
    /// store with it and re-register from it after the page table daemon restarts.
    fn offered_since(&self, from: u64, max: usize) -> Result<Vec<StoredFrame>>;

    /// Changes when frames offered before appear in the offer log under new references
    /// (a Xen source granted its pool to one more replica): a directory that saw an
    /// older epoch registers the log again from its start.
    fn epoch(&self) -> u64 {
        0
    }

    /// The frames under which the store's own frame `own` (what `offer` returned) is
    /// in the page table: itself for a local pool; one grant per replica domain granted
    /// so far for a Xen source.
    fn published(&self, own: Frame) -> Vec<Frame> {
        vec![own]
    }

    /// The store's own frame behind a frame of its offer log (`published`'s inverse).
    fn own_frame(&self, published: Frame) -> Frame {
        published
    }

    /// The family's replica domains that may map this store's frames, as the guest side
    /// last named them (a Xen source grants every frame to each; a local pool is open
    /// to every process of the family and ignores this).
    fn admit(&self, _domains: &[u16]) -> Result<()> {
        Ok(())
    }

    /// Whether a frame mapped by `map_over` faults on the caller's first write and
    /// needs the agent's SIGSEGV handler to become private (a grant mapping is
    /// read-only; a local pool's private mapping copies on write by itself).
    fn writes_fault(&self) -> bool {
        false
    }

    /// Whether `record` can tell what a frame holds. A Xen replica cannot see the
    /// source's records: the page table's entry and the check of the mapped bytes
    /// stand for them.
    fn records_visible(&self) -> bool {
        true
    }

    /// Maps `frame` over the caller's frame at `dst`, copy-on-write: the caller reads
    /// the stored bytes, and a later write by the caller changes only its own copy.
    ///
    /// # Safety
    /// `dst` must be page-aligned, `FRAME_SIZE` bytes long, and owned by the caller for
    /// the duration (no other thread may use those bytes while they are replaced).
    unsafe fn map_over(&self, frame: Frame, dst: *mut u8) -> Result<()>;

    /// Maps `frames` over the caller's consecutive frames from `dst` (frame `i` at
    /// `dst + i * FRAME_SIZE`), as `map_over` each; a store may map neighbours at once.
    /// On an error any part of the run may be mapped: undo each frame.
    ///
    /// # Safety
    /// As for `map_over`, for `frames.len() * FRAME_SIZE` bytes.
    unsafe fn map_run_over(&self, frames: &[Frame], dst: *mut u8) -> Result<()> {
        for (i, &f) in frames.iter().enumerate() {
            // SAFETY: the caller's contract, frame by frame.
            unsafe { self.map_over(f, dst.add(i * FRAME_SIZE))? };
        }
        Ok(())
    }

    /// Undoes `map_over` (also after it failed halfway): `dst` becomes private memory
    /// again, with undefined contents the caller must refill.
    ///
    /// # Safety
    /// As for `map_over`.
    unsafe fn restore_private(&self, dst: *mut u8) -> Result<()>;

    /// For logs: which store this is.
    fn describe(&self) -> String;
}

/// A 16 KiB buffer aligned for O_DIRECT.
pub struct AlignedPage(Box<Aligned>);

#[repr(C, align(4096))]
struct Aligned([u8; FRAME_SIZE]);

impl Default for AlignedPage {
    fn default() -> Self {
        Self::new()
    }
}

impl AlignedPage {
    pub fn new() -> Self {
        AlignedPage(Box::new(Aligned([0; FRAME_SIZE])))
    }
    pub fn bytes(&mut self) -> &mut [u8] {
        &mut self.0 .0
    }
}
