//! `FileDevice`: a raw image file (or block device node) served with pread/pwrite.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{BlockDevice, Extent, NbdError};

fn image_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> NbdError {
    let path = path.to_path_buf();
    move |source| NbdError::Image { op, path, source }
}

/// A raw file as a block device. Flush is `fdatasync`; write-zeroes punches a hole
/// (keeping the size) and falls back to `FALLOC_FL_ZERO_RANGE` or plain zero writes
/// where the filesystem cannot.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    size: u64,
    read_only: bool,
}

impl FileDevice {
    /// Open an existing file; its current length is the export size.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> Result<Self, NbdError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path.as_ref())
            .map_err(image_err("cannot open image", path.as_ref()))?;
        Self::from_file(file, read_only)
    }

    /// Create (or truncate) a sparse file of `size` bytes.
    pub fn create(path: impl AsRef<Path>, size: u64) -> Result<Self, NbdError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path.as_ref())
            .map_err(image_err("cannot create image", path.as_ref()))?;
        file.set_len(size)
            .map_err(image_err("cannot size image", path.as_ref()))?;
        Self::from_file(file, false)
    }

    /// Serve an already open file. Block device nodes report length 0 in metadata, so
    /// the size is found by seeking to the end.
    pub fn from_file(mut file: File, read_only: bool) -> Result<Self, NbdError> {
        use std::io::Seek;
        let size = file
            .seek(io::SeekFrom::End(0))
            .map_err(NbdError::io("finding image size"))?;
        Ok(FileDevice {
            file,
            size,
            read_only,
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by
        // `self.file` and open for the duration of the call.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
        )
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if Self::unsupported(&e) => self.write_zero_buffers(offset, len),
            r => r,
        }
    }

    fn write_zero_buffers(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeroes = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.file
                .write_all_at(&zeroes[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    /// `lseek(SEEK_DATA/SEEK_HOLE)` from `pos`; `None` when there is no more data.
    /// The fd's offset moves, which is harmless: all I/O here is positional.
    fn seek(&self, pos: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let Ok(p) = libc::off_t::try_from(pos) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: lseek only reads its integer arguments; the fd is owned by
        // `self.file` and stays open for the call.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), p, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    }

    fn sync_if(&self, fua: bool) -> io::Result<()> {
        if fua {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.file.write_all_at(buf, offset)?;
        self.sync_if(fua)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            // Trim is a hint: a filesystem without hole punching simply keeps the data.
            Err(e) if Self::unsupported(&e) => Ok(()),
            r => r,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if Self::unsupported(&e) => self.zero_range(offset, len)?,
            r => r?,
        }
        self.sync_if(fua)
    }

    fn write_zeroes_no_hole(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.zero_range(offset, len)?;
        self.sync_if(fua)
    }

    /// Holes of the sparse file (as SEEK_HOLE sees them) are reported as hole+zero,
    /// everything else as allocated data. Block devices and filesystems without
    /// SEEK_DATA report all data.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < crate::proto::MAX_EXTENTS {
            let data = match self.seek(pos, libc::SEEK_DATA) {
                Ok(d) => d.unwrap_or(end).min(end),
                Err(e) if Self::unsupported(&e) => break,
                Err(e) => return Err(e),
            };
            if data > pos {
                out.push(Extent {
                    len: data - pos,
                    hole: true,
                    zero: true,
                });
                pos = data;
                continue;
            }
            let hole = match self.seek(pos, libc::SEEK_HOLE) {
                Ok(h) => h.unwrap_or(end).min(end),
                Err(e) if Self::unsupported(&e) => break,
                Err(e) => return Err(e),
            };
            if hole <= pos {
                break; // the file changed under us; report what we have
            }
            out.push(Extent {
                len: hole - pos,
                hole: false,
                zero: false,
            });
            pos = hole;
        }
        if pos < end && out.is_empty() {
            out.push(Extent {
                len: end - pos,
                hole: false,
                zero: false,
            });
        }
        Ok(out)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn write_zeroes_punches_and_no_hole_keeps_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![0xaa; 1 << 20]).unwrap();
        let dev = FileDevice::open(&p, false).unwrap();
        assert_eq!(dev.size(), 1 << 20);
        dev.flush().unwrap();
        let before = allocated(&p);
        dev.write_zeroes_no_hole(0, 512 << 10, true).unwrap();
        let mut buf = vec![1u8; 512 << 10];
        dev.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(allocated(&p), before, "NO_HOLE zeroing must not deallocate");
        dev.write_zeroes(512 << 10, 512 << 10, false).unwrap();
        dev.read_at(&mut buf, 512 << 10).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        if allocated(&p) == before {
            eprintln!("note: filesystem of {} cannot punch holes", p.display());
        } else {
            assert!(allocated(&p) < before);
        }
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20, "size kept");
    }

    #[test]
    fn trim_keeps_size_and_read_only_open_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let dev = FileDevice::create(&p, 65536).unwrap();
        dev.write_at(&[3; 4096], 0, false).unwrap();
        dev.trim(0, 65536).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 65536);
        let ro = FileDevice::open(&p, true).unwrap();
        assert!(ro.read_only());
        assert!(ro.write_at(&[1], 0, false).is_err());
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = FileDevice::open("/nonexistent/dbfork-nbd-test", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot open image /nonexistent/dbfork-nbd-test"
        );
    }
}
