//! The InnoDB page format, as far as sharing needs it: who a page is (space_id,
//! page_no), how new it is (LSN), whether its bytes are intact (checksum), and the page
//! size of a tablespace (FSP flags of page 0).
//!
//! Verified against real MariaDB 10.11 files (full_crc32 and crc32 formats). MySQL's
//! crc32 and legacy "innodb" checksums are implemented from the format and tested on
//! hand-made pages only: MySQL 8 is not installable on the test machine.

use thiserror::Error;

/// FIL header offsets (the same in every InnoDB flavour).
pub const FIL_PAGE_SPACE_OR_CHKSUM: usize = 0;
pub const FIL_PAGE_OFFSET: usize = 4;
pub const FIL_PAGE_LSN: usize = 16;
pub const FIL_PAGE_TYPE: usize = 24;
pub const FIL_PAGE_FILE_FLUSH_LSN: usize = 26;
pub const FIL_PAGE_SPACE_ID: usize = 34;
pub const FIL_PAGE_DATA: usize = 38;
/// Trailer of the pre-full_crc32 format: old checksum, then the low 32 bits of the LSN.
pub const FIL_PAGE_END_LSN_OLD_CHKSUM: usize = 8;
/// FSP header starts at FIL_PAGE_DATA on page 0; the space flags are 16 bytes in.
pub const FSP_SPACE_FLAGS: usize = FIL_PAGE_DATA + 16;

const FCRC32_MARKER: u32 = 1 << 4;
const FCRC32_SSIZE_MASK: u32 = 0xf;
const FCRC32_COMPRESSION_SHIFT: u32 = 5;
const FCRC32_COMPRESSION_MASK: u32 = 0x7;
const ZIP_SSIZE_SHIFT: u32 = 1;
const ZIP_SSIZE_MASK: u32 = 0xf;
const PAGE_SSIZE_SHIFT: u32 = 6;
const PAGE_SSIZE_MASK: u32 = 0xf;
/// The page size that a PAGE_SSIZE of 0 means in the pre-full_crc32 format.
const PAGE_SIZE_ORIG: u32 = 16 * 1024;
/// Smallest header we can read identity and flags from.
pub const MIN_HEADER: usize = FSP_SPACE_FLAGS + 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PageError {
    #[error("buffer of {got} bytes is shorter than the {need} bytes needed")]
    Short { got: usize, need: usize },
    #[error("page size {0} is not a power of two between 4 KiB and 64 KiB")]
    BadPageSize(usize),
    #[error("tablespace flags {0:#x} are not valid")]
    BadFlags(u32),
    #[error("tablespace uses ROW_FORMAT=COMPRESSED (zip size {0}): not supported")]
    Compressed(u32),
    #[error("tablespace is page_compressed (algorithm {0}): not supported")]
    PageCompressed(u32),
    #[error("page is all zeros")]
    AllZero,
    #[error("checksum does not verify ({0:?} format)")]
    Checksum(SpaceFormat),
    #[error("trailer LSN {trailer:#x} does not match header LSN {lsn:#x}")]
    TrailerLsn { lsn: u64, trailer: u32 },
    #[error("page is ({space_id}, {page_no}), expected ({want_space}, {want_page})")]
    WrongIdentity {
        space_id: u32,
        page_no: u32,
        want_space: u32,
        want_page: u32,
    },
}

/// Which checksum layout a tablespace uses; decided by its FSP flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceFormat {
    /// MariaDB >= 10.5 default: CRC-32C of [0, size-4) in the last 4 bytes.
    FullCrc32,
    /// MySQL 5.7/8.0 and MariaDB with innodb_checksum_algorithm=crc32: the field at 0
    /// holds CRC-32C or the legacy "innodb" fold checksum.
    Legacy,
}

/// A checksum that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    FullCrc32,
    Crc32,
    Innodb,
}

/// The identity and version of a page, from its FIL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub space_id: u32,
    pub page_no: u32,
    pub lsn: u64,
    pub page_type: u16,
}

