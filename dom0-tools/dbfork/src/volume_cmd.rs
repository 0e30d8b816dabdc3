//! `dbfork volume ...`: the control plane of volumes. A verb that needs an open volume
//! goes through its export process's control socket when one runs (the process holds
//! the volume's lock), and opens the volume itself otherwise.

use crate::attach::{self, AttachRequest};
use crate::cli::VolumeCommand;
use crate::control::{self, Request};
use crate::output::Output;
use crate::paths::RunDir;
use crate::tools;
use crate::units::{human, parse_ranges};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lazyvol::{CloneOptions, Store, VolumeStatus};
use std::path::Path;
use std::time::Duration;

pub fn run(store_dir: &Path, out: &Output, cmd: VolumeCommand) -> Result<()> {
    let store = Store::open(store_dir)
        .with_context(|| format!("opening the volume store {}", store_dir.display()))?;
    let run_dir = RunDir::new(store_dir);
    match cmd {
        VolumeCommand::Create { name, size } => {
            store.create(&name, size)?;
            out.done(
                &format!("created volume {name} ({})", human(size)),
                serde_json::json!({"name": name, "size": size}),
            );
        }
        VolumeCommand::Import { name, file } => {
            if !file.is_file() {
                bail!(
                    "{} is not a file (import takes a raw image)",
                    file.display()
                );
            }
            let report = store.import(&name, &file)?;
            out.done(
                &format!(
                    "imported {} as {name} ({:?})",
                    file.display(),
                    report.method
                ),
                serde_json::to_value(report)?,
            );
        }
        VolumeCommand::Snapshot { volume, snapshot } => {
            let took = snapshot_volume(&store, &run_dir, &volume, &snapshot)?;
            out.done(
                &format!("snapshot {snapshot} of {volume} taken in {took} ms"),
                serde_json::json!({"volume": volume, "snapshot": snapshot, "ms": took}),
            );
        }
        VolumeCommand::Clone {
            snapshot,
            new,
            no_hydrate,
            rate,
            region_size,
        } => {
            let opts = CloneOptions {
                hydrate: !no_hydrate,
                rate,
                // Measured per filesystem: see docs/results.md, "region size".
                region_size: region_size.unwrap_or_else(|| store.recommended_region_size()),
            };
            store.clone(&snapshot, &new, opts)?;
            out.done(
                &format!("cloned {snapshot} as {new} (hydrates when exported or attached)"),
                serde_json::json!({"snapshot": snapshot, "name": new}),
            );
        }
        VolumeCommand::Prefetch { name, ranges } => {
            let text = std::fs::read_to_string(&ranges)
                .with_context(|| format!("reading ranges file {}", ranges.display()))?;
            let ranges = parse_ranges(&text)
                .map_err(|e| anyhow::anyhow!("ranges file {}: {e}", ranges.display()))?;
            let how = prefetch(&store, &run_dir, &name, &ranges)?;
            out.done(
                &format!("{} ranges of {name} {how}", ranges.len()),
                serde_json::json!({"name": name, "ranges": ranges.len(), "how": how}),
            );
        }
        VolumeCommand::Status { name, watch } => {
            if watch && !out.json {
                watch_status(&store, &run_dir, &name)?;
            } else {
                let st = status(&store, &run_dir, &name)?;
                out.done(&format_status(&st), serde_json::to_value(&st)?);
            }
        }
        VolumeCommand::List => {
            // Open volumes report live figures through their export process.
            let all: Vec<VolumeStatus> = store
                .list()?
                .into_iter()
                .map(|v| match v.open_by_pid {
                    Some(_) => status(&store, &run_dir, &v.name).unwrap_or(v),
                    None => v,
                })
                .collect();
            if out.json {
                out.print_json(&serde_json::to_value(&all)?);
            } else if all.is_empty() {
                println!("no volumes in {}", store_dir.display());
            } else {
                println!(
                    "{:<24} {:<9} {:>10} {:>9}  DEPENDS ON",
                    "NAME", "KIND", "SIZE", "HYDRATED"
                );
                for v in all {
                    println!(
                        "{:<24} {:<9} {:>10} {:>8.1}%  {}",
                        v.name,
                        format!("{:?}", v.kind).to_lowercase(),
                        human(v.size),
                        percent(&v),
                        v.depends_on.as_deref().unwrap_or("-"),
                    );
                }
            }
        }
        VolumeCommand::Delete { name, wait } => {
            delete(&store, &run_dir, &name, wait, out)?;
            out.done(
                &format!("deleted {name}"),
                serde_json::json!({"deleted": name}),
            );
        }
        VolumeCommand::Export { name, nbd } => {
            let addr: nbd_export::ListenAddr = nbd.parse()?;
            crate::export::run_export(store_dir, &name, &addr)?;
        }
        VolumeCommand::Attach {
            name,
            mountpoint,
            mkfs,
            read_only,
        } => {
            store.status(&name)?; // unknown volume: say so before starting anything
            let exe = std::env::current_exe().context("locating the dbfork binary")?;
            let rec = attach::attach(&AttachRequest {
                store: store_dir,
                volume: &name,
                mountpoint: &mountpoint,
                mkfs,
                read_only,
                dbfork_exe: &exe,
            })?;
            out.done(
                &format!(
                    "attached {name} at {} ({})",
                    rec.mountpoint.display(),
                    rec.loop_device.as_deref().unwrap_or("?")
                ),
                serde_json::to_value(&rec)?,
            );
        }
        VolumeCommand::Detach { name } => {
            attach::detach(store_dir, &name)?;
            out.done(
                &format!("detached {name}"),
                serde_json::json!({"detached": name}),
            );
        }
    }
    Ok(())
}

