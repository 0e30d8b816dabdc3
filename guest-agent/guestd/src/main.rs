//! `dbfork-guestd --instance FILE --listen PATH`: serves dom0's requests for the
//! guest's MariaDB (its dbinstance config in FILE, JSON) on a Unix socket.
//!
//! In a domU that dbfork starts, it also runs that server: `--start-server` starts it
//! before listening (a fresh datadir first with `--init-datadir`, on a new source's
//! first boot), so the socket appearing means the server answers; `--stop-server`
//! stops it cleanly and exits (the guest's shutdown runs it).
//!
//! With `--agent FILE` (the agent setup dom0 handed the domain) the server runs with
//! dbfork's page-sharing agent preloaded, configured for Xen; dom0's agent requests
//! (the clone LSN, the replicas to grant to, the counters) reach it through the files
//! this side rewrites.

use anyhow::Context;
use clap::Parser;
use dbfork_guestd::agent::GuestAgent;
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
    /// The Unix socket to listen on (on Xen, dbfork-vchan-relay connects dom0's
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
    /// The agent setup dom0 handed this domain (JSON): run the server with the agent.
    #[arg(long, requires_all = ["agent_lib", "xen_domid", "page_table"])]
    agent: Option<PathBuf>,
    /// The agent library to preload (libdbfork_agent.so).
    #[arg(long)]
    agent_lib: Option<PathBuf>,
    /// This domain's id (xenstore-read domid).
    #[arg(long)]
    xen_domid: Option<u16>,
    /// The guest end of the channel to dom0's page table (a Unix socket).
    #[arg(long)]
    page_table: Option<PathBuf>,
    /// Where the agent's files live (a tmpfs directory).
    #[arg(long, default_value = "/run/dbfork/agent")]
    agent_dir: PathBuf,
}

/// The agent as the arguments describe it, if they name one.
fn guest_agent(
    args: &Args,
    cfg: &dbinstance::InstanceConfig,
) -> anyhow::Result<Option<GuestAgent>> {
    let Some(file) = &args.agent else {
        return Ok(None);
    };
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let setup = guest_channel::AgentSetup::decode(&text)
        .with_context(|| format!("{} is not an agent setup", file.display()))?;
    let library = args
        .agent_lib
        .clone()
        .context("--agent needs --agent-lib")?;
    anyhow::ensure!(
        library.exists(),
        "the agent library {} is missing: install it in the guest image",
        library.display()
    );
    Ok(Some(GuestAgent {
        setup,
        library,
        domid: args.xen_domid.context("--agent needs --xen-domid")?,
        page_table: args
            .page_table
            .clone()
            .context("--agent needs --page-table")?,
        dir: args.agent_dir.clone(),
        writes_file: cfg.run_dir.join("replica-writes"),
    }))
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
    let agent = guest_agent(&args, &cfg)?;
    if args.start_server {
        start_server(
            &cfg,
            args.init_datadir,
            agent.as_ref(),
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
            let (inst, agent) = (&inst, agent.as_ref());
            scope.spawn(move || {
                if let Err(e) = dbfork_guestd::serve(conn, inst, agent) {
                    tracing::warn!("a dom0 connection ended: {e}");
                }
            });
        }
    });
    Ok(())
}

/// Starts the guest's server (after a fresh datadir, when asked and there is none),
/// with the agent preloaded when there is one, and waits until it answers. The server runs in its own process group: it outlives
/// this process and is stopped with `--stop-server`.
fn start_server(
    cfg: &dbinstance::InstanceConfig,
    init_datadir: bool,
    agent: Option<&GuestAgent>,
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
    let env = match agent {
        Some(a) => {
            // Every shared frame is a mapping of its own.
            dbinstance::preflight::ensure_map_count(cfg.buffer_pool_size);
            a.prepare()
                .with_context(|| format!("writing the agent's files in {}", a.dir.display()))?
        }
        None => Vec::new(),
    };
    let mut child = std::process::Command::new(&plan.program)
        .args(&plan.args)
        .envs(env)
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
