//! File extents through FS_IOC_FIEMAP: where a file's bytes sit on its block device,
//! so (datadir file, offset) becomes a byte range of the volume underneath.

use std::os::fd::AsRawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// _IOWR('f', 11, struct fiemap)
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// Flush delayed allocation first, so every extent has a real physical address.
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const EXTENTS_PER_CALL: usize = 256;

pub const FIEMAP_EXTENT_LAST: u32 = 0x1;
pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
pub const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
pub const FIEMAP_EXTENT_ENCODED: u32 = 0x8;
pub const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = 0x80;
pub const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x100;
pub const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
pub const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x400;
pub const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
pub const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

/// Flags under which `physical` does not name the file's bytes on the device.
const NOT_ADDRESSABLE: u32 = FIEMAP_EXTENT_UNKNOWN
    | FIEMAP_EXTENT_DELALLOC
    | FIEMAP_EXTENT_ENCODED
    | FIEMAP_EXTENT_DATA_ENCRYPTED
    | FIEMAP_EXTENT_NOT_ALIGNED
    | FIEMAP_EXTENT_DATA_INLINE
    | FIEMAP_EXTENT_DATA_TAIL;

/// One mapped extent, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

impl Extent {
    /// True when `physical` is a usable device address of the data.
    pub fn is_addressable(&self) -> bool {
        self.flags & NOT_ADDRESSABLE == 0
    }

    /// Preallocated but never written: reads return zeros, the device bytes are junk.
    pub fn is_unwritten(&self) -> bool {
        self.flags & FIEMAP_EXTENT_UNWRITTEN != 0
    }
}

/// A byte range on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysRange {
    pub physical: u64,
    pub length: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawFiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

#[repr(C)]
struct Request {
    head: RawFiemap,
    extents: [RawExtent; EXTENTS_PER_CALL],
}

/// All extents of the file at `path`, in logical order. Holes have no extent.
pub fn file_extents(path: &Path) -> Result<Vec<Extent>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut start = 0u64;
    let mut flags = FIEMAP_FLAG_SYNC;
    loop {
        let mut req = Box::new(Request {
            head: RawFiemap {
                fm_start: start,
                fm_length: u64::MAX - start,
                fm_flags: flags,
                fm_extent_count: EXTENTS_PER_CALL as u32,
                ..RawFiemap::default()
            },
            extents: [RawExtent::default(); EXTENTS_PER_CALL],
        });
        // SAFETY: `req` is a properly laid out struct fiemap followed by room for
        // fm_extent_count extents, exclusively borrowed for the call; the fd is open.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                FS_IOC_FIEMAP as _,
                &mut *req as *mut Request,
            )
        };
        if rc != 0 {
            return Err(Error::Fiemap {
                path: path.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        // Only the first call needs to flush.
        flags = 0;
        let n = (req.head.fm_mapped_extents as usize).min(EXTENTS_PER_CALL);
        if n == 0 {
            break;
        }
        let mut last = false;
        for e in &req.extents[..n] {
            out.push(Extent {
                logical: e.fe_logical,
                physical: e.fe_physical,
                length: e.fe_length,
                flags: e.fe_flags,
            });
            last |= e.fe_flags & FIEMAP_EXTENT_LAST != 0;
        }
        let end = out
            .last()
            .map(|e| e.logical.saturating_add(e.length))
            .unwrap_or(start);
        if last || end <= start || n < EXTENTS_PER_CALL {
            break;
        }
        start = end;
    }
    Ok(out)
}

/// Device ranges holding the file bytes `[offset, offset + len)`, merged where
/// adjacent. Bytes in holes, or in extents without a usable address, are omitted.
pub fn physical_ranges(extents: &[Extent], offset: u64, len: u64) -> Vec<PhysRange> {
    let end = offset.saturating_add(len);
    let mut out: Vec<PhysRange> = Vec::new();
    for e in extents {
        let e_end = e.logical.saturating_add(e.length);
        if e_end <= offset || e.logical >= end || !e.is_addressable() {
            continue;
        }
        let from = offset.max(e.logical);
        let to = end.min(e_end);
        let r = PhysRange {
            physical: e.physical + (from - e.logical),
            length: to - from,
        };
        match out.last_mut() {
            Some(prev) if prev.physical + prev.length == r.physical => prev.length += r.length,
            _ => out.push(r),
        }
    }
    out
}

/// Device ranges of InnoDB page `page_no` of a file with `page_size`-byte pages.
pub fn page_ranges(extents: &[Extent], page_no: u32, page_size: u32) -> Vec<PhysRange> {
    physical_ranges(
        extents,
        u64::from(page_no) * u64::from(page_size),
        u64::from(page_size),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
            flags: 0,
        }
    }

    #[test]
    fn ranges_inside_one_extent() {
        let e = [ext(0, 1 << 20, 64 << 10)];
        assert_eq!(
            page_ranges(&e, 2, 16384),
            vec![PhysRange {
                physical: (1 << 20) + 32768,
                length: 16384
            }]
        );
        assert!(
            page_ranges(&e, 4, 16384).is_empty(),
            "beyond the extent is a hole"
        );
    }

    #[test]
    fn ranges_across_extents_and_holes() {
        // 8 KiB at 100K, a hole of 4 KiB, 4 KiB at 500K, then 4 KiB contiguous to that.
        let e = [
            ext(0, 100 << 10, 8192),
            ext(12288, 500 << 10, 4096),
            ext(16384, (500 << 10) + 4096, 4096),
        ];
        let r = physical_ranges(&e, 0, 20480);
        assert_eq!(
            r,
            vec![
                PhysRange {
                    physical: 100 << 10,
                    length: 8192
                },
                PhysRange {
                    physical: 500 << 10,
                    length: 8192
                },
            ]
        );
        let r = physical_ranges(&e, 4096, 10000);
        assert_eq!(
            r.iter().map(|r| r.length).sum::<u64>(),
            4096 + (14096 - 12288)
        );
    }

    #[test]
    fn unaddressable_extents_are_skipped() {
        let mut e = ext(0, 0, 4096);
        e.flags = FIEMAP_EXTENT_DELALLOC;
        assert!(physical_ranges(&[e], 0, 4096).is_empty());
        e.flags = FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_LAST;
        assert!(e.is_addressable() && e.is_unwritten());
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(matches!(
            file_extents(Path::new("/nonexistent/x")),
            Err(Error::Io { .. })
        ));
    }
}
