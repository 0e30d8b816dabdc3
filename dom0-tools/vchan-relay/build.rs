//! Links libxenvchan (Debian: libxen-dev). Dynamic linking keeps the LGPL library
//! replaceable, as its licence asks of a program under another licence.
fn main() {
    println!("cargo:rustc-link-lib=dylib=xenvchan");
    println!("cargo:rerun-if-changed=build.rs");
}
