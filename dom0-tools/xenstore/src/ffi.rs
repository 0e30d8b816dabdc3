//! The part of libxenstore's C API (xenstore.h, Xen 4.17; stable since 4.2) this crate
//! calls. Memory the library returns is the caller's, freed with free(3).

use libc::{c_char, c_int, c_uint, c_ulong, c_void};

#[repr(C)]
pub struct XsHandle {
    _opaque: [u8; 0],
}

pub type XsTransaction = u32;
pub const XBT_NULL: XsTransaction = 0;

/// `struct xs_permissions`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct XsPermissions {
    pub id: c_uint,
    pub perms: c_uint,
}

pub const XS_PERM_NONE: c_uint = 0;
pub const XS_PERM_READ: c_uint = 1;
pub const XS_PERM_WRITE: c_uint = 2;

/// Indexes into a watch event (`enum xs_watch_type`).
pub const XS_WATCH_PATH: usize = 0;
pub const XS_WATCH_TOKEN: usize = 1;

extern "C" {
    pub fn xs_open(flags: c_ulong) -> *mut XsHandle;
    pub fn xs_close(h: *mut XsHandle);
    pub fn xs_read(
        h: *mut XsHandle,
        t: XsTransaction,
        path: *const c_char,
        len: *mut c_uint,
    ) -> *mut c_void;
    pub fn xs_write(
        h: *mut XsHandle,
        t: XsTransaction,
        path: *const c_char,
        data: *const c_void,
        len: c_uint,
    ) -> bool;
    pub fn xs_mkdir(h: *mut XsHandle, t: XsTransaction, path: *const c_char) -> bool;
    pub fn xs_rm(h: *mut XsHandle, t: XsTransaction, path: *const c_char) -> bool;
    pub fn xs_directory(
        h: *mut XsHandle,
        t: XsTransaction,
        path: *const c_char,
        num: *mut c_uint,
    ) -> *mut *mut c_char;
    pub fn xs_get_permissions(
        h: *mut XsHandle,
        t: XsTransaction,
        path: *const c_char,
        num: *mut c_uint,
    ) -> *mut XsPermissions;
    pub fn xs_set_permissions(
        h: *mut XsHandle,
        t: XsTransaction,
        path: *const c_char,
        perms: *mut XsPermissions,
        num: c_uint,
    ) -> bool;
    pub fn xs_watch(h: *mut XsHandle, path: *const c_char, token: *const c_char) -> bool;
    pub fn xs_unwatch(h: *mut XsHandle, path: *const c_char, token: *const c_char) -> bool;
    pub fn xs_fileno(h: *mut XsHandle) -> c_int;
    pub fn xs_check_watch(h: *mut XsHandle) -> *mut *mut c_char;
    pub fn xs_transaction_start(h: *mut XsHandle) -> XsTransaction;
    pub fn xs_transaction_end(h: *mut XsHandle, t: XsTransaction, abort: bool) -> bool;
}
