//! IPC round trip of the real daemon over its Unix socket: p50/p99 for single
//! lookups and batches of 64 (target p99 <= 50 us).
//!
//! `cargo bench -p pagetabled --bench ipc`
//!
//! Starts the `pagetabled` binary, binds this process to a domain, registers 64 Ki
//! pages and then times each call of `pagetable::client::Client` (blocking, one
//! socket, what the guest agent uses) with `Instant`. Keys are uniformly random
//! registered pages, so every lookup is a hit.

use pagetable::admin::{AdminClient, AdminRequest};
use pagetable::client::Client;
use pagetable::wire::WireRegistration;
use pagetable::{DomainId, FamilyId, Frame};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PAGES: u32 = 1 << 16;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentiles(name: &str, mut ns: Vec<u64>, per_call: u32) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0;
    println!(
        "{name:<22} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>12.0}",
        ns.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        mean,
        f64::from(per_call) * 1e6 / mean
    );
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (single_n, batch_n) = if quick { (200, 50) } else { (100_000, 20_000) };

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("pt.sock");
    let admin = dir.path().join("admin.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pagetabled"))
        .args(["serve", "--foreground", "--socket"])
        .arg(&sock)
        .arg("--admin-socket")
        .arg(&admin)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn pagetabled");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _daemon = Daemon(child);
    assert!(ready.starts_with("pagetabled ready"), "{ready}");

    let mut a = AdminClient::connect(&admin).unwrap();
    a.call(&AdminRequest::FamilyCreate {
        family: FamilyId(1),
    })
    .unwrap();
    a.call(&AdminRequest::FamilyAdd {
        family: FamilyId(1),
        domain: DomainId(1),
    })
    .unwrap();
    a.call(&AdminRequest::BindPid {
        pid: std::process::id(),
        domain: DomainId(1),
    })
    .unwrap();

    let mut c = Client::connect_with_timeout(&sock, Duration::from_secs(5)).unwrap();
    let regs: Vec<WireRegistration> = (0..PAGES)
        .map(|i| WireRegistration {
            space_id: i % 16,
            page_no: i / 16,
            frame: Frame::LocalPool {
                offset: u64::from(i) * 16384,
            },
            lsn: 1,
            valid_from: u64::MAX,
            page_size: 16384,
        })
        .collect();
    let t = Instant::now();
    assert_eq!(c.register_many(&regs).unwrap(), PAGES);
    let reg_time = t.elapsed();

    let mut x = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % u64::from(PAGES)) as u32;
        (i % 16, i / 16)
    };
    for _ in 0..single_n.min(5000) {
        let (s, p) = next();
        c.lookup(s, p, u64::MAX).unwrap().unwrap();
    }
    let mut single = Vec::with_capacity(single_n);
    for _ in 0..single_n {
        let (s, p) = next();
        let t = Instant::now();
        let hit = c.lookup(s, p, u64::MAX).unwrap();
        single.push(t.elapsed().as_nanos() as u64);
        assert!(hit.is_some());
    }
    let mut batched = Vec::with_capacity(batch_n);
    let mut keys = Vec::with_capacity(64);
    for _ in 0..batch_n {
        keys.clear();
        keys.extend((0..64).map(|_| next()));
        let t = Instant::now();
        let found = c.lookup_many(&keys, u64::MAX).unwrap();
        batched.push(t.elapsed().as_nanos() as u64);
        assert!(found.iter().all(|f| f.is_some()));
    }
    let mut reg64 = Vec::with_capacity(batch_n);
    for chunk in regs.chunks(64).cycle().take(batch_n) {
        let t = Instant::now();
        c.register_many(chunk).unwrap();
        reg64.push(t.elapsed().as_nanos() as u64);
    }

    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "call (us)", "n", "p50", "p90", "p99", "p99.9", "mean", "keys/s"
    );
    percentiles("lookup x1", single, 1);
    percentiles("lookup_many x64", batched, 64);
    percentiles("register_many x64", reg64, 64);
    println!(
        "register_many of {PAGES} pages (chunks of 4096): {:.1} ms",
        reg_time.as_secs_f64() * 1000.0
    );
}
