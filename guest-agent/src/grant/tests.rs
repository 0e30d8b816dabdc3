//! The replica's grant mapping and unsharing, against a fake gntdev: a memfd stands in
//! for the granting domain's pages, mapped read-only and shared the way gntdev maps a
//! read-only grant (a write faults with SEGV_ACCERR, a pread into it fails with EFAULT).

use std::io::Write;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};

use super::*;
use crate::unshare;

/// The granting domain of the fake: `pages` Xen pages in a memfd; a grant ref is a page
/// index, and only grants "issued" to the fake's grantee can be mapped.
struct MemfdGrants {
    fd: OwnedFd,
    domid: u16,
    pages: u32,
}

impl MemfdGrants {
    fn new(domid: u16, pages: u32) -> MemfdGrants {
        // SAFETY: memfd_create with a static name; the fd is ours.
        let fd = unsafe { libc::memfd_create(c"fake-grants".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        for p in 0..pages {
            f.write_all(&page_pattern(p)).unwrap();
        }
        MemfdGrants { fd, domid, pages }
    }

    /// The bytes of granted page `p` as the granting domain holds them now.
    fn page(&self, p: u32) -> Vec<u8> {
        let mut b = vec![0; XEN_PAGE];
        // SAFETY: reading into our own buffer.
        let n = unsafe {
            libc::pread(
                self.fd.as_raw_fd(),
                b.as_mut_ptr().cast(),
                XEN_PAGE,
                i64::from(p) * XEN_PAGE as i64,
            )
        };
        assert_eq!(n, XEN_PAGE as isize);
        b
    }

    fn refs(&self, first: u32) -> Vec<GrantRef> {
        (first..first + GRANTS_PER_FRAME as u32)
            .map(|gref| GrantRef {
                domid: self.domid,
                gref,
            })
            .collect()
    }

    fn frame(&self, first: u32) -> Vec<u8> {
        (first..first + GRANTS_PER_FRAME as u32)
            .flat_map(|p| self.page(p))
            .collect()
    }
}

fn page_pattern(p: u32) -> Vec<u8> {
    (0..XEN_PAGE)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(p * 7) as u8)
        .collect()
}

impl GrantDevice for MemfdGrants {
    unsafe fn map_read_only(&self, refs: &[GrantRef], dst: *mut u8) -> io::Result<()> {
        for (i, r) in refs.iter().enumerate() {
            if r.domid != self.domid || r.gref >= self.pages {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            // Each Xen page on its own, as grant refs need not be consecutive.
            // SAFETY: the caller owns dst's pages.
            unsafe {
                map_page_read_only(
                    self.fd.as_raw_fd(),
                    u64::from(r.gref) * XEN_PAGE as u64,
                    dst.add(i * XEN_PAGE),
                )
            }?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "a memfd standing in for gntdev".into()
    }
}

/// Maps the Xen page at `off` of file `fd` read-only and shared at `dst`: how gntdev
/// maps a read-only grant (a write faults, a pread into it fails with EFAULT).
///
/// # Safety
/// The caller owns the page at `dst`.
pub(super) unsafe fn map_page_read_only(fd: i32, off: u64, dst: *mut u8) -> io::Result<()> {
    // SAFETY: the caller's contract; one page at a fixed address.
    let p = unsafe {
        libc::mmap(
            dst.cast(),
            XEN_PAGE,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd,
            off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A run of `frames` private frames standing in for the buffer pool.
pub(super) struct Pool {
    base: *mut u8,
    frames: usize,
}

// SAFETY: the pool is plain memory; the tests hand disjoint bytes to threads.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl Pool {
    pub(super) fn new(frames: usize) -> Pool {
        let len = (frames + 1) * FRAME_SIZE;
        // SAFETY: a new private mapping, ours alone.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = ((p as usize + FRAME_SIZE - 1) & !(FRAME_SIZE - 1)) as *mut u8;
        Pool { base, frames }
    }

    pub(super) fn frame(&self, i: usize) -> *mut u8 {
        assert!(i < self.frames);
        // SAFETY: inside the mapping made by `new`.
        unsafe { self.base.add(i * FRAME_SIZE) }
    }

    pub(super) fn bytes(&self, i: usize) -> Vec<u8> {
        // SAFETY: FRAME_SIZE readable bytes of the pool.
        unsafe { std::slice::from_raw_parts(self.frame(i), FRAME_SIZE) }.to_vec()
    }
}

/// The memfd's mappings in this process that cover `addr` (what "the grant is still
/// mapped" means for the fake).
fn grant_mapped_at(addr: usize) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:fake-grants"))
        .any(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (s, e) = range.split_once('-').unwrap();
            let (s, e) = (
                usize::from_str_radix(s, 16).unwrap(),
                usize::from_str_radix(e, 16).unwrap(),
            );
            addr >= s && addr < e
        })
}

/// The unshare table and the fault handler are process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub(super) fn setup() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    unshare::init(4096);
    crate::fault::install_for_tests();
    g
}

fn write_byte(addr: *mut u8, v: u8) {
    // SAFETY: the tests write only into their own pool frames; volatile so the write
    // is really issued (and faults) where the test says.
    unsafe { std::ptr::write_volatile(addr, v) };
}

#[test]
fn a_mapped_frame_reads_the_grants_and_its_first_write_makes_it_private() {
    let _g = setup();
    let dev = MemfdGrants::new(7, 16);
    let pool = Pool::new(2);
    let before = unshare::unshared_on_write();
    // SAFETY: frame 0 of our own pool, nobody else uses it.
    unsafe { map_over(&dev, &dev.refs(4), pool.frame(0)) }.unwrap();
    assert_eq!(pool.bytes(0), dev.frame(4));
    assert!(unshare::is_shared(pool.frame(0) as usize));
    assert!(grant_mapped_at(pool.frame(0) as usize));

    // SAFETY: inside frame 0.
    write_byte(unsafe { pool.frame(0).add(5000) }, 0xAB);

    assert_eq!(unshare::unshared_on_write(), before + 1);
    assert!(!unshare::is_shared(pool.frame(0) as usize));
    assert!(
        !grant_mapped_at(pool.frame(0) as usize),
        "the grant is let go"
    );
    let mut want = dev.frame(4);
    want[5000] = 0xAB;
    assert_eq!(
        pool.bytes(0),
        want,
        "the write landed on a copy of the bytes"
    );
    assert_eq!(dev.frame(4)[5000], page_pattern(5)[5000 - XEN_PAGE]);
    // A second write is an ordinary one.
    // SAFETY: inside frame 0.
    write_byte(unsafe { pool.frame(0).add(1) }, 0xCD);
    assert_eq!(unshare::unshared_on_write(), before + 1);
    assert_eq!(pool.bytes(0)[1], 0xCD);
}

/// Maps frame f of the grants (refs f * 4 ..) over pool frame f, for the first
/// `frames` frames.
fn map_each(dev: &MemfdGrants, pool: &Pool, frames: usize) {
    for f in 0..frames {
        // SAFETY: the test's own pool frames, which nothing else uses while mapping.
        unsafe { map_over(dev, &dev.refs((f * GRANTS_PER_FRAME) as u32), pool.frame(f)) }.unwrap();
    }
}

#[test]
fn every_shared_frame_is_made_private_at_once_when_the_source_goes() {
    let _g = setup();
    let dev = MemfdGrants::new(11, (3 * GRANTS_PER_FRAME) as u32);
    let pool = Pool::new(3);
    map_each(&dev, &pool, 3);
    assert_eq!(unshare::unshare_all().unwrap(), 3);
    assert_eq!(unshare::shared_now(), 0);
    for f in 0..3 {
        assert!(!unshare::is_shared(pool.frame(f) as usize));
        assert!(!grant_mapped_at(pool.frame(f) as usize), "frame {f} let go");
        assert_eq!(pool.bytes(f), dev.frame((f * GRANTS_PER_FRAME) as u32));
    }
    // Private: a write needs no unshare and changes nothing of the source's.
    let before = unshare::unshared_on_write();
    // SAFETY: inside frame 1.
    write_byte(unsafe { pool.frame(1).add(7) }, 0x5A);
    assert_eq!(unshare::unshared_on_write(), before);
    assert_ne!(dev.frame(GRANTS_PER_FRAME as u32)[7], 0x5A);
    assert_eq!(unshare::unshare_all().unwrap(), 0, "nothing left");
}

#[test]
fn concurrent_writers_racing_the_unshare_lose_no_write() {
    let _g = setup();
    const FRAMES: usize = 16;
    const THREADS: usize = 4;
    const ROUNDS: usize = 200;
    let dev = MemfdGrants::new(3, (FRAMES * GRANTS_PER_FRAME) as u32);
    let pool = Pool::new(FRAMES);
    for round in 0..ROUNDS {
        let before = unshare::unshared_on_write();
        // No thread touches them until the barrier.
        map_each(&dev, &pool, FRAMES);
        let start = Barrier::new(THREADS);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (pool, start) = (&pool, &start);
                s.spawn(move || {
                    start.wait();
                    // Each thread writes its own bytes of every frame, in a different
                    // order, so several fault on one frame at once.
                    for k in 0..FRAMES {
                        let f = (k + t * 5 + round) % FRAMES;
                        let off = 64 * t + (round % 64);
                        // SAFETY: this thread's own bytes of frame f.
                        write_byte(unsafe { pool.frame(f).add(off) }, (t + 1) as u8);
                    }
                });
            }
        });
        assert_eq!(
            unshare::unshared_on_write(),
            before + FRAMES,
            "round {round}: each frame made private exactly once"
        );
        for f in 0..FRAMES {
            let granted = dev.frame((f * GRANTS_PER_FRAME) as u32);
            let mut want = granted.clone();
            for t in 0..THREADS {
                want[64 * t + (round % 64)] = (t + 1) as u8;
            }
            assert_eq!(pool.bytes(f), want, "round {round} frame {f}");
            assert_eq!(
                granted,
                (0..GRANTS_PER_FRAME as u32)
                    .flat_map(|p| page_pattern(f as u32 * GRANTS_PER_FRAME as u32 + p))
                    .collect::<Vec<_>>(),
                "the granting domain's bytes never change"
            );
            assert!(!unshare::is_shared(pool.frame(f) as usize));
        }
    }
}

