//! kill -9 of the export process at random points while a real NBD client (libnbd,
//! through its Python bindings) writes and flushes, with background hydration running.
//! After each restart every byte must equal the last flushed write, a write made after
//! that flush, or the snapshot's byte; and regions committed as hydrated before a crash
//! must not be fetched again.

mod common;
use common::*;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const SIZE: usize = 24 << 20;
const REGION: u64 = 64 << 10;

/// Reads ops from stdin, answers one line each, so the test knows what was acknowledged.
const CLIENT: &str = r#"
import sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    p = line.split()
    try:
        if p[0] == "W":
            off, ln, b = int(p[1]), int(p[2]), int(p[3])
            h.pwrite(bytes([b]) * ln, off)
        elif p[0] == "F":
            h.flush()
        elif p[0] == "P":
            time.sleep(int(p[1]) / 1000.0)
        elif p[0] == "D":
            off, ln = int(p[1]), int(p[2])
            with open(p[3], "wb") as f:
                f.write(h.pread(ln, off))
        print("ok", flush=True)
    except Exception as e:
        print("err", e, flush=True)
"#;

/// One byte's history: its value at the last acknowledged flush, and the values of
/// writes since (acknowledged or in flight), any of which may have reached the disk.
struct Model {
    durable: Vec<u8>,
    pending: Vec<(usize, usize, u8)>,
}

impl Model {
    fn check(&self, got: &[u8]) {
        for (i, &b) in got.iter().enumerate() {
            if b == self.durable[i] {
                continue;
            }
            let allowed = self
                .pending
                .iter()
                .any(|&(off, len, v)| i >= off && i < off + len && v == b);
            assert!(
                allowed,
                "byte {i} is {b:#x}; durable {:#x}; pending writes over it: {:?}",
                self.durable[i],
                self.pending
                    .iter()
                    .filter(|&&(o, l, _)| i >= o && i < o + l)
                    .collect::<Vec<_>>()
            );
        }
    }
}

