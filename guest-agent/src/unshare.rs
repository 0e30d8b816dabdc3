//! Frames of the buffer pool mapped read-only from another domain's grants, and making
//! them private again: on the server's first write to one (from the SIGSEGV handler,
//! `crate::fault`), and before the kernel writes into one (a pread into a grant mapping
//! fails with EFAULT instead of faulting, so the agent unshares first).
//!
//! Unsharing copies the frame into fresh anonymous memory and `mremap`s that over the
//! frame in one step: readers see the same bytes before and after, and a writer's
//! fault is only retried once the private copy is in place, so no write lands on the
//! shared bytes and none is lost. Replacing the mapping is also what lets go of the
//! grants (`crate::grant`: a grant mapping lives exactly as long as its mapping).
//!
//! The handler cannot take locks or allocate, so the shared frames are kept in a
//! fixed open-addressed table of atomic words, sized once at setup: each word is a
//! frame address (FRAME_SIZE-aligned) with its state in the low bits. Entries are
//! never removed, only turned private: a frame address stays a frame address of the
//! buffer pool, and a write that faulted while its frame was shared but reached the
//! handler after another thread unshared it finds the entry private and is retried.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use crate::frame_store::FRAME_SIZE;

const STATE_MASK: usize = 0b11;
/// Mapped from grants, read-only.
const SHARED: usize = 1;
/// A thread is copying it out; writers wait.
const UNSHARING: usize = 2;
/// Private memory again (or never mapped since).
const PRIVATE: usize = 3;

static TABLE: AtomicPtr<AtomicUsize> = AtomicPtr::new(std::ptr::null_mut());
static TABLE_LEN: AtomicUsize = AtomicUsize::new(0);
/// Frames shared now: the read path skips its check when there are none.
static SHARED_NOW: AtomicUsize = AtomicUsize::new(0);
/// Frames made private on a write fault, and before IO into them.
static ON_WRITE: AtomicUsize = AtomicUsize::new(0);
static BEFORE_IO: AtomicUsize = AtomicUsize::new(0);
/// Bumped when an unshare ends; threads waiting for one sleep on it.
static ENDS: AtomicU32 = AtomicU32::new(0);
/// Late retries since the last unshare: bounds a fault that only looks like a late one
/// (a private frame the server protected itself), which then reaches its handler.
static LATE_RETRIES: AtomicUsize = AtomicUsize::new(0);
const MAX_LATE_RETRIES: usize = 10_000;

