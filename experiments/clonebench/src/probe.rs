//! An outside observer of "time to first query": a thread that keeps trying to
//! read a row of user data over a server's socket, from the moment a clone
//! starts, and notes when the first answer arrives. The same observer for the
//! dbfork path and the native path, so neither side's own bookkeeping is trusted.

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Pause between attempts; bounds the probe's resolution.
const RETRY: Duration = Duration::from_millis(20);

pub struct FirstQueryProbe {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Option<Instant>>>,
}

impl FirstQueryProbe {
    /// Starts polling `socket` with `query` (root over unix_socket auth).
    pub fn start(socket: PathBuf, query: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if socket.exists() && try_query(&socket, &query) {
                    return Some(Instant::now());
                }
                std::thread::sleep(RETRY);
            }
            None
        });
        FirstQueryProbe {
            stop,
            handle: Some(handle),
        }
    }

    /// When the first answer came, waiting up to `grace` for it after the clone
    /// itself returned (the clone's own probe may win the race by a few ms).
    pub fn finish(mut self, grace: Duration) -> Option<Instant> {
        let deadline = Instant::now() + grace;
        let handle = self.handle.take().expect("present until finish");
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(RETRY);
        }
        self.stop.store(true, Ordering::Relaxed);
        handle.join().ok().flatten()
    }
}

impl Drop for FirstQueryProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn try_query(socket: &std::path::Path, query: &str) -> bool {
    let opts = OptsBuilder::new()
        .socket(Some(socket.to_string_lossy().into_owned()))
        .user(Some("root"))
        .prefer_socket(true)
        .read_timeout(Some(Duration::from_secs(5)))
        .write_timeout(Some(Duration::from_secs(5)));
    let Ok(mut conn) = Conn::new(opts) else {
        return false;
    };
    matches!(conn.query_first::<mysql::Value, _>(query), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use experiments_support::testing::InstanceGuard;

    #[test]
    fn a_real_server_answers_and_an_error_is_not_an_answer() {
        let src = InstanceGuard::source("probe", 31).unwrap();
        src.exec("CREATE DATABASE p").unwrap();
        src.exec("CREATE TABLE p.t (id INT PRIMARY KEY, k INT) ENGINE=InnoDB")
            .unwrap();
        let socket = src.config().socket_path();

        // The table is empty: the query runs but returns no row, so no answer yet.
        let t0 = Instant::now();
        let probe = FirstQueryProbe::start(socket.clone(), "SELECT k FROM p.t WHERE id = 1".into());
        assert_eq!(probe.finish(Duration::from_millis(300)), None);

        let probe =
            FirstQueryProbe::start(socket.clone(), "SELECT k FROM p.nope WHERE id = 1".into());
        assert_eq!(probe.finish(Duration::from_millis(300)), None);

        src.exec("INSERT INTO p.t VALUES (1, 7)").unwrap();
        let probe = FirstQueryProbe::start(socket, "SELECT k FROM p.t WHERE id = 1".into());
        let at = probe
            .finish(Duration::from_secs(30))
            .expect("a live server answers");
        assert!(at > t0);
    }

    #[test]
    fn a_socket_that_never_appears_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        let probe = FirstQueryProbe::start(dir.path().join("mysqld.sock"), "SELECT 1".into());
        assert_eq!(probe.finish(Duration::from_millis(100)), None);
    }

    #[test]
    fn a_socket_that_is_not_a_server_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mysqld.sock");
        // Accepts and closes connections: a listener that never speaks MySQL.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let probe = FirstQueryProbe::start(path, "SELECT 1".into());
        let end = Instant::now() + Duration::from_millis(300);
        while Instant::now() < end {
            if let Ok((s, _)) = listener.accept() {
                drop(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(probe.finish(Duration::ZERO), None);
    }
}
