//! The volume plane: verbs on a volume that go through its export process's control
//! socket when one runs (the process holds the volume's lock), and open the volume
//! directly otherwise. The same for every substrate: dom0 serves every volume.

use crate::control::{self, Request};
use crate::error::{Error, Result};
use lazyvol::{Store, VolumeStatus};
use std::time::{Duration, Instant};
use substrate::{Quiesced, RunDir};

/// How long full hydration of a clone may go without any progress before it is given
/// up (a dead or stuck export process, a broken snapshot).
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// True when an export process answers for this volume.
pub fn exported(run: &RunDir, name: &str) -> bool {
    std::os::unix::net::UnixStream::connect(run.control_socket(name)).is_ok()
}

/// Snapshots a volume, through its export process when it has one. `_held` is the
/// proof that whoever writes the volume has everything acknowledged on it and waits
/// (a frozen filesystem). Returns the milliseconds the snapshot took.
pub fn snapshot(
    store: &Store,
    run: &RunDir,
    volume: &str,
    snapshot: &str,
    _held: &Quiesced,
) -> Result<u128> {
    let start = Instant::now();
    if exported(run, volume) {
        control::call(
            &run.control_socket(volume),
            &Request::Snapshot {
                snapshot: snapshot.to_string(),
            },
        )?;
    } else {
        store.snapshot(volume, snapshot)?;
    }
    Ok(start.elapsed().as_millis())
}

/// Moves byte ranges of an exported clone to the front of its hydration queue.
pub fn queue_first(run: &RunDir, name: &str, ranges: &[(u64, u64)]) -> Result<()> {
    control::call(
        &run.control_socket(name),
        &Request::Prefetch {
            ranges: ranges.to_vec(),
        },
    )
    .map(drop)
}

/// Prefetches ranges of a clone: queued first when it is exported, hydrated now when
/// it is not open anywhere (that is what prefetching them means then).
pub fn prefetch(
    store: &Store,
    run: &RunDir,
    name: &str,
    ranges: &[(u64, u64)],
) -> Result<&'static str> {
    if exported(run, name) {
        queue_first(run, name, ranges)?;
        return Ok("queued first for hydration");
    }
    let vol = store.open_volume_with(
        name,
        lazyvol::OpenOptions {
            background: Some(false),
        },
    )?;
    let size = vol.size();
    let mut buf = vec![0u8; 1 << 20];
    for &(offset, length) in ranges {
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(Error::RangeOutside {
                volume: name.to_string(),
                offset,
                length,
                size,
            });
        }
        let mut pos = offset;
        while pos < offset + length {
            let n = (offset + length - pos).min(buf.len() as u64) as usize;
            vol.read_at(&mut buf[..n], pos)
                .map_err(|source| Error::Io {
                    what: "hydrating a range of",
                    path: name.into(),
                    source,
                })?;
            pos += n as u64;
        }
    }
    vol.flush().map_err(|source| Error::Flush {
        volume: name.to_string(),
        source,
    })?;
    Ok("hydrated")
}

/// Live status from the export process when one serves the volume, else from disk.
pub fn status(store: &Store, run: &RunDir, name: &str) -> Result<VolumeStatus> {
    if exported(run, name) {
        if let Ok(Some(v)) = control::call(&run.control_socket(name), &Request::Status) {
            return serde_json::from_value(v).map_err(Error::BadReply);
        }
    }
    Ok(store.status(name)?)
}

/// Hydrates a clone completely and returns once it is independent of its snapshot:
/// through its export process while one serves it (it holds the volume), directly
/// when none does (also when the export goes away mid-way). `progress` gets (bytes
/// hydrated, size).
pub fn hydrate(
    store: &Store,
    run: &RunDir,
    clone: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let st = status(store, run, clone)?;
    if st.independent {
        progress(st.size, st.size);
        return Ok(());
    }
    let mut requested = false;
    let mut last = (0, Instant::now());
    loop {
        if !exported(run, clone) {
            store.hydrate_fully(clone, &mut *progress)?;
            return Ok(());
        }
        if !requested {
            control::call(&run.control_socket(clone), &Request::HydrateAll)?;
            requested = true;
        }
        let st = status(store, run, clone)?;
        progress(st.hydrated_bytes, st.size);
        if st.independent {
            return Ok(());
        }
        if st.hydrated_bytes > last.0 {
            last = (st.hydrated_bytes, Instant::now());
        } else if last.1.elapsed() > STALL_TIMEOUT {
            return Err(Error::HydrationStalled {
                volume: clone.to_string(),
                secs: STALL_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deletes a volume or snapshot that no export process serves. A snapshot with clones
/// is refused unless `wait`, which hydrates each clone first (`on_clone` is told
/// which, with its progress).
pub fn delete(
    store: &Store,
    run: &RunDir,
    name: &str,
    wait: bool,
    on_clone: &mut dyn FnMut(&str, u64, u64),
) -> Result<()> {
    if exported(run, name) {
        return Err(Error::VolumeInUse(name.to_string()));
    }
    match store.delete(name) {
        Err(lazyvol::Error::SnapshotInUse { clones, .. }) if wait => {
            for clone in &clones {
                hydrate(store, run, clone, &mut |d, t| on_clone(clone, d, t))?;
            }
            Ok(store.delete(name)?)
        }
        other => Ok(other?),
    }
}
