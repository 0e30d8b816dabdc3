//! The Xen frame stores against fakes of dbfork_gnt and gntdev that share the source's
//! pool file: a "grant" is a record of which pool page went to which domain, and a
//! "mapping" maps that page of the file read-only and shared, as gntdev maps a
//! read-only grant.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use pagetable::Frame;
use parking_lot::Mutex;

use super::issuer::Revoked;
use super::store::{GrantIssuer, XenReplicaStore, XenSourceStore, MAX_GRANTEES};
use super::{GrantDevice, GrantRef, GRANTS_PER_FRAME, XEN_PAGE};
use crate::error::{AgentError, Result};
use crate::frame_store::{FrameRecord, FrameStore, FRAME_SIZE};
use crate::pool::Pool;
use crate::unshare;

/// The grant table of the fake: first reference -> (pool file offset, grantee).
#[derive(Default)]
struct Granted {
    window: Option<(usize, usize)>,
    next_ref: u32,
    grants: HashMap<u32, (u64, u16)>,
    /// References whose grantee maps them (a revoke is refused).
    mapped: HashSet<u32>,
    /// References ended.
    ended: HashSet<u32>,
}

struct FakeIssuer(Arc<Mutex<Granted>>);

impl GrantIssuer for FakeIssuer {
    fn set_pool(&self, addr: usize, len: usize) -> Result<()> {
        let mut g = self.0.lock();
        if g.window.is_some() {
            return Err(AgentError::io(
                "set_pool",
                io::Error::from_raw_os_error(libc::EBUSY),
            ));
        }
        g.window = Some((addr, len));
        g.next_ref = 8; // refs below 8 are the domain's own rings, as in a real domU
        Ok(())
    }