/// True when an export process answers for this volume.
fn exported(run_dir: &RunDir, name: &str) -> bool {
    std::os::unix::net::UnixStream::connect(run_dir.control_socket(name)).is_ok()
}

/// Snapshots a volume, through its export process when it has one. When the volume
/// is attached and mounted, its filesystem is frozen around the snapshot so that
/// everything the filesystem has acknowledged is in the snapshot (fsfreeze flushes it
/// through the loop device and nbdfuse to our NBD server). Returns the milliseconds
/// writes were held.
pub fn snapshot_volume(store: &Store, run_dir: &RunDir, vol: &str, snap: &str) -> Result<u128> {
    let start = std::time::Instant::now();
    let mounted = attach::load_record(run_dir, vol)?
        .filter(|r| r.mounted && tools::is_mount_point(&r.mountpoint))
        .map(|r| r.mountpoint);
    let _thaw = match &mounted {
        Some(mp) => Some(FreezeGuard::freeze(mp)?),
        None => None,
    };
    if exported(run_dir, vol) {
        control::call(
            &run_dir.control_socket(vol),
            &Request::Snapshot {
                snapshot: snap.to_string(),
            },
        )
        .with_context(|| format!("snapshot of {vol} through its export process"))?;
    } else {
        store.snapshot(vol, snap)?;
    }
    Ok(start.elapsed().as_millis())
}

/// Keeps a filesystem frozen; thaws it when dropped, whatever happened in between.
struct FreezeGuard(String);

impl FreezeGuard {
    fn freeze(mountpoint: &Path) -> Result<Self> {
        let mp = mountpoint.display().to_string();
        tools::run("fsfreeze", &["-f", &mp])
            .with_context(|| format!("freezing {mp} for a consistent snapshot"))?;
        Ok(FreezeGuard(mp))
    }
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        if let Err(e) = tools::run("fsfreeze", &["-u", &self.0]) {
            tracing::error!(error = %e, mountpoint = %self.0, "could not thaw; run fsfreeze -u");
        }
    }
}

fn prefetch(
    store: &Store,
    run_dir: &RunDir,
    name: &str,
    ranges: &[(u64, u64)],
) -> Result<&'static str> {
    if exported(run_dir, name) {
        control::call(
            &run_dir.control_socket(name),
            &Request::Prefetch {
                ranges: ranges.to_vec(),
            },
        )?;
        return Ok("queued first for hydration");
    }
    // Not open anywhere: hydrating the ranges now is what prefetching them means.
    let vol = store.open_volume_with(
        name,
        lazyvol::OpenOptions {
            background: Some(false),
        },
    )?;
    let size = vol.size();
    let mut buf = vec![0u8; 1 << 20];
    for &(off, len) in ranges {
        if off.checked_add(len).is_none_or(|end| end > size) {
            bail!("range {off}+{len} is outside {name} (size {size})");
        }
        let mut pos = off;
        while pos < off + len {
            let n = (off + len - pos).min(buf.len() as u64) as usize;
            vol.read_at(&mut buf[..n], pos)?;
            pos += n as u64;
        }
    }
    vol.flush()?;
    Ok("hydrated")
}

/// Live status from the export process when one serves the volume, else from disk.
pub fn status(store: &Store, run_dir: &RunDir, name: &str) -> Result<VolumeStatus> {
    if exported(run_dir, name) {
        if let Ok(Some(v)) = control::call(&run_dir.control_socket(name), &Request::Status) {
            return Ok(serde_json::from_value(v)?);
        }
    }
    Ok(store.status(name)?)
}