#[test]
fn a_read_into_a_shared_frame_unshares_it_first() {
    let _g = setup();
    let dev = MemfdGrants::new(9, 8);
    let pool = Pool::new(2);
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&[0x5A; FRAME_SIZE]).unwrap();
    let pread = |dst: *mut u8| {
        // SAFETY: reading FRAME_SIZE bytes into a pool frame.
        unsafe { libc::pread(file.as_raw_fd(), dst.cast(), FRAME_SIZE, 0) }
    };
    for f in 0..2 {
        // SAFETY: our own pool frames.
        unsafe { map_over(&dev, &dev.refs(4 * f as u32), pool.frame(f)) }.unwrap();
    }
    // The premise: the kernel does not fault on a read-only frame, the read fails.
    assert_eq!(pread(pool.frame(1)), -1);
    assert_eq!(
        io::Error::last_os_error().raw_os_error(),
        Some(libc::EFAULT)
    );

    let before = unshare::unshared_before_io();
    unshare::before_io(pool.frame(0) as usize, FRAME_SIZE).unwrap();
    assert_eq!(unshare::unshared_before_io(), before + 1);
    assert_eq!(pread(pool.frame(0)), FRAME_SIZE as isize);
    assert_eq!(pool.bytes(0), vec![0x5A; FRAME_SIZE]);
    assert!(
        unshare::is_shared(pool.frame(1) as usize),
        "only the read's frame"
    );

    // The server's pread goes through the agent, which unshares before the real call.
    let agent = crate::agent::Agent::new(crate::config::Config::from_lookup(|_| None).unwrap());
    let dst = pool.frame(1);
    // SAFETY: frame 1 is ours, FRAME_SIZE writable bytes once private.
    let n = unsafe { agent.on_pread(file.as_raw_fd(), dst, FRAME_SIZE, 0, || pread(dst)) };
    assert_eq!(n, FRAME_SIZE as isize);
    assert_eq!(pool.bytes(1), vec![0x5A; FRAME_SIZE]);
    assert_eq!(unshare::unshared_before_io(), before + 2);
    assert_eq!(unshare::shared_now(), 0);
}

