//! `dbfork demo`: the README's main job, end to end on this host. A source with a
//! sysbench dataset under a read load, two replicas forked from it, their time to
//! first query, hydration progress, then writes on the source and the replicas
//! catching up with identical checksums. Cleans up unless `--keep`.

use super::cli::DemoArgs;
use super::output::Output;
use anyhow::{bail, Context, Result};
use dbfork::clone::CloneOpts;
use dbfork::ctx::Ctx;
use dbfork::source::SourceOptions;
use dbfork::status::status_of;
use dbfork::units::human;
use dbinstance::Instance;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::path::Path;
use std::time::{Duration, Instant};
use workload::sysbench::{self, SysbenchOptions};

const SRC: &str = "demo-src";
const REPLICAS: [&str; 2] = ["demo-r1", "demo-r2"];

/// The demo runs on the local substrate: a host that cannot run local domains, or
/// has no sysbench, is told what it lacks before anything is made.
fn preflight(ctx: &Ctx) -> Result<()> {
    ctx.substrate().preflight()?;
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("sysbench").exists()));
    if !on_path {
        bail!(
            "sysbench is missing: install the Debian package sysbench (scripts/install-deps does)"
        );
    }
    Ok(())
}

pub fn run(store: &Path, out: &Output, args: DemoArgs) -> Result<()> {
    let ctx = Ctx::new(store, Some(substrate::Kind::Local))?;
    preflight(&ctx)?;
    let reg = ctx.registry();
    for n in std::iter::once(SRC).chain(REPLICAS) {
        if reg.exists(n) {
            bail!("a previous demo is still in {}: remove it with `dbfork --store {} destroy {SRC} --with-replicas`", store.display(), store.display());
        }
    }
    let say = |s: &str| {
        if !out.json {
            outln!("{s}");
        }
    };
    say(&format!("dbfork demo: store {}", store.display()));
    let result = demo(&ctx, &args, &say, out);
    if args.keep {
        say(&format!(
            "kept: dbfork --store {} list; remove with dbfork --store {} destroy {SRC} --with-replicas",
            store.display(),
            store.display()
        ));
    } else if reg.exists(SRC) {
        say("cleaning up");
        if let Err(e) = dbfork::destroy::destroy(&ctx, SRC, true, &|_| {}) {
            errln!("dbfork demo: cleanup failed: {}", e.chain());
        }
    }
    let report = result?;
    if out.json {
        out.print_json(&report);
    }
    Ok(())
}

fn step(say: &dyn Fn(&str), what: &str) -> Instant {
    say(&format!("\n== {what}"));
    Instant::now()
}

