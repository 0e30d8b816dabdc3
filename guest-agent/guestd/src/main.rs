//! `dbfork-guestd --instance FILE --listen PATH`: serves dom0's requests for the
//! guest's MariaDB (its dbinstance config in FILE, JSON) on a Unix socket.
//!
//! In a domU that dbfork starts, it also runs that server: `--start-server` starts it
//! before listening (a fresh datadir first with `--init-datadir`, on a new source's
//! first boot), so the socket appearing means the server answers; `--stop-server`
//! stops it cleanly and exits (the guest's shutdown runs it).

use anyhow::Context;
use clap::Parser;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "dbfork-guestd", version, about)]
struct Args {
    /// The guest's server as dbinstance describes it (JSON of its InstanceConfig).
    #[arg(long)]
    instance: PathBuf,
    /// The Unix socket to listen on (on Xen, vchan-socket-proxy connects dom0's
    /// channel to it).
    #[arg(long, required_unless_present = "stop_server")]
    listen: Option<PathBuf>,
    /// Start the server before listening (and wait until it answers).
    #[arg(long, conflicts_with = "stop_server")]
    start_server: bool,
    /// With --start-server: make a fresh datadir first if it has none.
    #[arg(long, requires = "start_server")]
    init_datadir: bool,
    /// The address the server listens on and replicas reach it at (the guest's own;
    /// replaces the config's).
    #[arg(long)]
    bind_address: Option<String>,
    /// How long the server may take to start (crash recovery included), in seconds.
    #[arg(long, default_value_t = 600)]
    start_timeout: u64,
    /// Stop the server cleanly and exit.
    #[arg(long)]
    stop_server: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.instance)
        .with_context(|| format!("reading {}", args.instance.display()))?;
    let mut cfg: dbinstance::InstanceConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an instance config", args.instance.display()))?;
    if let Some(addr) = &args.bind_address {
        cfg.bind_address = addr.clone();
    }
    if args.stop_server {
        let mut inst = dbinstance::Instance::open(cfg).context("opening the instance")?;
        return inst.stop().context("stopping the server");
    }
    if args.start_server {
        start_server(
            &cfg,
            args.init_datadir,
            Duration::from_secs(args.start_timeout),
        )?;
    }
    let inst = dbinstance::Instance::open(cfg).context("opening the instance")?;
    let listen = args
        .listen
        .context("--listen PATH is needed (unless --stop-server)")?;
    let _ = std::fs::remove_file(&listen);
    let listener = UnixListener::bind(&listen)
        .with_context(|| format!("listening on {}", listen.display()))?;
    std::thread::scope(|scope| {
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    continue;
                }
            };
            let inst = &inst;
            scope.spawn(move || {
                if let Err(e) = dbfork_guestd::serve(conn, inst) {
                    tracing::warn!("a dom0 connection ended: {e}");
                }
            });
        }
    });
    Ok(())
}

/// Starts the guest's server (after a fresh datadir, when asked and there is none)
/// and waits until it answers. The server runs in its own process group: it outlives
/// this process and is stopped with `--stop-server`.
fn start_server(
    cfg: &dbinstance::InstanceConfig,
    init_datadir: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let inst = if init_datadir && !cfg.datadir.join("mysql").is_dir() {
        tracing::info!("making a fresh datadir in {}", cfg.datadir.display());
        dbinstance::Instance::init(cfg.clone()).context("making a fresh datadir")?
    } else {
        dbinstance::Instance::open(cfg.clone()).context("opening the instance")?
    };
    if inst.is_running() {
        return Ok(());
    }
    let plan = inst
        .prepare_start()
        .context("preparing the server's start")?;
    let mut child = std::process::Command::new(&plan.program)
        .args(&plan.args)
        .stdin(std::process::Stdio::null())
        .stdout(plan.stdout)
        .stderr(plan.stderr)
        .process_group(0)
        .spawn()
        .map_err(|e| inst.spawn_error(e))
        .context("starting the server")?;
    inst.wait_ready(&mut child, timeout, plan.log_offset)
        .context("waiting for the server to answer")?;
    Ok(())
}