/// What page 0 says about its tablespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceInfo {
    pub space_id: u32,
    pub page_size: u32,
    pub format: SpaceFormat,
    pub flags: u32,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

fn need(b: &[u8], n: usize) -> Result<(), PageError> {
    if b.len() < n {
        Err(PageError::Short {
            got: b.len(),
            need: n,
        })
    } else {
        Ok(())
    }
}

/// Reads the FIL header of any page.
pub fn header(page: &[u8]) -> Result<PageHeader, PageError> {
    need(page, FIL_PAGE_DATA)?;
    Ok(PageHeader {
        space_id: be32(page, FIL_PAGE_SPACE_ID),
        page_no: be32(page, FIL_PAGE_OFFSET),
        lsn: be64(page, FIL_PAGE_LSN),
        page_type: be16(page, FIL_PAGE_TYPE),
    })
}

/// Decodes FSP_SPACE_FLAGS into a page size and checksum format; declines layouts
/// whose on-disk page is not the in-memory page (compressed formats).
/// The space and page size of a page being written at byte offset `off` of a data
/// file whose page 0 is not known yet (a file recovery or the server is filling from
/// the end): every page names its own number and space in its header, and the offset
/// divided by the number is the page size. `None` unless that is consistent (a page
/// other than 0, a power-of-two page size InnoDB uses).
pub fn space_of_written(head: &[u8], off: u64) -> Option<(u32, u32)> {
    if head.len() < FIL_PAGE_DATA {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes(head[i..i + 4].try_into().expect("4 bytes"));
    let page_no = u64::from(be(FIL_PAGE_OFFSET));
    if page_no == 0 || off % page_no != 0 {
        return None;
    }
    let size = off / page_no;
    if !size.is_power_of_two() || !(4096..=65536).contains(&size) {
        return None;
    }
    Some((be(FIL_PAGE_SPACE_ID), size as u32))
}

pub fn space_format(flags: u32) -> Result<(u32, SpaceFormat), PageError> {
    if flags & FCRC32_MARKER != 0 {
        let ssize = flags & FCRC32_SSIZE_MASK;
        // 3 = 4 KiB ... 7 = 64 KiB, the sizes innodb_page_size accepts.
        if !(3..=7).contains(&ssize) {
            return Err(PageError::BadFlags(flags));
        }
        let algo = (flags >> FCRC32_COMPRESSION_SHIFT) & FCRC32_COMPRESSION_MASK;
        if algo != 0 {
            return Err(PageError::PageCompressed(algo));
        }
        return Ok((512 << ssize, SpaceFormat::FullCrc32));
    }
    let zip = (flags >> ZIP_SSIZE_SHIFT) & ZIP_SSIZE_MASK;
    if zip != 0 {
        return Err(PageError::Compressed(512 << zip));
    }
    let ssize = (flags >> PAGE_SSIZE_SHIFT) & PAGE_SSIZE_MASK;
    let size = match ssize {
        0 => PAGE_SIZE_ORIG,
        3 | 4 | 6 | 7 => 512 << ssize,
        _ => return Err(PageError::BadFlags(flags)),
    };
    Ok((size, SpaceFormat::Legacy))
}

/// Reads the tablespace identity from the start of page 0 (only the header is needed).
pub fn space_info(page0: &[u8]) -> Result<SpaceInfo, PageError> {
    need(page0, MIN_HEADER)?;
    let flags = be32(page0, FSP_SPACE_FLAGS);
    let (page_size, format) = space_format(flags)?;
    Ok(SpaceInfo {
        space_id: be32(page0, FIL_PAGE_SPACE_ID),
        page_size,
        format,
        flags,
    })
}

fn check_size(page: &[u8]) -> Result<(), PageError> {
    let n = page.len();
    if !n.is_power_of_two() || !(4096..=65536).contains(&n) {
        return Err(PageError::BadPageSize(n));
    }
    Ok(())
}

/// CRC-32C of [0, size-4), as full_crc32 stores it in the last 4 bytes.
pub fn full_crc32(page: &[u8]) -> u32 {
    crc32c::crc32c(&page[..page.len() - 4])
}

/// MySQL/MariaDB "crc32": CRC-32C of the header after the checksum field and of the
/// body before the trailer, combined by XOR (two separate CRCs, not one over both).
pub fn legacy_crc32(page: &[u8]) -> u32 {
    let n = page.len();
    crc32c::crc32c(&page[FIL_PAGE_OFFSET..FIL_PAGE_FILE_FLUSH_LSN])
        ^ crc32c::crc32c(&page[FIL_PAGE_DATA..n - FIL_PAGE_END_LSN_OLD_CHKSUM])
}

const HASH_RANDOM_MASK: u64 = 1_463_735_687;
const HASH_RANDOM_MASK2: u64 = 1_653_893_711;

fn fold_pair(n1: u64, n2: u64) -> u64 {
    (((n1 ^ n2 ^ HASH_RANDOM_MASK2) << 8).wrapping_add(n1) ^ HASH_RANDOM_MASK).wrapping_add(n2)
}

/// InnoDB's `ut_fold_binary` on a 64-bit build (ulint arithmetic wraps at 2^64).
pub fn fold_binary(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |f, &b| fold_pair(f, u64::from(b)))
}

