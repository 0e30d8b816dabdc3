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

    let cp_target = dir.path().join("cp.raw");
    let t = Instant::now();
    assert!(Command::new("cp")
        .arg(&layer)
        .arg(&cp_target)
        .status()
        .unwrap()
        .success());
    let cp = t.elapsed();
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
    let cp_sync = t.elapsed();
    std::fs::remove_file(&cp_target).unwrap();
    let mbs = |d: Duration| size as f64 / d.as_secs_f64() / (1 << 20) as f64;
    println!(
        "size {mib} MiB; cp: {:.2} s ({:.0} MiB/s); cp+sync: {:.2} s ({:.0} MiB/s)",
        cp.as_secs_f64(),
        mbs(cp),
        cp_sync.as_secs_f64(),
        mbs(cp_sync)
    );
    println!("| region size | hydration s | MiB/s | vs cp | vs cp+sync |");
    println!("|---|---|---|---|---|");
    for rs in [64u64 << 10, 256 << 10, 1 << 20] {
        let name = format!("c{}", rs >> 10);
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
        let took = t.elapsed();
        drop(v);
        println!(
            "| {} KiB | {:.2} | {:.0} | {:.2}x | {:.2}x |",
            rs >> 10,
            took.as_secs_f64(),
            mbs(took),
            took.as_secs_f64() / cp.as_secs_f64(),
            took.as_secs_f64() / cp_sync.as_secs_f64()
        );
        store.delete(&name).unwrap();
    }
}