fn demo(ctx: &Ctx, args: &DemoArgs, say: &dyn Fn(&str), out: &Output) -> Result<serde_json::Value> {
    let t = step(
        say,
        "1. a source: volume, filesystem, MariaDB with binlog + GTID",
    );
    let src_rec = dbfork::source::create(
        ctx,
        SRC,
        &SourceOptions {
            size: args.size,
            buffer_pool: 128 << 20,
            fs: substrate::FsType::Ext4,
            port: None,
            region_size: lazyvol::DEFAULT_REGION_SIZE,
            engine: Default::default(),
            domain_config: None,
            database_vdev: "xvdb".into(),
        },
    )?;
    let src = Instance::open(src_rec.config.clone())?;
    say(&format!(
        "   {SRC} up in {} ms on port {}",
        t.elapsed().as_millis(),
        src_rec.config.port
    ));

    let t = step(
        say,
        &format!("2. sysbench dataset: 4 tables x {} rows", args.rows),
    );
    let data = SysbenchOptions {
        tables: 4,
        table_size: args.rows,
        threads: 2,
        ..Default::default()
    };
    sysbench::prepare(&src, &data).context("sysbench prepare")?;
    say(&format!("   loaded in {:.1} s", t.elapsed().as_secs_f64()));

    step(
        say,
        "3. a read load on the source, and two replicas forked while it runs",
    );
    let reader = sysbench::start(
        &src,
        &SysbenchOptions {
            test: "oltp_read_only".into(),
            secs: 20,
            report_interval: 0,
            ..data.clone()
        },
    )?;
    let mut forks = Vec::new();
    for r in REPLICAS {
        let rec = dbfork::clone::clone(
            ctx,
            SRC,
            r,
            &CloneOpts {
                rate: args.rate,
                ..CloneOpts::default()
            },
            &|s| say(&format!("   {s}")),
        )?;
        let c = rec.clone.expect("clone report");
        say(&format!(
            "   => {r}: first query {} ms after the fork began (commits on the source held {} ms)",
            c.first_query_ms, c.hold_ms
        ));
        forks.push(serde_json::json!({"name": r, "first_query_ms": c.first_query_ms, "hold_ms": c.hold_ms}));
    }
    let read = reader.wait()?;
    say(&format!(
        "   source read load: {:.0} tps while forking",
        read.tps
    ));

    step(
        say,
        "4. the replicas hydrate in the background while they serve",
    );
    hydration_bars(ctx, out, Duration::from_secs(60))?;

    step(say, "5. writes on the source; the replicas catch up");
    let w = sysbench::run(
        &src,
        &SysbenchOptions {
            test: "oltp_write_only".into(),
            secs: 5,
            report_interval: 0,
            ..data.clone()
        },
    )?;
    say(&format!(
        "   {} write transactions on {SRC}",
        w.transactions
    ));
    let want = dbinstance::checksum_all_tables(&src, &["sbtest"])?;
    let mut replicas = Vec::new();
    for r in REPLICAS {
        let rec = ctx.registry().load(r)?;
        let inst = Instance::open(rec.config.clone())?;
        let t = Instant::now();
        dbinstance::wait_caught_up(&inst, &src, Duration::from_secs(120))?;
        let got = dbinstance::checksum_all_tables(&inst, &["sbtest"])?;
        let st = status_of(ctx, &rec);
        let same = got == want;
        say(&format!(
            "   {r}: caught up in {} ms, lag {} s, {} tables {}; volume {:.0}% hydrated",
            t.elapsed().as_millis(),
            st.lag_secs.unwrap_or(0),
            got.len(),
            if same {
                "identical to the source (CHECKSUM TABLE)"
            } else {
                "DIFFER"
            },
            st.hydrated_percent
        ));
        if !same {
            bail!("{r} differs from the source after catch-up");
        }
        replicas.push(serde_json::json!({"name": r, "hydrated_percent": st.hydrated_percent, "checksums_match": same}));
    }
    for r in REPLICAS {
        let st = status_of(ctx, &ctx.registry().load(r)?);
        match (&st.sharing, &st.sharing_off) {
            (_, Some(why)) => say(&format!("   {r}: page sharing off ({why})")),
            (Some(a), None) => {
                let n = |k: &str| a[k].as_u64().unwrap_or(0);
                say(&format!(
                    "   {r}: {} of {} page reads served from {SRC}'s memory ({}), copy-on-write",
                    n("shared"),
                    n("lookups"),
                    human(n("shared") * 16384)
                ));
            }
            (None, None) => say(&format!("   {r}: page sharing off")),
        }
    }
    Ok(serde_json::json!({
        "source": SRC,
        "forks": forks,
        "source_read_tps_while_forking": read.tps,
        "replicas": replicas,
    }))
}

/// One bar per replica until both are independent of their snapshot, or `limit`.
fn hydration_bars(ctx: &Ctx, out: &Output, limit: Duration) -> Result<()> {
    let multi = MultiProgress::new();
    if out.json {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("   {prefix:8} [{bar:40}] {percent:>3}% {msg}")
        .expect("static template")
        .progress_chars("=> ");
    let bars: Vec<(String, ProgressBar)> = REPLICAS
        .iter()
        .map(|r| {
            let b = multi.add(ProgressBar::new(100));
            b.set_style(style.clone());
            b.set_prefix(r.to_string());
            (r.to_string(), b)
        })
        .collect();
    let start = Instant::now();
    loop {
        let mut done = true;
        for (r, b) in &bars {
            let st = status_of(ctx, &ctx.registry().load(r)?);
            b.set_position(st.hydrated_percent as u64);
            b.set_message(format!(
                "{} on demand, {} background, {}/s",
                st.volume.on_demand_fetches,
                st.volume.background_fetches,
                human(st.volume.background_rate)
            ));
            if !st.volume.independent {
                done = false;
            } else {
                b.finish_with_message("independent of the snapshot");
            }
        }
        if done || start.elapsed() > limit {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
