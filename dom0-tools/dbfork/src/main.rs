//! The `dbfork` command line.
use clap::Parser;
use dbfork::cli::{Cli, Command};
use dbfork::output::Output;

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
        Command::Volume(cmd) => dbfork::volume_cmd::run(&cli.store, &out, cmd),
        Command::Demo(args) => dbfork::demo::run(&cli.store, &out, args),
        other => dbfork::instance_cmd::run(&cli.store, &out, other),
    };
    if let Err(e) = result {
        // The whole chain: "opening the volume store: permission denied" beats either half.
        if cli.json {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            println!("{}", serde_json::json!({"error": chain.join(": ")}));
        }
        eprintln!("dbfork: error: {e:#}");
        std::process::exit(1);
    }
}