/// The legacy "innodb" checksum stored at offset 0.
pub fn innodb_new_checksum(page: &[u8]) -> u32 {
    let n = page.len();
    let sum = fold_binary(&page[FIL_PAGE_OFFSET..FIL_PAGE_FILE_FLUSH_LSN]).wrapping_add(
        fold_binary(&page[FIL_PAGE_DATA..n - FIL_PAGE_END_LSN_OLD_CHKSUM]),
    );
    sum as u32
}

/// The legacy "innodb" old-formula checksum stored at size-8.
pub fn innodb_old_checksum(page: &[u8]) -> u32 {
    fold_binary(&page[..FIL_PAGE_FILE_FLUSH_LSN]) as u32
}

/// Verifies a whole page's checksum and trailer. An all-zero page is refused even
/// though InnoDB accepts it as "free": its identity cannot be checked.
pub fn verify(page: &[u8], format: SpaceFormat) -> Result<ChecksumKind, PageError> {
    check_size(page)?;
    if page.iter().all(|&b| b == 0) {
        return Err(PageError::AllZero);
    }
    let n = page.len();
    let lsn = be64(page, FIL_PAGE_LSN);
    match format {
        SpaceFormat::FullCrc32 => {
            if be32(page, n - 4) != full_crc32(page) {
                return Err(PageError::Checksum(format));
            }
            let trailer = be32(page, n - 8);
            if trailer != lsn as u32 {
                return Err(PageError::TrailerLsn { lsn, trailer });
            }
            Ok(ChecksumKind::FullCrc32)
        }
        SpaceFormat::Legacy => {
            let trailer = be32(page, n - 4);
            if trailer != lsn as u32 {
                return Err(PageError::TrailerLsn { lsn, trailer });
            }
            let stored = be32(page, FIL_PAGE_SPACE_OR_CHKSUM);
            let stored_old = be32(page, n - FIL_PAGE_END_LSN_OLD_CHKSUM);
            let crc = legacy_crc32(page);
            if stored == crc && stored_old == crc {
                return Ok(ChecksumKind::Crc32);
            }
            if stored == innodb_new_checksum(page) && stored_old == innodb_old_checksum(page) {
                return Ok(ChecksumKind::Innodb);
            }
            Err(PageError::Checksum(format))
        }
    }
}

/// Everything the share rule needs from the bytes: the page verifies and is the page
/// the caller expects to hold. Returns its header (for the LSN).
pub fn verify_identity(
    page: &[u8],
    format: SpaceFormat,
    want_space: u32,
    want_page: u32,
) -> Result<PageHeader, PageError> {
    verify(page, format)?;
    let h = header(page)?;
    // Page 0 of the system tablespace and a few others keep space_id 0 in both
    // formats; the FIL header field is authoritative in MariaDB >= 10.1 and MySQL 5.7+.
    if h.space_id != want_space || h.page_no != want_page {
        return Err(PageError::WrongIdentity {
            space_id: h.space_id,
            page_no: h.page_no,
            want_space,
            want_page,
        });
    }
    Ok(h)
}

