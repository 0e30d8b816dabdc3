//! The Xen lab's grant check (experiments/xen-lab/guest/grant-dom0.sh runs it).
//!
//! `source` runs in a PV domU with dbfork_gnt loaded: it fills a pool with a known
//! pattern, grants its frames read-only to a domain through the agent's `DbforkGnt`,
//! publishes the refs in its xenstore directory and then serves requests from dom0
//! there (`revoke`, `regrant`, `quit`), answering what the module said.
//!
//! `map` runs in dom0: it maps the refs through gntdev with the agent's replica code
//! (`grant::map_over`, the unshare path) and checks, step by step, what sharing
//! depends on: the bytes, revokes refused while mapped, a write making a frame
//! private and letting its grants go, teardown in both orders, a mapper killed with
//! mappings outstanding. Each check prints `CHECK ok NAME detail` or
//! `CHECK fail NAME why`; the exit status is 1 if any failed.
//!
//! `channel-first-request` runs in dom0 for the fork run (fork-dom0.sh): a first
//! request on a domU's channel while the domU is paused (`channel.rs`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::Path;
use std::sync::Arc;

use dbfork_agent::directory::{PageDirectory, PageTableDirectory};
use dbfork_agent::frame_store::{FrameRecord, FrameStore, FRAME_SIZE};
use dbfork_agent::grant::issuer::{DbforkGnt, Revoked};
use dbfork_agent::grant::store::{XenReplicaStore, XenSourceStore};
use dbfork_agent::grant::{self, Gntdev, GrantRef, GRANTS_PER_FRAME};
use dbfork_agent::pool::Pool;
use dbfork_agent::unshare;
use xenstore::Xenstore;

mod channel;

#[derive(Parser)]
#[command(about = "The Xen lab's grant check: source (in a domU) and map (in dom0)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// In the granting domU: grant FRAMES pool frames to domain TO and serve dom0.
    Source {
        #[arg(long, default_value_t = 0)]
        to: u16,
        #[arg(long, default_value_t = 8)]
        frames: usize,
    },
    /// In dom0: map the frames domain FROM granted and run the checks.
    Map {
        #[arg(long)]
        from: u16,
    },
    /// In dom0: print how many of domain DOMID's grants Xen counts as mapped now (the
    /// fork run's checks), or only those mapped by domain MAPPER.
    Grants {
        #[arg(long)]
        domid: u16,
        #[arg(long)]
        mapped_by: Option<u16>,
    },
    /// In dom0: ask DOMAIN's guest side on its channel SOCKET (dom0's end, relay
    /// RELAY_PID) a first request while the domain is paused (`channel.rs`).
    ChannelFirstRequest {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        socket: std::path::PathBuf,
        #[arg(long)]
        relay_pid: u32,
        #[arg(long, default_value_t = 10)]
        hello_secs: u64,
    },
}

const DIR: &str = "data/grant-probe";
const WAIT: Duration = Duration::from_secs(120);

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Source { to, frames } => source(to, frames),
        Cmd::Map { from } => map(from),
        Cmd::Grants { domid, mapped_by } => {
            grants_mapped(domid, mapped_by).map(|n| println!("{n}"))
        }
        Cmd::ChannelFirstRequest {
            domain,
            socket,
            relay_pid,
            hello_secs,
        } => channel::first_request(&domain, &socket, relay_pid, Duration::from_secs(hello_secs)),
    };
    if let Err(e) = r {
        eprintln!("dbfork-grant-probe: {e:#}");
        std::process::exit(2);
    }
}

/// The byte at `i` of frame `f` in the pool of the run seeded `seed`.
fn pattern(seed: u32, f: usize, i: usize) -> u8 {
    (seed as usize)
        .wrapping_add(f.wrapping_mul(131))
        .wrapping_add(i.wrapping_mul(7))
        .wrapping_add(i >> 12) as u8
}

