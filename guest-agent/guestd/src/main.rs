//! `dbfork-guestd --instance FILE --listen PATH`: serves dom0's requests for the
//! guest's MariaDB (its dbinstance config in FILE, JSON) on a Unix socket.

use anyhow::Context;
use clap::Parser;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "dbfork-guestd", version, about)]
struct Args {
    /// The guest's server as dbinstance describes it (JSON of its InstanceConfig).
    #[arg(long)]
    instance: PathBuf,
    /// The Unix socket to listen on (on Xen, vchan-socket-proxy connects dom0's
    /// channel to it).
    #[arg(long)]
    listen: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.instance)
        .with_context(|| format!("reading {}", args.instance.display()))?;
    let cfg: dbinstance::InstanceConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an instance config", args.instance.display()))?;
    let inst = dbinstance::Instance::open(cfg).context("opening the instance")?;
    let _ = std::fs::remove_file(&args.listen);
    let listener = UnixListener::bind(&args.listen)
        .with_context(|| format!("listening on {}", args.listen.display()))?;
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
