//! The export process of one volume: opens it (and so owns its lock and hydrator),
//! serves it over NBD, answers its control socket, and on SIGTERM/SIGINT flushes and
//! exits. `dbfork volume export` runs this in the foreground; `attach` runs it detached.

use crate::control::{self, ControlHandler, Reply, Request};
use crate::error::{Error, Result};
use lazyvol::{Store, Volume};
use nbd_export::{BlockDevice, ListenAddr, Server};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::io;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use substrate::RunDir;

/// `Volume` as an NBD block device. The only translation is errors: the NBD layer
/// picks its error code from the OS errno, which the engine's rich errors carry as
/// an error kind.
pub struct VolumeDevice(pub Arc<Volume>);

fn errno(e: io::Error) -> io::Error {
    if e.raw_os_error().is_some() {
        return e;
    }
    let code = match e.kind() {
        io::ErrorKind::StorageFull => libc::ENOSPC,
        io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied => libc::EPERM,
        io::ErrorKind::InvalidInput => libc::EINVAL,
        _ => libc::EIO,
    };
    tracing::warn!(error = %e, "volume I/O error");
    io::Error::from_raw_os_error(code)
}

impl BlockDevice for VolumeDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset).map_err(errno)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.0.write_at(buf, offset, fua).map_err(errno)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush().map_err(errno)
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.trim(offset, len).map_err(errno)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.0.write_zeroes(offset, len, fua).map_err(errno)
    }
    /// NBD_CMD_CACHE ("I will read this soon") is exactly a prefetch: the range
    /// moves to the front of the hydration queue.
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0
            .prefetch(&[(offset, len)])
            .map_err(|e| errno(io::Error::from(e)))
    }
    fn read_only(&self) -> bool {
        self.0.read_only()
    }
}

/// Control requests against the open volume.
struct VolumeControl {
    volume: Arc<Volume>,
    stop: Arc<AtomicBool>,
    /// Set while a full hydration requested over the control socket runs.
    hydrating: Arc<AtomicBool>,
}

impl ControlHandler for VolumeControl {
    fn handle(&self, request: Request) -> Reply {
        let result: Result<Option<serde_json::Value>, String> = match request {
            Request::Snapshot { snapshot } => self
                .volume
                .snapshot(&snapshot)
                .map(|()| None)
                .map_err(|e| crate::error::chain(&e)),
            Request::Prefetch { ranges } => self
                .volume
                .prefetch(&ranges)
                .map(|()| None)
                .map_err(|e| crate::error::chain(&e)),
            Request::HydrateAll => {
                if !self.hydrating.swap(true, Ordering::AcqRel) {
                    let (volume, flag) = (self.volume.clone(), self.hydrating.clone());
                    std::thread::spawn(move || {
                        if let Err(e) = volume.hydrate_fully(|_, _| {}) {
                            tracing::error!(error = %e, "full hydration failed");
                        }
                        flag.store(false, Ordering::Release);
                    });
                }
                Ok(None)
            }
            Request::Flush => self
                .volume
                .flush()
                .map(|()| None)
                .map_err(|e| crate::error::chain(&e)),
            Request::Status => serde_json::to_value(self.volume.status())
                .map(Some)
                .map_err(|e| crate::error::chain(&e)),
            Request::Shutdown => {
                self.stop.store(true, Ordering::Relaxed);
                Ok(None)
            }
        };
        match result {
            Ok(data) => Reply::ok(data),
            Err(e) => Reply::err(e),
        }
    }
}

/// Serves `name` until SIGTERM, SIGINT or a control `shutdown`; then stops the NBD
/// server, flushes, and returns (dropping the volume commits its region map).
pub fn run_export(store: &Path, name: &str, addr: &ListenAddr) -> Result<()> {
    let store_h = Store::open(store).map_err(|source| Error::Store {
        dir: store.to_path_buf(),
        source,
    })?;
    let volume = Arc::new(store_h.open_volume(name)?);
    let run = RunDir::new(store);
    run.ensure()
        .map_err(Error::io("creating the run dir", run.path()))?;

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(Error::io("handling signals of", store))?;
    }

    let ctl_path = run.control_socket(name);
    let _ = std::fs::remove_file(&ctl_path);
    let ctl = UnixListener::bind(&ctl_path)
        .map_err(Error::io("binding the control socket", &ctl_path))?;
    let ctl_thread = {
        let handler = Arc::new(VolumeControl {
            volume: volume.clone(),
            stop: stop.clone(),
            hydrating: Arc::new(AtomicBool::new(false)),
        });
        let stop = stop.clone();
        std::thread::spawn(move || control::serve(ctl, handler, stop))
    };

    let device: Arc<dyn BlockDevice> = Arc::new(VolumeDevice(volume.clone()));
    let server = Server::new()
        .export_described(name, format!("dbfork volume {name}"), device)?
        .serve(addr)?;
    tracing::info!(volume = name, %addr, uri = %addr.uri(name), "exporting");
    {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "exporting {name} at {}", addr.uri(name));
    }

    while !stop.load(Ordering::Relaxed) {
        // Woken within this interval by the signal flag; no work happens here.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    tracing::info!(volume = name, "stopping export");
    server.shutdown();
    let _ = ctl_thread.join();
    let _ = std::fs::remove_file(&ctl_path);
    if let ListenAddr::Unix(p) = addr {
        let _ = std::fs::remove_file(p);
    }
    volume.flush().map_err(|source| Error::Flush {
        volume: name.to_string(),
        source,
    })?;
    Ok(())
}
