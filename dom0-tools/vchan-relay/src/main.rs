//! dbfork-vchan-relay: one end of a Xen vchan, relayed to a Unix socket.
//!
//! `serve DOMID PATH SOCKET` offers a vchan to DOMID at xenstore PATH and connects
//! to SOCKET for each client (dom0's end of a domU's page-table channel; a domU's end
//! of its guest channel). `connect DOMID PATH SOCKET` listens on SOCKET and connects
//! to the vchan DOMID offers at PATH for each local client. Runs until stopped.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;
use vchan_relay::{relay, vchan::Vchan};

#[derive(Parser)]
#[command(
    version,
    about = "Relays a Xen vchan to a Unix socket (dbfork's channels)"
)]
struct Cli {
    #[command(subcommand)]
    side: Side,
    /// Longest sleep between looks at the ring, in milliseconds.
    #[arg(long, default_value_t = 1000, global = true)]
    tick_ms: u64,
}

#[derive(Subcommand)]
enum Side {
    /// Offer a vchan to DOMID at PATH; each client is relayed to a new connection to
    /// SOCKET.
    Serve {
        domid: u32,
        path: String,
        socket: PathBuf,
    },
    /// Listen on SOCKET; each local client is relayed to the vchan DOMID offers at PATH.
    Connect {
        domid: u32,
        path: String,
        socket: PathBuf,
        /// How long a local client waits for the peer to offer its vchan, in seconds.
        #[arg(long, default_value_t = 10)]
        patience_s: u64,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let tick = Duration::from_millis(cli.tick_ms.max(1));
    match cli.side {
        Side::Serve {
            domid,
            path,
            socket,
        } => relay::serve(|| Vchan::serve(domid, &path), &socket, tick).with_context(|| {
            format!(
                "relaying domain {domid}'s vchan at {path} to {}",
                socket.display()
            )
        }),
        Side::Connect {
            domid,
            path,
            socket,
            patience_s,
        } => {
            // A socket left by an earlier relay would refuse the bind.
            let _ = std::fs::remove_file(&socket);
            let listener = UnixListener::bind(&socket)
                .with_context(|| format!("listening on {}", socket.display()))?;
            relay::accept_and_connect(
                &listener,
                || Vchan::connect(domid, &path),
                Duration::from_secs(patience_s),
                tick,
            )
            .with_context(|| {
                format!(
                    "relaying {} to domain {domid}'s vchan at {path}",
                    socket.display()
                )
            })
        }
    }
}
