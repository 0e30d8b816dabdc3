//! The source's hot pages (its buffer pool content in LRU order) and where each
//! tablespace lives on disk, so page ids turn into (file, offset).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::sql::{exec, scalar};

const POLL: Duration = Duration::from_millis(50);
pub const DEFAULT_DUMP_TIMEOUT: Duration = Duration::from_secs(60);

/// An InnoDB page identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageId {
    pub space_id: u32,
    pub page_no: u32,
}

/// Parses an `ib_buffer_pool` dump: one `space_id,page_no` per line, most recently
/// used first. Blank lines are skipped; anything else malformed is an error naming
/// the line, never a panic.
pub fn parse_buffer_pool_dump(bytes: &[u8], path: &Path) -> Result<Vec<PageId>> {
    let bad = |line: usize, reason: String| Error::BadBufferPoolDump {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        bad(line, "not UTF-8 text".into())
    })?;
    let mut out = Vec::with_capacity(text.len() / 8);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let (s, p) = line
            .split_once(',')
            .ok_or_else(|| bad(i + 1, format!("{line:?} is not space_id,page_no")))?;
        let num = |f: &str, what: &str| {
            f.trim()
                .parse::<u32>()
                .map_err(|_| bad(i + 1, format!("{what} {f:?} is not a 32-bit number")))
        };
        out.push(PageId {
            space_id: num(s, "space_id")?,
            page_no: num(p, "page_no")?,
        });
    }
    Ok(out)
}

/// Asks the server to dump its buffer pool (all of it: dump_pct is raised to 100
/// for the dump and restored), waits for completion, and returns the page list in
/// LRU order, hottest first.
pub fn dump_buffer_pool(instance: &Instance) -> Result<Vec<PageId>> {
    dump_buffer_pool_with_timeout(instance, DEFAULT_DUMP_TIMEOUT)
}