/// Builders of hand-made pages, for tests here and in other modules.
#[cfg(test)]
pub(crate) mod testpage {
    use super::*;

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// A page with identity, LSN and some body bytes, without a checksum.
    pub fn raw(size: usize, space: u32, page_no: u32, lsn: u64, seed: u8) -> Vec<u8> {
        let mut p = vec![0u8; size];
        put32(&mut p, FIL_PAGE_OFFSET, page_no);
        p[FIL_PAGE_LSN..FIL_PAGE_LSN + 8].copy_from_slice(&lsn.to_be_bytes());
        p[FIL_PAGE_TYPE..FIL_PAGE_TYPE + 2].copy_from_slice(&17855u16.to_be_bytes());
        put32(&mut p, FIL_PAGE_SPACE_ID, space);
        for (i, b) in p[FIL_PAGE_DATA..size - 8].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        p
    }

    pub fn seal_full_crc32(p: &mut [u8]) {
        let n = p.len();
        let lsn = be64(p, FIL_PAGE_LSN);
        put32(p, n - 8, lsn as u32);
        let c = full_crc32(p);
        put32(p, n - 4, c);
    }

    pub fn seal_crc32(p: &mut [u8]) {
        let n = p.len();
        let lsn = be64(p, FIL_PAGE_LSN);
        put32(p, n - 4, lsn as u32);
        let c = legacy_crc32(p);
        put32(p, 0, c);
        put32(p, n - 8, c);
    }

    pub fn seal_innodb(p: &mut [u8]) {
        let n = p.len();
        let lsn = be64(p, FIL_PAGE_LSN);
        put32(p, n - 4, lsn as u32);
        let new = innodb_new_checksum(p);
        put32(p, 0, new);
        let old = innodb_old_checksum(p);
        put32(p, n - 8, old);
    }

