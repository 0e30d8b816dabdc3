//! Local attach path: volume -> export process (NBD on a Unix socket) -> nbdfuse (the
//! export as one file) -> loop device -> mounted filesystem.
//!
//! This host's kernel has no nbd or ublk module, so FUSE + loop is how a local replica
//! gets a block device from our NBD export. Every step is recorded, and a failure undoes
//! the steps already taken in reverse order, so a failed attach leaves nothing behind.

use crate::paths::RunDir;
use crate::tools::{self, process_alive, run, wait_until, ToolError};
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long an unmount is retried while the mount is busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a helper process gets to show up or go away before we call it stuck.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    fn mkfs(self) -> &'static str {
        match self {
            FsType::Ext4 => "mkfs.ext4",
            FsType::Xfs => "mkfs.xfs",
        }
    }
}

/// What `attach` built, persisted so that `detach` (maybe from another process, maybe
/// after a crash) can take it apart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttachRecord {
    pub volume: String,
    pub mountpoint: PathBuf,
    pub export_pid: u32,
    pub nbd_socket: PathBuf,
    pub fuse_dir: PathBuf,
    pub nbdfuse_pid: Option<u32>,
    pub loop_device: Option<String>,
    pub mounted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("volume {0} is already attached at {1} (detach it first: dbfork volume detach {0})")]
    AlreadyAttached(String, String),
    #[error("volume {0} is not attached")]
    NotAttached(String),
    #[error("mount point {0} does not exist or is not a directory (create it first)")]
    BadMountPoint(String),
    #[error("mount point {0} is already in use by another mount")]
    MountPointBusy(String),
    #[error("the export process for {volume} did not come up: {log}")]
    ExportFailed { volume: String, log: String },
    #[error("nbdfuse did not expose the volume within {0:?} (is /dev/fuse available?)")]
    FuseTimeout(Duration),
    #[error("{mountpoint} is busy: a process still uses it (see `fuser -vm {mountpoint}`); stop it, then detach again")]
    Busy { mountpoint: String },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("attach record I/O")]
    Io(#[from] std::io::Error),
    #[error("attach record {0} is corrupt: {1}")]
    CorruptRecord(String, String),
}

/// The steps to attach one volume.
pub struct AttachRequest<'a> {
    pub store: &'a Path,
    pub volume: &'a str,
    pub mountpoint: &'a Path,
    pub mkfs: Option<FsType>,
    pub read_only: bool,
    /// The `dbfork` binary that runs the export process.
    pub dbfork_exe: &'a Path,
}

