//! The `dbfork` command line.
mod cmd;

use clap::Parser;
use cmd::cli::{Cli, Command};
use cmd::output::Output;

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DBFORK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let out = Output { json: cli.json };
    let result = match cli.command {
        Command::Volume(cmd) => cmd::volume::run(&cli.store, &out, cmd),
        Command::Demo(args) => cmd::demo::run(&cli.store, &out, args),
        other => cmd::instance::run(&cli.store, &out, other),
    };
    if let Err(e) = result {
        // The whole chain: "opening the volume store: permission denied" beats either half.
        let chain = chain(&e);
        if cli.json {
            println!("{}", serde_json::json!({"error": chain}));
        }
        eprintln!("dbfork: error: {chain}");
        std::process::exit(1);
    }
}

/// The error and its causes, each said once (a library error's source is often also
/// the last part of its own message).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for c in e.chain() {
        let text = c.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
