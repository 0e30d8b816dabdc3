//! `dbfork volume ...`: the control plane of volumes. A verb that needs an open volume
//! goes through its export process's control socket when one runs (the process holds
//! the volume's lock), and opens the volume itself otherwise (`dbfork::volumes`).
//! `attach` and `detach` mount a volume on this host, with the local substrate's
//! attach path.

use super::cli::VolumeCommand;
use super::output::Output;
use anyhow::{bail, Context, Result};
use dbfork::units::{human, parse_ranges};
use dbfork::volumes::{self, status};
use indicatif::{ProgressBar, ProgressStyle};
use lazyvol::{CloneOptions, Store, VolumeStatus};
use std::path::Path;
use std::time::Duration;
use substrate::local::attach::{self, AttachRequest};
use substrate::RunDir;

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
            // Writes are held from the freeze to the thaw.
            let t = std::time::Instant::now();
            let held = substrate::local::quiesce_volume(store_dir, &volume)?;
            volumes::snapshot(&store, &run_dir, &volume, &snapshot, &held)?;
            drop(held);
            let took = t.elapsed().as_millis();
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
            let how = volumes::prefetch(&store, &run_dir, &name, &ranges)?;
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
                outln!("no volumes in {}", store_dir.display());
            } else {
                outln!(
                    "{:<24} {:<9} {:>10} {:>9}  DEPENDS ON",
                    "NAME",
                    "KIND",
                    "SIZE",
                    "HYDRATED"
                );
                for v in all {
                    outln!(
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
            if attach::load_record(&run_dir, &name)?.is_some() {
                bail!(
                    "{name} is attached or exported; detach it first (dbfork volume detach {name})"
                );
            }
            let bar = (!out.json).then(|| ProgressBar::new(0));
            let mut told = String::new();
            volumes::delete(&store, &run_dir, &name, wait, &mut |clone, done, total| {
                if told != clone && !out.json {
                    errln!("hydrating {clone} so that {name} can go");
                    told = clone.to_string();
                }
                if let Some(b) = &bar {
                    b.set_length(total);
                    b.set_position(done);
                }
            })?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            out.done(
                &format!("deleted {name}"),
                serde_json::json!({"deleted": name}),
            );
        }
        VolumeCommand::Export { name, nbd } => {
            let addr: nbd_export::ListenAddr = nbd.parse()?;
            dbfork::export::run_export(store_dir, &name, &addr)?;
        }
        VolumeCommand::Attach {
            name,
            mountpoint,
            mkfs,
            read_only,
        } => {
            // An unknown volume, or one with nothing to attach, is said before anything
            // starts.
            if store.status(&name)?.layout == lazyvol::VolumeLayout::Directory {
                bail!(
                    "{name} is a directory volume: it is a tree on the store's file system ({}), nothing to attach",
                    store.directory(&name)?.display()
                );
            }
            let exe = std::env::current_exe().context("locating the dbfork binary")?;
            let rec = attach::attach(&AttachRequest {
                store: store_dir,
                volume: &name,
                mountpoint: &mountpoint,
                mkfs: mkfs.map(Into::into),
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