/// `frames` frames of private memory, FRAME_SIZE-aligned (leaked: the process is
/// short-lived and the frames' addresses must not be reused).
fn frames(n: usize) -> Result<usize> {
    // SAFETY: a new private anonymous mapping, ours alone.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            (n + 1) * FRAME_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("mmap of {n} frames: {}", std::io::Error::last_os_error());
    }
    Ok((p as usize + FRAME_SIZE - 1) & !(FRAME_SIZE - 1))
}

fn frame_bytes(base: usize, f: usize) -> &'static [u8] {
    // SAFETY: frame f of a pool made by `frames` (never unmapped), readable.
    unsafe { std::slice::from_raw_parts((base + f * FRAME_SIZE) as *const u8, FRAME_SIZE) }
}

// --- the granting side -------------------------------------------------------------

fn source(to: u16, n: usize) -> Result<()> {
    let xs = Xenstore::open().context("opening xenstore")?;
    let seed = std::process::id();
    let base = frames(n)?;
    for f in 0..n {
        // SAFETY: frame f of our own pool.
        let b = unsafe {
            std::slice::from_raw_parts_mut((base + f * FRAME_SIZE) as *mut u8, FRAME_SIZE)
        };
        for (i, x) in b.iter_mut().enumerate() {
            *x = pattern(seed, f, i);
        }
    }
    let gnt = DbforkGnt::open()?;
    gnt.set_pool(base, n * FRAME_SIZE)?;
    let mut outstanding: Vec<u32> = Vec::new();
    let grant_all = |outstanding: &mut Vec<u32>| -> Result<String> {
        let mut refs = Vec::new();
        for f in 0..n {
            let frame = gnt.grant_frame(base + f * FRAME_SIZE, to)?;
            // One reference names the frame: its pages' are consecutive.
            refs.push(frame[0].gref.to_string());
            outstanding.extend(frame.iter().map(|r| r.gref));
        }
        Ok(format!("{seed};{n};{}", refs.join(",")))
    };
    let refs = grant_all(&mut outstanding)?;
    let ask = format!("{DIR}/ask");
    xs.write(&ask, b"0:none")?;
    xs.watch(&ask, "ask")?;
    xs.write(&format!("{DIR}/refs"), refs.as_bytes())?;
    // The pool shared through the page table (request "share"), kept until quit.
    let mut shared: Option<(Arc<XenSourceStore>, PageTableDirectory)> = None;
    let mut last = 0u64;
    loop {
        if xs.next_event(Duration::from_secs(600))?.is_none() {
            bail!("no request from dom0 in 10 minutes");
        }
        let Some(req) = xs.read_string(&ask)? else {
            continue;
        };
        let Some((seq, cmd)) = req.split_once(':') else {
            continue;
        };
        let seq: u64 = seq.parse().unwrap_or(0);
        if seq <= last {
            continue;
        }
        last = seq;
        let answer = match cmd {
            "revoke" => {
                let (mut ended, mut busy) = (0, 0);
                let mut still = Vec::new();
                let mut err = None;
                for gref in outstanding.drain(..) {
                    match gnt.revoke(gref) {
                        Ok(Revoked::Ended) => ended += 1,
                        Ok(Revoked::StillMapped) => {
                            busy += 1;
                            still.push(gref);
                        }
                        Err(e) => err = Some(format!("{e:#}")),
                    }
                }
                outstanding = still;
                match err {
                    Some(e) => format!("error {e}"),
                    None => format!("ended={ended} busy={busy}"),
                }
            }
            "regrant" => match grant_all(&mut outstanding) {
                Ok(refs) => format!("refs={refs}"),
                Err(e) => format!("error {e:#}"),
            },
            "share" => match share_through_pagetable(&xs, seed, to) {
                Ok((store, dir, n)) => {
                    shared = Some((store, dir));
                    format!("registered={n}")
                }
                Err(e) => format!("error {e:#}"),
            },
            "quit" => {
                drop(shared.take());
                xs.write(&format!("{DIR}/answer"), format!("{seq}:bye").as_bytes())?;
                // Closing the device ends the grants left, later for mapped ones.
                drop(gnt);
                return Ok(());
            }
            other => format!("error unknown request {other:?}"),
        };
        xs.write(
            &format!("{DIR}/answer"),
            format!("{seq}:{answer}").as_bytes(),
        )?;
    }
}