/// Why a frame could not be shared or unshared.
#[derive(Debug, thiserror::Error)]
pub enum UnshareError {
    #[error("the shared-frame table is not set up (unshare::init)")]
    NoTable,
    #[error("the shared-frame table is full ({0} frames): no more frames are shared")]
    Full(usize),
    #[error("address {0:#x} is not the start of a {FRAME_SIZE}-byte frame")]
    Unaligned(usize),
    #[error("frame {0:#x} is already shared")]
    AlreadyShared(usize),
    #[error("copying frame {addr:#x} out of its grant mapping")]
    Copy {
        addr: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Sets up the table for at most `frames` frames shared at once (called once, before
/// any frame is shared; later calls keep the first table).
pub fn init(frames: usize) {
    let len = (frames.max(1) * 2).next_power_of_two();
    let table: Box<[AtomicUsize]> = (0..len).map(|_| AtomicUsize::new(0)).collect();
    let ptr = Box::leak(table).as_mut_ptr();
    if TABLE
        .compare_exchange(
            std::ptr::null_mut(),
            ptr,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
    {
        TABLE_LEN.store(len, Ordering::Release);
    } else {
        // SAFETY: `ptr` came from Box::leak just above and was never published.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
    }
}

fn table() -> Option<&'static [AtomicUsize]> {
    let len = TABLE_LEN.load(Ordering::Acquire);
    let ptr = TABLE.load(Ordering::Acquire);
    if ptr.is_null() || len == 0 {
        return None;
    }
    // SAFETY: set once by `init` from a leaked boxed slice of `len` words, never freed.
    Some(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The table word of `frame` (and the word's value), or the first empty word of its
/// probe sequence (value 0), or None when the table is full without it.
fn slot(t: &[AtomicUsize], frame: usize) -> Option<(&AtomicUsize, usize)> {
    let mask = t.len() - 1;
    let mut i = (frame / FRAME_SIZE).wrapping_mul(0x9E37_79B9_7F4A_7C15) & mask;
    for _ in 0..t.len() {
        let w = t[i].load(Ordering::Acquire);
        if w == 0 || w & !STATE_MASK == frame {
            return Some((&t[i], w));
        }
        i = (i + 1) & mask;
    }
    None
}

/// Records the frame at `frame` as shared, before it is mapped from grants.
pub fn mark_shared(frame: usize) -> Result<(), UnshareError> {
    if frame % FRAME_SIZE != 0 || frame == 0 {
        return Err(UnshareError::Unaligned(frame));
    }
    let t = table().ok_or(UnshareError::NoTable)?;
    loop {
        let (word, w) = slot(t, frame).ok_or(UnshareError::Full(t.len() / 2))?;
        if w != 0 && w & STATE_MASK != PRIVATE {
            return Err(UnshareError::AlreadyShared(frame));
        }
        if word
            .compare_exchange(w, frame | SHARED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            SHARED_NOW.fetch_add(1, Ordering::AcqRel);
            return Ok(());
        }
    }
}

/// Whether the frame at `frame` is mapped from grants now.
pub fn is_shared(frame: usize) -> bool {
    table()
        .and_then(|t| slot(t, frame))
        .is_some_and(|(_, w)| w != 0 && w & STATE_MASK != PRIVATE)
}

/// Frames mapped from grants now.
pub fn shared_now() -> usize {
    SHARED_NOW.load(Ordering::Acquire)
}

/// Frames made private on the server's first write to them.
pub fn unshared_on_write() -> usize {
    ON_WRITE.load(Ordering::Acquire)
}

/// Frames made private before the kernel wrote into them.
pub fn unshared_before_io() -> usize {
    BEFORE_IO.load(Ordering::Acquire)
}

/// Sleeps until the word leaves UNSHARING. Async-signal-safe: atomics and futex.
fn wait_unshared(word: &AtomicUsize) {
    // SAFETY: errno is this thread's; the interrupted code may be about to read it.
    let errno = unsafe { *libc::__errno_location() };
    loop {
        let seen = ENDS.load(Ordering::SeqCst);
        if word.load(Ordering::SeqCst) & STATE_MASK != UNSHARING {
            break;
        }
        crate::futex::wait(&ENDS, seen);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn end_unshare(word: &AtomicUsize, value: usize) {
    word.store(value, Ordering::SeqCst);
    ENDS.fetch_add(1, Ordering::SeqCst);
    crate::futex::wake_all(&ENDS);
}

/// Copies the shared frame at `frame` into fresh anonymous memory and moves that over
/// it. Returns the errno of a failed mmap/mremap (the frame stays shared). Async-
/// signal-safe: system calls and a copy.
fn copy_out(frame: usize) -> Result<(), i32> {
    // SAFETY: a new private anonymous mapping chosen by the kernel.
    let scratch = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            FRAME_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if scratch == libc::MAP_FAILED {
        // SAFETY: errno of this thread, just set by mmap.
        return Err(unsafe { *libc::__errno_location() });
    }
    // SAFETY: `frame` is a shared frame: FRAME_SIZE readable bytes that nobody can
    // write (read-only mapping); `scratch` is our own FRAME_SIZE writable bytes.
    unsafe { std::ptr::copy_nonoverlapping(frame as *const u8, scratch as *mut u8, FRAME_SIZE) };
    // SAFETY: moves our scratch mapping over the frame, replacing the grant mapping in
    // one step (the frame is never unmapped in between).
    let moved = unsafe {
        libc::mremap(
            scratch,
            FRAME_SIZE,
            FRAME_SIZE,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            frame as *mut libc::c_void,
        )
    };
    if moved == libc::MAP_FAILED {
        // SAFETY: as above.
        let errno = unsafe { *libc::__errno_location() };
        // SAFETY: our own scratch mapping, still in place.
        unsafe { libc::munmap(scratch, FRAME_SIZE) };
        return Err(errno);
    }
    Ok(())
}

/// Makes the frame at `frame` private if it is shared (or waits for the thread doing
/// so). Ok(true) when this call unshared it.
fn unshare_frame(frame: usize) -> Result<bool, i32> {
    let Some((word, _)) = table().and_then(|t| slot(t, frame)) else {
        return Ok(false);
    };
    loop {
        let w = word.load(Ordering::Acquire);
        if w == 0 {
            return Ok(false);
        }
        match w & STATE_MASK {
            PRIVATE => return Ok(false),
            UNSHARING => {
                wait_unshared(word);
                return Ok(false);
            }
            _ => {}
        }
        if word
            .compare_exchange(w, frame | UNSHARING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        return match copy_out(frame) {
            Ok(()) => {
                SHARED_NOW.fetch_sub(1, Ordering::AcqRel);
                LATE_RETRIES.store(0, Ordering::Release);
                end_unshare(word, frame | PRIVATE);
                Ok(true)
            }
            Err(errno) => {
                end_unshare(word, frame | SHARED);
                Err(errno)
            }
        };
    }
}

/// Makes every shared frame private (their source is going away); frames another
/// thread is unsharing meanwhile are waited for. How many this call copied out.
pub fn unshare_all() -> Result<usize, UnshareError> {
    let Some(t) = table() else {
        return Ok(0);
    };
    let mut copied = 0;
    for word in t {
        let w = word.load(Ordering::Acquire);
        if w == 0 || w & STATE_MASK == PRIVATE {
            continue;
        }
        let frame = w & !STATE_MASK;
        match unshare_frame(frame) {
            Ok(true) => copied += 1,
            Ok(false) => {}
            Err(errno) => {
                return Err(UnshareError::Copy {
                    addr: frame,
                    source: std::io::Error::from_raw_os_error(errno),
                })
            }
        }
    }
    Ok(copied)
}

/// Before the kernel writes into `[addr, addr + len)` (a read into the buffer pool):
/// every shared frame there becomes private first.
pub fn before_io(addr: usize, len: usize) -> Result<(), UnshareError> {
    if shared_now() == 0 || len == 0 {
        return Ok(());
    }
    let first = addr & !(FRAME_SIZE - 1);
    let end = addr.saturating_add(len);
    for frame in (first..end).step_by(FRAME_SIZE) {
        match unshare_frame(frame) {
            Ok(true) => {
                BEFORE_IO.fetch_add(1, Ordering::AcqRel);
            }
            Ok(false) => {}
            Err(errno) => {
                return Err(UnshareError::Copy {
                    addr: frame,
                    source: std::io::Error::from_raw_os_error(errno),
                })
            }
        }
    }
    Ok(())
}

/// Marks the frame at `frame` private after its grant mapping was replaced by other
/// means (the caller mapped anonymous memory over it).
pub fn mark_private(frame: usize) {
    let Some((word, w)) = table().and_then(|t| slot(t, frame)) else {
        return;
    };
    if w != 0 && w & STATE_MASK == SHARED {
        if word
            .compare_exchange(w, frame | PRIVATE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            SHARED_NOW.fetch_sub(1, Ordering::AcqRel);
        }
    } else if w & STATE_MASK == UNSHARING {
        wait_unshared(word);
    }
}

/// The server unmaps `[addr, addr + len)`: its shared frames there are gone with the
/// mapping (and their grants with them). They are forgotten without a copy, so that
/// whatever is mapped at those addresses later is never taken for a shared frame.
pub fn forget(addr: usize, len: usize) {
    if shared_now() == 0 || len == 0 {
        return;
    }
    let Some(t) = table() else { return };
    let end = addr.saturating_add(len);
    // Frames that start inside the range (the pool's frames are never split).
    let first = addr.next_multiple_of(FRAME_SIZE);
    for frame in (first..end).step_by(FRAME_SIZE) {
        if frame + FRAME_SIZE > end {
            break;
        }
        let Some((word, w)) = slot(t, frame) else {
            continue;
        };
        if w != 0
            && w & STATE_MASK == SHARED
            && word
                .compare_exchange(w, frame | PRIVATE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            SHARED_NOW.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// si_code of a SIGSEGV on a mapped page without the access right.
const SEGV_ACCERR: libc::c_int = 2;

/// From the SIGSEGV handler: whether the fault at `addr` was a write to a shared frame
/// (now private, or being made private by another thread), so the write can simply run
/// again. Async-signal-safe.
pub fn on_fault(addr: usize, code: libc::c_int) -> bool {
    if code != SEGV_ACCERR {
        return false;
    }
    let frame = addr & !(FRAME_SIZE - 1);
    let Some((_, w)) = table().and_then(|t| slot(t, frame)) else {
        return false;
    };
    if w == 0 {
        return false;
    }
    match unshare_frame(frame) {
        Ok(true) => {
            ON_WRITE.fetch_add(1, Ordering::AcqRel);
            true
        }
        // Another thread unshared it, before or while this one faulted.
        Ok(false) => LATE_RETRIES.fetch_add(1, Ordering::AcqRel) < MAX_LATE_RETRIES,
        // No memory for the copy: the write cannot proceed; the server's handler
        // reports the crash rather than the write landing on shared bytes.
        Err(_) => false,
    }
}
