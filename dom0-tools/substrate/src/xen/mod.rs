//! The Xen substrate, built piece by piece (issue 14; docs/xen.md says what is done).
//! Here so far: `guest`, the database of a domU reached through its guest side;
//! `toolstack`, domains created and destroyed with `xl` and their deaths seen through
//! xenstore.

pub mod guest;
#[cfg(feature = "xen")]
pub mod toolstack;
