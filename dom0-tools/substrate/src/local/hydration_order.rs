//! What a new replica should have hydrated first: the files its server reads to boot,
//! then the pages the source holds in its buffer pool, hottest first. Turned into
//! byte ranges of the volume with FIEMAP on the clone's own mounted filesystem (a
//! block-level clone has the source's block layout, and the clone's own extents are
//! exact for it). Every step is best effort: a range missed costs an on-demand fetch.

use dbinstance::fiemap::{file_extents, page_ranges, physical_ranges, Extent};
use dbinstance::{PageId, TablespaceFile};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Files the server reads at startup: system and undo tablespaces, redo log, Aria and
/// system tables, table definitions, the newest binlog and its index, the buffer pool
/// dump. User tablespaces (`*.ibd` outside the system schemas) are left to the hot-page
/// list, and older binlogs to on-demand reads.
pub fn boot_ranges(datadir: &Path) -> Vec<(u64, u64)> {
    let mut files = Vec::new();
    walk(datadir, &mut files);
    let newest_binlog = files.iter().filter(|p| is_binlog(p)).max().cloned();
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(datadir).unwrap_or(&f);
        let system_schema = matches!(
            rel.components().next().and_then(|c| c.as_os_str().to_str()),
            Some("mysql" | "sys" | "performance_schema")
        );
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "ibd" && !system_schema {
            continue;
        }
        if is_binlog(&f) && Some(&f) != newest_binlog.as_ref() {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&f) else {
            continue;
        };
        if let Ok(ext) = file_extents(&f) {
            out.extend(
                physical_ranges(&ext, 0, meta.len())
                    .into_iter()
                    .map(|r| (r.physical, r.length)),
            );
        }
    }
    out
}

fn is_binlog(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.len() == 6 && e.bytes().all(|b| b.is_ascii_digit()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

/// Volume ranges of the hot pages, in the order given (hottest first). `spaces` holds
/// the source's paths; they are rebased from `source_datadir` onto `clone_datadir`.
pub fn hot_page_ranges(
    clone_datadir: &Path,
    source_datadir: &Path,
    spaces: &BTreeMap<u32, TablespaceFile>,
    hot: &[PageId],
) -> Vec<(u64, u64)> {
    let mut extents: HashMap<u32, Option<Vec<Extent>>> = HashMap::new();
    let mut out = Vec::new();
    for page in hot {
        let Some(ts) = spaces.get(&page.space_id) else {
            continue;
        };
        let ext = extents.entry(page.space_id).or_insert_with(|| {
            let rel = ts.path.strip_prefix(source_datadir).ok()?;
            file_extents(&clone_datadir.join(rel)).ok()
        });
        if let Some(ext) = ext {
            out.extend(
                page_ranges(ext, page.page_no, ts.page_size)
                    .into_iter()
                    .map(|r| (r.physical, r.length)),
            );
        }
    }
    out
}

/// Merges ranges that touch the one before them, keeping the order otherwise (the
/// order is the priority).
pub fn coalesce(ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (off, len) in ranges {
        if len == 0 {
            continue;
        }
        match out.last_mut() {
            Some((o, l)) if *o + *l == off => *l += len,
            _ => out.push((off, len)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_merges_only_neighbours_in_order() {
        let v = coalesce(vec![(0, 4), (4, 4), (100, 1), (8, 2), (50, 0)]);
        assert_eq!(v, vec![(0, 8), (100, 1), (8, 2)]);
    }

    #[test]
    fn binlogs_are_recognised() {
        assert!(is_binlog(Path::new("/d/mysql-bin.000012")));
        assert!(!is_binlog(Path::new("/d/mysql-bin.index")));
        assert!(!is_binlog(Path::new("/d/t.ibd")));
    }

    #[test]
    fn boot_ranges_skip_user_tablespaces_and_old_binlogs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("mysql")).unwrap();
        std::fs::create_dir_all(d.join("shop")).unwrap();
        for (f, len) in [
            ("ibdata1", 65536),
            ("mysql/user.ibd", 16384),
            ("shop/orders.ibd", 1 << 20),
            ("shop/orders.frm", 1000),
            ("bin.000001", 8192),
            ("bin.000002", 4096),
        ] {
            std::fs::write(d.join(f), vec![1u8; len]).unwrap();
        }
        std::process::Command::new("sync").status().unwrap();
        let total: u64 = boot_ranges(d).iter().map(|r| r.1).sum();
        // ibdata1 + user.ibd + orders.frm (one 4K block) + bin.000002; not orders.ibd or
        // bin.000001. Allocation rounds to blocks, so compare within a block each.
        let want: u64 = 65536 + 16384 + 1000 + 4096;
        assert!(total >= want && total < want + 4 * 4096, "total {total}");
    }
}
