//! The fork run's channel check (`channel-first-request`, in dom0): dom0's first
//! request on a new connection to a domU's guest side, sent while the domU is paused,
//! is answered through dbfork's own endpoint (`GuestEndpoint`).
//!
//! Paused, the domU sees the connect and the request as one event: the case Xen's
//! vchan-socket-proxy in server mode misses (its wait for a connection consumes that
//! event, it then waits for another before reading its ring, and the request sits
//! there until dom0 closes). The guest's end is dbfork's relay, which reads its ring
//! before every wait; the endpoint still asks again on a new connection should a
//! first request go unanswered.

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use substrate::xen::guest::{GuestEndpoint, Patience};

/// The domain, paused until dropped.
struct Paused<'a>(&'a str);

impl<'a> Paused<'a> {
    fn new(domain: &'a str) -> Result<Self> {
        xl(&["pause", domain])?;
        Ok(Paused(domain))
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        if let Err(e) = xl(&["unpause", self.0]) {
            eprintln!("dbfork-grant-probe: unpausing {}: {e:#}", self.0);
        }
    }
}

fn xl(args: &[&str]) -> Result<()> {
    let out = Command::new("xl")
        .args(args)
        .output()
        .context("running xl")?;
    if !out.status.success() {
        bail!(
            "xl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether the task whose `/proc/.../syscall` is `path` is blocked in one of
/// `syscalls` (x86_64 numbers).
fn blocked_in(path: &str, syscalls: &[u32]) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .is_some_and(|n| syscalls.contains(&n))
}

const READ: u32 = 0;
const RECVFROM: u32 = 45;
const POLL: u32 = 7;
const SELECT: u32 = 23;
const PSELECT6: u32 = 270;
const PPOLL: u32 = 271;

/// Whether the relay `pid` holds an accepted connection with nothing left unread and
/// waits again: it passed what came on it into the vchan ring.
fn passed_on(pid: u32) -> bool {
    if !blocked_in(
        &format!("/proc/{pid}/syscall"),
        &[POLL, SELECT, PSELECT6, PPOLL],
    ) {
        return false;
    }
    let Ok(out) = Command::new("ss")
        .args(["-xnpH", "state", "established"])
        .output()
    else {
        return false;
    };
    let tag = format!("pid={pid},");
    let queues: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&tag))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    !queues.is_empty() && queues.iter().all(|&q| q == 0)
}

fn wait_for(what: &str, ready: impl FnMut() -> bool) -> Result<()> {
    if !substrate::process::wait_until(Duration::from_secs(30), ready) {
        bail!("waited 30 s for {what}");
    }
    Ok(())
}

pub fn first_request(domain: &str, socket: &Path, relay_pid: u32, hello: Duration) -> Result<()> {
    let paused = Paused::new(domain)?;
    let (tid_tx, tid_rx) = mpsc::channel();
    let (name, socket) = (domain.to_string(), socket.to_path_buf());
    let asker = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        let patience = Patience {
            hello,
            connections: 3,
            ..Patience::default()
        };
        GuestEndpoint::connect_with(&name, &socket, patience)
            .and_then(|g| g.memory_use())
            .map_err(|e| substrate::error::chain(&e))
    });
    let tid = tid_rx.recv().context("the asking thread")?;
    // The hello is written once the asker waits for its answer, and in the ring once
    // dom0's relay read it and waits again.
    wait_for("the hello to be sent", || {
        blocked_in(&format!("/proc/self/task/{tid}/syscall"), &[READ, RECVFROM])
    })?;
    let sent = Instant::now();
    wait_for("dom0's channel relay to pass the hello on", || {
        passed_on(relay_pid)
    })?;
    drop(paused);
    let unpaused = Instant::now();
    let answer = asker
        .join()
        .map_err(|_| anyhow::anyhow!("the asking thread panicked"))?;
    let (took, since_sent) = (unpaused.elapsed(), sent.elapsed());
    match answer {
        Ok(_) => {
            // The first connection had `hello` from its request on.
            let how = if since_sent >= hello {
                "the first connection's request was missed; a new connection's was answered"
            } else {
                "answered on the first connection"
            };
            println!(
                "answered {:.1} s after the unpause ({:.1} s after the hello was sent, {} s \
                 allowed a connection): {how}",
                took.as_secs_f64(),
                since_sent.as_secs_f64(),
                hello.as_secs()
            );
            Ok(())
        }
        Err(e) => bail!(
            "no answer ({:.1} s after the unpause): {e}",
            took.as_secs_f64()
        ),
    }
}
