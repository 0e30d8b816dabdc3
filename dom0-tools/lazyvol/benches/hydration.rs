//! Background hydration throughput of a 1 GiB clone against `cp` of the same image,
//! per region size. A plain bench binary (one run of each; hydration of 1 GiB is
//! too long for criterion's sampling).
//!
//! Run: `cargo bench -p lazyvol --bench hydration` (LAZYVOL_BENCH_MIB to change size).

use std::process::Command;
use std::time::{Duration, Instant};

use lazyvol::{CloneOptions, Store};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mib: u64 = std::env::var("LAZYVOL_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create("v", size).unwrap();
    {
        let v = store.open_volume("v").unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        for off in (0..size).step_by(1 << 20) {
            chunk[0] = (off >> 20) as u8;
            v.write_at(&chunk, off, false).unwrap();
        }
        v.flush().unwrap();
    }
    store.snapshot("v", "s").unwrap();
    let layer = std::fs::read_dir(store.root().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("data"))
        .find(|p| std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).unwrap()) > 0)
        .unwrap();

    let reps: usize = std::env::var("LAZYVOL_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let cp_target = dir.path().join("cp.raw");
    let mut cp = Vec::new();
    let mut cp_sync = Vec::new();
    let sizes = [64u64 << 10, 256 << 10, 1 << 20];
    let mut hyd: Vec<Vec<Duration>> = vec![Vec::new(); sizes.len()];
    // Interleaved repetitions: this VM is shared, so noise hits every variant alike.
    for rep in 0..reps {
        let t = Instant::now();
        assert!(Command::new("cp")
            .arg(&layer)
            .arg(&cp_target)
            .status()
            .unwrap()
            .success());
        cp.push(t.elapsed());
        std::fs::remove_file(&cp_target).unwrap();
        let t = Instant::now();
        assert!(Command::new("cp")
            .arg(&layer)
            .arg(&cp_target)
            .status()
            .unwrap()
            .success());
        assert!(Command::new("sync")
            .arg(&cp_target)
            .status()
            .unwrap()
            .success());
        cp_sync.push(t.elapsed());
        std::fs::remove_file(&cp_target).unwrap();
        for (i, &rs) in sizes.iter().enumerate() {
            let name = format!("c{}-{rep}", rs >> 10);
            store
                .clone(
                    "s",
                    &name,
                    CloneOptions {
                        hydrate: true,
                        rate: None,
                        region_size: rs,
                    },
                )
                .unwrap();
            let t = Instant::now();
            let v = store.open_volume(&name).unwrap();
            let deadline = Instant::now() + Duration::from_secs(600);
            while v.dependent() {
                assert!(Instant::now() < deadline, "hydration did not finish");
                std::thread::sleep(Duration::from_millis(2));
            }
            hyd[i].push(t.elapsed());
            drop(v);
            store.delete(&name).unwrap();
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mbs = |d: Duration| size as f64 / d.as_secs_f64() / (1 << 20) as f64;
    let (cp, cp_sync) = (median(&mut cp), median(&mut cp_sync));
    println!(
        "size {mib} MiB, median of {reps}; cp: {:.2} s ({:.0} MiB/s); cp+sync: {:.2} s ({:.0} MiB/s)",
        cp.as_secs_f64(),
        mbs(cp),
        cp_sync.as_secs_f64(),
        mbs(cp_sync)
    );
    println!("| region size | hydration s (median) | min..max s | MiB/s | time vs cp | time vs cp+sync |");
    println!("|---|---|---|---|---|---|");
    for (i, &rs) in sizes.iter().enumerate() {
        let m = median(&mut hyd[i]);
        println!(
            "| {} KiB | {:.2} | {:.2}..{:.2} | {:.0} | {:.2}x | {:.2}x |",
            rs >> 10,
            m.as_secs_f64(),
            hyd[i][0].as_secs_f64(),
            hyd[i][hyd[i].len() - 1].as_secs_f64(),
            mbs(m),
            m.as_secs_f64() / cp.as_secs_f64(),
            m.as_secs_f64() / cp_sync.as_secs_f64()
        );
    }
}
