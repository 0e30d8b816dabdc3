//! The FFI edge: the libc functions mariadbd calls, exported so that, with this
//! library preloaded, the dynamic linker resolves them here before glibc's. Each one
//! resolves the real function with dlsym(RTLD_NEXT), runs the agent under catch_unwind
//! (no panic may cross into the server) and a per-thread guard (the agent's own file
//! I/O must not re-enter it), and falls back to the real call on any internal failure.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::Duration;

use libc::{mode_t, off_t, size_t, ssize_t};

use crate::agent::{error_chain, Agent};
use crate::config::Config;

type OpenFn = unsafe extern "C" fn(*const c_char, c_int, mode_t) -> c_int;
type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, mode_t) -> c_int;
type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
type PreadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t) -> ssize_t;
type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;
type MmapFn = unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void;
type MunmapFn = unsafe extern "C" fn(*mut c_void, size_t) -> c_int;
type MadviseFn = unsafe extern "C" fn(*mut c_void, size_t, c_int) -> c_int;
type SignalFn = unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
type IoSetupFn = unsafe extern "C" fn(c_int, *mut c_void) -> c_int;
type UringInitFn = unsafe extern "C" fn(u32, *mut c_void, u32) -> c_int;

struct Real {
    open: OpenFn,
    open64: OpenFn,
    openat: OpenatFn,
    openat64: OpenatFn,
    close: CloseFn,
    pread: PreadFn,
    pread64: PreadFn,
    pwrite: PwriteFn,
    pwrite64: PwriteFn,
    mmap: MmapFn,
    mmap64: MmapFn,
    munmap: MunmapFn,
    madvise: MadviseFn,
    sigaction: crate::fault::RealSigaction,
    signal: SignalFn,
    io_setup: Option<IoSetupFn>,
    io_uring_queue_init: Option<UringInitFn>,
}

fn sym(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name has no other precondition.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) }
}

macro_rules! required {
    ($name:literal, $ty:ty) => {{
        let p = sym($name);
        if p.is_null() {
            // glibc always has these; without them nothing can be forwarded.
            std::process::abort();
        }
        // SAFETY: the symbol is glibc's function of this exact C signature.
        unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
    }};
}

macro_rules! optional {
    ($name:literal, $ty:ty) => {{
        let p = sym($name);
        // SAFETY: as above; absent when the server does not link the library.
        (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, $ty>(p) })
    }};
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| Real {
        open: required!(c"open", OpenFn),
        open64: required!(c"open64", OpenFn),
        openat: required!(c"openat", OpenatFn),
        openat64: required!(c"openat64", OpenatFn),
        close: required!(c"close", CloseFn),
        pread: required!(c"pread", PreadFn),
        pread64: required!(c"pread64", PreadFn),
        pwrite: required!(c"pwrite", PwriteFn),
        pwrite64: required!(c"pwrite64", PwriteFn),
        mmap: required!(c"mmap", MmapFn),
        mmap64: required!(c"mmap64", MmapFn),
        munmap: required!(c"munmap", MunmapFn),
        madvise: required!(c"madvise", MadviseFn),
        sigaction: required!(c"sigaction", crate::fault::RealSigaction),
        signal: required!(c"signal", SignalFn),
        io_setup: optional!(c"io_setup", IoSetupFn),
        io_uring_queue_init: optional!(c"io_uring_queue_init", UringInitFn),
    })
}

thread_local! {
    static IN_AGENT: Cell<bool> = const { Cell::new(false) };
}

static AGENT: OnceLock<Agent> = OnceLock::new();

fn init() -> Agent {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DBFORK_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let (config, bad) = match Config::from_lookup(|k| std::env::var(k).ok()) {
        Ok(c) => (c, None),
        Err(e) => {
            let mut c = Config::from_lookup(|_| None).expect("empty config is valid");
            c.stats_path = std::env::var("DBFORK_AGENT_STATS").ok().map(Into::into);
            (c, Some(format!("bad configuration: {}", error_chain(&e))))
        }
    };
    let agent = Agent::new(config);
    if let Some(why) = bad {
        agent.disable_sharing(&why);
    }
    if agent.config.role == crate::config::Role::Source && agent.sharing_on() {
        // The source moves frames onto the store; a write to one being moved waits in
        // this handler (the server's own SIGSEGV handler stays behind it).
        // SAFETY: real().sigaction is libc's.
        match unsafe { crate::fault::install(real().sigaction) } {
            Ok(()) => agent.enable_frame_moves(),
            Err(e) => tracing::warn!("dbfork agent: no fault handler, frames are not moved: {e}"),
        }
    } else if agent.needs_fault_handler() {
        // A replica's frames mapped from grants are read-only: its first write to one
        // makes it private in this handler. Without it nothing may be shared.
        // SAFETY: real().sigaction is libc's.
        if let Err(e) = unsafe { crate::fault::install(real().sigaction) } {
            agent.disable_sharing(&format!("no fault handler for shared frames: {e}"));
        }
    }
    if agent.config.stats_path.is_some() || agent.config.role != crate::config::Role::Off {
        // The server routes signals to one sigwait thread and blocks them everywhere
        // else; our thread must not be a place a process signal can land, so it is
        // created with every signal blocked (threads inherit the creator's mask).
        // SAFETY: plain sigset manipulation on local values and this thread's mask.
        let old = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            old
        };
        let spawned = std::thread::Builder::new()
            .name("dbfork-agent".into())
            .spawn(|| {
                IN_AGENT.with(|g| g.set(true));
                loop {
                    // A periodic dump, not synchronisation.
                    std::thread::sleep(Duration::from_millis(200));
                    if let Some(a) = AGENT.get() {
                        a.tick();
                        a.write_stats();
                    }
                }
            });
        // SAFETY: restoring the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        if let Err(e) = spawned {
            tracing::warn!("dbfork agent: no stats thread: {e}");
        }
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe { libc::atexit(write_stats_at_exit) };
    }
    agent
}