/// Frames the source offers to its Xen frame store in the page-table check.
const SHARE_FRAMES: usize = 8;
/// Inside the domU: the guest end of its channel to dom0's page table (a client-mode
/// vchan-socket-proxy that grant-init.sh starts).
const GUEST_PAGETABLE: &str = "/run/pt.sock";

/// The bytes of frame `f` the source shares through the page table.
fn shared_byte(seed: u32, f: usize, i: usize) -> u8 {
    pattern(seed ^ 0x5a5a, f, i)
}

fn shared_record(f: usize) -> FrameRecord {
    FrameRecord {
        space_id: 7,
        page_no: f as u32,
        lsn: 100 + f as u64,
        valid_from: 1000,
    }
}

/// In the domU: the agent's Xen source store over a pool in /run, granting to `to`,
/// its frames registered with dom0's page table through this domain's channel.
fn share_through_pagetable(
    xs: &Xenstore,
    seed: u32,
    to: u16,
) -> Result<(Arc<XenSourceStore>, PageTableDirectory, u64)> {
    let own: u16 = xs
        .read_string("domid")?
        .context("no domid in xenstore")?
        .trim()
        .parse()
        .context("domid")?;
    let pool = Pool::open(Path::new("/run/grant-probe-pool"), true)?
        .with_limit(Some((SHARE_FRAMES * FRAME_SIZE) as u64));
    let gnt = DbforkGnt::open()?.with_own_domid(own);
    let store = Arc::new(XenSourceStore::open(pool, Box::new(gnt), own)?);
    let mut page = vec![0u8; FRAME_SIZE];
    for f in 0..SHARE_FRAMES {
        for (i, b) in page.iter_mut().enumerate() {
            *b = shared_byte(seed, f, i);
        }
        store.offer(&page, shared_record(f))?;
    }
    store.add_grantee(to)?;
    let mut dir = PageTableDirectory::new(Path::new(GUEST_PAGETABLE), store.clone());
    // As the agent does in the background: a first connection over a new vchan may
    // miss the client's 500 ms reply timeout under TCG; the directory reconnects at
    // most once a second, so ask again for a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        match dir.sync() {
            Ok(k) => n += k,
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => {}
        }
        if n >= SHARE_FRAMES as u64 || Instant::now() >= deadline {
            break;
        }
        // The directory's reconnect interval; nothing to wait on.
        std::thread::sleep(Duration::from_millis(1100));
    }
    Ok((store, dir, n))
}

// --- dom0's side ---------------------------------------------------------------------

/// Requests to the source over its xenstore directory.
struct Source {
    xs: Xenstore,
    dir: String,
    seq: u64,
}