    pub fn full_crc32_page(space: u32, page_no: u32, lsn: u64) -> Vec<u8> {
        let mut p = raw(16384, space, page_no, lsn, page_no as u8);
        seal_full_crc32(&mut p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::testpage::*;
    use super::*;

    #[test]
    fn full_crc32_page_verifies_and_detects_one_flipped_bit() {
        let mut p = full_crc32_page(5, 3, 0x1_0000_1234);
        assert_eq!(
            verify(&p, SpaceFormat::FullCrc32),
            Ok(ChecksumKind::FullCrc32)
        );
        let h = verify_identity(&p, SpaceFormat::FullCrc32, 5, 3).unwrap();
        assert_eq!(h.lsn, 0x1_0000_1234);
        for bit in [0usize, 8 * 100, 8 * 16383 - 1, 8 * 9000 + 3] {
            p[bit / 8] ^= 1 << (bit % 8);
            assert!(verify(&p, SpaceFormat::FullCrc32).is_err(), "bit {bit}");
            p[bit / 8] ^= 1 << (bit % 8);
        }
        assert!(matches!(
            verify_identity(&p, SpaceFormat::FullCrc32, 5, 4),
            Err(PageError::WrongIdentity { .. })
        ));
        assert!(matches!(
            verify_identity(&p, SpaceFormat::FullCrc32, 6, 3),
            Err(PageError::WrongIdentity { .. })
        ));
    }

    #[test]
    fn legacy_crc32_and_innodb_checksums_verify_in_every_page_size() {
        for size in [4096usize, 8192, 16384, 32768, 65536] {
            let mut a = raw(size, 9, 1, 77, 1);
            seal_crc32(&mut a);
            assert_eq!(verify(&a, SpaceFormat::Legacy), Ok(ChecksumKind::Crc32));
            let mut b = raw(size, 9, 1, 77, 2);
            seal_innodb(&mut b);
            assert_eq!(verify(&b, SpaceFormat::Legacy), Ok(ChecksumKind::Innodb));
            // A full_crc32 reader must not accept legacy pages, nor the reverse.
            assert!(verify(&a, SpaceFormat::FullCrc32).is_err());
            let mut c = raw(size, 9, 1, 77, 3);
            seal_full_crc32(&mut c);
            assert!(verify(&c, SpaceFormat::Legacy).is_err());
            // The checksum covers the body: one changed byte fails both.
            a[size / 2] ^= 0x40;
            b[size / 2] ^= 0x40;
            assert!(verify(&a, SpaceFormat::Legacy).is_err());
            assert!(verify(&b, SpaceFormat::Legacy).is_err());
        }
    }

    #[test]
    fn crc32_field_is_two_crcs_xored_not_one() {
        // The bytes [26, 38) (flush LSN, space id) are outside the legacy checksum.
        let mut p = raw(16384, 1, 2, 3, 4);
        seal_crc32(&mut p);
        p[30] ^= 0xff;
        assert_eq!(verify(&p, SpaceFormat::Legacy), Ok(ChecksumKind::Crc32));
        let whole = crc32c::crc32c(&p[4..16376]);
        assert_ne!(whole, legacy_crc32(&p));
    }

    #[test]
    fn fold_matches_hand_computed_values() {
        // fold(empty) = 0; fold([0]) = ((0^0^M2)<<8 + 0) ^ M) + 0.
        assert_eq!(fold_binary(&[]), 0);
        let one = (HASH_RANDOM_MASK2 << 8) ^ HASH_RANDOM_MASK;
        assert_eq!(fold_binary(&[0]), one);
        let two = fold_pair(one, 7);
        assert_eq!(fold_binary(&[0, 7]), two);
    }

    #[test]
    fn flags_give_page_size_or_decline() {
        assert_eq!(space_format(0x15), Ok((16384, SpaceFormat::FullCrc32)));
        assert_eq!(space_format(0x13), Ok((4096, SpaceFormat::FullCrc32)));
        assert_eq!(space_format(0x17), Ok((65536, SpaceFormat::FullCrc32)));
        assert_eq!(space_format(0), Ok((16384, SpaceFormat::Legacy)));
        assert_eq!(space_format(0x21), Ok((16384, SpaceFormat::Legacy)));
        assert_eq!(space_format(3 << 6), Ok((4096, SpaceFormat::Legacy)));
        assert_eq!(space_format(7 << 6), Ok((65536, SpaceFormat::Legacy)));
        assert!(matches!(space_format(0x10), Err(PageError::BadFlags(_))));
        assert!(matches!(
            space_format(0x15 | (1 << 5)),
            Err(PageError::PageCompressed(1))
        ));
        assert!(matches!(
            space_format(0x21 | (4 << 1)),
            Err(PageError::Compressed(8192))
        ));
        assert!(matches!(space_format(5 << 6), Err(PageError::BadFlags(_))));
    }

    #[test]
    fn zero_and_short_pages_are_errors() {
        assert_eq!(
            verify(&[0u8; 16384], SpaceFormat::FullCrc32),
            Err(PageError::AllZero)
        );
        assert!(matches!(
            verify(&[1u8; 100], SpaceFormat::FullCrc32),
            Err(PageError::BadPageSize(100))
        ));
        assert!(matches!(
            space_info(&[0u8; 20]),
            Err(PageError::Short { .. })
        ));
        assert!(matches!(header(&[0u8; 20]), Err(PageError::Short { .. })));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..20000)) {
            let _ = header(&bytes);
            let _ = space_info(&bytes);
            let _ = verify(&bytes, SpaceFormat::FullCrc32);
            let _ = verify(&bytes, SpaceFormat::Legacy);
            let _ = verify_identity(&bytes, SpaceFormat::Legacy, 1, 2);
        }

        #[test]
        fn random_16k_pages_do_not_verify(bytes in proptest::collection::vec(proptest::num::u8::ANY, 16384)) {
            proptest::prop_assert!(verify(&bytes, SpaceFormat::FullCrc32).is_err());
            proptest::prop_assert!(verify(&bytes, SpaceFormat::Legacy).is_err());
        }
    }
}