pub fn load_record(run: &RunDir, volume: &str) -> Result<Option<AttachRecord>, AttachError> {
    let path = run.attach_record(volume);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AttachError::CorruptRecord(path.display().to_string(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn save_record(run: &RunDir, rec: &AttachRecord) -> Result<(), AttachError> {
    let path = run.attach_record(&rec.volume);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(rec).expect("serializable"))?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// Starts the export process for `volume` in the background, detached from our
/// terminal and process group, and waits until its NBD socket accepts connections.
pub fn spawn_export(
    store: &Path,
    volume: &str,
    dbfork_exe: &Path,
) -> Result<(u32, PathBuf), AttachError> {
    let run_dir = RunDir::new(store);
    run_dir.ensure()?;
    let socket = run_dir.nbd_socket(volume);
    let log_path = run_dir.export_log(volume);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut child = Command::new(dbfork_exe)
        .arg("--store")
        .arg(store)
        .args(["volume", "export", volume, "--nbd"])
        .arg(format!("unix:{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C meant for the CLI must not take the disk away
        // from a mounted filesystem.
        .process_group(0)
        .spawn()
        .map_err(|e| {
            tools::spawn_error(
                &dbfork_exe.display().to_string(),
                "dbfork volume export".into(),
                e,
            )
        })?;
    let pid = child.id();
    let up = wait_until(STARTUP_TIMEOUT, || {
        matches!(child.try_wait(), Ok(None)) && UnixStream::connect(&socket).is_ok()
    });
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(AttachError::ExportFailed {
            volume: volume.to_string(),
            log: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    // The export outlives us; dropping `child` does not kill it. Reaping it is the job
    // of whoever stops it (detach waits for the pid to disappear).
    std::mem::forget(child);
    Ok((pid, socket))
}

/// Stops a dbfork helper process (export, pagetabled): SIGTERM makes an export flush and
/// commit its region map before it
/// exits. Waits for it to go away.
pub fn stop_process(pid: u32) -> bool {
    if !process_alive(pid) {
        return true;
    }
    tools::signal(pid, libc::SIGTERM);
    reap_if_child(pid);
    wait_until(STARTUP_TIMEOUT, || {
        reap_if_child(pid);
        !process_alive(pid)
    })
}

fn reap_if_child(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on a pid; if it is not our child it fails with ECHILD.
    unsafe {
        libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
    }
}

/// Attaches a volume and mounts it. On failure, undoes whatever it did.
pub fn attach(req: &AttachRequest) -> Result<AttachRecord, AttachError> {
    let run_dir = RunDir::new(req.store);
    run_dir.ensure()?;
    if let Some(rec) = load_record(&run_dir, req.volume)? {
        if process_alive(rec.export_pid) {
            return Err(AttachError::AlreadyAttached(
                req.volume.to_string(),
                rec.mountpoint.display().to_string(),
            ));
        }
        // A stale record from a crash: clean what is left of it first.
        detach_record(&run_dir, &rec)?;
    }
    if !req.mountpoint.is_dir() {
        return Err(AttachError::BadMountPoint(
            req.mountpoint.display().to_string(),
        ));
    }
    if tools::is_mount_point(req.mountpoint) {
        return Err(AttachError::MountPointBusy(
            req.mountpoint.display().to_string(),
        ));
    }

    let (export_pid, nbd_socket) = spawn_export(req.store, req.volume, req.dbfork_exe)?;
    let mut rec = AttachRecord {
        volume: req.volume.to_string(),
        mountpoint: req.mountpoint.canonicalize()?,
        export_pid,
        nbd_socket,
        fuse_dir: run_dir.fuse_dir(req.volume),
        nbdfuse_pid: None,
        loop_device: None,
        mounted: false,
    };
    save_record(&run_dir, &rec)?;
    match attach_steps(req, &run_dir, &mut rec) {
        Ok(()) => Ok(rec),
        Err(e) => {
            if let Err(undo) = detach_record(&run_dir, &rec) {
                tracing::error!(error = %undo, "undoing a failed attach also failed");
            }
            Err(e)
        }
    }
}

fn attach_steps(
    req: &AttachRequest,
    run_dir: &RunDir,
    rec: &mut AttachRecord,
) -> Result<(), AttachError> {
    std::fs::create_dir_all(&rec.fuse_dir)?;
    let file = rec.fuse_dir.join("disk");
    let uri = format!(
        "nbd+unix:///{}?socket={}",
        req.volume,
        rec.nbd_socket.display()
    );
    let mut nbdfuse = Command::new("nbdfuse");
    if req.read_only {
        nbdfuse.arg("--readonly");
    }
    let child = nbdfuse
        .arg(&file)
        .arg(&uri)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| tools::spawn_error("nbdfuse", format!("nbdfuse {uri}"), e))?;
    rec.nbdfuse_pid = Some(child.id());
    std::mem::forget(child);
    save_record(run_dir, rec)?;
    if !wait_until(STARTUP_TIMEOUT, || file.exists()) {
        return Err(AttachError::FuseTimeout(STARTUP_TIMEOUT));
    }

    let file_s = file.display().to_string();
    let mut losetup = vec!["--find", "--show"];
    if req.read_only {
        losetup.push("--read-only");
    }
    losetup.push(&file_s);
    let dev = run("losetup", &losetup)?;
    rec.loop_device = Some(dev.clone());
    save_record(run_dir, rec)?;

    if let Some(fs) = req.mkfs {
        // No discard: a new volume reads as zeroes already, and a whole-device discard
        // would mark every region of it as written (holes, but held), so every clone
        // would then hydrate the whole size instead of what the filesystem wrote.
        let args: &[&str] = match fs {
            FsType::Ext4 => &["-q", "-F", "-E", "nodiscard", &dev],
            FsType::Xfs => &["-q", "-f", "-K", &dev],
        };
        run(fs.mkfs(), args)?;
    }
    let mp = rec.mountpoint.display().to_string();
    let mut opts = vec![];
    if req.read_only {
        opts.push("ro");
    }
    // A clone carries its source's filesystem UUID; XFS refuses a second mount of the
    // same UUID unless told, and a clone beside its source is exactly our use.
    if run("blkid", &["-o", "value", "-s", "TYPE", &dev]).is_ok_and(|t| t == "xfs") {
        opts.push("nouuid");
    }
    let opts = opts.join(",");
    let mut mount = vec![];
    if !opts.is_empty() {
        mount.extend(["-o", opts.as_str()]);
    }
    mount.extend([dev.as_str(), mp.as_str()]);
    run("mount", &mount)?;
    rec.mounted = true;
    save_record(run_dir, rec)?;
    Ok(())
}

/// Detaches an attached volume: unmount, free the loop device, unmount nbdfuse, stop
/// the export process (which flushes). Each step tolerates its piece being gone
/// already, so detach also cleans up after a crash.
pub fn detach(store: &Path, volume: &str) -> Result<(), AttachError> {
    let run_dir = RunDir::new(store);
    let rec = load_record(&run_dir, volume)?
        .ok_or_else(|| AttachError::NotAttached(volume.to_string()))?;
    detach_record(&run_dir, &rec)
}

fn detach_record(run_dir: &RunDir, rec: &AttachRecord) -> Result<(), AttachError> {
    if rec.mounted && tools::is_mount_point(&rec.mountpoint) {
        let mp = rec.mountpoint.display().to_string();
        // A process that just exited (a killed server) lets go of the mount a moment
        // later: a busy mount is retried for a while before it counts as busy.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match run("umount", &[&mp]) {
                Ok(_) => break,
                Err(ToolError::Failed { stderr, .. }) if stderr.contains("busy") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(AttachError::Busy { mountpoint: mp });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if let Some(dev) = &rec.loop_device {
        if loop_backs(dev, &rec.fuse_dir) {
            run("losetup", &["-d", dev])?;
        }
    }
    if tools::is_mount_point(&rec.fuse_dir) {
        let dir = rec.fuse_dir.display().to_string();
        if run("fusermount3", &["-u", &dir]).is_err() {
            run("umount", &["-l", &dir])?;
        }
    }
    if let Some(pid) = rec.nbdfuse_pid {
        wait_until(STARTUP_TIMEOUT, || {
            reap_if_child(pid);
            !process_alive(pid)
        });
    }
    let _ = std::fs::remove_dir(&rec.fuse_dir);
    if !stop_process(rec.export_pid) {
        tracing::warn!(
            pid = rec.export_pid,
            "export process did not stop; killing it"
        );
        tools::signal(rec.export_pid, libc::SIGKILL);
    }
    let _ = std::fs::remove_file(run_dir.attach_record(&rec.volume));
    Ok(())
}

/// True if loop device `dev` is (still) backed by the file in `fuse_dir`, so that we
/// never detach a loop device that was reused for something else after a crash.
fn loop_backs(dev: &str, fuse_dir: &Path) -> bool {
    let name = dev.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .map(|b| Path::new(b.trim()).starts_with(fuse_dir))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        run.ensure().unwrap();
        assert!(load_record(&run, "v").unwrap().is_none());
        let rec = AttachRecord {
            volume: "v".into(),
            mountpoint: "/mnt/x".into(),
            export_pid: 1,
            nbd_socket: "/s".into(),
            fuse_dir: "/f".into(),
            nbdfuse_pid: Some(2),
            loop_device: Some("/dev/loop9".into()),
            mounted: true,
        };
        save_record(&run, &rec).unwrap();
        assert_eq!(load_record(&run, "v").unwrap().unwrap(), rec);
        std::fs::write(run.attach_record("v"), b"{").unwrap();
        let err = load_record(&run, "v").unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn detach_of_unknown_volume_is_clear() {
        let dir = tempfile::tempdir().unwrap();
        let err = detach(dir.path(), "nope").unwrap_err();
        assert_eq!(err.to_string(), "volume nope is not attached");
    }
}
