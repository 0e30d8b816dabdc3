//! The admin socket: JSON lines (`pagetable::admin`), root only and dom0-local. The
//! socket file is mode 0600 and, in case it is reached some other way (an inherited
//! fd, a chmod), the peer uid is checked too: 0, or the daemon's own uid when it runs
//! unprivileged. A peer that is not a local process (a Xen guest) is always refused:
//! whoever holds the admin socket decides which domain every peer is.

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

/// Why `peer` may not use the admin socket; None if it may.
fn refusal(peer: PeerIdentity, own_uid: u32) -> Option<String> {
    match peer {
        PeerIdentity::Unix { uid, .. } if uid == 0 || uid == own_uid => None,
        PeerIdentity::Unix { uid, .. } => Some(format!("uid {uid} may not use the admin socket")),
        PeerIdentity::Xen { domid } => Some(format!(
            "the admin socket is dom0-local; xen domain {domid} may not use it"
        )),
    }
}

pub(crate) fn handle(conn: impl Connection, daemon: &Daemon) {
    let peer = conn.peer();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    let Ok(mut writer) = conn.try_clone_conn() else {
        return;
    };
    if let Some(message) = refusal(peer, own_uid) {
        tracing::warn!(%peer, %message, "admin connection refused");
        // Read the request first: closing under a client that is still writing would
        // give it EPIPE instead of the reason.
        let _ = conn.set_timeouts(Some(Duration::from_secs(2)), Some(Duration::from_secs(2)));
        let mut first = Vec::new();
        let _ = BufReader::new((&mut writer).take(MAX_LINE as u64)).read_until(b'\n', &mut first);
        let _ = reply_line(&mut writer, &AdminReply::Error { message });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted_conn::ScriptedConn;
    use pagetable::TableConfig;

    fn answer(peer: PeerIdentity, request: &str) -> AdminReply {
        let daemon = Daemon::new(TableConfig::default(), None).unwrap();
        let conn = ScriptedConn::new(peer, request.as_bytes().to_vec());
        let out = conn.output();
        handle(conn, &daemon);
        let out = out.lock().clone();
        let line = out.split(|&b| b == b'\n').next().unwrap();
        serde_json::from_slice(line).unwrap()
    }

    #[test]
    fn a_xen_guest_is_refused_with_the_reason() {
        match answer(PeerIdentity::Xen { domid: 3 }, "{\"op\":\"stats\"}\n") {
            AdminReply::Error { message } => assert_eq!(
                message,
                "the admin socket is dom0-local; xen domain 3 may not use it"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn local_root_or_own_uid_is_served_and_other_uids_are_refused() {
        // SAFETY: geteuid has no preconditions.
        let own = unsafe { libc::geteuid() };
        let local = |uid| PeerIdentity::Unix {
            pid: 1,
            uid,
            gid: 0,
        };
        assert!(matches!(
            answer(local(own), "{\"op\":\"stats\"}\n"),
            AdminReply::Stats(_)
        ));
        assert_eq!(refusal(local(0), own), None);
        let other = if own == 4242 { 4243 } else { 4242 };
        assert_eq!(
            refusal(local(other), own),
            Some(format!("uid {other} may not use the admin socket"))
        );
    }
}