#[test]
fn frames_the_server_unmaps_are_forgotten_not_copied() {
    let _g = setup();
    let dev = MemfdGrants::new(4, 8);
    let pool = Pool::new(2);
    for f in 0..2 {
        // SAFETY: our own pool frames.
        unsafe { map_over(&dev, &dev.refs(4 * f as u32), pool.frame(f)) }.unwrap();
    }
    let (shared, before_io) = (unshare::shared_now(), unshare::unshared_before_io());
    // The server unmaps frame 0 (through the agent's munmap hook).
    let agent = crate::agent::Agent::new(crate::config::Config::from_lookup(|_| None).unwrap());
    agent.on_unmap(pool.frame(0) as usize, FRAME_SIZE, true);
    // SAFETY: frame 0 is ours; the server's munmap.
    assert_eq!(unsafe { libc::munmap(pool.frame(0).cast(), FRAME_SIZE) }, 0);
    assert!(!unshare::is_shared(pool.frame(0) as usize));
    assert!(unshare::is_shared(pool.frame(1) as usize));
    assert_eq!(unshare::shared_now(), shared - 1);
    // Something else mapped there later is left alone by a read into it.
    // SAFETY: a fresh private mapping at the freed address.
    let p = unsafe {
        libc::mmap(
            pool.frame(0).cast(),
            FRAME_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p, pool.frame(0).cast());
    unshare::before_io(pool.frame(0) as usize, FRAME_SIZE).unwrap();
    assert_eq!(unshare::unshared_before_io(), before_io, "nothing copied");
    // SAFETY: frame 1 is ours.
    unsafe { restore_private(pool.frame(1)) }.unwrap();
}

static NEXT_RAN: AtomicUsize = AtomicUsize::new(0);

/// The server's own SIGSEGV handler in the chaining test: makes the faulting page
/// writable, as a handler that recovers would.
extern "C" fn servers_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    NEXT_RAN.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the kernel's siginfo for this SIGSEGV.
    let page = unsafe { (*info).si_addr() } as usize & !(XEN_PAGE - 1);
    // SAFETY: a page of the test's own pool.
    unsafe { libc::mprotect(page as *mut _, XEN_PAGE, libc::PROT_READ | libc::PROT_WRITE) };
}

