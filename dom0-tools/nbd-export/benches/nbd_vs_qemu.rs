//! This server (FileDevice) against qemu-nbd serving the same raw file, driven by the
//! same clients: nbdcopy for sequential reads, and this crate's minimal blocking
//! client for 16 KiB random reads at queue depth 1 (one and two connections).
//!
//! `cargo bench -p nbd-export --bench nbd_vs_qemu` (NBD_BENCH_MIB=256, NBD_BENCH_READS=20000)
//!
//! The image is read once before measuring, so both servers serve from the page
//! cache: this measures server overhead, not the disk.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nbd_export::client::Client;
use nbd_export::{FileDevice, Server};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "server at {} never came up",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wall-clock seconds of one nbdcopy from the export to null:.
fn nbdcopy_secs(uri: &str, connections: u32) -> f64 {
    let t = Instant::now();
    let st = Command::new("nbdcopy")
        .args([&format!("--connections={connections}"), uri, "null:"])
        .status()
        .expect("run nbdcopy");
    assert!(st.success(), "nbdcopy {uri} failed");
    t.elapsed().as_secs_f64()
}

/// Best of `reps` runs for each URI, alternating between them so that load from
/// other processes on a shared machine hits both sides alike.
fn nbdcopy_best(a: &str, b: &str, connections: u32, reps: u32) -> (f64, f64) {
    (0..reps).fold((f64::INFINITY, f64::INFINITY), |(ba, bb), _| {
        (
            ba.min(nbdcopy_secs(a, connections)),
            bb.min(nbdcopy_secs(b, connections)),
        )
    })
}

/// `reads` random 16 KiB-aligned reads per thread at queue depth 1; returns
/// (total IOPS, mean latency in microseconds).
fn random_reads(sock: &Path, name: &str, size: u64, reads: u64, threads: u64) -> (f64, f64) {
    const BS: u64 = 16 << 10;
    let t = Instant::now();
    let lat_sum: f64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                s.spawn(move || {
                    let mut c = Client::connect_unix(sock, name).expect("connect");
                    let mut buf = vec![0u8; BS as usize];
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i + 1);
                    let blocks = size / BS;
                    let start = Instant::now();
                    for _ in 0..reads {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        c.read((x % blocks) * BS, &mut buf).expect("read");
                    }
                    let per = start.elapsed().as_secs_f64() / reads as f64;
                    c.disconnect().ok();
                    per
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let secs = t.elapsed().as_secs_f64();
    (
        (reads * threads) as f64 / secs,
        lat_sum / threads as f64 * 1e6,
    )
}

/// `reads` random 16 KiB reads on one connection with `depth` requests in flight
/// (simple replies, matched by cookie); returns IOPS.
fn random_reads_pipelined(sock: &Path, name: &str, size: u64, reads: u64, depth: u64) -> f64 {
    use nbd_export::proto::{encode_request, parse_simple_reply, Request, CMD_READ};
    use std::io::{Read, Write};
    const BS: u64 = 16 << 10;
    let c = Client::connect_unix(sock, name).expect("connect");
    let mut s = c.into_stream();
    let blocks = size / BS;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = |cookie: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        encode_request(&Request {
            flags: 0,
            command: CMD_READ,
            cookie,
            offset: (x % blocks) * BS,
            len: BS as u32,
        })
    };
    let mut buf = vec![0u8; BS as usize];
    let t = Instant::now();
    for cookie in 0..depth.min(reads) {
        s.write_all(&next(cookie)).unwrap();
    }
    let mut sent = depth.min(reads);
    for _ in 0..reads {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let r = parse_simple_reply(&h).expect("simple reply");
        assert_eq!(r.error, 0);
        s.read_exact(&mut buf).unwrap();
        if sent < reads {
            s.write_all(&next(sent)).unwrap();
            sent += 1;
        }
    }
    reads as f64 / t.elapsed().as_secs_f64()
}

struct Row {
    what: String,
    ours: f64,
    qemu: f64,
    unit: &'static str,
    higher_better: bool,
}

