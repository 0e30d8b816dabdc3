//! Local attach path: volume -> export process (NBD on a Unix socket) -> nbdfuse (the
//! export as one file) -> loop device -> mounted filesystem.
//!
//! This host's kernel has no nbd or ublk module, so FUSE + loop is how a local replica
//! gets a block device from our NBD export. Every step is recorded, and a failure undoes
//! the steps already taken in reverse order, so a failed attach leaves nothing behind.

use super::tools::{self, run};
use crate::error::{Error, Result};
use crate::process::{
    process_alive, reap_if_child, signal, stop_process, wait_until, STARTUP_TIMEOUT,
};
use crate::{FsType, RunDir};
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long an unmount is retried while the mount is busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(15);

fn mkfs_tool(fs: FsType) -> &'static str {
    match fs {
        FsType::Ext4 => "mkfs.ext4",
        FsType::Xfs => "mkfs.xfs",
    }
}

/// Record of an attached volume (pids, loop device, mount point) in the run dir.
pub fn record_path(run: &RunDir, volume: &str) -> PathBuf {
    run.path().join(format!("{volume}.attach.json"))
}

/// The directory nbdfuse mounts to expose the volume as a file.
fn fuse_dir(run: &RunDir, volume: &str) -> PathBuf {
    run.path().join(format!("{volume}.fuse"))
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

pub fn load_record(run: &RunDir, volume: &str) -> Result<Option<AttachRecord>> {
    let path = record_path(run, volume);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::CorruptRecord(path.display().to_string(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading attach record", &path)(e)),
    }
}

fn save_record(run: &RunDir, rec: &AttachRecord) -> Result<()> {
    let path = record_path(run, &rec.volume);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(rec).expect("serializable"))
        .map_err(Error::io("writing attach record", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io("writing attach record", &path))
}

/// Attaches a volume and mounts it. On failure, undoes whatever it did.
pub fn attach(req: &AttachRequest) -> Result<AttachRecord> {
    let run_dir = RunDir::new(req.store);
    run_dir
        .ensure()
        .map_err(Error::io("creating the run dir", run_dir.path()))?;
    if let Some(rec) = load_record(&run_dir, req.volume)? {
        if is_export_of(rec.export_pid, req.volume) {
            return Err(Error::AlreadyAttached(
                req.volume.to_string(),
                rec.mountpoint.display().to_string(),
            ));
        }
        // A stale record from a crash: clean what is left of it first.
        detach_record(&run_dir, &rec)?;
    }
    if !req.mountpoint.is_dir() {
        return Err(Error::BadMountPoint(req.mountpoint.display().to_string()));
    }
    if tools::is_mount_point(req.mountpoint) {
        return Err(Error::MountPointBusy(req.mountpoint.display().to_string()));
    }

    let mountpoint = req
        .mountpoint
        .canonicalize()
        .map_err(Error::io("resolving the mount point", req.mountpoint))?;
    let (export_pid, nbd_socket) = crate::export::spawn(req.store, req.volume, req.dbfork_exe)?;
    let mut rec = AttachRecord {
        volume: req.volume.to_string(),
        mountpoint,
        export_pid,
        nbd_socket,
        fuse_dir: fuse_dir(&run_dir, req.volume),
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

fn attach_steps(req: &AttachRequest, run_dir: &RunDir, rec: &mut AttachRecord) -> Result<()> {
    std::fs::create_dir_all(&rec.fuse_dir).map_err(Error::io("creating", &rec.fuse_dir))?;
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
        return Err(Error::FuseTimeout(STARTUP_TIMEOUT));
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
        run(mkfs_tool(fs), args)?;
    }
    let mp = rec.mountpoint.display().to_string();
    let mut opts = vec![];
    if req.read_only {
        opts.push("ro");
    }
    // A clone carries its source's filesystem UUID; XFS refuses a second mount of the
    // same UUID unless told, and a clone beside its source is exactly our use.
    // `-p` probes the superblock itself: blkid's cache may still hold what an earlier
    // user of this loop device had on it (an XFS volume, say, for an ext4 clone, whose
    // mount then fails on the XFS-only option).
    if fs_type(&dev).is_ok_and(|t| t == "xfs") {
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

/// The filesystem type on a block device, read from its superblock.
fn fs_type(dev: &str) -> Result<String> {
    run("blkid", &["-p", "-o", "value", "-s", "TYPE", dev])
}

pub use crate::export::is_export_of;

/// What no longer serves of an attach, each a sentence (empty: it serves): the export
/// process, nbdfuse, the loop device, the mount.
pub fn problems(rec: &AttachRecord) -> Vec<String> {
    let mut out = Vec::new();
    if !is_export_of(rec.export_pid, &rec.volume) {
        out.push(format!(
            "the export process of volume {} (pid {}) is gone: the server's disk went with it",
            rec.volume, rec.export_pid
        ));
    }
    if !rec.nbdfuse_pid.is_some_and(process_alive) || !tools::is_mount_point(&rec.fuse_dir) {
        out.push(format!(
            "nbdfuse of volume {} is gone (its block device has no backing)",
            rec.volume
        ));
    }
    if !rec
        .loop_device
        .as_deref()
        .is_some_and(|d| loop_backs(d, &rec.fuse_dir))
    {
        out.push(format!("volume {} has no loop device any more", rec.volume));
    }
    if !(rec.mounted && tools::is_mount_point(&rec.mountpoint)) {
        out.push(format!(
            "volume {} is not mounted at {} any more",
            rec.volume,
            rec.mountpoint.display()
        ));
    }
    out
}

/// Detaches an attached volume: unmount, free the loop device, unmount nbdfuse, stop
/// the export process (which flushes). Each step tolerates its piece being gone
/// already, so detach also cleans up after a crash.
pub fn detach(store: &Path, volume: &str) -> Result<()> {
    let run_dir = RunDir::new(store);
    let rec =
        load_record(&run_dir, volume)?.ok_or_else(|| Error::NotAttached(volume.to_string()))?;
    detach_record(&run_dir, &rec)
}

fn detach_record(run_dir: &RunDir, rec: &AttachRecord) -> Result<()> {
    if rec.mounted && tools::is_mount_point(&rec.mountpoint) {
        let mp = rec.mountpoint.display().to_string();
        // A process that just exited (a killed server) lets go of the mount a moment
        // later: a busy mount is retried for a while before it counts as busy.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match run("umount", &[&mp]) {
                Ok(_) => break,
                Err(Error::ToolFailed { stderr, .. }) if stderr.contains("busy") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::Busy { mountpoint: mp });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
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
    // After a reboot or a crash the recorded pid may be another process's now: only
    // the volume's own export process is stopped.
    if is_export_of(rec.export_pid, &rec.volume) && !stop_process(rec.export_pid) {
        tracing::warn!(
            pid = rec.export_pid,
            "export process did not stop; killing it"
        );
        signal(rec.export_pid, libc::SIGKILL);
    }
    let _ = std::fs::remove_file(record_path(run_dir, &rec.volume));
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
        std::fs::write(record_path(&run, "v"), b"{").unwrap();
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
