//! Sleeping until a word changes, and waking the sleepers: the two futex calls the
//! SIGSEGV handler's waits use (`fault`, `unshare`). Async-signal-safe: one system
//! call each, on a word of this process.

use std::sync::atomic::AtomicU32;

/// Sleeps while `word` still holds `seen`: returns at once if it changed already, on a
/// wake, or on a signal (the caller checks its condition again).
pub(crate) fn wait(word: &AtomicU32, seen: u32) {
    // SAFETY: FUTEX_WAIT on a live word of this process with no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

/// Wakes every thread sleeping on `word`.
pub(crate) fn wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live word of this process.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}