fn main() {
    // `cargo test --benches` runs this binary with --bench absent; keep that cheap.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("nbd_vs_qemu: run with `cargo bench` to measure");
        return;
    }
    for t in ["qemu-nbd", "nbdcopy"] {
        if !have(t) {
            eprintln!("nbd_vs_qemu: SKIP, {t} not installed");
            return;
        }
    }
    let mib = env_num("NBD_BENCH_MIB", 256);
    let reads = env_num("NBD_BENCH_READS", 20000);
    let size = mib << 20;
    let dir = tempfile::Builder::new()
        .prefix("nbd-bench")
        .tempdir_in(
            std::env::var_os("NBD_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
        )
        .unwrap();
    let image = dir.path().join("image.raw");
    {
        // Incompressible, non-zero content so no layer can shortcut zero pages.
        let mut data = vec![0u8; size as usize];
        let mut x = 88172645463325252u64;
        for w in data.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        std::fs::write(&image, &data).unwrap();
    }
    let _ = std::fs::read(&image); // warm the page cache for both servers

    let ours_sock = dir.path().join("ours.sock");
    let dev = Arc::new(FileDevice::open(&image, true).unwrap());
    let handle = Server::new()
        .export("bench", dev)
        .unwrap()
        .serve_unix(&ours_sock)
        .unwrap();

    let qemu_sock = dir.path().join("qemu.sock");
    let _qemu = Kill(
        Command::new("qemu-nbd")
            .args([
                "-f",
                "raw",
                "-r",
                "-x",
                "bench",
                "--shared=16",
                "--persistent",
                "-k",
            ])
            .arg(&qemu_sock)
            .arg(&image)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn qemu-nbd"),
    );
    wait_for_socket(&qemu_sock);

    let uri = |s: &Path| format!("nbd+unix:///bench?socket={}", s.display());
    let mut rows = Vec::new();
    for conns in [1u32, 4] {
        let (ours, qemu) = nbdcopy_best(&uri(&ours_sock), &uri(&qemu_sock), conns, 5);
        let mibs = |s: f64| mib as f64 / s;
        rows.push(Row {
            what: format!("sequential read, nbdcopy --connections={conns}"),
            ours: mibs(ours),
            qemu: mibs(qemu),
            unit: "MiB/s",
            higher_better: true,
        });
    }
    // Warm-up pass so neither side pays first-touch costs in the measurement.
    random_reads(&ours_sock, "bench", size, reads / 10, 1);
    random_reads(&qemu_sock, "bench", size, reads / 10, 1);
    for threads in [1u64, 2] {
        let (o_iops, o_lat) = random_reads(&ours_sock, "bench", size, reads, threads);
        let (q_iops, q_lat) = random_reads(&qemu_sock, "bench", size, reads, threads);
        rows.push(Row {
            what: format!("16 KiB random read QD1 x{threads} conn, throughput"),
            ours: o_iops,
            qemu: q_iops,
            unit: "IOPS",
            higher_better: true,
        });
        rows.push(Row {
            what: format!("16 KiB random read QD1 x{threads} conn, mean latency"),
            ours: o_lat,
            qemu: q_lat,
            unit: "us",
            higher_better: false,
        });
    }
    let (o, q) = (
        random_reads_pipelined(&ours_sock, "bench", size, reads, 8),
        random_reads_pipelined(&qemu_sock, "bench", size, reads, 8),
    );
    rows.push(Row {
        what: "16 KiB random read QD8 x1 conn, throughput".into(),
        ours: o,
        qemu: q,
        unit: "IOPS",
        higher_better: true,
    });
    handle.shutdown();

    println!("image {mib} MiB (page cache warm), {reads} random reads per connection");
    println!("| workload | nbd-export | qemu-nbd | unit | nbd-export vs qemu-nbd |");
    println!("|---|---:|---:|---|---:|");
    for r in rows {
        let ratio = if r.higher_better {
            r.ours / r.qemu
        } else {
            r.qemu / r.ours
        };
        println!(
            "| {} | {:.1} | {:.1} | {} | {:.2}x |",
            r.what, r.ours, r.qemu, r.unit, ratio
        );
    }
    println!("(ratio > 1: nbd-export better; latency ratio is qemu/ours)");
}