impl Source {
    /// Waits for `key` in the source's directory to exist (and, with `not`, to differ
    /// from it).
    fn wait_for(&self, key: &str, not: Option<&str>) -> Result<String> {
        let path = format!("{}/{key}", self.dir);
        let token = format!("wait-{key}");
        self.xs.watch(&path, &token)?;
        let deadline = Instant::now() + WAIT;
        let r = loop {
            if let Some(v) = self.xs.read_string(&path)? {
                if not != Some(v.as_str()) {
                    break Ok(v);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.xs.next_event(left)?.is_none() {
                break Err(anyhow!("{path} not there after {} s", WAIT.as_secs()));
            }
        };
        let _ = self.xs.unwatch(&path, &token);
        r
    }

    fn ask(&mut self, cmd: &str) -> Result<String> {
        self.seq += 1;
        let prefix = format!("{}:", self.seq);
        let before = self.xs.read_string(&format!("{}/answer", self.dir))?;
        self.xs.write(
            &format!("{}/ask", self.dir),
            format!("{prefix}{cmd}").as_bytes(),
        )?;
        let deadline = Instant::now() + WAIT;
        loop {
            let a = self.wait_for("answer", before.as_deref())?;
            if let Some(rest) = a.strip_prefix(&prefix) {
                if let Some(e) = rest.strip_prefix("error ") {
                    bail!("the source failed {cmd:?}: {e}");
                }
                return Ok(rest.to_string());
            }
            if Instant::now() > deadline {
                bail!("no answer to {cmd:?} in {} s", WAIT.as_secs());
            }
        }
    }
}

struct Refs {
    seed: u32,
    frames: usize,
    grefs: Vec<u32>,
}

fn parse_refs(s: &str) -> Result<Refs> {
    let mut parts = s.splitn(3, ';');
    let (Some(seed), Some(frames), Some(list)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("malformed refs {s:?}");
    };
    let grefs = list
        .split(',')
        .map(|x| x.parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("malformed refs {s:?}"))?;
    let frames: usize = frames.parse()?;
    if grefs.len() != frames {
        bail!("{} refs for {frames} frames", grefs.len());
    }
    Ok(Refs {
        seed: seed.parse()?,
        frames,
        grefs,
    })
}

impl Refs {
    fn of_frame(&self, domid: u16, f: usize) -> [GrantRef; GRANTS_PER_FRAME] {
        GrantRef::frame(domid, self.grefs[f])
    }
}

/// How many of `domid`'s grants Xen counts as mapped now (its 'g' debug key: every
/// active grant entry of each domain, printed to the hypervisor's console ring), by any
/// domain or by `mapper` only (the active entry's domain: the dump's second column).
/// The domain's own rings and disks are in the count too: compare with a baseline.
fn grants_mapped(domid: u16, mapper: Option<u16>) -> Result<usize> {
    let xl = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new("xl")
            .args(args)
            .output()
            .with_context(|| format!("running xl {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "xl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    xl(&["dmesg", "-c"])?;
    xl(&["debug-keys", "g"])?;
    let log = xl(&["dmesg", "-c"])?;
    if !log.contains("gnttab_usage_print_all ]") {
        bail!("no grant table dump in xl dmesg after xl debug-keys g");
    }
    let header = format!("grant-table for remote d{domid} ");
    let mut count = 0;
    let mut inside = false;
    for line in log.lines() {
        let line = line.trim_start_matches("(XEN)").trim();
        if line.starts_with("grant-table for remote") {
            inside = line.starts_with(&header);
        } else if line.starts_with("gnttab_usage_print_all") {
            inside = false;
        } else if inside && line.starts_with("[0x") {
            let by = line
                .split_whitespace()
                .nth(1)
                .and_then(|d| d.parse::<u16>().ok());
            if mapper.is_none() || by == mapper {
                count += 1;
            }
        }
    }
    Ok(count)
}

struct Checks {
    failed: usize,
}

impl Checks {
    fn report(&mut self, name: &str, r: Result<String>) -> bool {
        match r {
            Ok(detail) => {
                println!("CHECK ok {name} {detail}");
                true
            }
            Err(e) => {
                println!("CHECK fail {name} {e:#}");
                self.failed += 1;
                false
            }
        }
    }
}

fn expect(answer: &str, want: &str) -> Result<String> {
    if answer == want {
        Ok(format!("the source's revoke: {answer}"))
    } else {
        bail!("the source's revoke said {answer:?}, expected {want:?}")
    }
}

/// Maps every frame of `refs` from `from` into the pool at `base` and checks the bytes.
fn map_all(dev: &Gntdev, from: u16, refs: &Refs, base: usize) -> Result<String> {
    let t = Instant::now();
    for f in 0..refs.frames {
        // SAFETY: frame f of our own pool; nothing else uses it.
        unsafe {
            grant::map_over(
                dev,
                &refs.of_frame(from, f),
                (base + f * FRAME_SIZE) as *mut u8,
            )
        }
        .with_context(|| format!("frame {f}"))?;
    }
    for f in 0..refs.frames {
        let b = frame_bytes(base, f);
        if let Some(i) = (0..FRAME_SIZE).find(|&i| b[i] != pattern(refs.seed, f, i)) {
            bail!(
                "frame {f} byte {i} is {:#x}, the source wrote {:#x}",
                b[i],
                pattern(refs.seed, f, i)
            );
        }
    }
    Ok(format!(
        "{} frames ({} grants, each frame one run of references) mapped read-only through gntdev in {:.1} ms, every byte as the source wrote it",
        refs.frames,
        refs.frames * GRANTS_PER_FRAME,
        t.elapsed().as_secs_f64() * 1e3
    ))
}

fn map(from: u16) -> Result<()> {
    let xs = Xenstore::open().context("opening xenstore")?;
    let mut src = Source {
        xs,
        dir: format!("/local/domain/{from}/{DIR}"),
        seq: 0,
    };
    let mut c = Checks { failed: 0 };
    let refs = match src.wait_for("refs", None).and_then(|s| parse_refs(&s)) {
        Ok(r) => r,
        Err(e) => {
            c.report("grant-refs-published", Err(e));
            std::process::exit(1);
        }
    };
    c.report(
        "grant-refs-published",
        Ok(format!("{} frames, refs {}..", refs.frames, refs.grefs[0])),
    );
    let n = refs.frames;
    if n < 3 {
        bail!("the checks need at least 3 frames, the source granted {n}");
    }
    unshare::init(4 * n);
    // SAFETY: libc's sigaction (this program has no preload).
    unsafe { dbfork_agent::fault::install(libc::sigaction) }
        .context("installing the fault handler")?;
    let dev = Gntdev::open()?;
    let base = frames(n)?;

    let baseline = grants_mapped(from, None);
    let r = map_all(&dev, from, &refs, base).and_then(|d| {
        let base_count = baseline?;
        let now = grants_mapped(from, None)?;
        if now != base_count + n * GRANTS_PER_FRAME {
            bail!(
                "Xen counts {now} of d{from}'s grants mapped, {base_count} before: not {} more",
                n * GRANTS_PER_FRAME
            );
        }
        Ok(format!(
            "{d}; Xen's active grants of d{from}: {base_count} (its rings and disk) -> {now}"
        ))
    });
    if !c.report("grant-mapped-verified", r) {
        std::process::exit(1);
    }
    let all = n * GRANTS_PER_FRAME;
    let r = src
        .ask("revoke")
        .and_then(|a| expect(&a, &format!("ended=0 busy={all}")));
    c.report("grant-revoke-refused-while-mapped", r);

    // The replica's first write to a shared frame, and a read into another.
    let r = (|| {
        let before = (unshare::unshared_on_write(), unshare::unshared_before_io());
        // SAFETY: byte 100 of frame 0 of our own pool.
        unsafe { std::ptr::write_volatile((base + 100) as *mut u8, 0xEE) };
        let zero = std::fs::File::open("/dev/zero")?;
        let frame1 = base + FRAME_SIZE;
        unshare::before_io(frame1, FRAME_SIZE)?;
        // SAFETY: frame 1 is private now, FRAME_SIZE writable bytes.
        let got = unsafe {
            libc::pread(
                std::os::unix::io::AsRawFd::as_raw_fd(&zero),
                frame1 as *mut _,
                FRAME_SIZE,
                0,
            )
        };
        let after = (unshare::unshared_on_write(), unshare::unshared_before_io());
        if after != (before.0 + 1, before.1 + 1) || got != FRAME_SIZE as isize {
            bail!("unshared (on write, before IO) {before:?} -> {after:?}, pread {got}");
        }
        if frame_bytes(base, 0)[100] != 0xEE
            || frame_bytes(base, 0)[101] != pattern(refs.seed, 0, 101)
        {
            bail!("frame 0 after the write is not the source's bytes plus the write");
        }
        if frame_bytes(base, 1).iter().any(|&b| b != 0) {
            bail!("frame 1 does not hold what the read put there");
        }
        if unshare::shared_now() != n - 2 {
            bail!(
                "{} frames still shared, expected {}",
                unshare::shared_now(),
                n - 2
            );
        }
        Ok(format!(
            "frame 0 private on its first write, frame 1 before a pread into it; {} still shared",
            n - 2
        ))
    })();
    c.report("grant-write-and-read-unshare", r);
    let r = src.ask("revoke").and_then(|a| {
        expect(
            &a,
            &format!(
                "ended={} busy={}",
                2 * GRANTS_PER_FRAME,
                all - 2 * GRANTS_PER_FRAME
            ),
        )
    });
    c.report("grant-unshared-frames-let-go", r);

    // Teardown, the replica first: it unmaps, then the source ends every grant.
    let r = (|| {
        for f in 2..n {
            // SAFETY: frame f of our own pool.
            unsafe { grant::restore_private((base + f * FRAME_SIZE) as *mut u8) }?;
        }
        expect(
            &src.ask("revoke")?,
            &format!("ended={} busy=0", all - 2 * GRANTS_PER_FRAME),
        )
    })();
    c.report("grant-replica-unmaps-then-source-ends", r);

    // A mapper killed with its mappings outstanding leaves no grant behind.
    let r = (|| {
        let again = src.ask("regrant")?;
        let refs2 = parse_refs(again.strip_prefix("refs=").unwrap_or(&again))?;
        let before = grants_mapped(from, None)?;
        let child = mapper_child(from, &refs2)?;
        let busy = src.ask("revoke");
        let mapped = grants_mapped(from, None);
        // SAFETY: our own child.
        unsafe { libc::kill(child, libc::SIGKILL) };
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        let after = grants_mapped(from, None)?;
        expect(&busy?, &format!("ended=0 busy={all}"))?;
        let mapped = mapped?;
        if mapped != before + all || after != before {
            bail!("Xen's active grants of d{from}: {before} before, {mapped} mapped by the child, {after} after its SIGKILL");
        }
        expect(&src.ask("revoke")?, &format!("ended={all} busy=0")).map(|d| {
            format!(
                "while mapped: busy={all}; after SIGKILL of the mapper: {d}; Xen's active grants of d{from}: {before} -> {mapped} -> {after}"
            )
        })
    })();
    c.report("grant-mapper-killed-leaks-none", r);

    let r = pagetable_check(&mut src, from, refs.seed);
    c.report("grant-pagetable-shared", r);

    // The source goes first: it closes the device with its frames mapped here; the
    // module ends those grants once they are unmapped, and stays loaded until then.
    let r = (|| {
        let again = src.ask("regrant")?;
        let refs3 = parse_refs(again.strip_prefix("refs=").unwrap_or(&again))?;
        let base3 = frames(n)?;
        map_all(&dev, from, &refs3, base3)?;
        src.ask("quit")?;
        let held = src.wait_for("rmmod", None)?;
        if held != "busy" {
            bail!("the module could be removed with its grants still mapped ({held})");
        }
        for f in 0..n {
            // SAFETY: frame f of our own pool.
            unsafe { grant::restore_private((base3 + f * FRAME_SIZE) as *mut u8) }?;
        }
        let done = src.wait_for("rmmod", Some("busy"))?;
        if done != "ok" {
            bail!("after the mappings went, removing the module said {done:?}");
        }
        Ok(
            "module held while its closed grants were mapped, removed once they were unmapped"
                .to_string(),
        )
    })();
    c.report("grant-source-closes-first", r);
    println!("{} checks failed", c.failed);
    std::process::exit(if c.failed == 0 { 0 } else { 1 });
}

/// dom0's page table for the check: pagetabled, and the dom0 end of the source
/// domU's channel to it (a server-mode vchan-socket-proxy bound as that domain's
/// channel). Both stopped on drop.
struct LabPageTable {
    daemon: std::process::Child,
    proxy: Option<std::process::Child>,
    data: std::path::PathBuf,
    admin: std::path::PathBuf,
}

const PT_DIR: &str = "/run/grant-probe-pt";
const VCHAN_SOCKET_PROXY: &str = "/usr/lib/xen-4.17/bin/vchan-socket-proxy";

impl LabPageTable {
    fn start() -> Result<LabPageTable> {
        std::fs::create_dir_all(PT_DIR)?;
        let dir = Path::new(PT_DIR);
        let (data, admin) = (dir.join("data.sock"), dir.join("admin.sock"));
        let daemon = std::process::Command::new("pagetabled")
            .arg("serve")
            .arg("--socket")
            .arg(&data)
            .arg("--admin-socket")
            .arg(&admin)
            .stderr(std::fs::File::create(dir.join("pagetabled.log"))?)
            .spawn()
            .context("starting pagetabled")?;
        let pt = LabPageTable {
            daemon,
            proxy: None,
            data,
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while pagetable::admin::AdminClient::connect(&pt.admin).is_err() {
            if Instant::now() > deadline {
                bail!("pagetabled did not come up (see {PT_DIR}/pagetabled.log)");
            }
            // A poll of a daemon's socket, with a deadline: nothing to wait on.
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pt)
    }

    fn admin(&self, req: pagetable::admin::AdminRequest) -> Result<()> {
        let reply = pagetable::admin::AdminClient::connect(&self.admin)?.call(&req)?;
        if reply != pagetable::admin::AdminReply::Ok {
            bail!("pagetabled answered {reply:?} to {req:?}");
        }
        Ok(())
    }

    /// The dom0 end of domain `domid`'s channel to the page table.
    fn open_channel(&mut self, domid: u16) -> Result<u32> {
        let child = std::process::Command::new(VCHAN_SOCKET_PROXY)
            .args(["-m", "server", &domid.to_string()])
            .arg(format!("/local/domain/{domid}/dbfork/pagetable"))
            .arg(&self.data)
            .stdout(std::fs::File::create(Path::new(PT_DIR).join("proxy.log"))?)
            .stderr(std::fs::File::create(Path::new(PT_DIR).join("proxy.err"))?)
            .spawn()
            .context("starting the channel's vchan-socket-proxy")?;
        let pid = child.id();
        self.proxy = Some(child);
        Ok(pid)
    }
}

impl Drop for LabPageTable {
    fn drop(&mut self) {
        for c in self
            .proxy
            .iter_mut()
            .chain(std::iter::once(&mut self.daemon))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The agent's Xen frame stores end to end: the source domU's store registers its
/// grants with dom0's pagetabled through its vchan channel; dom0, bound as domain 0's
/// channel, finds each through a lookup and maps it through gntdev.
fn pagetable_check(src: &mut Source, from: u16, seed: u32) -> Result<String> {
    use pagetable::admin::AdminRequest;
    use pagetable::{DomainId, FamilyId};
    let mut pt = LabPageTable::start()?;
    pt.admin(AdminRequest::FamilyCreate {
        family: FamilyId(1),
    })?;
    for d in [1, 2] {
        pt.admin(AdminRequest::FamilyAdd {
            family: FamilyId(1),
            domain: DomainId(d),
        })?;
    }
    let proxy = pt.open_channel(from)?;
    // The domU's end connects only once dom0's end has published the ring.
    let ring = format!("/local/domain/{from}/dbfork/pagetable/event-channel");
    let deadline = Instant::now() + Duration::from_secs(20);
    while src.xs.read(&ring)?.is_none() {
        if Instant::now() > deadline {
            bail!(
                "dom0's end of the channel never published {ring}: {}",
                std::fs::read_to_string(Path::new(PT_DIR).join("proxy.err")).unwrap_or_default()
            );
        }
        // A poll of xenstore with a deadline, as above.
        std::thread::sleep(Duration::from_millis(50));
    }
    pt.admin(AdminRequest::BindChannel {
        pid: proxy,
        domid: u32::from(from),
        domain: DomainId(1),
    })?;
    pt.admin(AdminRequest::BindChannel {
        pid: std::process::id(),
        domid: 0,
        domain: DomainId(2),
    })?;
    let registered = src.ask("share").with_context(|| {
        format!(
            "proxy log: {}",
            std::fs::read_to_string(Path::new(PT_DIR).join("proxy.err")).unwrap_or_default()
        )
    })?;
    if registered != format!("registered={SHARE_FRAMES}") {
        bail!("the source's store said {registered:?}");
    }
    let store: Arc<dyn FrameStore> = Arc::new(XenReplicaStore::new(Box::new(Gntdev::open()?), 0));
    let mut dir = PageTableDirectory::new(&pt.data, store.clone());
    let base = frames(SHARE_FRAMES)?;
    for f in 0..SHARE_FRAMES {
        // A reply slower than the client's timeout under TCG is asked again.
        let deadline = Instant::now() + Duration::from_secs(30);
        let found = loop {
            match dir.lookup(7, f as u32, 1000) {
                Ok(x) => break x,
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                // The directory's reconnect interval; nothing to wait on.
                Err(_) => std::thread::sleep(Duration::from_millis(1100)),
            }
        };
        let e = found.with_context(|| format!("page {f} not found through the page table"))?;
        match e.frame {
            pagetable::Frame::XenGrant {
                issuer, grantee: 0, ..
            } if issuer == from => {}
            other => bail!("page {f}: the page table gave dom0 {other:?}"),
        }
        let dst = (base + f * FRAME_SIZE) as *mut u8;
        // SAFETY: frame f of our own pool.
        unsafe { store.map_over(e.frame, dst) }?;
        let b = frame_bytes(base, f);
        if let Some(i) = (0..FRAME_SIZE).find(|&i| b[i] != shared_byte(seed, f, i)) {
            bail!("page {f} byte {i} is not the source's");
        }
        // SAFETY: as above.
        unsafe { store.restore_private(dst) }?;
    }
    Ok(format!(
        "{SHARE_FRAMES} frames offered to the source's Xen store and registered through its vchan channel; dom0's channel found each through pagetabled (a grant from d{from} to d0) and mapped it byte-equal through gntdev"
    ))
}

/// A child process that maps every frame of `refs` and waits to be killed; returns
/// once it has mapped them.
fn mapper_child(from: u16, refs: &Refs) -> Result<libc::pid_t> {
    let base = frames(refs.frames)?;
    let mut fds = [0; 2];
    // SAFETY: a pipe into our own array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: this process has one thread; the child only maps, writes a byte and
    // pauses.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        let ok = Gntdev::open()
            .and_then(|dev| {
                for f in 0..refs.frames {
                    // SAFETY: frame f of the child's own pool.
                    unsafe {
                        grant::map_over(
                            &dev,
                            &refs.of_frame(from, f),
                            (base + f * FRAME_SIZE) as *mut u8,
                        )
                    }?;
                }
                Ok(())
            })
            .is_ok();
        let b = [u8::from(ok)];
        // SAFETY: writing one byte to our pipe, then waiting for the SIGKILL.
        unsafe {
            libc::write(fds[1], b.as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut b = [0u8];
    // SAFETY: reading one byte from our pipe.
    let got = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
    // SAFETY: our fd.
    unsafe { libc::close(fds[0]) };
    if got != 1 || b[0] != 1 {
        // SAFETY: our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        bail!("the mapper child could not map the frames");
    }
    Ok(pid)
}
