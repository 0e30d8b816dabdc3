//! The page module on real tablespaces written by a mariadbd started here.

mod common;

use common::{install_datadir, load_table, require_mariadb, Server, ServerOpts};
use dbfork_agent::page::{self, ChecksumKind, SpaceFormat};

/// Checks every page of `path`; returns (pages verified, kinds seen).
fn check_file(path: &std::path::Path) -> (usize, Vec<ChecksumKind>) {
    let bytes = std::fs::read(path).unwrap();
    let info = page::space_info(&bytes).unwrap();
    assert_eq!(info.page_size, 16384);
    let mut verified = 0;
    let mut kinds = vec![];
    for (i, p) in bytes.chunks_exact(info.page_size as usize).enumerate() {
        if p.iter().all(|&b| b == 0) {
            continue; // allocated, never written
        }
        // ibdata1 pages 64..192 are the doublewrite buffer: copies of other pages,
        // which identity checking must (and does) reject as page i.
        if info.space_id == 0 && (64..192).contains(&i) {
            let err = page::verify_identity(p, info.format, 0, i as u32).unwrap_err();
            assert!(
                matches!(err, page::PageError::WrongIdentity { .. }),
                "{err}"
            );
            continue;
        }
        let h = page::verify_identity(p, info.format, info.space_id, i as u32)
            .unwrap_or_else(|e| panic!("{} page {i}: {e}", path.display()));
        assert!(h.lsn > 0);
        verified += 1;
        if !kinds.contains(&page::verify(p, info.format).unwrap()) {
            kinds.push(page::verify(p, info.format).unwrap());
        }
    }
    (verified, kinds)
}

#[test]
fn real_full_crc32_and_crc32_tablespaces_verify_page_by_page() {
    require_mariadb!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    install_datadir(&data);
    // crc32 here makes new tablespaces use the pre-full_crc32 layout (MySQL-compatible).
    let mut opts = ServerOpts::plain();
    opts.extra_args
        .push("--innodb-checksum-algorithm=crc32".into());
    let s = Server::start(&data, &tmp.path().join("run"), opts);
    load_table(&s, "legacy", 3000);
    s.sql("SET GLOBAL innodb_checksum_algorithm=full_crc32");
    load_table(&s, "modern", 3000);
    s.shutdown();

    let (n, kinds) = check_file(&data.join("t/legacy.ibd"));
    assert!(n >= 10, "only {n} pages");
    assert_eq!(kinds, vec![ChecksumKind::Crc32]);
    let info = page::space_info(&std::fs::read(data.join("t/legacy.ibd")).unwrap()).unwrap();
    assert_eq!(info.format, SpaceFormat::Legacy);

    let (n, kinds) = check_file(&data.join("t/modern.ibd"));
    assert!(n >= 10, "only {n} pages");
    assert_eq!(kinds, vec![ChecksumKind::FullCrc32]);

    // The system tablespace made by mariadb-install-db (full_crc32 by default).
    let (n, _) = check_file(&data.join("ibdata1"));
    assert!(n > 0);

    // A page from the wrong place is rejected by identity even though its checksum holds.
    let bytes = std::fs::read(data.join("t/modern.ibd")).unwrap();
    let info = page::space_info(&bytes).unwrap();
    let p3 = &bytes[3 * 16384..4 * 16384];
    assert!(page::verify_identity(p3, info.format, info.space_id, 4).is_err());
}
