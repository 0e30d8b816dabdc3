//! Reads through a stack of layers: each byte comes from the topmost layer whose
//! region map has that byte's region, or is zero if no layer has it.

use std::io;
use std::sync::Arc;

use crate::layer::Layer;

/// The layers an open volume reads through, and which of them it owns.
pub(crate) struct Stack {
    /// Bottom first; the last one is the top.
    pub layers: Vec<Arc<Layer>>,
    /// Layers at or above this index belong to this volume.
    pub own_from: usize,
    pub depends_on: Option<String>,
}

impl Stack {
    pub fn top(&self) -> &Arc<Layer> {
        self.layers.last().expect("a volume has at least one layer")
    }

    pub fn dependent(&self) -> bool {
        self.own_from > 0
    }

    /// Whether a layer this volume owns holds region `r` (top-region numbering; all
    /// owned layers share the volume's region size).
    pub fn hydrated(&self, r: u64) -> bool {
        self.layers[self.own_from..]
            .iter()
            .any(|l| l.map.is_present(r))
    }

    pub fn owned_below_top(&self, r: u64) -> bool {
        let top = self.layers.len() - 1;
        self.layers[self.own_from..top]
            .iter()
            .any(|l| l.map.is_present(r))
    }

    pub fn count_hydrated(&self) -> u64 {
        if !self.dependent() {
            return self.top().map.regions();
        }
        (0..self.top().map.regions())
            .filter(|&r| self.hydrated(r))
            .count() as u64
    }
}

/// One piece of a byte range that lies inside a single region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub region: u64,
    /// Absolute byte offset of the piece.
    pub off: u64,
    pub len: u64,
    /// Whether the piece covers its whole region.
    pub whole: bool,
}

/// Splits `[off, off+len)` at region boundaries (regions of `1 << shift` bytes in a
/// volume of `size` bytes; the last region may be short).
pub(crate) fn segments(off: u64, len: u64, shift: u32, size: u64) -> impl Iterator<Item = Segment> {
    let end = off + len;
    let mut pos = off;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let region = pos >> shift;
        let rstart = region << shift;
        let rend = (rstart + (1 << shift)).min(size);
        let n = rend.min(end) - pos;
        let seg = Segment {
            region,
            off: pos,
            len: n,
            whole: pos == rstart && n == rend - rstart,
        };
        pos += n;
        Some(seg)
    })
}

/// Fills `buf` with the bytes at `off` as seen through `layers` (bottom first).
pub(crate) fn read_through(layers: &[Arc<Layer>], buf: &mut [u8], off: u64) -> io::Result<()> {
    let Some((top, below)) = layers.split_last() else {
        buf.fill(0);
        return Ok(());
    };
    let shift = top.map.region_shift();
    let size = top.map.size();
    let mut run: Option<(bool, u64, u64)> = None; // (present, start, len) of a run
    let flush_run = |run: (bool, u64, u64), buf: &mut [u8]| -> io::Result<()> {
        let (present, start, len) = run;
        let slice = &mut buf[(start - off) as usize..(start - off + len) as usize];
        if present {
            top.read_at(slice, start)
        } else {
            read_through(below, slice, start)
        }
    };
    // Adjacent pieces with the same presence are read with one call.
    for seg in segments(off, buf.len() as u64, shift, size) {
        let present = top.map.is_present(seg.region);
        run = match run {
            Some((p, s, l)) if p == present => Some((p, s, l + seg.len)),
            Some(prev) => {
                flush_run(prev, buf)?;
                Some((present, seg.off, seg.len))
            }
            None => Some((present, seg.off, seg.len)),
        };
    }
    if let Some(r) = run {
        flush_run(r, buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_range_exactly() {
        let size = 10 * 4096 + 100;
        for (off, len) in [
            (0u64, size),
            (4095, 2),
            (4096, 4096),
            (40960, 100),
            (1, 40000),
        ] {
            let segs: Vec<_> = segments(off, len, 12, size).collect();
            assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), len);
            let mut pos = off;
            for s in &segs {
                assert_eq!(s.off, pos);
                assert_eq!(s.region, pos >> 12);
                pos += s.len;
            }
        }
        let last: Vec<_> = segments(40960, 100, 12, size).collect();
        assert!(last[0].whole, "short last region covered whole");
    }
}