fn percent(st: &VolumeStatus) -> f64 {
    if st.size == 0 {
        100.0
    } else {
        st.hydrated_bytes as f64 * 100.0 / st.size as f64
    }
}

pub fn format_status(st: &VolumeStatus) -> String {
    let mut s = format!(
        "{}: {:?}, {}, region {}\n  hydrated {} of {} ({:.1}%)\n  fetches: {} on demand, {} background, {} fetched",
        st.name,
        st.kind,
        human(st.size),
        human(st.region_size),
        human(st.hydrated_bytes),
        human(st.size),
        percent(st),
        st.on_demand_fetches,
        st.background_fetches,
        human(st.fetched_bytes),
    );
    if st.background_rate > 0 {
        s += &format!("\n  background rate {}/s", human(st.background_rate));
    }
    if let Some(eta) = st.eta_secs {
        s += &format!(", ETA {eta} s");
    }
    match (&st.depends_on, st.independent) {
        (Some(snap), _) => s += &format!("\n  depends on snapshot {snap}"),
        (None, true) => s += "\n  independent (depends on no snapshot)",
        _ => {}
    }
    if let Some(pid) = st.open_by_pid {
        s += &format!("\n  open by pid {pid}");
    }
    s
}

fn watch_status(store: &Store, run_dir: &RunDir, name: &str) -> Result<()> {
    let first = status(store, run_dir, name)?;
    let bar = ProgressBar::new(first.size);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    loop {
        let st = status(store, run_dir, name)?;
        bar.set_position(st.hydrated_bytes);
        if st.independent || st.hydrated_bytes >= st.size {
            bar.finish_with_message(format!("{name} independent"));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn delete(store: &Store, run_dir: &RunDir, name: &str, wait: bool, out: &Output) -> Result<()> {
    if attach::load_record(run_dir, name)?.is_some() || exported(run_dir, name) {
        bail!("{name} is attached or exported; detach it first (dbfork volume detach {name})");
    }
    match store.delete(name) {
        Err(lazyvol::Error::SnapshotInUse { clones, .. }) if wait => {
            for clone in &clones {
                if !out.json {
                    eprintln!("hydrating {clone} so that {name} can go");
                }
                hydrate_dependent(store, run_dir, clone, out)?;
            }
            store.delete(name)?;
            Ok(())
        }
        other => Ok(other?),
    }
}

/// How long full hydration of a clone may go without any progress before `delete
/// --wait` gives up (a dead or stuck export process, a broken snapshot).
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Hydrates one clone completely: through its export process when it is served (it
/// holds the volume), directly otherwise.
fn hydrate_dependent(store: &Store, run_dir: &RunDir, clone: &str, out: &Output) -> Result<()> {
    let bar = (!out.json).then(|| ProgressBar::new(0));
    let mut requested = false;
    let mut last = (0, std::time::Instant::now());
    loop {
        if !exported(run_dir, clone) {
            store.hydrate_fully(clone, |done, total| {
                if let Some(b) = &bar {
                    b.set_length(total);
                    b.set_position(done);
                }
            })?;
            break;
        }
        if !requested {
            control::call(&run_dir.control_socket(clone), &Request::HydrateAll)?;
            requested = true;
        }
        let st = status(store, run_dir, clone)?;
        if let Some(b) = &bar {
            b.set_length(st.size);
            b.set_position(st.hydrated_bytes);
        }
        if st.independent {
            break;
        }
        if st.hydrated_bytes > last.0 {
            last = (st.hydrated_bytes, std::time::Instant::now());
        } else if last.1.elapsed() > STALL_TIMEOUT {
            bail!(
                "hydration of {clone} made no progress for {} s (check its export: dbfork volume status {clone})",
                STALL_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

/// Hydrates an exported clone completely through its export process and waits until
/// it is independent of its snapshot.
pub fn hydrate_through_export(run_dir: &RunDir, clone: &str) -> Result<()> {
    control::call(&run_dir.control_socket(clone), &Request::HydrateAll)?;
    let mut last = (0, std::time::Instant::now());
    loop {
        let st: VolumeStatus =
            match control::call(&run_dir.control_socket(clone), &Request::Status)? {
                Some(v) => serde_json::from_value(v)?,
                None => bail!("export of {clone} returned no status"),
            };
        if st.independent {
            return Ok(());
        }
        if st.hydrated_bytes > last.0 {
            last = (st.hydrated_bytes, std::time::Instant::now());
        } else if last.1.elapsed() > STALL_TIMEOUT {
            bail!(
                "hydration of {clone} made no progress for {} s",
                STALL_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