fn read_all(uri: &str, dest: &std::path::Path) -> Vec<u8> {
    let st = Command::new("nbdcopy")
        .args([uri, dest.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "nbdcopy failed");
    std::fs::read(dest).unwrap()
}

/// The libnbd client process, driven one op at a time.
struct Client {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: BufReader<std::process::ChildStdout>,
}

impl Client {
    fn start(script: &std::path::Path, uri: &str) -> Self {
        let mut child = Command::new(SYSTEM_PYTHON)
            .arg(script)
            .arg(uri)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let to = child.stdin.take().unwrap();
        let from = BufReader::new(child.stdout.take().unwrap());
        let mut c = Client { child, to, from };
        assert_eq!(c.answer(), "ready");
        c
    }
    fn send(&mut self, op: &str) {
        writeln!(self.to, "{op}").unwrap();
        self.to.flush().unwrap();
    }
    fn answer(&mut self) -> String {
        let mut line = String::new();
        self.from.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
    fn call(&mut self, op: &str) {
        self.send(op);
        let a = self.answer();
        assert_eq!(a, "ok", "{op} failed: {a}");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fetches(st: &serde_json::Value) -> u64 {
    st["on_demand_fetches"].as_u64().unwrap() + st["background_fetches"].as_u64().unwrap()
}

#[test]
fn crash_at_random_points_never_loses_flushed_data() {
    if !have("nbdcopy") || !std::path::Path::new(SYSTEM_PYTHON).exists() {
        return;
    }
    if Command::new(SYSTEM_PYTHON)
        .args(["-c", "import nbd"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("SKIP: python3-libnbd is not installed");
        return;
    }
    let store = TestStore::new();
    let seed: u64 = std::env::var("DBFORK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261121);
    eprintln!("seed {seed} (set DBFORK_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let base: Vec<u8> = (0..SIZE)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] | 1)
        .collect();
    let img = store.path().join("base.raw");
    std::fs::write(&img, &base).unwrap();
    store.ok(&["volume", "import", "base", img.to_str().unwrap()]);
    store.ok(&["volume", "snapshot", "base", "snap"]);
    // Slow background hydration, so that crashes land while most regions are not
    // hydrated yet and writes go to regions whose copy-up is not committed.
    store.ok(&[
        "volume",
        "clone",
        "snap",
        "c",
        "--rate",
        "1",
        "--region-size",
        "64K",
    ]);
    let client_py = store.path().join("client.py");
    std::fs::write(&client_py, CLIENT).unwrap();
    let dump = store.path().join("dump.raw");

    let mut model = Model {
        durable: base.clone(),
        pending: Vec::new(),
    };
    let regions = SIZE as u64 / REGION;
    let mut hydrated_at_last_crash = 0;
    for it in 0..12 {
        // Committed state, read from disk while no export runs.
        let st0 = store.json(&["volume", "status", "c"]);
        let hydrated0 = st0["hydrated_bytes"].as_u64().unwrap() / REGION;
        let fetched0 = fetches(&st0);
        assert!(
            hydrated0 >= hydrated_at_last_crash,
            "iteration {it}: committed hydration went backwards"
        );
        let ex = ExportProc::start(&store, "c");
        let uri = ex.uri("c");
        let mut client = Client::start(&client_py, &uri);

        // What the restarted engine serves is allowed by the model: check every
        // region written since the last check and a few random ones (reading all of
        // it would hydrate everything and leave nothing for the next crash to hit).
        let mut check: Vec<u64> = model
            .pending
            .iter()
            .flat_map(|&(o, l, _)| (o as u64 / REGION)..=((o + l - 1) as u64 / REGION))
            .collect();
        check.extend((0..3).map(|_| rng.gen_range(0..regions)));
        check.sort_unstable();
        check.dedup();
        for r in check {
            let (off, len) = ((r * REGION) as usize, REGION as usize);
            client.call(&format!("D {off} {len} {}", dump.display()));
            let got = std::fs::read(&dump).unwrap();
            let sub = Model {
                durable: model.durable[off..off + len].to_vec(),
                pending: model
                    .pending
                    .iter()
                    .filter(|&&(o, l, _)| o < off + len && o + l > off)
                    .map(|&(o, l, v)| {
                        let s = o.max(off);
                        let e = (o + l).min(off + len);
                        (s - off, e - s, v)
                    })
                    .collect(),
            };
            sub.check(&got);
            // What it serves now is its state from here on.
            model.durable[off..off + len].copy_from_slice(&got);
        }
        // Every region a pending write touched was just checked and its served
        // content adopted, so those writes are settled: a write lost in the crash must
        // not come back as "durable" at the next flush.
        model.pending.clear();

        let ops = rng.gen_range(5..80);
        for op in 0..ops {
            let roll = rng.gen_range(0..100);
            let cmd = if roll < 15 {
                "F".to_string()
            } else if roll < 22 {
                // Shapes where kills fall relative to the periodic commit.
                format!("P {}", rng.gen_range(50..700))
            } else {
                // Partial-region, whole-region and region-straddling writes.
                let len = [
                    512usize,
                    4096,
                    16384,
                    REGION as usize,
                    3 * REGION as usize / 2,
                    200_000,
                ][rng.gen_range(0..6)];
                let off = rng.gen_range(0..SIZE - len) & !511;
                let val = rng.gen_range(1..=255u8);
                model.pending.push((off, len, val));
                format!("W {off} {len} {val}")
            };
            if op + 1 == ops {
                // The last op is left in flight when we crash, on purpose.
                client.send(&cmd);
                break;
            }
            client.call(&cmd);
            if cmd == "F" {
                // Everything acknowledged before an acknowledged flush is durable.
                for &(off, len, v) in &model.pending {
                    model.durable[off..off + len].fill(v);
                }
                model.pending.clear();
            }
        }
        ex.crash();
        drop(client);

        // No refetch: every fetch committed in this run hydrated a region that was not
        // committed as hydrated before it (whole-region writes hydrate without a fetch).
        let st = store.json(&["volume", "status", "c"]);
        let hydrated1 = st["hydrated_bytes"].as_u64().unwrap() / REGION;
        let fetched1 = fetches(&st);
        assert!(
            fetched1 >= fetched0 && hydrated1 >= hydrated0,
            "iteration {it}: committed counters went backwards: {st0} -> {st}"
        );
        assert!(
            fetched1 - fetched0 <= hydrated1 - hydrated0,
            "iteration {it}: {} fetches committed for {} newly hydrated regions",
            fetched1 - fetched0,
            hydrated1 - hydrated0
        );
        hydrated_at_last_crash = hydrated1;
    }

    // Finally all of it, then a clean stop and restart changes nothing.
    let ex = ExportProc::start(&store, "c");
    let got = read_all(&ex.uri("c"), &dump);
    model.check(&got);
    ex.stop();
    let ex = ExportProc::start(&store, "c");
    let again = read_all(&ex.uri("c"), &dump);
    assert!(again == got, "a clean restart changed the volume");
    ex.stop();
}