    fn grant_frame(&self, addr: usize, domid: u16) -> Result<u32> {
        let mut g = self.0.lock();
        let (base, len) = g.window.expect("set_pool first");
        if addr < base || addr + FRAME_SIZE > base + len || (addr - base) % XEN_PAGE != 0 {
            return Err(AgentError::io(
                "grant",
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        let first = g.next_ref;
        g.next_ref += GRANTS_PER_FRAME as u32;
        g.grants.insert(first, ((addr - base) as u64, domid));
        Ok(first)
    }

    fn revoke(&self, gref: u32) -> Result<Revoked> {
        let mut g = self.0.lock();
        if g.mapped.contains(&gref) {
            return Ok(Revoked::StillMapped);
        }
        if !g.ended.insert(gref) {
            return Err(AgentError::io(
                "revoke",
                io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        Ok(Revoked::Ended)
    }

    fn describe(&self) -> String {
        "a fake dbfork_gnt".into()
    }
}

/// gntdev of domain `own`: maps pages of the pool file that `issuer` granted to it.
struct FakeGntdev {
    granted: Arc<Mutex<Granted>>,
    issuer: u16,
    own: u16,
    pool: std::fs::File,
}

impl GrantDevice for FakeGntdev {
    unsafe fn map_read_only(&self, refs: &[GrantRef], dst: *mut u8) -> io::Result<()> {
        let g = self.granted.lock();
        for (i, r) in refs.iter().enumerate() {
            let page = (0..GRANTS_PER_FRAME as u32).find_map(|k| {
                let first = r.gref.checked_sub(k)?;
                let &(off, to) = g.grants.get(&first)?;
                Some((off + u64::from(k) * XEN_PAGE as u64, to))
            });
            // Xen refuses a grant that is not this domain's to map.
            let Some((off, to)) = page.filter(|&(_, to)| r.domid == self.issuer && to == self.own)
            else {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            };
            let _ = to;
            // SAFETY: the caller owns dst's pages; one Xen page of the pool file.
            unsafe {
                super::tests::map_page_read_only(self.pool.as_raw_fd(), off, dst.add(i * XEN_PAGE))
            }?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("a fake gntdev of domain {}", self.own)
    }
}

const SOURCE: u16 = 5;

struct Family {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    granted: Arc<Mutex<Granted>>,
    source: XenSourceStore,
}

fn family(slots: u64) -> Family {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let pool = Pool::open(&path, true)
        .unwrap()
        .with_limit(Some(slots * FRAME_SIZE as u64));
    let granted = Arc::new(Mutex::new(Granted::default()));
    let source = XenSourceStore::open(pool, Box::new(FakeIssuer(granted.clone())), SOURCE).unwrap();
    Family {
        _dir: dir,
        path,
        granted,
        source,
    }
}

impl Family {
    fn replica(&self, own: u16) -> XenReplicaStore {
        let dev = FakeGntdev {
            granted: self.granted.clone(),
            issuer: SOURCE,
            own,
            pool: std::fs::File::open(&self.path).unwrap(),
        };
        XenReplicaStore::new(Box::new(dev), own)
    }
}

fn page(n: u8) -> Vec<u8> {
    (0..FRAME_SIZE)
        .map(|i| (i as u8).wrapping_mul(3).wrapping_add(n))
        .collect()
}

fn rec(n: u32) -> FrameRecord {
    FrameRecord {
        space_id: 7,
        page_no: n,
        lsn: 100 + u64::from(n),
        valid_from: 1000,
    }
}

fn grant(grantee: u16, gref: u32) -> Frame {
    Frame::XenGrant {
        issuer: SOURCE,
        grantee,
        gref,
    }
}

#[test]
fn each_slot_is_published_once_per_grantee_also_for_frames_offered_before() {
    let f = family(16);
    for n in 0..3 {
        f.source.offer(&page(n as u8), rec(n)).unwrap();
    }
    assert!(
        f.source.offered_since(0, 100).unwrap().is_empty(),
        "no replica yet"
    );
    let e0 = f.source.epoch();
    f.source.add_grantee(6).unwrap();
    f.source.add_grantee(8).unwrap();
    f.source.add_grantee(8).unwrap();
    assert_eq!(f.source.epoch(), e0 + 2, "a new grantee restarts the log");
    assert!(f.source.add_grantee(SOURCE).is_err(), "not to itself");

    let log = f.source.offered_since(0, 100).unwrap();
    let got: Vec<(u64, u16, u32)> = log
        .iter()
        .map(|s| match s.frame {
            Frame::XenGrant {
                issuer: SOURCE,
                grantee,
                ..
            } => (s.seq, grantee, s.record.page_no),
            other => panic!("{other:?}"),
        })
        .collect();
    let g = MAX_GRANTEES;
    assert_eq!(
        got,
        vec![
            (0, 6, 0),
            (1, 8, 0),
            (g, 6, 1),
            (g + 1, 8, 1),
            (2 * g, 6, 2),
            (2 * g + 1, 8, 2)
        ]
    );
    assert_eq!(
        f.granted.lock().grants.len(),
        6,
        "one grant per slot and grantee"
    );
    // Asked again (a reconnect), the same references: nothing granted twice.
    assert_eq!(f.source.offered_since(0, 100).unwrap(), log);
    assert_eq!(f.granted.lock().grants.len(), 6);
    // Resuming in the middle of a slot's run, and after the end.
    assert_eq!(f.source.offered_since(1, 2).unwrap(), log[1..3].to_vec());
    assert!(f.source.offered_since(2 * g + 2, 100).unwrap().is_empty());

    // The source reads and maps its own slots under any of their grant frames.
    let mut dst = crate::frame_store::AlignedPage::new();
    f.source.read(log[3].frame, dst.bytes()).unwrap();
    assert_eq!(dst.bytes(), &page(1)[..]);
    assert_eq!(f.source.record(log[3].frame).unwrap(), Some(rec(1)));
    assert!(matches!(
        f.source.record(grant(6, 4000)),
        Err(AgentError::ForeignFrame(_))
    ));
    assert!(matches!(
        f.source.record(Frame::XenGrant {
            issuer: 9,
            grantee: 6,
            gref: 8
        }),
        Err(AgentError::ForeignFrame(_))
    ));

    // A page offered now is granted to both on the way.
    f.source.offer(&page(3), rec(3)).unwrap();
    let more = f.source.offered_since(2 * g + 2, 100).unwrap();
    assert_eq!(more.len(), 2);
    assert_eq!((more[0].seq, more[1].seq), (3 * g, 3 * g + 1));
}

#[test]
fn a_replica_maps_only_what_was_granted_to_it_and_its_writes_stay_its_own() {
    let _serial = super::tests::setup();
    let f = family(16);
    f.source.offer(&page(1), rec(1)).unwrap();
    f.source.add_grantee(6).unwrap();
    f.source.add_grantee(8).unwrap();
    let log = f.source.offered_since(0, 100).unwrap();
    let (to6, to8) = (log[0].frame, log[1].frame);
    let r6 = f.replica(6);
    assert!(!r6.records_visible());
    let frames = super::tests::Pool::new(2);
    let buf = frames.frame(0) as usize;

    // SAFETY (each map below): frames of our own buffer-pool stand-in.
    unsafe { r6.map_over(to6, buf as *mut u8) }.unwrap();
    assert_eq!(frames.bytes(0), page(1));
    assert!(unshare::is_shared(buf));
    let foreign = unsafe { r6.map_over(to8, (buf + FRAME_SIZE) as *mut u8) };
    assert!(
        matches!(foreign, Err(AgentError::ForeignFrame(_))),
        "8's grant"
    );
    let local = unsafe {
        r6.map_over(
            Frame::LocalPool { offset: 0 },
            (buf + FRAME_SIZE) as *mut u8,
        )
    };
    assert!(matches!(local, Err(AgentError::ForeignFrame(_))));

    // The replica's first write lands on a private copy; the pool slot is unchanged.
    // SAFETY: byte 10 of the mapped frame, ours.
    unsafe { std::ptr::write_volatile((buf + 10) as *mut u8, 0xAA) };
    assert!(!unshare::is_shared(buf));
    assert_eq!(frames.bytes(0)[10], 0xAA);
    let mut slot = crate::frame_store::AlignedPage::new();
    f.source.read(to6, slot.bytes()).unwrap();
    assert_eq!(
        slot.bytes(),
        &page(1)[..],
        "the source's slot never changes"
    );

    // Copy mode reads a grant without keeping it; 8's grant stays 8's.
    let mut copy = crate::frame_store::AlignedPage::new();
    r6.read(to6, copy.bytes()).unwrap();
    assert_eq!(copy.bytes(), &page(1)[..]);
    assert!(r6.read(to8, copy.bytes()).is_err());
    // A replica offers nothing.
    assert!(r6.offer(&page(2), rec(2)).is_err());
    assert!(r6.offered_since(0, 10).unwrap().is_empty());
}

#[test]
fn a_source_pool_without_a_cap_or_beyond_its_window_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(&dir.path().join("p"), true).unwrap();
    let granted = Arc::new(Mutex::new(Granted::default()));
    let err = XenSourceStore::open(pool, Box::new(FakeIssuer(granted.clone())), SOURCE)
        .err()
        .expect("no cap, no window");
    assert!(format!("{err}").contains("DBFORK_POOL_MAX_BYTES"), "{err}");

    // A window of two frames: the third offer is refused by the pool itself.
    let f = family(2);
    f.source.add_grantee(6).unwrap();
    for n in 0..2 {
        f.source.offer(&page(n), rec(u32::from(n))).unwrap();
    }
    assert!(matches!(
        f.source.offer(&page(2), rec(2)),
        Err(AgentError::PoolFull { .. })
    ));
    assert_eq!(f.source.offered_since(0, 10).unwrap().len(), 2);
}

#[test]
fn a_grantee_that_went_has_its_grants_ended_once_it_no_longer_maps_them() {
    let f = family(16);
    for n in 0..2 {
        f.source.offer(&page(n as u8), rec(n)).unwrap();
    }
    f.source.admit(&[6, 8]).unwrap();
    let log = f.source.offered_since(0, 100).unwrap();
    assert_eq!(log.len(), 4);
    let refs_of = |grantee: u16| -> Vec<u32> {
        let mut r: Vec<u32> = log
            .iter()
            .filter_map(|s| match s.frame {
                Frame::XenGrant {
                    grantee: g, gref, ..
                } if g == grantee => Some(gref),
                _ => None,
            })
            .flat_map(|first| (0..GRANTS_PER_FRAME as u32).map(move |k| first + k))
            .collect();
        r.sort_unstable();
        r
    };
    let (of6, of8) = (refs_of(6), refs_of(8));
    // Domain 8 still maps one page of its first frame when it is named no longer.
    f.granted.lock().mapped.insert(of8[1]);
    let e = f.source.epoch();
    f.source.admit(&[6]).unwrap();
    assert_eq!(f.source.grantees(), vec![6]);
    assert!(f.source.epoch() > e, "the log starts again without it");
    {
        let g = f.granted.lock();
        let ended: Vec<u32> = of8
            .iter()
            .copied()
            .filter(|r| g.ended.contains(r))
            .collect();
        assert_eq!(
            ended.len(),
            of8.len() - 1,
            "all but the mapped one ended at once"
        );
        assert!(!g.ended.contains(&of8[1]));
        assert!(of6.iter().all(|r| !g.ended.contains(r)), "6's grants stay");
    }
    assert_eq!(f.source.retiring(), 1);
    // The log names only domain 6 now, under the same references as before.
    let again = f.source.offered_since(0, 100).unwrap();
    assert_eq!(refs_of(6), {
        let mut r: Vec<u32> = again
            .iter()
            .map(|s| match s.frame {
                Frame::XenGrant {
                    grantee: 6, gref, ..
                } => gref,
                other => panic!("{other:?}"),
            })
            .flat_map(|first| (0..GRANTS_PER_FRAME as u32).map(move |k| first + k))
            .collect();
        r.sort_unstable();
        r
    });
    // Its frames are no longer the source's to read under 8's references.
    assert!(f.source.record(grant(8, of8[0])).is_err());
    // Once 8 lets go, the next sync ends the last one.
    f.granted.lock().mapped.clear();
    f.source.offered_since(0, 1).unwrap();
    assert_eq!(f.source.retiring(), 0);
    assert!(f.granted.lock().ended.contains(&of8[1]));
    // Named again (a restarted replica with the same domid), it is granted anew.
    f.source.admit(&[6, 8]).unwrap();
    let fresh = f.source.offered_since(0, 100).unwrap();
    assert!(fresh.iter().any(|s| matches!(s.frame,
        Frame::XenGrant { grantee: 8, gref, .. } if !of8.contains(&gref))));
}
