//! `pagetabled`: serves the dbfork page table to the guest agents of a host.

mod admin_socket;
mod daemon;
mod data;
mod metrics;
#[cfg(test)]
mod scripted_conn;
mod state;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use pagetable::admin::{AdminClient, AdminRequest};
use pagetable::transport::UnixTransport;
use pagetable::TableConfig;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// Page table daemon for dbfork families.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the page table (always in the foreground; systemd or a test supervises it).
    Serve {
        /// Socket the guest agents connect to (mode 0666; the admin decides who counts).
        #[arg(long)]
        socket: PathBuf,
        /// Root-only control socket (mode 0600).
        #[arg(long)]
        admin_socket: PathBuf,
        /// Most entries one domain may hold.
        #[arg(long, default_value_t = TableConfig::default().quota_per_domain)]
        quota: usize,
        /// Serve Prometheus metrics at http://ADDR/metrics; loopback addresses only.
        #[arg(long)]
        metrics_addr: Option<String>,
        /// Close a client connection that sends no message for this long before it is
        /// bound to a domain (bound connections may stay idle).
        #[arg(long, default_value_t = 10_000)]
        unbound_timeout_ms: u64,
        /// Keep families, members and pid bindings here across daemon restarts.
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// Accepted for clarity in unit files and scripts; serve never daemonizes.
        #[arg(long)]
        foreground: bool,
    },
    /// Print per-family statistics.
    Stats {
        #[arg(long)]
        admin_socket: PathBuf,
        /// Print the raw JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Send one admin request, e.g. '{"op":"family_create","family":1}', and print the reply.
    Admin {
        #[arg(long)]
        admin_socket: PathBuf,
        request: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            socket,
            admin_socket,
            quota,
            metrics_addr,
            unbound_timeout_ms,
            state_file,
            foreground: _,
        } => serve(
            socket,
            admin_socket,
            quota,
            metrics_addr,
            state_file,
            data::Limits {
                unbound_timeout: std::time::Duration::from_millis(unbound_timeout_ms.max(1)),
            },
        ),
        Command::Stats { admin_socket, json } => stats(admin_socket, json),
        Command::Admin {
            admin_socket,
            request,
        } => {
            let req: AdminRequest =
                serde_json::from_str(&request).context("parsing the admin request")?;
            let reply = AdminClient::connect(&admin_socket)?.call(&req)?;
            println!("{}", serde_json::to_string(&reply)?);
            Ok(())
        }
    }
}

fn serve(
    socket: PathBuf,
    admin_socket: PathBuf,
    quota: usize,
    metrics_addr: Option<String>,
    state_file: Option<PathBuf>,
    limits: data::Limits,
) -> anyhow::Result<()> {
    if quota == 0 {
        bail!("--quota must be at least 1");
    }
    let daemon = Arc::new(daemon::Daemon::new(
        TableConfig {
            quota_per_domain: quota,
        },
        state_file,
    )?);
    let metrics = match metrics_addr {
        Some(addr) => {
            let parsed: std::net::SocketAddr = addr
                .parse()
                .with_context(|| format!("--metrics-addr {addr} is not IP:PORT"))?;
            if !parsed.ip().is_loopback() {
                bail!(
                    "--metrics-addr {addr}: metrics are unauthenticated; bind a loopback address"
                );
            }
            Some(metrics::spawn(&addr, daemon.clone()).context("starting the metrics endpoint")?)
        }
        None => None,
    };
    let admin = UnixTransport::bind(&admin_socket, 0o600)?;
    let clients = UnixTransport::bind(&socket, 0o666)?;
    {
        let daemon = daemon.clone();
        std::thread::Builder::new()
            .name("pagetable-admin-accept".into())
            .spawn(move || admin_socket::serve(admin, daemon))?;
    }
    // Supervisors and tests wait for this line instead of guessing.
    let mut out = std::io::stdout().lock();
    write!(
        out,
        "pagetabled ready generation={:016x} socket={} admin={}",
        daemon.generation,
        socket.display(),
        admin_socket.display()
    )?;
    if let Some(m) = metrics {
        write!(out, " metrics={m}")?;
    }
    writeln!(out)?;
    out.flush()?;
    drop(out);
    data::serve(clients, daemon, limits)
}

fn stats(admin_socket: PathBuf, json: bool) -> anyhow::Result<()> {
    let mut admin = AdminClient::connect(&admin_socket)?;
    let report = admin.stats()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "generation {:016x}, {} client connections",
        report.generation, report.connections
    );
    println!(
        "{:>8} {:>8} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "family", "domains", "entries", "lookups", "hits", "misses", "invalidated"
    );
    for f in &report.families {
        println!(
            "{:>8} {:>8} {:>10} {:>12} {:>12} {:>12} {:>12}",
            f.family.0, f.domains, f.entries, f.lookups, f.hits, f.misses, f.invalidations
        );
    }
    Ok(())
}
