//! Quiescing a mounted filesystem for a snapshot: fsfreeze flushes everything the
//! filesystem acknowledged through the loop device and the FUSE file to the volume's
//! export, and holds new writes until the thaw.

use super::tools;
use crate::error::Result;
use crate::Quiesced;
use std::path::Path;

/// Freezes the filesystem at `mountpoint`; the returned guard thaws it when dropped.
pub fn freeze(mountpoint: &Path) -> Result<Quiesced> {
    let mp = mountpoint.display().to_string();
    tools::run("fsfreeze", &["-f", &mp])?;
    Ok(Quiesced::new(move || {
        if let Err(e) = tools::run("fsfreeze", &["-u", &mp]) {
            tracing::error!(error = %e, mountpoint = %mp, "could not thaw; run fsfreeze -u");
        }
    }))
}