pub fn dump_buffer_pool_with_timeout(
    instance: &Instance,
    timeout: Duration,
) -> Result<Vec<PageId>> {
    let name = instance.name();
    let mut c = instance.conn()?;
    let file: String =
        scalar(&mut c, name, "SELECT @@GLOBAL.innodb_buffer_pool_filename")?.unwrap_or_default();
    let path = resolve(&instance.config().datadir, &file);
    let old_pct: i64 =
        scalar(&mut c, name, "SELECT @@GLOBAL.innodb_buffer_pool_dump_pct")?.unwrap_or(25);
    exec(&mut c, name, "SET GLOBAL innodb_buffer_pool_dump_pct = 100")?;
    let res = (|| {
        // The dump is written to a temp name and renamed last: once the file exists
        // again, this dump (not an older one) is complete.
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        exec(&mut c, name, "SET GLOBAL innodb_buffer_pool_dump_now = ON")?;
        let deadline = Instant::now() + timeout;
        loop {
            let row: Option<(String, String)> = c
                .query_first("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_dump_status'")
                .map_err(|e| Error::sql(name, "SHOW STATUS", e))?;
            let status = row.map(|r| r.1).unwrap_or_default();
            if status.starts_with("Buffer pool(s) dump completed") && path.exists() {
                break;
            }
            let lower = status.to_lowercase();
            if lower.contains("error") || lower.contains("cannot") {
                return Err(Error::UnexpectedResult {
                    name: name.to_string(),
                    detail: format!("buffer pool dump failed: {status}"),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("buffer pool dump of {name} (status {status:?})"),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(POLL);
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        parse_buffer_pool_dump(&bytes, &path)
    })();
    let restore = exec(
        &mut c,
        name,
        &format!("SET GLOBAL innodb_buffer_pool_dump_pct = {old_pct}"),
    );
    let pages = res?;
    restore?;
    Ok(pages)
}

/// One InnoDB tablespace file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceFile {
    pub space_id: u32,
    /// "innodb_system", "db/table", "innodb_undo001", ...
    pub name: String,
    pub path: PathBuf,
    /// Bytes per page on disk.
    pub page_size: u32,
}

impl TablespaceFile {
    /// Byte offset of a page in this file.
    pub fn offset_of(&self, page_no: u32) -> u64 {
        u64::from(page_no) * u64::from(self.page_size)
    }
}

/// space_id -> file of every InnoDB tablespace, system tablespace (0, first data
/// file only) and undo tablespaces included.
pub fn tablespace_files(instance: &Instance) -> Result<BTreeMap<u32, TablespaceFile>> {
    let name = instance.name();
    let datadir = &instance.config().datadir;
    let mut c = instance.conn()?;
    let sql =
        "SELECT SPACE, NAME, PAGE_SIZE, FILENAME FROM information_schema.INNODB_SYS_TABLESPACES";
    let rows: Vec<(u32, String, u32, Option<String>)> =
        c.query(sql).map_err(|e| Error::sql(name, sql, e))?;
    let mut out = BTreeMap::new();
    for (space_id, ts_name, page_size, file) in rows {
        let Some(file) = file.filter(|f| !f.is_empty()) else {
            continue;
        };
        out.insert(
            space_id,
            TablespaceFile {
                space_id,
                name: ts_name,
                path: resolve(datadir, &file),
                page_size,
            },
        );
    }
    let undo: i64 = scalar(&mut c, name, "SELECT @@GLOBAL.innodb_undo_tablespaces")?.unwrap_or(0);
    if undo > 0 {
        let dir: String =
            scalar(&mut c, name, "SELECT @@GLOBAL.innodb_undo_directory")?.unwrap_or_default();
        let page_size: u32 =
            scalar(&mut c, name, "SELECT @@GLOBAL.innodb_page_size")?.unwrap_or(16384);
        let dir = resolve(datadir, if dir.is_empty() { "." } else { &dir });
        // Undo tablespaces take space ids 1..=n, named undo001...
        for i in 1..=undo as u32 {
            out.entry(i).or_insert_with(|| TablespaceFile {
                space_id: i,
                name: format!("innodb_undo{i:03}"),
                path: dir.join(format!("undo{i:03}")),
                page_size,
            });
        }
    }
    Ok(out)
}

/// Joins a server-reported path ("./db/t.ibd", "ib_buffer_pool", "/abs") onto the
/// datadir.
fn resolve(datadir: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let rel = p.strip_prefix(".").unwrap_or(p);
    datadir.join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Vec<PageId>> {
        parse_buffer_pool_dump(s.as_bytes(), Path::new("ib_buffer_pool"))
    }

    #[test]
    fn parses_lines_in_order() {
        let v = parse("4,3\n4,2\r\n\n0,1\n  7 , 9 \n").unwrap();
        let ids: Vec<(u32, u32)> = v.iter().map(|p| (p.space_id, p.page_no)).collect();
        assert_eq!(ids, vec![(4, 3), (4, 2), (0, 1), (7, 9)]);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn garbage_lines_are_errors_with_line_numbers() {
        for (text, line) in [
            ("4,3\nhello\n", 2),
            ("4,3\n4\n", 2),
            ("-1,2\n", 1),
            ("1,2,3\n", 1),
            ("1,99999999999\n", 1),
            ("1,2\n3,4\n,\n", 3),
        ] {
            match parse(text) {
                Err(Error::BadBufferPoolDump { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
        let err = parse_buffer_pool_dump(b"1,2\n\xff\xfe\n", Path::new("x")).unwrap_err();
        assert!(
            matches!(err, Error::BadBufferPoolDump { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn resolves_server_paths() {
        let d = Path::new("/data");
        assert_eq!(resolve(d, "./ibdata1"), PathBuf::from("/data/ibdata1"));
        assert_eq!(resolve(d, "./db/t.ibd"), PathBuf::from("/data/db/t.ibd"));
        assert_eq!(
            resolve(d, "ib_buffer_pool"),
            PathBuf::from("/data/ib_buffer_pool")
        );
        assert_eq!(resolve(d, "/x/t.ibd"), PathBuf::from("/x/t.ibd"));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_buffer_pool_dump(&bytes, Path::new("x"));
        }

        #[test]
        fn round_trip(ids in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..64)) {
            let text: String = ids.iter().map(|(s, p)| format!("{s},{p}\n")).collect();
            let parsed = parse(&text).unwrap();
            let back: Vec<(u32, u32)> = parsed.iter().map(|p| (p.space_id, p.page_no)).collect();
            prop_assert_eq!(back, ids);
        }
    }
}
