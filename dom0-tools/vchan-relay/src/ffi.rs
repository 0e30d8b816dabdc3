//! The part of libxenvchan's C API (libxenvchan.h, Xen 4.17; stable since 4.2) the
//! relay calls. `struct libxenvchan` is only ever handled through its pointer.

use libc::{c_char, c_int, c_void, size_t};

#[repr(C)]
pub struct Libxenvchan {
    _opaque: [u8; 0],
}

extern "C" {
    pub fn libxenvchan_server_init(
        logger: *mut c_void,
        domain: c_int,
        xs_path: *const c_char,
        read_min: size_t,
        write_min: size_t,
    ) -> *mut Libxenvchan;
    pub fn libxenvchan_client_init(
        logger: *mut c_void,
        domain: c_int,
        xs_path: *const c_char,
    ) -> *mut Libxenvchan;
    pub fn libxenvchan_close(ctrl: *mut Libxenvchan);
    pub fn libxenvchan_read(ctrl: *mut Libxenvchan, data: *mut c_void, size: size_t) -> c_int;
    pub fn libxenvchan_write(ctrl: *mut Libxenvchan, data: *const c_void, size: size_t) -> c_int;
    pub fn libxenvchan_wait(ctrl: *mut Libxenvchan) -> c_int;
    pub fn libxenvchan_fd_for_select(ctrl: *mut Libxenvchan) -> c_int;
    pub fn libxenvchan_is_open(ctrl: *mut Libxenvchan) -> c_int;
    pub fn libxenvchan_data_ready(ctrl: *mut Libxenvchan) -> c_int;
    pub fn libxenvchan_buffer_space(ctrl: *mut Libxenvchan) -> c_int;
}