#[test]
fn faults_that_are_not_a_shared_frames_reach_the_servers_handler() {
    let _g = setup();
    let dev = MemfdGrants::new(1, 4);
    let pool = Pool::new(2);
    let saved = crate::fault::next();
    crate::fault::set_next(servers_handler as *const () as usize, libc::SA_SIGINFO);
    NEXT_RAN.store(0, Ordering::SeqCst);

    // SAFETY: frame 0 is ours.
    unsafe { map_over(&dev, &dev.refs(0), pool.frame(0)) }.unwrap();
    write_byte(pool.frame(0), 1);
    assert_eq!(
        NEXT_RAN.load(Ordering::SeqCst),
        0,
        "a shared frame's write is ours"
    );

    // A page the "server" protected itself.
    // SAFETY: frame 1 is ours.
    unsafe { libc::mprotect(pool.frame(1).cast(), FRAME_SIZE, libc::PROT_READ) };
    write_byte(pool.frame(1), 2);
    assert_eq!(NEXT_RAN.load(Ordering::SeqCst), 1, "passed on once");
    assert_eq!(pool.bytes(1)[0], 2);
    crate::fault::set_next(saved.0, saved.1);
}

#[test]
fn bad_frames_are_refused_and_a_failed_map_leaves_the_frame_private() {
    let _g = setup();
    let dev = MemfdGrants::new(2, 8);
    let pool = Pool::new(2);
    // SAFETY (each call below): frames of our own pool, or refused before any mapping.
    let unaligned = unsafe { map_over(&dev, &dev.refs(0), pool.frame(0).add(XEN_PAGE)) };
    assert!(unaligned.is_err());
    let short = unsafe { map_over(&dev, &dev.refs(0)[..2], pool.frame(0)) };
    assert!(short.is_err());
    // A grant not issued to us: the device refuses half way through the frame.
    let mut refs = dev.refs(0);
    refs[2].domid = 99;
    let foreign = unsafe { map_over(&dev, &refs, pool.frame(0)) }.unwrap_err();
    assert!(
        error_chain(&foreign).contains("mapping grants"),
        "{}",
        error_chain(&foreign)
    );
    assert!(!unshare::is_shared(pool.frame(0) as usize));
    assert!(
        !grant_mapped_at(pool.frame(0) as usize),
        "nothing half mapped"
    );
    write_byte(pool.frame(0), 3);
    assert_eq!(pool.bytes(0)[0], 3);
    // Mapped twice without being made private in between: refused.
    unsafe { map_over(&dev, &dev.refs(4), pool.frame(1)) }.unwrap();
    let twice = unsafe { map_over(&dev, &dev.refs(4), pool.frame(1)) };
    assert!(matches!(
        twice,
        Err(AgentError::Unshare(unshare::UnshareError::AlreadyShared(_)))
    ));
    unsafe { restore_private(pool.frame(1)) }.unwrap();
}

#[test]
fn copy_mode_copies_the_bytes_and_keeps_no_grant() {
    let _g = setup();
    let dev = MemfdGrants::new(5, 8);
    let pool = Pool::new(1);
    // SAFETY: frame 0 of our own pool.
    unsafe { copy_from(&dev, &dev.refs(4), pool.frame(0)) }.unwrap();
    assert_eq!(pool.bytes(0), dev.frame(4));
    assert!(!unshare::is_shared(pool.frame(0) as usize));
    assert!(!grant_mapped_at(pool.frame(0) as usize));
    let mut refs = dev.refs(4);
    refs[0].gref = 100;
    // SAFETY: as above.
    assert!(unsafe { copy_from(&dev, &refs, pool.frame(0)) }.is_err());
    assert_eq!(
        pool.bytes(0),
        dev.frame(4),
        "a failed copy leaves the frame as it was"
    );
}

fn error_chain(e: &dyn std::error::Error) -> String {
    crate::agent::error_chain(e)
}
