//! volbench: issue 3's volume benchmarks, dbfork's lazy clones side by side with
//! QEMU copy-on-read + block-stream, both driven by the same NBD client.
//! See README.md for what each figure means.

mod busy;
mod ctx;
mod dbfork;
mod hydration;
mod image;
mod latency;
mod machine;
mod nbd;
mod procs;
mod qemu;
mod report;
mod stats;
mod summary;
mod ttfr;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ctx::{Ctx, Plan};
use dbfork::Volumes;
use experiments_support::Dbfork;
use image::MIB;
use std::path::PathBuf;

/// Benchmarks of dbfork's volume engine against QEMU (issue 3).
#[derive(Parser, Debug)]
#[command(name = "volbench")]
struct Args {
    /// Small sizes and few reads: a smoke run in well under a minute.
    #[arg(long)]
    quick: bool,
    /// The dbfork binary (default: next to this binary, then target-bench/release,
    /// then PATH).
    #[arg(long, env = "DBFORK_BIN")]
    dbfork: Option<PathBuf>,
    /// Write the report here too (default for a full run:
    /// docs/results-volbench.md of the workspace; a quick run only prints).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Parent of the temporary work directory (must not be tmpfs for cache drops
    /// to mean anything).
    #[arg(long, default_value = "/var/tmp")]
    workdir: PathBuf,
    /// QD1 random reads per latency figure.
    #[arg(long)]
    reads: Option<usize>,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn plan(args: &Args) -> Plan {
    let mut p = if args.quick {
        Plan {
            ttfr_sizes: vec![64 * MIB, 256 * MIB],
            ttfr_reps: 3,
            hydration_reps: 1,
            latency_rounds: 1,
            dense_size: 128 * MIB,
            reads: 100,
            region_sizes: vec![64 << 10, 256 << 10, 1 << 20],
        }
    } else {
        Plan {
            ttfr_sizes: vec![256 * MIB, 1024 * MIB, 4096 * MIB],
            ttfr_reps: 15,
            hydration_reps: 3,
            latency_rounds: 3,
            dense_size: 1024 * MIB,
            reads: 1000,
            region_sizes: vec![64 << 10, 256 << 10, 1 << 20],
        }
    };
    if let Some(n) = args.reads {
        p.reads = n;
    }
    p
}

fn main() -> Result<()> {
    let args = Args::parse();
    for tool in ["qemu-img", "qemu-storage-daemon", "qemu-nbd", "cp"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            bail!("{tool} not found (Debian: apt-get install qemu-utils)");
        }
    }
    let bin = Dbfork::locate(args.dbfork.as_deref())?;
    let plan = plan(&args);
    let started = std::time::Instant::now();
    let when = machine::utc_now();
    let load_before = machine::loadavg();

    remove_stale_workdirs(&args.workdir);
    let tmp = tempfile::Builder::new()
        .prefix("volbench-")
        .tempdir_in(&args.workdir)
        .with_context(|| format!("temp dir in {}", args.workdir.display()))?;
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
    let store = dir.join("store");
    let ctx = Ctx {
        db: Volumes {
            cli: Dbfork::new(&bin, store),
            logs: dir.clone(),
        },
        dir,
        plan,
        caches_dropped: image::drop_caches(),
    };
    if !ctx.caches_dropped {
        eprintln!("volbench: cannot drop caches (not root?); hydration runs start warm");
    }

    let ttfr = ttfr::run(&ctx)?;

    eprintln!(
        "volbench: dense {} image",
        report::human(ctx.plan.dense_size)
    );
    let base = ctx.path("base.raw");
    image::dense(&base, ctx.plan.dense_size, 7)?;
    ctx.db.import("base", &base)?;
    ctx.db.snapshot("base", "snap")?;
    image::warm(&base)?;
    image::warm_tree(ctx.db.store())?;
    let before = latency::run(&ctx, &base, "base", "snap")?;
    let after = hydration::run(&ctx, &base, "snap")?;
    let during = busy::run(&ctx, &base, "snap")?;

    let mut rep = report::Report::default();
    let cmd: Vec<String> = std::env::args().collect();
    rep.text(&format!(
        "## Volume engine benchmarks (volbench{})\n\n\
         - command: `{}` (dbfork: `{}`), built with \
         `cargo build --release -p dbfork -p volbench` (source: {})\n\
         - machine: {}\n\
         - date: {when}; load average before: {load_before}, after: {}; run took {:.0} s\n\
         - page cache dropped before each hydration run: {}\n",
        if args.quick {
            ", --quick smoke run"
        } else {
            ""
        },
        cmd.join(" "),
        bin.display(),
        machine::source_rev(&workspace_root()),
        machine::describe(),
        machine::loadavg(),
        started.elapsed().as_secs_f64(),
        if ctx.caches_dropped {
            "yes"
        } else {
            "no (not root)"
        },
    ));
    summary::write(&mut rep, &ctx, &ttfr, &before, &after, &during);
    print!("{}", rep.as_str());

    let out = match (&args.out, args.quick) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(workspace_root().join("docs/results-volbench.md")),
        (None, true) => None,
    };
    if let Some(p) = out {
        std::fs::write(&p, rep.as_str()).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("volbench: wrote {}", p.display());
    }
    drop(ctx);
    tmp.close().context("removing the work directory")?;
    Ok(())
}

/// Names the process that owns a work directory, so a later run can remove what a
/// killed run (SIGKILL, Ctrl-C: no destructors) left behind.
const OWNER_FILE: &str = "volbench.pid";

fn remove_stale_workdirs(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let ours = e.file_name().to_string_lossy().starts_with("volbench-");
        let owner = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let Some(pid) = owner.filter(|_| ours) else {
            continue;
        };
        // SAFETY: kill(pid, 0) sends nothing; it only asks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            eprintln!("volbench: removing {} left by a killed run", path.display());
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
