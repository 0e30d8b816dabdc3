//! The Xen substrate: domains are PV domUs, dbfork runs in dom0 (docs/xen.md).
//! `backend` is the `Substrate`; `domain` what it remembers of a domU and hands it;
//! `control` the Xen mechanisms it drives (xl, xenstore, the channel relay) behind a
//! trait; `guest` the database of a domU reached through its guest side;
//! `toolstack` the `xl` command and deaths seen through xenstore; `budget` what page
//! sharing may use of the hypervisor's grant tables; `family` what dom0 keeps of a
//! family's sharing (its source's channel, clone LSN, running replicas).

pub mod backend;
pub mod budget;
pub mod control;
pub mod domain;
pub mod family;
pub mod guest;
#[cfg(feature = "xen")]
pub mod toolstack;

pub use backend::Xen;
pub use domain::XenDomain;
