//! Buffer pool dump and tablespace map from a real server.

use dbinstance::{dump_buffer_pool, tablespace_files};
use experiments_support::testing::InstanceGuard;

#[test]
fn dump_lists_warm_pages_that_map_into_files() {
    let src = InstanceGuard::source("hot", 51).unwrap();
    src.exec("CREATE DATABASE app").unwrap();
    src.exec("CREATE TABLE app.big (id INT PRIMARY KEY, pad CHAR(200)) ENGINE=InnoDB")
        .unwrap();
    src.exec("INSERT INTO app.big SELECT seq, REPEAT('x', 200) FROM mysql.seq_1_to_20000")
        .unwrap();
    let rows: i64 = src
        .query_scalar("SELECT COUNT(*) FROM app.big WHERE pad <> ''")
        .unwrap()
        .unwrap();
    assert_eq!(rows, 20000);
    let pct_before: i64 = src
        .query_scalar("SELECT @@innodb_buffer_pool_dump_pct")
        .unwrap()
        .unwrap();

    let files = tablespace_files(&src).unwrap();
    let sys = &files[&0];
    assert!(
        sys.path.ends_with("ibdata1") && sys.path.is_file(),
        "{sys:?}"
    );
    let big = files
        .values()
        .find(|f| f.name == "app/big")
        .expect("app/big tablespace");
    assert_eq!(big.path, src.config().datadir.join("app/big.ibd"));
    assert_eq!(big.page_size, 16384);

    let pages = dump_buffer_pool(&src).unwrap();
    assert!(!pages.is_empty());
    assert_eq!(
        src.query_scalar::<i64>("SELECT @@innodb_buffer_pool_dump_pct")
            .unwrap()
            .unwrap(),
        pct_before,
        "dump_pct restored"
    );
    let big_pages: Vec<u32> = pages
        .iter()
        .filter(|p| p.space_id == big.space_id)
        .map(|p| p.page_no)
        .collect();
    // 20000 rows of ~210 bytes fill well over 200 leaf pages; the scan read all.
    assert!(
        big_pages.len() > 200,
        "only {} pages of app/big dumped",
        big_pages.len()
    );
    assert!(
        big_pages.contains(&3),
        "clustered index root (page 3) is resident"
    );
    // Every dumped page is a page inside a known file.
    for p in &pages {
        let f = files
            .get(&p.space_id)
            .unwrap_or_else(|| panic!("space {} has no file", p.space_id));
        let len = std::fs::metadata(&f.path).unwrap().len();
        assert!(
            f.offset_of(p.page_no) + u64::from(f.page_size) <= len,
            "{p:?} beyond end of {}",
            f.path.display()
        );
    }
    // A second dump works too (completion is detected per dump, not by an old file).
    let again = dump_buffer_pool(&src).unwrap();
    assert!(again.len() >= big_pages.len());
}
