//! A fixed-size bitmap whose bits can be set concurrently without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    len: u64,
}

impl AtomicBitmap {
    pub fn new(len: u64) -> Self {
        let words = (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        AtomicBitmap { words, len }
    }

    /// Loads `len` bits, little-endian bit order within each byte. Bits past `len` in
    /// the last byte are ignored.
    pub fn from_bytes(len: u64, bytes: &[u8]) -> Self {
        let words = bytes
            .chunks(8)
            .enumerate()
            .map(|(wi, chunk)| {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                let mut v = u64::from_le_bytes(w);
                let bits_here = len.saturating_sub(wi as u64 * 64);
                if bits_here < 64 {
                    v &= (1u64 << bits_here) - 1;
                }
                AtomicU64::new(v)
            })
            .chain(std::iter::repeat_with(|| AtomicU64::new(0)))
            .take(len.div_ceil(64) as usize)
            .collect();
        AtomicBitmap { words, len }
    }

    pub fn byte_len(len: u64) -> usize {
        len.div_ceil(8) as usize
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::byte_len(self.len));
        for w in self.words.iter() {
            out.extend_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
        }
        out.truncate(Self::byte_len(self.len));
        out
    }

    pub fn get(&self, i: u64) -> bool {
        debug_assert!(i < self.len);
        self.words[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; returns true if it was clear before.
    pub fn set(&self, i: u64) -> bool {
        debug_assert!(i < self.len);
        let bit = 1u64 << (i % 64);
        self.words[(i / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    pub fn set_all(&self) {
        for (wi, w) in self.words.iter().enumerate() {
            let bits_here = self.len - wi as u64 * 64;
            let v = if bits_here >= 64 {
                u64::MAX
            } else {
                (1u64 << bits_here) - 1
            };
            w.store(v, Ordering::Release);
        }
    }

    pub fn count(&self) -> u64 {
        let full = self.len / 64;
        let mut n = 0u64;
        for (wi, w) in self.words.iter().enumerate() {
            let mut v = w.load(Ordering::Acquire);
            if wi as u64 == full {
                v &= (1u64 << (self.len % 64)).wrapping_sub(1);
            }
            n += u64::from(v.count_ones());
        }
        n
    }

    pub fn len(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_count() {
        for len in [1u64, 7, 8, 63, 64, 65, 200] {
            let m = AtomicBitmap::new(len);
            for i in (0..len).step_by(3) {
                assert!(m.set(i));
                assert!(!m.set(i));
            }
            let back = AtomicBitmap::from_bytes(len, &m.to_bytes());
            let all = AtomicBitmap::new(len);
            all.set_all();
            assert_eq!(all.count(), len);
            assert_eq!(AtomicBitmap::from_bytes(len, &all.to_bytes()).count(), len);
            assert_eq!(back.count(), len.div_ceil(3));
            for i in 0..len {
                assert_eq!(back.get(i), i % 3 == 0, "bit {i} of {len}");
            }
        }
    }
}
