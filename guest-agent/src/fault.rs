//! Moving a live buffer-pool frame onto the family's store without losing a write.
//!
//! The source copies a clean frame it holds privately into the store, then replaces its
//! own memory with a mapping of the stored frame (one copy in memory, shared with every
//! replica, instead of two). Between the copy and the new mapping the server must not
//! change the frame, and a change it makes must not be lost: the frame is made
//! read-only first, its bytes compared with the stored ones, and only then remapped.
//! A server thread writing to it meanwhile takes a fault; this module's SIGSEGV handler
//! recognises the frame being moved and holds the thread until the move is done, then
//! lets it retry the write, which lands on the new mapping (copy-on-write of the same
//! bytes). Any other fault goes to the server's own handler, which the preload keeps
//! behind this one (`hooks.rs` interposes `sigaction` and `signal` for SIGSEGV).
//!
//! A kernel write into the frame (a pread by the server) would fail with EFAULT rather
//! than fault: reads into buffer-pool memory are announced (`begin_read`), a frame
//! with a read in flight is not moved, and a read waits for a move of its buffer.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};

use crate::frame_store::FRAME_SIZE;

/// The frames being moved, as `span(start, frames)`, 0 when none. One run at a time:
/// the background thread moves consecutive frames together (one mprotect and one
/// mapping per run instead of per frame: each takes the server's mmap lock and
/// interrupts its threads on other CPUs to flush their TLBs).
static MOVING: AtomicUsize = AtomicUsize::new(0);

/// Bumped when a move ends: threads waiting for one (held writers, reads into the
/// frames) sleep on it with a futex instead of spinning, since the mover runs at the
/// lowest priority and a spinning server thread would keep it off the CPU.
static MOVE_ENDS: AtomicU32 = AtomicU32::new(0);
/// Threads sleeping on `MOVE_ENDS`: the mover wakes them only if there are any.
static SLEEPERS: AtomicU32 = AtomicU32::new(0);