extern "C" fn write_stats_at_exit() {
    let _ = catch_unwind(|| {
        IN_AGENT.with(|g| g.set(true));
        if let Some(a) = AGENT.get() {
            a.write_stats();
        }
    });
}

/// Runs `f` with the agent unless this thread is already inside the agent. None means
/// "do the plain real call".
fn with_agent<R>(f: impl FnOnce(&Agent) -> R) -> Option<R> {
    if IN_AGENT.with(|g| g.replace(true)) {
        return None;
    }
    let r = catch_unwind(AssertUnwindSafe(|| f(AGENT.get_or_init(init))));
    IN_AGENT.with(|g| g.set(false));
    r.ok()
}

fn after_open(fd: c_int, path: *const c_char) {
    if fd < 0 || path.is_null() {
        return;
    }
    with_agent(|a| {
        // SAFETY: the server passed a NUL-terminated path that open just accepted.
        let p = unsafe { CStr::from_ptr(path) }.to_bytes();
        a.on_open(fd, p, |buf, off| {
            // SAFETY: buf is a live, writable slice of buf.len() bytes.
            unsafe { (real().pread64)(fd, buf.as_mut_ptr().cast(), buf.len(), off) }
        });
    });
}

macro_rules! open_hook {
    ($name:ident) => {
        /// # Safety
        /// Called by C code with open(2)'s contract. The variadic mode argument is read
        /// as a fixed third argument: on x86_64 and aarch64 Linux it travels in the
        /// same register either way, and is ignored unless O_CREAT/O_TMPFILE is set.
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
            // SAFETY: forwarding the caller's arguments unchanged.
            let fd = unsafe { (real().$name)(path, flags, mode) };
            after_open(fd, path);
            fd
        }
    };
}

macro_rules! openat_hook {
    ($name:ident) => {
        /// # Safety
        /// As for `open`, with openat(2)'s contract.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dirfd: c_int,
            path: *const c_char,
            flags: c_int,
            mode: mode_t,
        ) -> c_int {
            // SAFETY: forwarding the caller's arguments unchanged.
            let fd = unsafe { (real().$name)(dirfd, path, flags, mode) };
            after_open(fd, path);
            fd
        }
    };
}

open_hook!(open);
open_hook!(open64);
openat_hook!(openat);
openat_hook!(openat64);

/// # Safety
/// close(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    // Forget the fd first: once closed, the number can be reused by another thread.
    with_agent(|a| a.on_close(fd));
    // SAFETY: forwarding.
    unsafe { (real().close)(fd) }
}

macro_rules! pread_hook {
    ($name:ident) => {
        /// # Safety
        /// pread(2)'s contract: `buf` is writable for `count` bytes.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            buf: *mut c_void,
            count: size_t,
            off: off_t,
        ) -> ssize_t {
            let done = Cell::new(None);
            let r = with_agent(|a| {
                let real_call = || {
                    // SAFETY: forwarding the caller's arguments unchanged.
                    let n = unsafe { (real().$name)(fd, buf, count, off) };
                    done.set(Some((n, std::io::Error::last_os_error().raw_os_error())));
                    n
                };
                // SAFETY: the caller's buffer contract is forwarded.
                unsafe { a.on_pread(fd, buf.cast(), count, off, real_call) }
            });
            match (r, done.get()) {
                (Some(n), _) => n,
                // The agent failed after the real read: return that read's result.
                (None, Some((n, errno))) => {
                    if let Some(e) = errno {
                        // SAFETY: errno is thread-local; restoring the real call's value.
                        unsafe { *libc::__errno_location() = e };
                    }
                    n
                }
                // SAFETY: forwarding.
                (None, None) => unsafe { (real().$name)(fd, buf, count, off) },
            }
        }
    };
}

pread_hook!(pread);
pread_hook!(pread64);

