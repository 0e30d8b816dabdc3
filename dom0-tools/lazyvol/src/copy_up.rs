//! Putting a whole region into a volume's top layer: by copy (read from below,
//! merge, write) or, where the file system shares extents, by FICLONERANGE.

use std::io;
use std::sync::Arc;

use crate::layer::Layer;
use crate::stack::{read_through, segments, Stack};

/// The topmost layer of `layers` holding bytes `[off, off+len)`, if that layer
/// holds all of them (every region of its own size overlapping the range is
/// present) and every layer above it holds none of them.
pub(crate) fn sole_holder(layers: &[Arc<Layer>], off: u64, len: u64) -> Option<&Arc<Layer>> {
    for layer in layers.iter().rev() {
        let shift = layer.map.region_shift();
        let mut any = false;
        let mut all = true;
        for seg in segments(off, len, shift, layer.map.size()) {
            if layer.map.is_present(seg.region) {
                any = true;
            } else {
                all = false;
            }
        }
        match (any, all) {
            (true, true) => return Some(layer),
            (true, false) => return None,
            _ => continue,
        }
    }
    None
}

thread_local! {
    /// Region-sized scratch buffer, reused so a copy-up does not allocate (and fault
    /// in) a fresh buffer each time.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What a copy-up moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CopiedUp {
    /// The region's length.
    pub len: u64,
    /// Bytes read from the layers below: 0 when none of them holds any of the region
    /// (it reads as zeroes and nothing is read), else the region's length.
    pub from_below: u64,
}

/// Whether any layer of `layers` holds any byte of `[off, off+len)`.
fn held_by_any(layers: &[Arc<Layer>], off: u64, len: u64) -> bool {
    layers.iter().any(|layer| {
        let shift = layer.map.region_shift();
        segments(off, len, shift, layer.map.size()).any(|seg| layer.map.is_present(seg.region))
    })
}

/// Writes region `r` whole into the top: its bytes from the layers below, passed
/// through `merge(region, region_start)` first. All-zero regions become a hole (which
/// also clears bytes a crash may have left there). The caller holds the region lock
/// and sets the bit afterwards (commit rule 1).
pub(crate) fn copy_up(
    st: &Stack,
    r: u64,
    merge: impl FnOnce(&mut [u8], u64),
) -> io::Result<CopiedUp> {
    let top = st.top();
    let (rstart, rlen) = top.region_bounds(r);
    let below = &st.layers[..st.layers.len() - 1];
    // A region no layer below holds is zeroes: nothing to read (most of a fresh
    // volume: the hydrator walks every region, written or not).
    let held = held_by_any(below, rstart, rlen);
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < rlen as usize {
            buf.resize(rlen as usize, 0);
        }
        let region = &mut buf[..rlen as usize];
        // Every byte is filled either way, so leftovers from the last use never leak.
        if held {
            read_through(below, region, rstart)?;
        } else {
            region.fill(0);
        }
        merge(region, rstart);
        if is_zero(region) {
            top.zero(rstart, rlen)?;
        } else {
            top.write_at(region, rstart)?;
        }
        Ok(CopiedUp {
            len: rlen,
            from_below: if held { rlen } else { 0 },
        })
    })
}

fn is_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(8);
    words.all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}
