//! The QEMU side: a qcow2 overlay over the raw base, served by qemu-storage-daemon
//! through a copy-on-read filter, background copy with QMP `block-stream`; and
//! `qemu-nbd -f raw` for the raw baseline.

use crate::procs::{self, ChildGuard};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const EXPORT: &str = "vol";

/// `qemu-img create -f qcow2 -b BASE -F raw [-o cluster_size=N] OVERLAY`. The
/// cluster is QEMU's unit of copy-on-read, as the region is dbfork's.
pub fn create_overlay(base: &Path, overlay: &Path, cluster: Option<u64>) -> Result<()> {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(base)
        .args(["-F", "raw"]);
    if let Some(cl) = cluster {
        c.args(["-o", &format!("cluster_size={cl}")]);
    }
    c.arg(overlay);
    procs::run(c).map(drop)
}

/// qemu-storage-daemon serving OVERLAY (backed by BASE) behind copy-on-read.
pub struct Qsd {
    pub guard: ChildGuard,
    pub nbd: PathBuf,
    qmp: PathBuf,
}

impl Qsd {
    pub fn start(base: &Path, overlay: &Path, dir: &Path, tag: &str) -> Result<Qsd> {
        let nbd = dir.join(format!("{tag}.nbd.sock"));
        let qmp = dir.join(format!("{tag}.qmp.sock"));
        let mut c = Command::new("qemu-storage-daemon");
        c.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=base-file,filename={},read-only=on",
                base.display()
            ))
            .arg("--blockdev")
            .arg("driver=raw,node-name=base,file=base-file,read-only=on")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=ov-file,filename={}",
                overlay.display()
            ))
            .arg("--blockdev")
            .arg("driver=qcow2,node-name=ov,file=ov-file,backing=base")
            .arg("--blockdev")
            .arg("driver=copy-on-read,node-name=cor,file=ov")
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd.display()))
            .arg("--export")
            .arg(format!(
                "type=nbd,id=exp0,node-name=cor,name={EXPORT},writable=on"
            ))
            .arg("--chardev")
            .arg(format!(
                "socket,id=qmp0,path={},server=on,wait=off",
                qmp.display()
            ))
            .arg("--monitor")
            .arg("chardev=qmp0");
        let guard = ChildGuard::spawn(
            "qemu-storage-daemon",
            c,
            &dir.join(format!("{tag}.qsd.log")),
        )?;
        Ok(Qsd { guard, nbd, qmp })
    }

    pub fn qmp(&mut self) -> Result<Qmp> {
        let path = self.qmp.clone();
        let guard = &mut self.guard;
        let stream = procs::poll(
            "the QMP socket",
            Duration::from_secs(30),
            Duration::from_millis(2),
            || {
                guard.check_alive()?;
                Ok(UnixStream::connect(&path).ok())
            },
        )?;
        Qmp::handshake(stream)
    }
}

/// QMP spoken by hand: one JSON object per line; events interleave with replies.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn handshake(stream: UnixStream) -> Result<Qmp> {
        let writer = stream.try_clone()?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.line()?;
        if greeting.get("QMP").is_none() {
            bail!("QMP greeting expected, got {greeting}");
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn line(&mut self) -> Result<Value> {
        let mut s = String::new();
        if self.reader.read_line(&mut s)? == 0 {
            bail!("QMP connection closed");
        }
        serde_json::from_str(&s).with_context(|| format!("QMP sent {s:?}"))
    }

    /// Run one command; its `return` value. Events read on the way are dropped,
    /// except a failed block job, which fails the run.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let msg = json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{msg}")?;
        loop {
            let v = self.line()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {command}: {e}");
            }
            if v["event"] == "BLOCK_JOB_COMPLETED" && v["data"].get("error").is_some() {
                bail!("block job failed: {}", v["data"]);
            }
        }
    }

    /// `block-stream` of the overlay from its backing file, no speed limit.
    pub fn start_stream(&mut self) -> Result<()> {
        self.execute(
            "block-stream",
            json!({"job-id": "stream0", "device": "ov", "speed": 0}),
        )
        .map(drop)
    }

    /// Poll `query-block-jobs` until no job is left (jobs auto-dismiss on completion).
    pub fn wait_jobs_done(&mut self) -> Result<()> {
        procs::poll(
            "block-stream to finish",
            Duration::from_secs(600),
            Duration::from_millis(20),
            || {
                let jobs = self.execute("query-block-jobs", json!({}))?;
                Ok(jobs.as_array().is_some_and(Vec::is_empty).then_some(()))
            },
        )
    }
}

/// `qemu-nbd -f raw` serving BASE read-only (the raw-file baseline).
pub fn qemu_nbd_raw(base: &Path, sock: &Path, log: &Path) -> Result<ChildGuard> {
    let mut c = Command::new("qemu-nbd");
    c.args([
        "-f",
        "raw",
        "--read-only",
        "--persistent",
        "-x",
        EXPORT,
        "-k",
    ])
    .arg(sock)
    .arg(base);
    ChildGuard::spawn("qemu-nbd", c, log)
}