macro_rules! pwrite_hook {
    ($name:ident) => {
        /// # Safety
        /// pwrite(2)'s contract.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            buf: *const c_void,
            count: size_t,
            off: off_t,
        ) -> ssize_t {
            with_agent(|a| {
                let head = if buf.is_null() {
                    &[][..]
                } else {
                    // SAFETY: the caller's buffer holds `count` readable bytes; we read
                    // at most the first page of it, before the write is issued.
                    unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), count.min(1 << 16)) }
                };
                a.on_pwrite(fd, count, off, head)
            });
            // SAFETY: forwarding.
            unsafe { (real().$name)(fd, buf, count, off) }
        }
    };
}

pwrite_hook!(pwrite);
pwrite_hook!(pwrite64);

/// libaio's io_setup: native AIO bypasses the agent, so sharing must go off.
///
/// # Safety
/// libaio's contract.
#[no_mangle]
pub unsafe extern "C" fn io_setup(nr: c_int, ctx: *mut c_void) -> c_int {
    with_agent(|a| a.on_native_aio("libaio"));
    match real().io_setup {
        // SAFETY: forwarding.
        Some(f) => unsafe { f(nr, ctx) },
        None => -libc::ENOSYS,
    }
}

/// liburing's io_uring_queue_init: as for `io_setup`.
///
/// # Safety
/// liburing's contract.
#[no_mangle]
pub unsafe extern "C" fn io_uring_queue_init(entries: u32, ring: *mut c_void, flags: u32) -> c_int {
    with_agent(|a| a.on_native_aio("io_uring"));
    match real().io_uring_queue_init {
        // SAFETY: forwarding.
        Some(f) => unsafe { f(entries, ring, flags) },
        None => -libc::ENOSYS,
    }
}

macro_rules! mmap_hook {
    ($name:ident) => {
        /// # Safety
        /// mmap(2)'s contract.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            addr: *mut c_void,
            len: size_t,
            prot: c_int,
            flags: c_int,
            fd: c_int,
            off: off_t,
        ) -> *mut c_void {
            // SAFETY: forwarding the caller's arguments unchanged.
            let p = unsafe { (real().$name)(addr, len, prot, flags, fd, off) };
            if p != libc::MAP_FAILED {
                with_agent(|a| a.on_mmap(p as usize, len, prot, flags, fd));
            }
            p
        }
    };
}

mmap_hook!(mmap);
mmap_hook!(mmap64);

/// # Safety
/// munmap(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    let done = Cell::new(None);
    let r = with_agent(|a| {
        // Forgotten under the regions' write lock: no scan runs meanwhile, so none can
        // record a move into the range between the forgetting and the munmap.
        let in_pool = a.regions.overlaps(addr as usize, len);
        a.regions.on_munmap(addr as usize, len, || {
            a.on_unmap(addr as usize, len, in_pool);
            // SAFETY: forwarding.
            let r = unsafe { (real().munmap)(addr, len) };
            done.set(Some(r));
            r
        })
    });
    match (r, done.get()) {
        (Some(r), _) | (None, Some(r)) => r,
        // SAFETY: forwarding.
        (None, None) => unsafe { (real().munmap)(addr, len) },
    }
}

/// # Safety
/// madvise(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    // Advice that may drop pages: a private copy dropped would read as the stored
    // page again, so the agent forgets those frames first.
    if matches!(
        advice,
        libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE
    ) {
        let done = Cell::new(None);
        with_agent(|a| {
            a.dropping(addr as usize, len, || {
                // SAFETY: forwarding the caller's arguments unchanged.
                done.set(Some(unsafe { (real().madvise)(addr, len, advice) }));
            })
        });
        if let Some(r) = done.get() {
            return r;
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { (real().madvise)(addr, len, advice) }
}

/// # Safety
/// sigaction(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    if sig != libc::SIGSEGV || !crate::fault::installed() {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { (real().sigaction)(sig, act, old) };
    }
    // The agent's handler stays installed; what the server asks for runs behind it,
    // for every fault that is not a held write, and is what the server is told it set.
    if !old.is_null() {
        let (h, flags) = crate::fault::next();
        // SAFETY: the caller's out parameter, a valid sigaction to fill.
        unsafe {
            std::ptr::write_bytes(old, 0, 1);
            (*old).sa_sigaction = h;
            (*old).sa_flags = flags;
        }
    }
    if !act.is_null() {
        // SAFETY: the caller's sigaction, valid for reading.
        let (h, flags) = unsafe { ((*act).sa_sigaction, (*act).sa_flags) };
        crate::fault::set_next(h, flags);
    }
    0
}

/// # Safety
/// signal(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if sig != libc::SIGSEGV || !crate::fault::installed() {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { (real().signal)(sig, handler) };
    }
    let (before, _) = crate::fault::next();
    crate::fault::set_next(handler, 0);
    before
}
