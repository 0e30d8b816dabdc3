//! The admin socket: JSON lines (`pagetable::admin`), root only. The socket file is
//! mode 0600 and, in case it is reached some other way (an inherited fd, a chmod), the
//! peer uid is checked too: 0, or the daemon's own uid when it runs unprivileged.

use pagetable::admin::{AdminReply, AdminRequest, MAX_LINE};
use pagetable::transport::{Connection, PeerIdentity, Transport, UnixTransport};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;

pub fn serve(transport: UnixTransport, daemon: Arc<Daemon>) {
    tracing::info!(on = %transport.describe(), "serving admin requests");
    loop {
        match transport.accept() {
            Ok(conn) => {
                let daemon = daemon.clone();
                let spawned = std::thread::Builder::new()
                    .name("pagetable-admin".into())
                    .spawn(move || handle(conn, &daemon));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start an admin thread");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn reply_line(w: &mut impl Write, reply: &AdminReply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

fn handle(conn: impl Connection, daemon: &Daemon) {
    let PeerIdentity::Unix { pid, uid, .. } = conn.peer();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    let Ok(mut writer) = conn.try_clone_conn() else {
        return;
    };
    if uid != 0 && uid != own_uid {
        tracing::warn!(pid, uid, "admin connection from a non-root peer refused");
        // Read the request first: closing under a client that is still writing would
        // give it EPIPE instead of the reason.
        let _ = conn.set_timeouts(Some(Duration::from_secs(2)), Some(Duration::from_secs(2)));
        let mut first = Vec::new();
        let _ = BufReader::new((&mut writer).take(MAX_LINE as u64)).read_until(b'\n', &mut first);
        let _ = reply_line(
            &mut writer,
            &AdminReply::Error {
                message: format!("uid {uid} may not use the admin socket"),
            },
        );
        conn.shutdown();
        return;
    }
    let _ = conn.set_timeouts(
        Some(Duration::from_secs(300)),
        Some(Duration::from_secs(10)),
    );
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        // One byte over the limit tells an oversized line from one exactly at it.
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE {
            let _ = reply_line(
                &mut writer,
                &AdminReply::Error {
                    message: format!("admin line longer than {MAX_LINE} bytes"),
                },
            );
            break;
        }
        let reply = match serde_json::from_slice::<AdminRequest>(&line) {
            Ok(req) => daemon.admin(&req),
            Err(e) => AdminReply::Error {
                message: format!("bad admin request: {e}"),
            },
        };
        if reply_line(&mut writer, &reply).is_err() {
            break;
        }
    }
    reader.get_ref().shutdown();
}