/// Sleeps until the move `m` (a packed run) is over. Async-signal-safe: atomics and the
/// futex system call.
fn wait_for_move_end(m: usize) {
    // The futex call sets errno (EAGAIN, EINTR); the interrupted code may be about to
    // read its own.
    // SAFETY: errno is this thread's; reading and restoring it is async-signal-safe.
    let errno = unsafe { *libc::__errno_location() };
    loop {
        let seen = MOVE_ENDS.load(Ordering::SeqCst);
        if MOVING.load(Ordering::SeqCst) != m {
            // SAFETY: as above.
            unsafe { *libc::__errno_location() = errno };
            return;
        }
        SLEEPERS.fetch_add(1, Ordering::SeqCst);
        // Returns at once if the move ended meanwhile (the word is no longer `seen`).
        crate::futex::wait(&MOVE_ENDS, seen);
        SLEEPERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The most frames one move covers (a span keeps the count in the low bits of a
/// frame-aligned address).
pub const MAX_RUN: usize = FRAME_SIZE;

/// Packs a run of `frames` frames from the frame-aligned `start` into one word, so the
/// signal handler reads a run in one atomic load.
fn span(start: usize, frames: usize) -> usize {
    debug_assert!(start % FRAME_SIZE == 0 && (1..=MAX_RUN).contains(&frames));
    start | (frames - 1)
}

/// `[start, end)` of a packed run.
fn unspan(s: usize) -> (usize, usize) {
    let start = s & !(FRAME_SIZE - 1);
    (start, start + ((s & (FRAME_SIZE - 1)) + 1) * FRAME_SIZE)
}

/// The runs moved last, newest at `LAST_MOVED_AT % RECENT`: a write that faulted on
/// one while it was read-only may reach the handler only after the move ended (the
/// thread was preempted in between); it is retried, not passed on. Sized for a thread
/// preempted across thousands of moves (about 0.3 s of them on this machine); a fault
/// later still reaches the server's handler.
const RECENT: usize = 4096;
static LAST_MOVED: [AtomicUsize; RECENT] = [const { AtomicUsize::new(0) }; RECENT];
static LAST_MOVED_AT: AtomicUsize = AtomicUsize::new(0);

/// Late retries since the last move: a bound, so that a fault that is not a move's
/// (which would repeat forever) still reaches the server's handler.
static LATE_RETRIES: AtomicUsize = AtomicUsize::new(0);
const MAX_LATE_RETRIES: usize = 10_000;

/// Writes held by the handler (while a move ran, or retried after it): for tests and
/// the stats.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many writes to a frame being moved the handler held so far.
pub fn held_writes() -> usize {
    HELD.load(Ordering::Acquire)
}

/// si_code of a SIGSEGV on a mapped page without the access right (asm-generic/siginfo.h).
const SEGV_ACCERR: libc::c_int = 2;

/// The SIGSEGV action behind ours: the server's handler (as an address) and its flags.
static NEXT_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static NEXT_FLAGS: AtomicI32 = AtomicI32::new(0);

/// libc's `sigaction` (the preload's is interposed), once the handler is installed.
static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);

/// Whether the handler is installed (then SIGSEGV actions the server asks for are kept
/// as the next one instead of replacing it).
pub fn installed() -> bool {
    REAL_SIGACTION.load(Ordering::Acquire) != 0
}

/// Reads in flight into buffer-pool memory, as `[start, end)`: a frame overlapping one
/// is not moved (the kernel would fail the read on a read-only frame rather than
/// fault), and a read waits for a move of its buffer to end before it is issued. The
/// lock is never taken in the signal handler.
static READS: parking_lot::Mutex<Vec<(usize, usize)>> = parking_lot::const_mutex(Vec::new());

/// A run of frames marked as moving; unmarked when dropped, which releases held
/// writers.
pub struct Moving(usize);

impl Moving {
    /// Marks the `frames` frames from `start` (frame-aligned) as moving, unless a read
    /// into one of them is in flight.
    pub fn try_begin(start: usize, frames: usize) -> Option<Moving> {
        if start % FRAME_SIZE != 0 || !(1..=MAX_RUN).contains(&frames) {
            return None;
        }
        let end = start + frames * FRAME_SIZE;
        let reads = READS.lock();
        if reads.iter().any(|&(s, e)| s < end && e > start) {
            return None;
        }
        // One mover at a time: a second would release the first one's held writers.
        let s = span(start, frames);
        MOVING
            .compare_exchange(0, s, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(Moving(s))
    }
}

impl Drop for Moving {
    fn drop(&mut self) {
        let at = LAST_MOVED_AT.fetch_add(1, Ordering::AcqRel) + 1;
        LAST_MOVED[at % RECENT].store(self.0, Ordering::Release);
        LATE_RETRIES.store(0, Ordering::Release);
        let _ = MOVING.compare_exchange(self.0, 0, Ordering::SeqCst, Ordering::SeqCst);
        MOVE_ENDS.fetch_add(1, Ordering::SeqCst);
        if SLEEPERS.load(Ordering::SeqCst) > 0 {
            crate::futex::wake_all(&MOVE_ENDS);
        }
    }
}

/// Whether `addr` lies in a run moved lately (see `LAST_MOVED`).
fn moved_lately(addr: usize) -> bool {
    LAST_MOVED.iter().any(|m| {
        let m = m.load(Ordering::Acquire);
        let (start, end) = unspan(m);
        m != 0 && addr >= start && addr < end
    })
}

/// The packed run being moved, if it overlaps `[addr, addr + len)`.
fn moving_covers(addr: usize, len: usize) -> Option<usize> {
    let m = MOVING.load(Ordering::Acquire);
    let (start, end) = unspan(m);
    (m != 0 && addr < end && addr.saturating_add(len) > start).then_some(m)
}

/// A read (or a madvise) into `[addr, addr + len)` in flight; the range cannot start
/// moving until it is dropped.
pub struct Reading(Option<(usize, usize)>);

impl Drop for Reading {
    fn drop(&mut self) {
        if let Some(r) = self.0 {
            let mut reads = READS.lock();
            if let Some(i) = reads.iter().position(|&x| x == r) {
                reads.swap_remove(i);
            }
        }
    }
}

/// Before the kernel writes into (or drops) `[addr, addr + len)` of buffer-pool memory:
/// waits while a frame there is being moved, then keeps the range from moving until
/// the returned value is dropped. Free when no handler is installed (nothing moves).
pub fn begin_read(addr: usize, len: usize) -> Reading {
    if !installed() {
        return Reading(None);
    }
    let end = addr.saturating_add(len);
    loop {
        {
            let mut reads = READS.lock();
            if moving_covers(addr, len).is_none() {
                reads.push((addr, end));
                return Reading(Some((addr, end)));
            }
        }
        if let Some(m) = moving_covers(addr, len) {
            wait_for_move_end(m);
        }
    }
}

/// Records the action the server asked for SIGSEGV, to run for faults that are not a
/// held write.
pub fn set_next(handler: usize, flags: i32) {
    NEXT_FLAGS.store(flags, Ordering::Release);
    NEXT_HANDLER.store(handler, Ordering::Release);
}

/// The action recorded last (what `sigaction` reports to the server as installed).
pub fn next() -> (usize, i32) {
    (
        NEXT_HANDLER.load(Ordering::Acquire),
        NEXT_FLAGS.load(Ordering::Acquire),
    )
}

/// How the handler is installed: the real `sigaction` (the preload's own is
/// interposed, so it is passed in), given our action, returning the previous one.
pub type RealSigaction =
    unsafe extern "C" fn(libc::c_int, *const libc::sigaction, *mut libc::sigaction) -> libc::c_int;

/// Installs the handler; the action in place before becomes the next one.
///
/// # Safety
/// `real` must be libc's `sigaction`.
pub unsafe fn install(real: RealSigaction) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value; fields set below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_segv as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
    // SAFETY: sigemptyset on our own value.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live values; `real` is libc's sigaction.
    if unsafe { real(libc::SIGSEGV, &act, &mut old) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if old.sa_sigaction != on_segv as *const () as usize {
        set_next(old.sa_sigaction, old.sa_flags);
    }
    REAL_SIGACTION.store(real as usize, Ordering::Release);
    Ok(())
}

/// Unit tests: installs the handler once per test process (no preload there, so
/// `libc::sigaction` is libc's).
#[cfg(test)]
pub(crate) fn install_for_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: libc::sigaction is libc's sigaction (no preload in unit tests).
    ONCE.call_once(|| unsafe { install(libc::sigaction) }.unwrap());
}

/// The SIGSEGV handler: unshares a frame mapped from grants on its first write
/// (`crate::unshare`), holds a write to the frame being moved, passes anything else
/// on. Async-signal-safe: it reads atomics, sleeps on a futex, and calls the next
/// handler.
extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    // SAFETY: as above.
    let code = unsafe { (*info).si_code };
    // A replica's first write to a frame mapped from another domain's grants.
    if crate::unshare::on_fault(addr, code) {
        return;
    }
    if let Some(m) = moving_covers(addr, 1) {
        HELD.fetch_add(1, Ordering::AcqRel);
        wait_for_move_end(m);
        return; // the faulting write runs again, on the new mapping
    }
    if code == SEGV_ACCERR
        && moved_lately(addr)
        && LATE_RETRIES.fetch_add(1, Ordering::AcqRel) < MAX_LATE_RETRIES
    {
        HELD.fetch_add(1, Ordering::AcqRel);
        return; // the move ended before this handler ran: retry on the new mapping
    }
    let (next, flags) = next();
    if flags & libc::SA_RESETHAND != 0 {
        // The server asked for a one-shot handler: the next fault gets the default.
        set_next(libc::SIG_DFL, 0);
    }
    match next {
        libc::SIG_DFL | libc::SIG_IGN => {
            // The fault is real: the default action (core dump) when the faulting
            // instruction runs again, or now for a signal sent by kill/raise, which
            // does not repeat.
            let real = REAL_SIGACTION.load(Ordering::Acquire);
            // SAFETY: a zeroed sigaction is SIG_DFL with no flags.
            let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            if real != 0 {
                // SAFETY: `real` is libc's sigaction (stored by `install`); resetting a
                // disposition is async-signal-safe.
                let f: RealSigaction = unsafe { std::mem::transmute(real) };
                // SAFETY: as above; a null old action is allowed.
                unsafe { f(libc::SIGSEGV, &dfl, std::ptr::null_mut()) };
            }
            if code <= 0 {
                // SAFETY: raise is async-signal-safe.
                unsafe { libc::raise(sig) };
            }
        }
        h if flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: the server installed this as an SA_SIGINFO handler.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(h) };
            f(sig, info, ctx);
        }
        h => {
            // SAFETY: the server installed this as a plain handler.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
            f(sig);
        }
    }
}
