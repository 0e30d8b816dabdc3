//! The control socket of an export process: the control plane for a volume that is
//! open (and so locked) in another process. One JSON request per line, one JSON reply
//! per line. The NBD socket beside it is the data plane; the two never share a thread.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Requests are small; anything longer is not ours.
const MAX_REQUEST: u64 = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Take a snapshot of the open volume (its writes are held while the top layer swaps).
    Snapshot { snapshot: String },
    /// Move byte ranges `(offset, length)` to the front of the hydration queue.
    Prefetch { ranges: Vec<(u64, u64)> },
    /// Hydrate every remaining region now (whatever the clone's hydrate setting), in
    /// the background of the export process; the reply comes at once.
    HydrateAll,
    /// Make every acknowledged write durable.
    Flush,
    /// Live status of the open volume, as JSON.
    Status,
    /// Flush and exit.
    Shutdown,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Reply {
    pub fn ok(data: Option<serde_json::Value>) -> Self {
        Reply {
            ok: true,
            error: None,
            data,
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(msg.into()),
            data: None,
        }
    }
}

pub trait ControlHandler: Send + Sync {
    fn handle(&self, request: Request) -> Reply;
}

/// Sends one request and waits for the reply. The timeout is generous because a
/// snapshot waits for in-flight writes.
pub fn call(socket: &Path, request: &Request) -> Result<Option<serde_json::Value>> {
    let mut stream = UnixStream::connect(socket).map_err(|source| Error::NoExport {
        path: socket.to_path_buf(),
        source,
    })?;
    let io = Error::io("control socket", socket);
    let mut exchange = || -> std::io::Result<String> {
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut line = serde_json::to_string(request).expect("requests always serialize");
        line.push('\n');
        stream.write_all(line.as_bytes())?;
        let mut reply = String::new();
        BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut reply)?;
        Ok(reply)
    };
    let reply = exchange().map_err(io)?;
    let reply: Reply = serde_json::from_str(reply.trim()).map_err(Error::BadReply)?;
    if reply.ok {
        Ok(reply.data)
    } else {
        Err(Error::Refused(
            reply.error.unwrap_or_else(|| "refused".into()),
        ))
    }
}

pub fn serve(listener: UnixListener, handler: Arc<dyn ControlHandler>, stop: Arc<AtomicBool>) {
    listener
        .set_nonblocking(true)
        .expect("set_nonblocking on a listener");
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve_one(stream, handler.as_ref()) {
                    tracing::warn!(error = %e, "control connection failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Nothing to accept; the stop flag is checked at this granularity.
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn serve_one(stream: UnixStream, handler: &dyn ControlHandler) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(req) => handler.handle(req),
        Err(e) => Reply::err(format!("malformed request: {e}")),
    };
    let mut out = serde_json::to_string(&reply).expect("replies always serialize");
    out.push('\n');
    writer.write_all(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder(Mutex<Vec<Request>>);
    impl ControlHandler for Recorder {
        fn handle(&self, request: Request) -> Reply {
            self.0.lock().unwrap().push(request.clone());
            match request {
                Request::Snapshot { snapshot } if snapshot == "clash" => {
                    Reply::err("snapshot name clash")
                }
                Request::Status => Reply::ok(Some(serde_json::json!({"size": 42}))),
                _ => Reply::ok(None),
            }
        }
    }

    #[test]
    fn requests_round_trip_and_errors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ctl");
        let listener = UnixListener::bind(&path).unwrap();
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (rec, stop) = (rec.clone(), stop.clone());
            std::thread::spawn(move || serve(listener, rec, stop))
        };
        let status = call(&path, &Request::Status).unwrap().unwrap();
        assert_eq!(status["size"], 42);
        let err = call(
            &path,
            &Request::Snapshot {
                snapshot: "clash".into(),
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("clash"), "{err}");
        call(
            &path,
            &Request::Prefetch {
                ranges: vec![(0, 4096)],
            },
        )
        .unwrap();

        // Garbage gets an error reply, not a dead server.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{not json\n").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.contains("malformed"), "{line}");
        assert!(call(&path, &Request::Flush).is_ok());

        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        assert_eq!(rec.0.lock().unwrap().len(), 4);
    }

    #[test]
    fn no_server_is_a_clear_error() {
        let err = call(Path::new("/nonexistent/x.ctl"), &Request::Status).unwrap_err();
        assert!(err.to_string().contains("no export process"), "{err}");
    }
}
